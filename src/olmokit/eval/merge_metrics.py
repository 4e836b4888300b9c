"""The OLM merge's metrics: teacher-forced bigram loss, confidence-weighted exact match, diversity.

All are "lower is better" and scored per sample; a dataset's score is the plain mean of its samples'
scores (the original averages per-sample scores over ``samples`` conversations, so a long answer
does not weigh more than a short one). Each function returns the per-sample list, so a caller can
sum across processes before dividing. A sample is a :class:`ContextResponse`: the token ids of the
prompt (chat template applied) and of the expected answer.

Differences from the original ``olm.py`` (jeffmeloy/olm@7731be5), all deliberate:

* batched (padding is masked out; results equal one-sample-at-a-time runs, tested), KV-cached
  generation instead of re-running the whole sequence each step;
* probabilities from a float32 softmax (the original used the model's bf16 logits);
* diversity generation is bounded (``max_new_tokens``, the original allowed 8192) and its script
  penalty covers CJK, Hiragana, Katakana and Hangul, configurable (the original: only
  U+4E00–U+9FFF).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.collate import PaddingCollator
from ..data.formatting import IGNORE_INDEX
from ..errors import DataError
from .generation import greedy_generate, stop_token_ids
from .modes import eval_mode, model_device
from .nll import log_probs, token_logprobs
from .scripts import SCRIPTS, uses_script

__all__ = [
    "ContextResponse",
    "DIVERSITY_SCALE",
    "MERGE_METRICS",
    "merge_metric",
    "bigram_loss",
    "exact_match_score",
    "diversity",
    "diversity_score",
    "response_nll",
]

#: The original's constant: one unique word scores 4096, and so does a penalised response.
DIVERSITY_SCALE = 4096.0


@dataclass(frozen=True)
class ContextResponse:
    """One evaluation sample: prompt token ids and the expected response's token ids."""

    context_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    def __init__(self, context_ids: Sequence[int], response_ids: Sequence[int]) -> None:
        object.__setattr__(self, "context_ids", tuple(int(t) for t in context_ids))
        object.__setattr__(self, "response_ids", tuple(int(t) for t in response_ids))


SampleLike = ContextResponse | tuple[Sequence[int], Sequence[int]]


def _samples(
    samples: Sequence[SampleLike], min_response: int, metric: str
) -> list[ContextResponse]:
    out = [s if isinstance(s, ContextResponse) else ContextResponse(*s) for s in samples]
    for i, s in enumerate(out):
        if not s.context_ids:
            raise DataError(f"{metric}: sample {i} has an empty context")
        if len(s.response_ids) < min_response:
            raise DataError(
                f"{metric}: sample {i} has a response of {len(s.response_ids)} token(s); "
                f"the metric needs at least {min_response}"
            )
    return out


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Sample indices in batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def _response_logits(
    model: nn.Module, chunk: Sequence[ContextResponse], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced next-token logits over the response positions of a batch.

    Returns ``(logits [batch, R_max, vocab], labels [batch, R_max])``: ``logits[i, k]`` predicts
    ``response[k]`` of sample ``i`` (it is position ``C_i - 1 + k``), and ``labels`` holds the
    response (``IGNORE_INDEX`` past its end). Left padding puts every response at the end of its
    row, so only the last ``R_max + 1`` positions need logits (``logits_to_keep``): a long context
    costs no ``[seq, vocab]`` logits.
    """
    device = model_device(model)
    batch = PaddingCollator(pad_token_id, padding_side="left")(
        [{"input_ids": s.context_ids + s.response_ids} for s in chunk]
    )
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    r_max = max(len(s.response_ids) for s in chunk)
    with eval_mode(model):
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=False,
            logits_to_keep=r_max + 1,
        ).logits  # [batch, R_max + 1, vocab]: columns T - R_max - 1 .. T - 1
    # sample i's response[k] is predicted at kept column R_max - R_i + k; padded k repeat column 0
    cols = torch.zeros(len(chunk), r_max, dtype=torch.long)
    labels = torch.full((len(chunk), r_max), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(chunk):
        r = len(s.response_ids)
        cols[row, :r] = torch.arange(r_max - r, r_max)
        labels[row, :r] = torch.as_tensor(s.response_ids)
    cols, labels = cols.to(device), labels.to(device)
    return logits.gather(1, cols[..., None].expand(-1, -1, logits.shape[-1])), labels


def bigram_loss(
    model: nn.Module, samples: Sequence[SampleLike], batch_size: int = 8, pad_token_id: int = 0
) -> list[float]:
    """Teacher-forced confidence score of the response, per sample, in [0, 2]; lower is better.

    One forward pass over ``context + response`` (C and R tokens). For response token ``k``
    (``0 <= k < R``), let ``p_k`` be the next-token distribution at position ``C - 1 + k`` (the one
    that predicts it) and

        s_k = 1             if p_k(response[k]) < max p_k   (the model's top token is another one)
        s_k = 1 - max p_k   otherwise (right; the more confident, the lower)

    and the sample's score is ``(sum_{k=0}^{R-2} s_k + sum_{k=1}^{R-1} s_k) / (R - 1)``. This is the
    original's ``mean(shift_score + next_score)``: its "shift" term scores logits ``C-1 .. L-3``
    against ``response[0 .. R-2]`` and its "next" term logits ``C .. L-2`` against
    ``response[1 .. R-1]``, two ordinary next-token alignments one token apart, so the first and
    last response tokens count once and the others twice. A wrong prediction costs 1 whatever the
    certainty; a label tied with the top probability counts as right, as in the original.
    Responses need at least 2 tokens (the original returns NaN for 1).
    """
    items = _samples(samples, 2, "bigram_loss")
    scores = [0.0] * len(items)
    for idx in _batches([len(s.context_ids) + len(s.response_ids) for s in items], batch_size):
        chunk = [items[i] for i in idx]
        logits, labels = _response_logits(model, chunk, pad_token_id)
        lp = log_probs(logits)
        lp_label = lp.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
        lp_max = lp.max(-1).values
        s_k = torch.where(lp_label < lp_max, 1.0, 1.0 - lp_max.exp())
        for row, s in enumerate(chunk):
            r = len(s.response_ids)
            scores[idx[row]] = float((s_k[row, : r - 1].sum() + s_k[row, 1:r].sum()) / (r - 1))
    return scores


def exact_match_score(
    model: nn.Module, samples: Sequence[SampleLike], batch_size: int = 8, pad_token_id: int = 0
) -> list[float]:
    """Free-running (not teacher-forced) confidence-weighted match per sample, in [0, 2], lower
    is better.

    Greedy decoding from the context for exactly R steps (R = response length; no stop at EOS), each
    step feeding the model's own arg-max token. With ``p_t`` the probability of that arg-max token:

        e_t = 1 - p_t   if the arg-max equals response[t]   (right and sure: near 0)
        e_t = 1 + p_t   otherwise                            (wrong and sure: near 2)

    and the sample's score is ``mean_t e_t`` over its R steps (position-wise comparison, as the
    original's ``compute_exact_match``; one early mistake shifts everything after it).
    """
    items = _samples(samples, 1, "exact_match_score")
    scores = [0.0] * len(items)
    for idx in _batches([len(s.response_ids) for s in items], batch_size):
        chunk = [items[i] for i in idx]
        steps = max(len(s.response_ids) for s in chunk)
        gen = greedy_generate(model, [s.context_ids for s in chunk], steps, (), pad_token_id)
        for row, s in enumerate(chunk):
            e = [
                1.0 - p if tok == want else 1.0 + p
                for tok, p, want in zip(gen.tokens[row], gen.max_probs[row], s.response_ids)
            ]
            scores[idx[row]] = sum(e) / len(e)
    return scores


def diversity_score(
    text: str,
    scale: float = DIVERSITY_SCALE,
    penalty: float | None = None,
    penalized_scripts: Iterable[str] = SCRIPTS,
) -> float:
    """``scale / max(#unique whitespace-separated words, 1)``, or ``penalty`` (default ``scale``)
    when ``text`` uses one of ``penalized_scripts`` (see :mod:`olmokit.eval.scripts`).

    Lower is better: a varied answer has many distinct words.
    """
    if uses_script(text, penalized_scripts):
        return scale if penalty is None else penalty
    return scale / max(len(set(text.split())), 1)


def diversity(
    model: nn.Module,
    tokenizer: Any,
    contexts: Sequence[Sequence[int]],
    max_new_tokens: int = 256,
    scale: float = DIVERSITY_SCALE,
    penalty: float | None = None,
    penalized_scripts: Iterable[str] = SCRIPTS,
    stop_ids: Iterable[int] | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Greedy answer to each context (at most ``max_new_tokens``, stopping at ``stop_ids``, by
    default EOS and ``<|im_end|>``), decoded without special tokens and scored by
    :func:`diversity_score`.

    The original generated up to 8192 tokens per sample, which on a repetitive model costs minutes
    per candidate; bound it here. Pass ``penalized_scripts=("cjk",)`` for the original's check.
    """
    penalized = tuple(penalized_scripts)
    uses_script("", penalized)  # unknown script names fail before any generation
    stop = stop_token_ids(tokenizer) if stop_ids is None else list(stop_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [0.0] * len(contexts)
    for idx in _batches([len(c) for c in contexts], batch_size):
        gen = greedy_generate(model, [contexts[i] for i in idx], max_new_tokens, stop, pad)
        for row, tokens in enumerate(gen.tokens):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            scores[idx[row]] = diversity_score(text, scale, penalty, penalized)
    return scores


def response_nll(
    model: nn.Module, samples: Sequence[SampleLike], batch_size: int = 8, pad_token_id: int = 0
) -> list[float]:
    """Mean NLL (nats/token) of each response given its context (the merge's ``nll`` metric)."""
    items = _samples(samples, 1, "response_nll")
    scores = [0.0] * len(items)
    for idx in _batches([len(s.context_ids) + len(s.response_ids) for s in items], batch_size):
        chunk = [items[i] for i in idx]
        logits, labels = _response_logits(model, chunk, pad_token_id)
        nll = -token_logprobs(logits, labels)  # 0 past each response's end
        for row, s in enumerate(chunk):
            scores[idx[row]] = float(nll[row].sum()) / len(s.response_ids)
    return scores


#: The merge's dataset ``mode`` names (as in the original's ``olm_config.yaml``, plus ``nll``).
MERGE_METRICS = ("bigram_loss", "exact_match", "diversity", "nll")


def merge_metric(
    mode: str,
    model: nn.Module,
    tokenizer: Any,
    samples: Sequence[SampleLike],
    batch_size: int = 8,
    **options: Any,
) -> list[float]:
    """Per-sample scores of one dataset under its merge ``mode`` (one of :data:`MERGE_METRICS`).

    ``options`` go to the metric (e.g. ``max_new_tokens`` for ``diversity``); padding uses the
    tokenizer's pad id. The dataset's score is the mean of the list; lower is better for every mode.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if mode == "bigram_loss":
        return bigram_loss(model, samples, batch_size, pad, **options)
    if mode == "exact_match":
        return exact_match_score(model, samples, batch_size, pad, **options)
    if mode == "nll":
        return response_nll(model, samples, batch_size, pad, **options)
    if mode == "diversity":
        contexts = [s.context_ids if isinstance(s, ContextResponse) else s[0] for s in samples]
        return diversity(model, tokenizer, contexts, batch_size=batch_size, **options)
    raise ValueError(f"unknown merge metric {mode!r}; valid: {', '.join(MERGE_METRICS)}")
