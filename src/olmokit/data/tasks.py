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

import functools
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError, DataError
from .readers import Record
from .stdlib import is_held_out, iter_docstrings, stdlib_root, stdlib_source_files

__all__ = [
    "TASKS",
    "MultipleChoiceExample",
    "Task",
    "get_task",
    "mc_examples_from_records",
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


def _clean_doc(doc: str, max_chars: int) -> str:
    first = doc.strip().split("\n\n", 1)[0]
    text = _WS.sub(" ", first).strip()
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
    return text


@functools.lru_cache(maxsize=2)
def _stdlib_docstrings() -> tuple[tuple[str, str, bool, str], ...]:
    """(top-level module, cleaned-later raw docstring, held_out, source) for every stdlib docstring."""
    root = stdlib_root()
    rows = []
    for path in stdlib_source_files(root):
        rel = path.relative_to(root).as_posix()
        top = rel.split("/", 1)[0].removesuffix(".py")
        held = is_held_out(f"file:{rel}")
        text = path.read_text(encoding="utf-8", errors="replace")
        for qual, doc in iter_docstrings(text):
            rows.append((top, doc, held, f"{rel}:{qual or '<module>'}"))
    return tuple(rows)


def stdlib_module_task(
    n_train: int = 400,
    n_heldout: int = 300,
    seed: int = 0,
    num_choices: int = 4,
    min_label_docs: int = 20,
    per_label_cap: int = 40,
    max_doc_chars: int = 240,
    min_doc_chars: int = 24,
) -> Task:
    """Docstring → its standard-library module, 4-way multiple choice (see the module docstring)."""
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
    rng = random.Random(seed)

    def make(held: bool, n: int) -> list[MultipleChoiceExample]:
        pool = []
        for label in labels:
            docs = list(by_split[held].get(label, []))
            rng.shuffle(docs)
            pool += [(label, text, src) for text, src in docs[:per_label_cap]]
        rng.shuffle(pool)
        out = []
        for label, text, src in pool[:n]:
            options = rng.sample([x for x in labels if x != label], num_choices - 1) + [label]
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


TASKS = {"stdlib_module": stdlib_module_task}


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
