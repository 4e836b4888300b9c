"""Scores after a long context: answer-span accuracy and per-position loss beyond the first window.

Built on :mod:`olmokit.eval.nll` (same label convention: ``labels[:, t]`` is scored by the logits
at ``t - 1``; ``-100`` does not count), so a memory model, a windowed base and a full-attention
model are scored by one rule.

* **Answer spans.** An answer is a maximal run of consecutive labelled positions
  (:func:`answer_spans`); it is right when the argmax of the logits is the label at *every* position
  of the run (teacher-forced greedy: the first answer token is predicted from the context, later ones
  from the true earlier ones, which for exact match is the same as greedy decoding). A passkey
  example has one span; an MQAR example one span per query.
* **Per-position loss.** :func:`nll_beyond` averages :func:`~olmokit.eval.nll.token_nll` over the
  labels at positions ``>= start`` (``start = window``: the tokens the base cannot see the first
  window from), per example; :func:`mean_stderr` and :func:`paired_stderr` turn per-example values
  into a mean with its standard error. The unit is the example, not the token: tokens of one
  document are correlated, so a token-level standard error would be too small.

Model-level helpers (:func:`span_accuracy`, :func:`position_loss`) take a ``forward`` callable
``input_ids -> logits`` so the same scorer runs over the base, the memory model and its controls
(reset, shuffled state), batched, under ``no_grad`` and :func:`~olmokit.eval.modes.eval_mode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .modes import eval_mode
from .nll import IGNORE_INDEX, label_mask, token_nll

__all__ = [
    "AccuracyResult",
    "LossResult",
    "answer_spans",
    "argmax_correct",
    "span_correct",
    "nll_beyond",
    "mean_stderr",
    "paired_stderr",
    "span_accuracy",
    "position_loss",
]

Forward = Callable[[torch.Tensor], torch.Tensor]


def answer_spans(labels: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per example, the ``[start, end)`` runs of consecutive labelled positions (position 0 never
    counts: nothing predicts it)."""
    out: list[list[tuple[int, int]]] = []
    keep = labels != IGNORE_INDEX
    keep[:, 0] = False
    for row in keep.tolist():
        spans, start = [], None
        for t, k in enumerate(row):
            if k and start is None:
                start = t
            elif not k and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, len(row)))
        out.append(spans)
    return out


def argmax_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[batch, seq - 1]`` booleans: the argmax at ``t`` is ``labels[:, t + 1]`` (False where the
    label does not count; :func:`~olmokit.eval.nll.label_mask` says which do)."""
    pred = logits[:, :-1].argmax(-1)
    return (pred == labels[:, 1:]) & label_mask(labels)


def span_correct(logits: torch.Tensor, labels: torch.Tensor) -> list[list[bool]]:
    """Per example, per answer span (:func:`answer_spans` order): every token's argmax is right."""
    hits = argmax_correct(logits, labels)
    return [
        [bool(hits[b, s - 1 : e - 1].all()) for s, e in spans]
        for b, spans in enumerate(answer_spans(labels))
    ]


def nll_beyond(logits: torch.Tensor, labels: torch.Tensor, start: int) -> torch.Tensor:
    """Per example, the mean NLL of the labelled tokens at positions ``>= start`` (``[batch]``,
    float32; NaN for an example with none)."""
    nll, mask = token_nll(logits, labels), label_mask(labels)
    if start > 1:  # nll[:, t] scores position t + 1
        mask = mask.clone()
        mask[:, : start - 1] = False
    count = mask.sum(-1)
    total = torch.where(mask, nll, 0.0).sum(-1)
    return torch.where(count > 0, total / count.clamp_min(1), float("nan"))


def mean_stderr(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for a single value)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_stderr: no values")
    if v.numel() == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(v.std(unbiased=True)) / math.sqrt(v.numel())


def paired_stderr(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Standard error of ``mean(a - b)`` over paired examples (the same documents scored twice):
    the right yardstick for "b is lower than a by more than 2 standard errors"."""
    a64 = torch.as_tensor(a, dtype=torch.float64).flatten()
    b64 = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a64.shape != b64.shape:
        raise ValueError(f"paired_stderr: {a64.numel()} vs {b64.numel()} values")
    return mean_stderr(a64 - b64)[1]


def _batches(
    items: Sequence[dict[str, torch.Tensor]], batch_size: int
) -> Iterable[dict[str, torch.Tensor]]:
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        yield {k: torch.stack([it[k] for it in chunk]) for k in ("input_ids", "labels")}


def _run(forward: Forward, module: nn.Module | None, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if module is None:
            return forward(input_ids)
        with eval_mode(module):
            return forward(input_ids)


@dataclass
class AccuracyResult:
    """Answer-span accuracy: ``correct[i]`` for every span of every example, in order."""

    correct: list[bool]
    example_index: list[int]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else float("nan")

    @property
    def stderr(self) -> float:
        """Binomial standard error of :attr:`accuracy`."""
        n, p = len(self.correct), self.accuracy
        return math.sqrt(p * (1 - p) / n) if n else float("nan")


def span_accuracy(
    forward: Forward,
    items: Sequence[dict[str, torch.Tensor]],
    batch_size: int = 8,
    module: nn.Module | None = None,
) -> AccuracyResult:
    """Run ``forward`` over ``items`` (``{"input_ids", "labels"}`` of one length) and score every
    answer span; ``module`` (if given) is put in eval mode for the call and restored after."""
    correct, index = [], []
    offset = 0
    for batch in _batches(items, batch_size):
        logits = _run(forward, module, batch["input_ids"])
        for b, row in enumerate(span_correct(logits, batch["labels"].to(logits.device))):
            correct.extend(row)
            index.extend([offset + b] * len(row))
        offset += len(batch["input_ids"])
    return AccuracyResult(correct, index)


@dataclass
class LossResult:
    """Per-example mean loss beyond ``start`` and the per-position mean curve over examples."""

    start: int
    per_example: torch.Tensor  #: ``[n]`` float64
    per_position: torch.Tensor  #: ``[seq - 1]`` float64 mean NLL at each scored position

    @property
    def mean(self) -> float:
        return mean_stderr(self.per_example)[0]

    @property
    def stderr(self) -> float:
        return mean_stderr(self.per_example)[1]


def position_loss(
    forward: Forward,
    items: Sequence[dict[str, torch.Tensor]],
    start: int,
    batch_size: int = 8,
    module: nn.Module | None = None,
) -> LossResult:
    """Per-document mean NLL of the tokens at positions ``>= start`` and the per-position curve."""
    per_example, total, count = [], None, None
    for batch in _batches(items, batch_size):
        logits = _run(forward, module, batch["input_ids"])
        labels = batch["labels"].to(logits.device)
        per_example.append(nll_beyond(logits, labels, start).double().cpu())
        nll, mask = token_nll(logits, labels).double().cpu(), label_mask(labels).cpu()
        total = nll.sum(0) if total is None else total + nll.sum(0)
        count = mask.sum(0) if count is None else count + mask.sum(0)
    if total is None or count is None:
        raise ValueError("position_loss: no items to score")
    curve = torch.where(count > 0, total / count.clamp_min(1), float("nan"))
    return LossResult(start, torch.cat(per_example), curve)
