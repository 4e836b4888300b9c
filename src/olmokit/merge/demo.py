"""A real merge pool built from the zoo: the shipped base plus a prose expert and a code expert.

``make_demo_pool(out_dir)`` (``olmokit merge make-demo-pool OUT``) writes, reproducibly (same seed,
same CPython, same torch → bit-identical files)::

    OUT/base/          the shipped ``olmo2-stdlib``, re-saved as float32 (exact: it ships in fp16)
    OUT/prose/         the base fine-tuned briefly with HF ``Trainer`` on the corpus's prose
    OUT/code/          ... and on its code
    OUT/data/merge_prose.jsonl, merge_code.jsonl      the merge's own evaluation data
    OUT/data/heldout_prose.jsonl, heldout_code.jsonl  held-out sets to judge the merge with
    OUT/merge.yaml     a merge config over this pool (``configs/merge/demo.yaml`` is the same config
                       for the default ``OUT = runs/merge-demo-pool``)
    OUT/demo_pool.json what was built, with which settings

Why the data is split the way it is. The zoo corpus (:mod:`olmokit.data.stdlib`) already has a
held-out split (:func:`~olmokit.data.stdlib.is_held_out`, one source in ten by hash): the base was
pretrained on the rest, and the experts are fine-tuned on the rest too (prose documents for one,
code files for the other). Only held-out documents feed evaluation, and they are split a second
time, by another hash of the same source key (:func:`demo_split`): half become the merge's own
evaluation data, half the held-out sets. A docstring and the code of its file share one key, so
neither split puts text of one file on both sides. Held-out sets are therefore disjoint from the
base's pretraining text, from both fine-tunings and from everything the merge looked at.

Each evaluation sample is a conversation in the merge datasets format (ShareGPT): the human turn is
a document prefix, the expected assistant turn its continuation, both cut at whitespace.

What the experts are (measured at the defaults, CPython 3.11, held-out mean NLL): brief fine-tuning
of a base that was pretrained on this very text barely moves its own domain (prose expert on prose
4.273 vs base 4.273; code expert on code 2.931 vs 2.911) and costs the other one (prose expert on
code 3.012, code expert on prose 4.411). They differ from the base and from each other layer by
layer, which is what a merge chooses among; ``benchmarks/merge_quality.py`` shows the result.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.stdlib import Corpus, Document, build_corpus, python_fingerprint
from ..errors import ConfigError
from ..files import atomic_write_json, atomic_write_text
from ..loading import load_model, load_tokenizer, save_model

__all__ = [
    "DEMO_BASE",
    "DEMO_POOL_DIR",
    "DemoPool",
    "demo_split",
    "demo_samples",
    "demo_merge_config",
    "make_demo_pool",
]

#: The shipped model every expert starts from.
DEMO_BASE = "olmo2-stdlib"
#: Where ``configs/merge/demo.yaml`` expects the pool (relative to the repository root).
DEMO_POOL_DIR = "runs/merge-demo-pool"
#: Expert name -> the corpus ``kind`` it is fine-tuned on.
EXPERTS = {"prose": "prose", "code": "code"}
#: Salt of the second split of held-out documents (merge data vs held-out sets).
_SPLIT_SALT = "olmokit-merge-demo"


@dataclass(frozen=True)
class DemoPool:
    """Paths of one built demo pool (``models`` is the pool in merge order: base first)."""

    root: Path
    base: Path
    experts: dict[str, Path]
    merge_data: dict[str, Path]
    heldout: dict[str, Path]
    config: Path
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def models(self) -> list[Path]:
        return [self.base, *self.experts.values()]


def _group_key(doc: Document) -> str:
    """The unit both splits act on: a file for its code and docstrings, a topic for itself."""
    kind, _, rest = doc.source.partition(":")
    if kind in ("doc", "code"):
        return "file:" + rest.split(":", 1)[0]
    return doc.source


def demo_split(doc: Document) -> str:
    """``"train"`` (fine-tuning side), ``"merge"`` (the merge's evaluation data) or ``"heldout"``.

    Non-held-out documents are the training side; held-out ones are split in two halves by a salted
    SHA-1 of their file/topic key, independent of file order.
    """
    if not doc.held_out:
        return "train"
    digest = hashlib.sha1(f"{_SPLIT_SALT}:{_group_key(doc)}".encode()).digest()
    return "merge" if digest[0] % 2 == 0 else "heldout"


def _cut(text: str, start: int, length: int) -> int:
    """The end of a piece of about ``length`` characters from ``start``, moved to a whitespace."""
    end = min(len(text), start + length)
    if end == len(text):
        return end
    space = text.rfind(" ", start + length // 2, end)
    newline = text.rfind("\n", start + length // 2, end)
    best = max(space, newline)
    return best if best > start else end


def demo_samples(
    docs: Sequence[Document],
    n: int,
    seed: int,
    context_chars: int = 320,
    response_chars: int = 320,
    windows_per_doc: int = 4,
) -> list[dict[str, Any]]:
    """``n`` ShareGPT conversations: a document prefix (human) and its continuation (gpt).

    A document contributes up to ``windows_per_doc`` non-overlapping windows (the first is the
    document's own prefix; long code files give several); documents too short for one window are
    skipped. The windows are shuffled with ``seed`` and the first ``n`` kept, so the choice does not
    favour the alphabetically first files.
    """
    pieces: list[tuple[str, str, str]] = []
    for doc in docs:
        text, start = doc.text, 0
        for _ in range(windows_per_doc):
            mid = _cut(text, start, context_chars)
            end = _cut(text, mid, response_chars)
            context, response = text[start:mid].strip(), text[mid:end].strip()
            if len(context) < context_chars // 2 or len(response) < response_chars // 2:
                break
            pieces.append((doc.source, context, response))
            start = end
    random.Random(seed).shuffle(pieces)
    return [
        {
            "source": source,
            "conversations": [
                {"from": "human", "value": context},
                {"from": "gpt", "value": response},
            ],
        }
        for source, context, response in pieces[:n]
    ]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, text)


def demo_merge_config(
    pool_dir: str, datasets: dict[str, str], output_dir: str, samples: int = 32
) -> dict[str, Any]:
    """The merge config over a demo pool (plain dict; ``MergeConfig`` validates it).

    Boundary, layer and tensor swaps (norms left to their layer, the default), both datasets scored
    by mean response NLL, Copeland selection; no ES (the demo compares pure donor selection with
    mergekit's merges). 32 samples per set keep one evaluation at a few CPU seconds.
    """
    return {
        "models": [f"{pool_dir}/base", *(f"{pool_dir}/{name}" for name in EXPERTS)],
        "base_model": f"{pool_dir}/base",
        "layer_swap": True,
        "tensor_swap": True,
        "skip_norm": True,
        "boundary_select": True,
        "datasets": [
            {"path": path, "mode": "nll", "samples": samples, "name": name}
            for name, path in datasets.items()
        ],
        "selection": "copeland",
        "seed": 0,
        "output_dir": output_dir,
    }


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _chat_text(tokenizer: Any, record: dict[str, Any]) -> str:
    """A ShareGPT record as the tokenizer's chat template writes the whole conversation."""
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _expert_stream(
    tokenizer: Any, docs: list[Document], tokens_wanted: int, tokens_needed: int, seed: int
):
    """A token stream of about ``tokens_wanted`` tokens of chat-formatted training windows (fewer
    when the corpus has fewer: ``Trainer`` then runs more than one epoch), at least
    ``tokens_needed`` (one batch).

    The experts are fine-tuned on the same kind of conversation the merge and the held-out sets
    score (a prefix as the user turn, its continuation as the assistant's), built from the
    *training* side of the corpus. Plain-text fine-tuning does not make experts of this base: it
    was pretrained on exactly that text, and a brief re-run only adds noise (measured: both experts
    ended slightly worse than the base on their own held-out domain).
    """
    from ..zoo.build.pretrain import tokenize_documents

    # ~3 characters per token; a window is ~640 characters; take a margin of 2
    windows = 2 * tokens_wanted * 3 // 640 + 1
    records = demo_samples(docs, windows, seed, windows_per_doc=64)
    texts = [Document(r["source"], "chat", _chat_text(tokenizer, r), False) for r in records]
    stream = tokenize_documents(tokenizer, texts)
    if len(stream) < tokens_needed:
        raise ConfigError(
            f"make_demo_pool: the corpus gives {len(stream):,} tokens, fewer than one batch "
            f"({tokens_needed:,}; lower batch_size or seq_len)"
        )
    return stream


def make_demo_pool(
    out_dir: str | Path,
    *,
    steps: int = 150,
    seed: int = 0,
    batch_size: int = 8,
    seq_len: int = 128,
    learning_rate: float = 3e-4,
    merge_samples: int = 32,
    heldout_samples: int = 64,
    corpus: Corpus | None = None,
    log: Callable[..., Any] = print,
) -> DemoPool:
    """Build the demo pool into ``out_dir`` (see the module docstring for the layout).

    Every expert dir is written atomically, so a killed build leaves only complete experts; an
    expert's Trainer checkpoints live in ``OUT/.work/<name>`` and a rebuild resumes from them. The
    defaults take a few CPU minutes (2 × ``steps`` optimizer steps of ``batch_size × seq_len``
    tokens on the 5.3M-parameter base). ``corpus`` is for tests (a smaller document list).
    """
    from ..zoo.build.pretrain import BlockDataset, pretrain

    if steps < 1:
        raise ConfigError(f"make_demo_pool: steps must be >= 1, got {steps}")
    out = Path(out_dir).resolve()
    settings = dict(
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        seq_len=seq_len,
        learning_rate=learning_rate,
        merge_samples=merge_samples,
        heldout_samples=heldout_samples,
    )
    info_path = out / "demo_pool.json"
    if info_path.is_file():  # a rebuild reuses finished experts: only with the same settings
        built = json.loads(info_path.read_text(encoding="utf-8")).get("settings", {})
        changed = [
            f"{k}: built with {built.get(k)}, now {v}"
            for k, v in settings.items()
            if built.get(k) != v
        ]
        if changed:
            raise ConfigError(
                f"{out} holds a demo pool built with other settings ({'; '.join(changed)}); "
                "pass another output directory or delete it"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a demo pool; pass an empty or new directory")
    info: dict[str, Any] = {
        "base": DEMO_BASE,
        "python": python_fingerprint(),
        "torch": torch.__version__,
        "settings": settings,
        "data_split": "train: not is_held_out; merge/heldout: is_held_out, halves by demo_split",
        "training": {},
    }
    if info_path.is_file():
        info["training"] = json.loads(info_path.read_text(encoding="utf-8")).get("training", {})
    atomic_write_json(info_path, info)
    corpus = corpus if corpus is not None else build_corpus()
    sides: dict[str, dict[str, list[Document]]] = {"train": {}, "merge": {}, "heldout": {}}
    for doc in corpus.documents:
        sides[demo_split(doc)].setdefault(doc.kind, []).append(doc)

    # evaluation sets first: cheap, and a failure here should not cost a fine-tuning
    merge_data, heldout = {}, {}
    for kind in ("prose", "code"):
        for side, n, where in (
            ("merge", merge_samples, merge_data),
            ("heldout", heldout_samples, heldout),
        ):
            records = demo_samples(sides[side].get(kind, []), n, seed)
            if not records:
                raise ConfigError(f"make_demo_pool: no {side} {kind} documents long enough")
            where[kind] = _write_jsonl(out / "data" / f"{side}_{kind}.jsonl", records)

    tokenizer = load_tokenizer(DEMO_BASE)
    base_dir = out / "base"
    if not (base_dir / "config.json").is_file():
        save_model(load_model(DEMO_BASE, dtype="float32"), base_dir, tokenizer)

    experts: dict[str, Path] = {}
    train_info: dict[str, Any] = info["training"]
    for i, (name, kind) in enumerate(EXPERTS.items()):
        expert_dir, work = out / name, out / ".work" / name
        experts[name] = expert_dir
        if (expert_dir / "config.json").is_file():
            log(f"make_demo_pool: reusing {expert_dir}")
            continue
        stream = _expert_stream(
            tokenizer,
            sides["train"].get(kind, []),
            steps * batch_size * seq_len,
            batch_size * seq_len,
            seed + i,
        )
        model = load_model(base_dir, dtype="float32")
        model.train()
        log(
            f"make_demo_pool: fine-tuning the {name} expert ({steps} steps, {len(stream):,} tokens)"
        )
        result = pretrain(
            model,
            BlockDataset(stream, seq_len),
            work,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed + i,
            warmup_steps=max(1, steps // 10),
            save_steps=max(1, steps // 2),
        )
        model.config.use_cache = True  # Trainer switches it off for training
        save_model(model.eval(), expert_dir, tokenizer)
        train_info[name] = {"train_loss": result["train_loss"], "tokens": int(len(stream))}
        atomic_write_json(info_path, info)
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / ".work", ignore_errors=True)

    rel = {k: str(path) for k, path in merge_data.items()}
    config = demo_merge_config(str(out), rel, str(out / "merge-run"), merge_samples)
    config_path = atomic_write_text(out / "merge.yaml", _yaml(config))
    return DemoPool(out, base_dir, experts, merge_data, heldout, config_path, info)
