"""Long-context tasks generated offline: passkey retrieval, multi-query associative recall (MQAR) and
long documents of the zoo corpus, as token ids with labels on the scored span only.

Why token level. A memory that carries context across segments is judged by whether the answer
tokens come out right after a context far longer than the attention window, so every example is
``input_ids`` plus ``labels`` of the same length, ``labels[t]`` = the token position ``t`` should
hold and :data:`IGNORE_INDEX` (-100) everywhere except the answer span (the HF causal-LM convention
:mod:`olmokit.eval.nll` scores). Every example of one generator call has the same length, so a batch
is a plain stack.

Two vocabularies:

* :class:`TaskVocab` — a tiny synthetic vocabulary (specials, filler, keys, values in disjoint id
  ranges) for a task-trained demo base (:mod:`olmokit.memory.demo`). The answer is uniform over the
  value range, so a model that cannot see the needle scores chance: ``n_values ** -digits``.
* a real tokenizer (the zoo model's) for :func:`passkey_text_example` and :func:`long_documents`.

Determinism. Example ``i`` of a generator with seed ``s`` is drawn from its own
``torch.Generator`` seeded from ``(s, i)`` (:func:`example_generator`), so it does not depend on
which other examples were drawn, on the batch size or on the DataLoader's order, and the same seed
gives the same tokens on every machine.

Distance is measured in tokens from the needle's (or pair's) value token to the position of the
answer token that recalls it, so "``distance = 32 * window``" means the answer lies 32 windows after
the evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .formatting import IGNORE_INDEX
from .stdlib import Corpus, Document, build_corpus

__all__ = [
    "IGNORE_INDEX",
    "TaskVocab",
    "LongContextExample",
    "TaskDataset",
    "LongDocument",
    "example_generator",
    "passkey_example",
    "passkey_length",
    "mqar_example",
    "mqar_length",
    "passkey_text_example",
    "long_documents",
    "stack_examples",
]


@dataclass(frozen=True)
class TaskVocab:
    """Id layout of the synthetic tasks: 4 specials, then filler, keys and values (disjoint ranges).

    Disjoint ranges make the tasks well posed (a value token never appears as filler, so the only
    evidence for an answer is its needle or pair) and make chance exact: the answer is uniform over
    ``n_values`` tokens.
    """

    n_filler: int = 64
    n_keys: int = 64
    n_values: int = 32

    PAD = 0
    BOS = 1
    NEEDLE = 2  #: marks a passkey: ``NEEDLE v_1 .. v_digits``
    QUERY = 3  #: asks for it: ``QUERY v_1 ..`` (passkey) or ``QUERY k v`` (MQAR)
    N_SPECIAL = 4

    def __post_init__(self) -> None:
        for name in ("n_filler", "n_keys", "n_values"):
            if getattr(self, name) < 1:
                raise DataError(f"TaskVocab.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def filler_start(self) -> int:
        return self.N_SPECIAL

    @property
    def key_start(self) -> int:
        return self.filler_start + self.n_filler

    @property
    def value_start(self) -> int:
        return self.key_start + self.n_keys

    @property
    def size(self) -> int:
        """The vocabulary size a model needs (``vocab_size`` of its config)."""
        return self.value_start + self.n_values

    def chance(self, digits: int = 1) -> float:
        """Exact-match accuracy of a guess that ignores the context."""
        return float(self.n_values) ** -digits


@dataclass
class LongContextExample:
    """One example: ids and labels (``-100`` outside the answer) plus where the evidence was.

    ``answer_positions`` are the labelled positions; ``evidence_positions`` the positions of the
    value tokens they recall, in the same order (``distance = answer - evidence``).
    """

    input_ids: torch.Tensor  #: ``[length]`` int64
    labels: torch.Tensor  #: ``[length]`` int64
    answer_positions: list[int]
    evidence_positions: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def distances(self) -> list[int]:
        return [a - e for a, e in zip(self.answer_positions, self.evidence_positions, strict=True)]

    def features(self) -> dict[str, torch.Tensor]:
        """What a model or ``Trainer`` consumes."""
        return {"input_ids": self.input_ids, "labels": self.labels}


def example_generator(seed: int, index: int, salt: str = "") -> torch.Generator:
    """A CPU generator for example ``index`` of the stream ``seed`` (independent of all others)."""
    digest = hashlib.sha256(f"olmokit-longctx:{salt}:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & ((1 << 63) - 1))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def _filler(gen: torch.Generator, vocab: TaskVocab, n: int) -> torch.Tensor:
    start = vocab.filler_start
    return torch.randint(start, start + vocab.n_filler, (n,), generator=gen)


def _distance_range(distance: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (distance, distance) if isinstance(distance, int) else distance
    if lo < 1 or hi < lo:
        raise DataError(f"distance must be >= 1 (or a range lo <= hi), got {distance!r}")
    return int(lo), int(hi)


def passkey_length(distance: int | tuple[int, int], digits: int = 1, prefix: int = 0) -> int:
    """The smallest ``length`` :func:`passkey_example` accepts for these settings."""
    _, hi = _distance_range(distance)
    # BOS, prefix, NEEDLE v_1..v_d, gap, QUERY v_1..v_d; distance = gap + digits + 1
    return 1 + prefix + 1 + hi + digits


def passkey_example(
    gen: torch.Generator,
    vocab: TaskVocab,
    length: int,
    distance: int | tuple[int, int],
    digits: int = 1,
) -> LongContextExample:
    """``BOS filler.. NEEDLE v.. filler.. QUERY v..`` with the query at the very end.

    The needle's first value token lies ``distance`` tokens before the first answer token
    (``distance`` may be a ``(lo, hi)`` range, drawn uniformly per example); the filler before the
    needle pads the example to ``length``, so its depth is ``1 - distance / length``. Only the
    answer tokens after ``QUERY`` are labelled.
    """
    if digits < 1:
        raise DataError(f"passkey digits must be >= 1, got {digits}")
    lo, hi = _distance_range(distance)
    if lo < digits + 1:
        raise DataError(f"passkey distance must be >= digits + 1 = {digits + 1}, got {distance!r}")
    need = passkey_length(distance, digits)
    if length < need:
        raise DataError(
            f"passkey length {length} is too short for distance {distance!r}: >= {need}"
        )
    d = _randint(gen, lo, hi)
    value = torch.randint(vocab.value_start, vocab.size, (digits,), generator=gen)
    answer_start = length - digits
    needle_value = answer_start - d
    ids = _filler(gen, vocab, length)
    ids[0] = vocab.BOS
    ids[needle_value - 1] = vocab.NEEDLE
    ids[needle_value : needle_value + digits] = value
    ids[answer_start - 1] = vocab.QUERY
    ids[answer_start:] = value
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[answer_start:] = value
    answers = list(range(answer_start, length))
    evidence = list(range(needle_value, needle_value + digits))
    return LongContextExample(ids, labels, answers, evidence, {"task": "passkey", "distance": d})


def mqar_length(
    n_pairs: int, distance: int | tuple[int, int], write_span: int | None = None
) -> int:
    """The smallest ``length`` :func:`mqar_example` accepts for these settings."""
    _, hi = _distance_range(distance)
    span = write_span if write_span is not None else 4 * n_pairs
    return 1 + span + hi + 3 * n_pairs


def mqar_example(
    gen: torch.Generator,
    vocab: TaskVocab,
    n_pairs: int,
    length: int,
    distance: int | tuple[int, int],
    write_span: int | None = None,
) -> LongContextExample:
    """``n_pairs`` key→value pairs written early, then ``QUERY k v`` for every key, shuffled, at the end.

    Keys are distinct (drawn without replacement from the key range), values independent and
    uniform. The pairs (``k v``, two tokens each) sit at random non-overlapping places among filler in
    a write region of ``write_span`` tokens (default ``4 * n_pairs``); the region ends ``distance``
    tokens before the first query (a ``(lo, hi)`` range is drawn per example), so every answer is at
    least ``distance`` tokens after the value it recalls. The queries take the last
    ``3 * n_pairs`` tokens; only their value tokens are labelled.
    """
    if not 1 <= n_pairs <= vocab.n_keys:
        raise DataError(f"mqar n_pairs must be in 1..{vocab.n_keys} (n_keys), got {n_pairs}")
    span = write_span if write_span is not None else 4 * n_pairs
    if span < 2 * n_pairs:
        raise DataError(f"mqar write_span {span} cannot hold {n_pairs} pairs (>= {2 * n_pairs})")
    lo, hi = _distance_range(distance)
    need = mqar_length(n_pairs, distance, span)
    if length < need:
        raise DataError(f"mqar length {length} is too short for these settings: >= {need}")
    d = _randint(gen, lo, hi)
    query_start = length - 3 * n_pairs
    region_end = query_start - d
    region_start = region_end - span
    keys = vocab.key_start + torch.randperm(vocab.n_keys, generator=gen)[:n_pairs]
    values = torch.randint(vocab.value_start, vocab.size, (n_pairs,), generator=gen)
    # n_pairs slots of 2 among `span` cells: choose gap sizes by a random composition
    free = span - 2 * n_pairs
    cuts = torch.sort(torch.randint(0, free + 1, (n_pairs,), generator=gen)).values
    starts = [region_start + int(cuts[i]) + 2 * i for i in range(n_pairs)]
    ids = _filler(gen, vocab, length)
    ids[0] = vocab.BOS
    for s, k, v in zip(starts, keys, values, strict=True):
        ids[s], ids[s + 1] = k, v
    order = torch.randperm(n_pairs, generator=gen).tolist()
    labels = torch.full_like(ids, IGNORE_INDEX)
    answers, evidence = [], []
    for j, i in enumerate(order):
        q = query_start + 3 * j
        ids[q], ids[q + 1], ids[q + 2] = vocab.QUERY, keys[i], values[i]
        labels[q + 2] = values[i]
        answers.append(q + 2)
        evidence.append(starts[i] + 1)
    info = {"task": "mqar", "n_pairs": n_pairs, "distance": d}
    return LongContextExample(ids, labels, answers, evidence, info)


class TaskDataset(Dataset):
    """``n`` examples of a generator, each made on demand from ``(seed, index)``.

    ``make(gen)`` builds one :class:`LongContextExample` from its generator; nothing is stored, so a
    dataset of a million examples costs nothing until read, and ``dataset[i]`` is the same tensor
    every time (safe for HF ``Trainer`` with any shuffling or resume).
    """

    def __init__(
        self,
        make: Callable[[torch.Generator], LongContextExample],
        n: int,
        seed: int = 0,
        salt: str = "",
    ):
        if n < 1:
            raise DataError(f"TaskDataset needs n >= 1 examples, got {n}")
        self.make, self.n, self.seed, self.salt = make, n, seed, salt

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> LongContextExample:
        if not 0 <= i < self.n:
            raise IndexError(f"example {i} out of range 0..{self.n - 1}")
        return self.make(example_generator(self.seed, i, self.salt))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.example(i).features()

    def examples(self) -> list[LongContextExample]:
        return [self.example(i) for i in range(self.n)]


def stack_examples(examples: Sequence[LongContextExample]) -> dict[str, torch.Tensor]:
    """``{"input_ids", "labels"}`` as ``[batch, length]`` (every example must have one length)."""
    lengths = {len(e.input_ids) for e in examples}
    if len(lengths) != 1:
        raise DataError(f"stack_examples: examples have different lengths {sorted(lengths)}")
    return {
        "input_ids": torch.stack([e.input_ids for e in examples]),
        "labels": torch.stack([e.labels for e in examples]),
    }


# --- text versions, with a real tokenizer --------------------------------------------------------

#: Filler sentences of the classic passkey test (Mohtashami & Jaggi 2023), cycled.
TEXT_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def passkey_text_example(
    tokenizer: Any,
    gen: torch.Generator,
    distance: int,
    prefix: int = 0,
    digits: int = 5,
) -> LongContextExample:
    """The text passkey test: a ``digits``-digit number in repeated filler, asked for at the end.

    ``distance`` and ``prefix`` are in filler tokens (filler is whole tokens of the repeated
    sentences, cut at a token boundary). Each piece is tokenised on its own and the ids concatenated,
    so the answer span is exact; only the answer's tokens are labelled.
    """
    if distance < 0 or prefix < 0:
        raise DataError(f"distance and prefix must be >= 0, got {distance}, {prefix}")
    number = "".join(str(_randint(gen, 1 if i == 0 else 0, 9)) for i in range(digits))
    filler = _encode(tokenizer, TEXT_FILLER)

    def pad(n: int) -> list[int]:
        return (filler * (n // len(filler) + 1))[:n]

    head = _encode(tokenizer, "There is a pass key hidden in this text. Remember it. ")
    needle = _encode(tokenizer, f" The pass key is {number}. Remember it. ")
    question = _encode(tokenizer, " What is the pass key? The pass key is")
    answer = _encode(tokenizer, f" {number}")
    pieces = [head, pad(prefix), needle, pad(distance), question]
    context = [t for p in pieces for t in p]
    ids = torch.tensor(context + answer, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[len(context) :] = ids[len(context) :]
    start = len(head) + prefix
    answers = list(range(len(context), len(ids)))
    info = {"task": "passkey_text", "passkey": number, "needle_start": start}
    return LongContextExample(ids, labels, answers, [start] * len(answers), info)


@dataclass
class LongDocument:
    """A block of one document: every token labelled (plain language modelling)."""

    source: str
    input_ids: torch.Tensor  #: ``[length]`` int64
    labels: torch.Tensor

    def features(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def long_documents(
    tokenizer: Any,
    length: int,
    *,
    held_out: bool = True,
    kind: str | None = "code",
    max_documents: int | None = None,
    blocks_per_document: int = 1,
    seed: int = 0,
    corpus: Corpus | None = None,
) -> list[LongDocument]:
    """Blocks of exactly ``length`` tokens cut from the zoo corpus's long documents.

    ``held_out=True`` reads only the split the zoo models never trained on
    (:func:`olmokit.data.stdlib.is_held_out`); ``False`` the training split (to train a memory on).
    A document contributes up to ``blocks_per_document`` consecutive, non-overlapping blocks from
    its start (documents shorter than one block are skipped). Documents are visited in an order
    shuffled by ``seed`` and the first ``max_documents`` that are long enough are used, so a small
    set is a fair sample rather than the alphabetically first files. ``length`` is typically
    ``n_windows * window`` with ``n_windows >= 8``.
    """
    if length < 2:
        raise DataError(f"long_documents: length must be >= 2, got {length}")
    if kind not in (None, "prose", "code"):
        raise DataError(f"long_documents: kind must be 'prose', 'code' or None, got {kind!r}")
    corpus = corpus if corpus is not None else build_corpus()
    docs: list[Document] = corpus.split(held_out, kind)
    order = torch.randperm(len(docs), generator=example_generator(seed, 0, "long_documents"))
    out: list[LongDocument] = []
    used = 0
    for i in order.tolist():
        doc = docs[i]
        if len(doc.text) < length:  # a token covers at least one character: cannot be long enough
            continue
        ids = _encode(tokenizer, doc.text)
        n = min(len(ids) // length, blocks_per_document)
        if n == 0:
            continue
        for b in range(n):
            block = torch.tensor(ids[b * length : (b + 1) * length], dtype=torch.long)
            out.append(LongDocument(f"{doc.source}#{b}", block, block.clone()))
        used += 1
        if max_documents is not None and used >= max_documents:
            break
    if not out:
        split = "held-out" if held_out else "training"
        raise DataError(f"long_documents: no {split} {kind or ''} document has {length} tokens")
    return out
