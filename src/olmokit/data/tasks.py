"""Built-in evaluation tasks made from data that ships offline with CPython (no one here wrote it).

``stdlib_module``: given a docstring from the standard library, pick the top-level module/package it
comes from among 4 choices (chance = 25%). Examples come from the zoo corpus's fixed split
(:mod:`olmokit.data.stdlib`): training examples from training-split files, held-out examples from
held-out files, so no held-out docstring was seen by the zoo model or during fine-tuning. The label set
is the modules with at least ``min_label_docs`` training docstrings; held-out labels are restricted to
it (an unseen module cannot be learnt), and each label contributes at most ``per_label_cap`` examples
per split so the large packages (tkinter, idlelib) do not dominate. Everything is deterministic for a
given CPython (sorted inputs, seeded ``random.Random``).

A task is a list of :class:`MultipleChoiceExample`; :meth:`MultipleChoiceExample.record` turns one into
a chat :class:`~olmokit.data.readers.Record` (user: question, assistant: a choice) for training and for
log-likelihood scoring with exactly the same formatting.
"""

from __future__ import annotations

import ast
import functools
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError, DataError
from .readers import Record
from .stdlib import is_held_out, stdlib_root, stdlib_source_files

__all__ = [
    "TASKS",
    "MultipleChoiceExample",
    "Task",
    "get_task",
    "mc_examples_from_records",
    "stdlib_defname_task",
    "stdlib_kind_task",
    "stdlib_module_say_task",
    "stdlib_module_task",
]


@dataclass(frozen=True)
class MultipleChoiceExample:
    prompt: str  #: the user turn (question, with the options listed)
    choices: tuple[str, ...]
    answer: int  #: index into ``choices``
    source: str = ""
    system: str | None = None
    kind: str = "chat"  #: "chat" or "prompt_completion"

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer]

    def record(self, choice: int | None = None) -> Record:
        """The example with choice ``choice`` (default: the answer) as the target."""
        text = self.choices[self.answer if choice is None else choice]
        if self.kind == "prompt_completion":
            return Record(
                "prompt_completion", {"prompt": self.prompt, "completion": text}, self.source
            )
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": text},
        ]
        return Record("chat", {"messages": messages}, self.source)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    train: list[MultipleChoiceExample]
    heldout: list[MultipleChoiceExample]


_WS = re.compile(r"\s+")


def split_rngs(task: str, seed: int) -> dict[bool, random.Random]:
    """One seeded generator per split (``{False: train, True: held-out}``).

    Why two: with one generator the held-out draw came after the training draw, so ``n_train``
    reshuffled every held-out question and its choices (0 of 232 ``stdlib_module`` held-out
    examples were the same between n_train 300 and 500). The training generator is
    ``Random(seed)``, as before, so training (and validation carved from it) is unchanged; the
    held-out generator is seeded from a string (hashed with SHA-512 by :class:`random.Random`, so
    stable across processes and ``PYTHONHASHSEED``)."""
    return {False: random.Random(seed), True: random.Random(f"{task}:heldout:{seed}")}


def _clean_doc(doc: str, max_chars: int) -> str:
    first = doc.strip().split("\n\n", 1)[0]
    text = _WS.sub(" ", first).strip()
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
    return text


@functools.lru_cache(maxsize=1)
def _stdlib_parsed() -> tuple[tuple, tuple]:
    """Every stdlib file parsed once (it takes seconds), for both kinds of rows the tasks use:

    * docstrings: (top-level module, raw docstring, held_out, source) for the module and every class
      and function at any depth, in source order (as :func:`olmokit.data.stdlib.iter_docstrings`);
    * definitions: see :func:`_stdlib_definitions`.
    """
    root = stdlib_root()
    docs: list[tuple[str, str, bool, str]] = []
    defs: list[tuple[str, str, str, str, bool, str]] = []
    for path in stdlib_source_files(root):
        rel = path.relative_to(root).as_posix()
        top = rel.split("/", 1)[0].removesuffix(".py")
        held = is_held_out(f"file:{rel}")
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for qual, doc in _docstrings(tree):
            docs.append((top, doc, held, f"{rel}:{qual or '<module>'}"))
        if not top.startswith("_"):
            defs += _definitions(tree, rel, held)
    return tuple(docs), tuple(defs)


def _docstrings(tree: ast.Module) -> list[tuple[str, str]]:
    out = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        out.append(("", module_doc))

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    out.append((qual, doc))
                visit(child, qual + ".")

    visit(tree, "")
    return out


def _stdlib_docstrings() -> tuple[tuple[str, str, bool, str], ...]:
    """(top-level module, cleaned-later raw docstring, held_out, source) for every stdlib docstring."""
    return _stdlib_parsed()[0]


def stdlib_module_task(
    n_train: int = 400,
    n_heldout: int = 300,
    seed: int = 0,
    num_choices: int = 4,
    min_label_docs: int = 20,
    per_label_cap: int = 40,
    max_doc_chars: int = 240,
    min_doc_chars: int = 24,
    heldout_distractors: str = "answers",
) -> Task:
    """Docstring → its standard-library module, 4-way multiple choice (see the module docstring).

    ``heldout_distractors``: where the wrong choices of held-out questions come from. Only the few
    large packages have held-out files, so every held-out *answer* is one of them. ``"answers"``
    (the default): distractors come from those same answer names, so every held-out choice is drawn
    from one set and no preference among the names is rewarded. ``"all"`` (the task as first
    shipped): distractors from all labels, as in training, which rewards on held-out whatever
    preference training leaves for the large packages, which validation does not see (on the first
    held-out draw the base model scored 0.407 there against 0.233 with ``"answers"``; see
    docs/jola.md). Training examples are identical either way, and each split has its own
    generator (:func:`split_rngs`), so ``n_train`` does not change the held-out split."""
    if heldout_distractors not in ("all", "answers"):
        raise ConfigError(
            f"heldout_distractors must be 'all' or 'answers', not {heldout_distractors!r}"
        )
    by_split: dict[bool, dict[str, list[tuple[str, str]]]] = {
        False: defaultdict(list),
        True: defaultdict(list),
    }
    seen: set[str] = set()
    for top, doc, held, source in _stdlib_docstrings():
        if top.startswith("_") or top == "__main__":
            continue  # private modules (_pydecimal, _pyio) duplicate public ones' docstrings
        text = _clean_doc(doc, max_doc_chars)
        if len(text) < min_doc_chars or text in seen:
            continue  # too short to be informative, or ambiguous (same text in two places)
        seen.add(text)
        by_split[held][top].append((text, source))
    labels = sorted(t for t, docs in by_split[False].items() if len(docs) >= min_label_docs)
    if len(labels) < num_choices:
        raise DataError(
            f"stdlib_module: only {len(labels)} modules have >= {min_label_docs} docstrings"
        )
    rngs = split_rngs("stdlib_module", seed)

    def make(held: bool, n: int) -> list[MultipleChoiceExample]:
        rng = rngs[held]
        pool = []
        for label in labels:
            docs = list(by_split[held].get(label, []))
            rng.shuffle(docs)
            pool += [(label, text, src) for text, src in docs[:per_label_cap]]
        rng.shuffle(pool)
        pool = pool[:n]
        names = labels
        if held and heldout_distractors == "answers":
            names = sorted({label for label, _, _ in pool})
            if len(names) < num_choices:
                raise DataError(
                    f"stdlib_module: only {len(names)} modules have held-out docstrings; "
                    f"{num_choices} choices need heldout_distractors='all'"
                )
        out = []
        for label, text, src in pool:
            options = rng.sample([x for x in names if x != label], num_choices - 1) + [label]
            rng.shuffle(options)
            prompt = (
                "Which Python standard-library module is this docstring from?\n\n"
                f"{text}\n\nOptions: {', '.join(options)}"
            )
            out.append(
                MultipleChoiceExample(prompt, tuple(options), options.index(label), f"stdlib:{src}")
            )
        return out

    train, heldout = make(False, n_train), make(True, n_heldout)
    return Task(
        "stdlib_module",
        f"pick a docstring's stdlib module among {num_choices} ({len(labels)} modules)",
        train,
        heldout,
    )


def _stdlib_definitions() -> tuple[tuple[str, str, str, str, bool, str], ...]:
    """(kind, name, signature line, docstring, held_out, source) for every module, class, top-level
    function and method of the public standard library (read with :mod:`ast`, never imported)."""
    return _stdlib_parsed()[1]


def _definitions(tree: ast.Module, rel: str, held: bool) -> list:
    rows: list = []
    doc = ast.get_docstring(tree)
    if doc:
        rows.append(("module", rel, "", doc, held, f"{rel}:<module>"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc:
                rows.append(("class", node.name, "", doc, held, f"{rel}:{node.name}"))
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    _add_function(rows, sub, "method", held, f"{rel}:{node.name}.{sub.name}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _add_function(rows, node, "function", held, f"{rel}:{node.name}")
    return rows


def _add_function(rows: list, node: ast.AST, kind: str, held: bool, source: str) -> None:
    args = ast.unparse(node.args)
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    rows.append(
        (
            kind,
            node.name,
            f"{prefix} {node.name}({args}):",
            ast.get_docstring(node) or "",
            held,
            source,
        )
    )


#: what a docstring can document, in the order the ``stdlib_kind`` options list them
KINDS = ("module", "class", "function", "method")


def stdlib_kind_task(
    n_train: int = 400,
    n_heldout: int = 300,
    seed: int = 0,
    max_doc_chars: int = 200,
    min_doc_chars: int = 24,
) -> Task:
    """Docstring → what it documents (module, class, function or method), 4-way multiple choice.

    Classes are balanced: each split draws the same number of examples of every kind (held-out ones
    from held-out files only), so the validation split carved from training examples and the
    held-out test split have the same label distribution (chance = 25%).
    """
    pools: dict[bool, dict[str, list[tuple[str, str]]]] = {
        False: defaultdict(list),
        True: defaultdict(list),
    }
    seen: set[str] = set()
    for kind, _name, _sig, doc, held, source in _stdlib_definitions():
        if not doc:
            continue
        text = _clean_doc(doc, max_doc_chars)
        if len(text) < min_doc_chars or text in seen:
            continue
        seen.add(text)
        pools[held][kind].append((text, source))
    rngs = split_rngs("stdlib_kind", seed)
    options = ", ".join(KINDS)

    def make(held: bool, n: int) -> list[MultipleChoiceExample]:
        rng = rngs[held]
        # the same count of every kind (the smallest pool bounds it), so no split has a label prior
        per = min(-(-n // len(KINDS)), *(len(pools[held][k]) for k in KINDS))
        pool = []
        for kind in KINDS:
            docs = sorted(pools[held][kind])
            rng.shuffle(docs)
            pool += [(kind, text, src) for text, src in docs[:per]]
        rng.shuffle(pool)
        return [
            MultipleChoiceExample(
                "What does this Python docstring document: a module, a class, a function or a "
                f"method?\n\n{text}\n\nOptions: {options}",
                KINDS,
                KINDS.index(kind),
                f"stdlib:{src}",
            )
            for kind, text, src in pool[:n]
        ]

    return Task(
        "stdlib_kind",
        "what a stdlib docstring documents (module/class/function/method)",
        make(False, n_train),
        make(True, n_heldout),
    )


def stdlib_defname_task(
    n_train: int = 400, n_heldout: int = 300, seed: int = 0, max_sig_chars: int = 100
) -> Task:
    """Short-answer generation scored by exact match: a ``def`` line → the name it defines.

    Signatures come from the standard library's functions and methods (held-out ones from held-out
    files, never seen by the zoo model); private and dunder names are skipped, and a name appears in
    one split only. The reference answer is the bare name (single choice: exact match, and the
    log-likelihood of the answer).
    """
    rows: dict[bool, list[tuple[str, str, str]]] = {False: [], True: []}
    names: dict[bool, set[str]] = {False: set(), True: set()}
    for kind, name, sig, _doc, held, source in _stdlib_definitions():
        if kind not in ("function", "method") or name.startswith("_") or len(sig) > max_sig_chars:
            continue
        if name in names[held] or name in names[not held]:
            continue  # one example per name, and never the same name on both sides
        names[held].add(name)
        rows[held].append((sig, name, source))
    rngs = split_rngs("stdlib_defname", seed)

    def make(held: bool, n: int) -> list[MultipleChoiceExample]:
        rng = rngs[held]
        pool = sorted(rows[held])
        rng.shuffle(pool)
        return [
            MultipleChoiceExample(
                f"What is the name of the function defined by this line?\n\n{sig}",
                (name,),
                0,
                f"stdlib:{src}",
            )
            for sig, name, src in pool[:n]
        ]

    return Task(
        "stdlib_defname",
        "name the function a def line defines (exact match)",
        make(False, n_train),
        make(True, n_heldout),
    )


def stdlib_module_say_task(n_train: int = 400, n_heldout: int = 300, seed: int = 0) -> Task:
    """Steering: ``stdlib_module``'s questions, answered by *saying* the module (exact match).

    The base model ranks the right option first far above chance (it has the knowledge: see
    ``stdlib_module``'s base accuracy), but it does not answer a chat question with one of the listed
    names (it lacks the behaviour) — the setting activation editing is made for. Single-choice
    examples, so the scorers use exact match (and the answer's log-likelihood).
    """
    base = stdlib_module_task(n_train=n_train, n_heldout=n_heldout, seed=seed)

    def say(examples: list[MultipleChoiceExample]) -> list[MultipleChoiceExample]:
        return [
            MultipleChoiceExample(
                ex.prompt + "\nAnswer with the module name only.",
                (ex.answer_text,),
                0,
                ex.source,
            )
            for ex in examples
        ]

    return Task(
        "stdlib_module_say",
        "say a docstring's stdlib module, options listed (exact match)",
        say(base.train),
        say(base.heldout),
    )


TASKS = {
    "stdlib_module": stdlib_module_task,
    "stdlib_kind": stdlib_kind_task,
    "stdlib_defname": stdlib_defname_task,
    "stdlib_module_say": stdlib_module_say_task,
}


def get_task(name: str, **kwargs) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)


def mc_examples_from_records(records: Sequence[Record]) -> list[MultipleChoiceExample]:
    """Multiple-choice examples from records with a ``choices`` list (answer = the completion or the
    last assistant turn, which must be one of the choices); records without ``choices`` are skipped."""
    out = []
    for r in records:
        choices = r.data.get("choices")
        if choices is None:
            continue
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) for c in choices)
        ):
            raise DataError(f"{r.source}: 'choices' must be a list of at least 2 strings")
        if r.kind == "prompt_completion":
            answer, prompt, system = r.data["completion"], r.data["prompt"], None
        elif r.kind == "chat":
            msgs = r.messages
            if msgs[-1]["role"] != "assistant" or sum(m["role"] == "user" for m in msgs) != 1:
                raise DataError(
                    f"{r.source}: multiple-choice chat records need one user turn then the answer"
                )
            answer = msgs[-1]["content"]
            prompt = next(m["content"] for m in msgs if m["role"] == "user")
            system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        else:
            raise DataError(f"{r.source}: 'choices' needs a chat or prompt/completion record")
        if answer not in choices:
            raise DataError(f"{r.source}: the answer {answer!r} is not one of the choices")
        out.append(
            MultipleChoiceExample(
                prompt, tuple(choices), choices.index(answer), r.source, system, r.kind
            )
        )
    return out
