"""Next-token log-probabilities and NLL: the one implementation every score in olmokit goes through.

Two levels:

* **logits level** (differentiable, no model call): :func:`log_probs`, :func:`token_logprobs`,
  :func:`token_nll`, :func:`label_mask`, :func:`mean_nll`. The lens's ``return_type="loss"`` and its
  backward target use these, so gradients flow through them.
* **model level** (``no_grad``, eval mode): :func:`sequence_nll` and :func:`mean_sequence_nll` run
  the model on a padded batch and score it.

Conventions. ``labels`` has the shape of ``input_ids``; ``labels[:, t]`` is the token position ``t``
should hold, scored by the logits at ``t - 1`` (the usual causal shift), and positions set to
:data:`~olmokit.data.formatting.IGNORE_INDEX` (-100) do not count. Per-token results are therefore
``[batch, seq - 1]``, with 0 at positions that do not count, so ``sum`` gives the summed NLL
directly. Log-softmax runs in float32 (float64 stays float64): bf16 logits have ~3 significant
digits, not enough to rank choices whose log-probabilities differ in the third digit.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.formatting import IGNORE_INDEX
from .modes import eval_mode, model_device

__all__ = [
    "IGNORE_INDEX",
    "log_probs",
    "token_logprobs",
    "token_nll",
    "label_mask",
    "mean_nll",
    "sequence_nll",
    "mean_sequence_nll",
]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary (last dim), upcast to at least float32."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(targets[..., t])`` under ``logits[..., t, :]``: aligned, no shift.

    ``logits``: ``[..., seq, vocab]``; ``targets``: ``[..., seq]``. Entries whose target is
    ``IGNORE_INDEX`` are 0 (they neither count nor index out of range).
    """
    keep = targets != IGNORE_INDEX
    picked = log_probs(logits).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    # where, not a product: a masked slot may hold -inf (a token the model rules out), and
    # -inf * 0 is NaN
    return torch.where(keep, picked, 0.0)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token NLL ``[batch, seq - 1]``: ``-log p(labels[:, t + 1] | logits[:, t])``.

    Positions whose label is ``IGNORE_INDEX`` are 0; :func:`label_mask` says which ones count.
    """
    return -token_logprobs(logits[:, :-1], labels[:, 1:])


def label_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[batch, seq - 1]`` booleans: the positions of :func:`token_nll` that count."""
    return labels[:, 1:] != IGNORE_INDEX


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every counted token of the batch (token-weighted, as HF's causal-LM loss).

    Raises ``ValueError`` when no position counts: the mean of nothing has no value, and a silent
    NaN would poison whatever sums it.
    """
    count = label_mask(labels).sum()
    if int(count) == 0:
        raise ValueError("mean_nll: every label is IGNORE_INDEX, nothing to score")
    return token_nll(logits, labels).sum() / count


def _labels_for(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Score every real token: the ids themselves, with padding (mask 0) ignored."""
    if attention_mask is None:
        return input_ids
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


@torch.no_grad()
def sequence_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token NLL ``[batch, seq - 1]`` of a (right-padded) batch under a causal LM, in eval mode.

    ``labels`` defaults to the input ids with padding positions ignored. The result is on the
    model's device, float32, 0 where a label does not count.
    """
    device = model_device(model)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device) if attention_mask is not None else None
    labels = _labels_for(input_ids, attention_mask) if labels is None else labels.to(device)
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_nll(logits, labels)


def mean_sequence_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> float:
    """Token-weighted mean of :func:`sequence_nll` over the counted positions of the batch."""
    device = model_device(model)
    labels = _labels_for(input_ids, attention_mask) if labels is None else labels
    mask = label_mask(labels.to(device))
    count = int(mask.sum())
    if count == 0:
        raise ValueError("mean_sequence_nll: every label is IGNORE_INDEX, nothing to score")
    return float(sequence_nll(model, input_ids, attention_mask, labels).sum()) / count
