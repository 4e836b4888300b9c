"""Log-likelihood multiple choice: the summed log-probability of each choice, and accuracy.

Each choice is formatted exactly as in training (the same chat record, the choice as the assistant
turn) and scored by the summed log-probability of its target tokens (the choice and the end-of-turn
marker). The prediction is the arg-max; no regex parsing of generated text (a "first capital
letter" rule reads "Answer: C" as "A").

Two scorers give the same numbers (tested against each other and against a float64 loop):

* shared prompt (default): each prompt runs once and its KV cache is repeated for the choices, which
  only run their few target tokens; about 3x less compute for 4 short choices.
* full sequence (the reference): every prompt + choice as its own right-padded sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.collate import PaddingCollator
from ..data.formatting import IGNORE_INDEX, Example, encode_record
from ..data.masking import encode_answer, trim_after_target
from ..data.tasks import MultipleChoiceExample
from .modes import eval_mode, model_device
from .nll import token_logprobs, token_nll

__all__ = ["choice_logprobs", "mc_accuracy"]


def _encode_choice(
    ex: MultipleChoiceExample, c: int, tokenizer: Any, max_length: int | None, loss_on: str
) -> Example:
    """Choice ``c`` as in training: the whole assistant turn (``"turn"``) or the answer alone
    (``"answer"``: the untrained end-of-turn tail dropped, see :mod:`olmokit.data.masking`)."""
    if loss_on == "turn":
        return encode_record(ex.record(c), tokenizer, max_length)
    return trim_after_target(encode_answer(ex.record(c), tokenizer, max_length, loss_on))


def _split_prompt(example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of an encoded record whose target is one trailing span."""
    first = next(i for i, lab in enumerate(example.labels) if lab != IGNORE_INDEX)
    if any(lab == IGNORE_INDEX for lab in example.labels[first:]):
        raise ValueError("target is not one trailing span")
    return example.input_ids[:first], example.input_ids[first:]


@torch.no_grad()
def choice_logprobs(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
    share_prompt: bool = True,
    loss_on: str = "turn",
) -> list[list[float]]:
    """Summed log-probability of each choice's target tokens, per example (``[example][choice]``).

    With ``share_prompt`` (default) the KV-cache scorer runs; its result equals full-sequence
    scoring up to float rounding. Examples whose choices do not share one prompt/target split, and
    any ``max_length`` truncation, fall back to full sequences. ``loss_on="answer"`` scores each
    choice's answer tokens only, without the chat template's end-of-turn marker (for models trained
    that way; see :mod:`olmokit.data.masking`).
    """
    with eval_mode(model):
        if share_prompt and max_length is None:
            try:
                return _choice_logprobs_shared(
                    model, tokenizer, examples, batch_size, progress, loss_on
                )
            except ValueError:
                pass
        return _choice_logprobs_full(
            model, tokenizer, examples, batch_size, max_length, progress, loss_on
        )


def _choice_logprobs_shared(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int,
    progress: bool,
    loss_on: str = "turn",
) -> list[list[float]]:
    device = model_device(model)
    items = []
    for ex in examples:
        parts = [
            _split_prompt(_encode_choice(ex, c, tokenizer, None, loss_on))
            for c in range(len(ex.choices))
        ]
        if any(p != parts[0][0] for p, _ in parts):
            raise ValueError("choices do not share a prompt")
        items.append((parts[0][0], [t for _, t in parts]))
    # examples per batch so that rows (examples x choices) stay near batch_size
    per = max(1, batch_size // max(len(ex.choices) for ex in examples))
    order = sorted(range(len(items)), key=lambda k: -len(items[k][0]))
    pad_left = PaddingCollator(tokenizer.pad_token_id, padding_side="left")
    pad_right = PaddingCollator(tokenizer.pad_token_id)
    scores: list[list[float]] = [[] for _ in examples]
    bar = tqdm(range(0, len(order), per), desc="scoring choices", disable=not progress, leave=False)
    for start in bar:
        idx = order[start : start + per]
        # left padding: every prompt ends at the last column
        batch = pad_left([{"input_ids": items[k][0]} for k in idx])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        # only the last position's logits are needed (they predict each target's first token)
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        rows = [(r, t) for r, k in enumerate(idx) for t in items[k][1]]
        # one cache row per (example, choice): prompt r's row repeated for each of its choices
        sel = torch.as_tensor([r for r, _ in rows], device=device)
        cache = out.cache
        cache.batch_select_indices(sel)
        targets = pad_right([{"input_ids": t} for _, t in rows])
        tids, tmask = targets["input_ids"].to(device), targets["attention_mask"].to(device)
        tw = tids.shape[1]
        full_mask = torch.cat([mask[sel], tmask], -1)
        tpos = mask.sum(-1)[sel, None] + torch.arange(tw, device=device)[None]
        logits = model(
            input_ids=tids, attention_mask=full_mask, position_ids=tpos, cache=cache
        ).logits
        first = token_logprobs(out.logits[sel, -1], tids[:, 0])
        rest = token_logprobs(
            logits[:, :-1], tids[:, 1:].masked_fill(tmask[:, 1:] == 0, IGNORE_INDEX)
        )
        totals = (first + rest.sum(-1)).tolist()
        for (r, _), total in zip(rows, totals):
            scores[idx[r]].append(total)
    return scores


def _choice_logprobs_full(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int,
    max_length: int | None,
    progress: bool,
    loss_on: str = "turn",
) -> list[list[float]]:
    """Reference scorer: every (prompt + choice) as its own full sequence."""
    device = model_device(model)
    collate = PaddingCollator(tokenizer.pad_token_id)
    flat = [
        (k, _encode_choice(ex, c, tokenizer, max_length, loss_on))
        for k, ex in enumerate(examples)
        for c in range(len(ex.choices))
    ]
    choice_of = [c for ex in examples for c in range(len(ex.choices))]
    # Longest first, so batches hold similar lengths (little padding) and memory peaks at once.
    order = sorted(range(len(flat)), key=lambda j: -len(flat[j][1]))
    scores: list[dict[int, float]] = [{} for _ in examples]
    bar = tqdm(
        range(0, len(flat), batch_size), desc="scoring choices", disable=not progress, leave=False
    )
    for start in bar:
        idx = order[start : start + batch_size]
        batch = collate([flat[j][1] for j in idx])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        sums = (-token_nll(logits, labels).sum(-1)).tolist()
        for j, s in zip(idx, sums):
            scores[flat[j][0]][choice_of[j]] = s
    return [[d[c] for c in range(len(d))] for d in scores]


def mc_accuracy(
    model: nn.Module, tokenizer: Any, examples: Sequence[MultipleChoiceExample], **kwargs: Any
) -> dict[str, Any]:
    """Log-likelihood multiple-choice accuracy (``acc``), ``n`` and the predicted choice indices.

    ``kwargs`` go to :func:`choice_logprobs`. Ties go to the first choice.
    """
    scores = choice_logprobs(model, tokenizer, examples, **kwargs)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
    correct = [int(p == ex.answer) for p, ex in zip(preds, examples)]
    return {"acc": sum(correct) / max(1, len(correct)), "n": len(correct), "predictions": preds}
