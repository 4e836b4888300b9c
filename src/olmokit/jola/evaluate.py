"""Held-out evaluation: log-likelihood multiple choice and greedy exact match, for base and adapters.

* Multiple choice: each choice is formatted exactly as in training (the same chat record, the choice as
  the assistant turn) and scored by the summed log-probability of its target tokens (the choice and the
  end-of-turn marker). The prediction is the arg-max; no regex parsing of generated text (the reference's
  "first capital letter" scoring reads "Answer: C" as "A").
* Exact match: greedy generation from the prompt (left-padded batches, KV cache), stopped at the end of
  the turn; the stripped text must equal the reference answer.

``evaluate_all`` runs both for the base model (JoLA disabled) and for JoLA/adapters on the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.collate import PaddingCollator
from ..data.formatting import IGNORE_INDEX, Example, encode_record, record_segments
from ..data.tasks import MultipleChoiceExample

__all__ = ["mc_accuracy", "exact_match", "evaluate_examples", "choice_logprobs"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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
) -> list[list[float]]:
    """Summed log-probability of each choice's target tokens, per example.

    With ``share_prompt`` (default) each prompt is run once and its KV cache is repeated for the
    choices, which only run their few target tokens — about 3x less compute for 4 short choices; the
    result equals full-sequence scoring up to float rounding (tested). Examples whose choices do not
    share one prompt/target split fall back to full sequences.
    """
    if share_prompt and max_length is None:
        try:
            return _choice_logprobs_shared(model, tokenizer, examples, batch_size, progress)
        except ValueError:
            pass
    return _choice_logprobs_full(model, tokenizer, examples, batch_size, max_length, progress)


def _choice_logprobs_shared(
    model: nn.Module, tokenizer: Any, examples: Sequence[MultipleChoiceExample], batch_size: int, progress: bool
) -> list[list[float]]:
    was_training = model.training
    model.eval()
    device = _device(model)
    items = []
    for ex in examples:
        parts = [_split_prompt(encode_record(ex.record(c), tokenizer)) for c in range(len(ex.choices))]
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
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        first_logp = torch.log_softmax(out.logits[:, -1].float(), -1)  # predicts each target's 1st token
        n_choices = [len(items[k][1]) for k in idx]
        rows = [(r, t) for r, k in enumerate(idx) for t in items[k][1]]
        cache = out.past_key_values
        sel = torch.as_tensor([r for r, _ in rows], device=device)
        if len(set(n_choices)) == 1 and hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(n_choices[0])
        else:
            for layer in cache.layers:
                layer.batch_select_indices(sel)
        targets = pad_right([{"input_ids": t} for _, t in rows])
        tids, tmask = targets["input_ids"].to(device), targets["attention_mask"].to(device)
        tw = tids.shape[1]
        full_mask = torch.cat([mask[sel], tmask], -1)
        tpos = mask.sum(-1)[sel, None] + torch.arange(tw, device=device)[None]
        logits = model(input_ids=tids, attention_mask=full_mask, position_ids=tpos, past_key_values=cache).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        for j, (r, t) in enumerate(rows):
            total = first_logp[r, t[0]]
            if len(t) > 1:
                total = total + logp[j, torch.arange(len(t) - 1), torch.as_tensor(t[1:], device=device)].sum()
            scores[idx[r]].append(float(total))
    model.train(was_training)
    return scores


@torch.no_grad()
def _choice_logprobs_full(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
) -> list[list[float]]:
    """Reference scorer: every (prompt + choice) as its own full sequence."""
    was_training = model.training
    model.eval()
    device = _device(model)
    collate = PaddingCollator(tokenizer.pad_token_id)
    flat = [
        (k, encode_record(ex.record(c), tokenizer, max_length))
        for k, ex in enumerate(examples)
        for c in range(len(ex.choices))
    ]
    choice_of = [c for ex in examples for c in range(len(ex.choices))]
    # Longest first, so batches hold similar lengths (little padding) and memory peaks at once.
    order = sorted(range(len(flat)), key=lambda j: -len(flat[j][1]))
    scores: list[dict[int, float]] = [{} for _ in examples]
    bar = tqdm(range(0, len(flat), batch_size), desc="scoring choices", disable=not progress, leave=False)
    for start in bar:
        idx = order[start : start + batch_size]
        chunk = [flat[j] for j in idx]
        batch = collate([e for _, e in chunk])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        tok = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums = (tok * keep).sum(-1)
        for j, s in zip(idx, sums.tolist()):
            scores[flat[j][0]][choice_of[j]] = s
    model.train(was_training)
    return [[d[c] for c in range(len(d))] for d in scores]


def mc_accuracy(
    model: nn.Module, tokenizer: Any, examples: Sequence[MultipleChoiceExample], **kwargs: Any
) -> dict[str, Any]:
    """Log-likelihood multiple-choice accuracy (``acc``) and the predictions."""
    scores = choice_logprobs(model, tokenizer, examples, **kwargs)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
    correct = [int(p == ex.answer) for p, ex in zip(preds, examples)]
    return {"acc": sum(correct) / max(1, len(correct)), "n": len(correct), "predictions": preds}


def _prompt_text(example: MultipleChoiceExample, tokenizer: Any) -> str:
    """Everything before the target (the chat template's generation prompt included)."""
    segments = record_segments(example.record(), tokenizer)
    first_target = next(i for i, (_, target) in enumerate(segments) if target)
    return "".join(text for text, _ in segments[:first_target])


def _stop_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def exact_match(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Greedy generation; ``em`` = fraction whose stripped output equals the reference answer."""
    was_training = model.training
    model.eval()
    device = _device(model)
    stop = _stop_ids(tokenizer)
    if max_new_tokens is None:
        longest = max(len(tokenizer(ex.answer_text, add_special_tokens=False)["input_ids"]) for ex in examples)
        max_new_tokens = longest + 4
    collate = PaddingCollator(tokenizer.pad_token_id, padding_side="left")
    outputs: list[str] = []
    bar = tqdm(range(0, len(examples), batch_size), desc="generating", disable=not progress, leave=False)
    for start in bar:
        chunk = examples[start : start + batch_size]
        prompts = [tokenizer(_prompt_text(ex, tokenizer), add_special_tokens=False)["input_ids"] for ex in chunk]
        batch = collate([{"input_ids": p, "labels": p} for p in prompts])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in gen[:, ids.shape[1] :].tolist():
            cut = next((j for j, t in enumerate(row) if t in stop), len(row))
            outputs.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    model.train(was_training)
    hits = [int(o == ex.answer_text.strip()) for o, ex in zip(outputs, examples)]
    return {"em": sum(hits) / max(1, len(hits)), "n": len(hits), "outputs": outputs}


def evaluate_examples(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    generate: bool = True,
    progress: bool = False,
    max_length: int | None = None,
) -> dict[str, float]:
    """``{"acc", "em", "n"}`` on ``examples`` (``em`` only when ``generate``)."""
    out: dict[str, float] = {}
    mc = mc_accuracy(model, tokenizer, examples, batch_size=batch_size, progress=progress, max_length=max_length)
    out["acc"], out["n"] = mc["acc"], mc["n"]
    if generate:
        out["em"] = exact_match(model, tokenizer, examples, batch_size=batch_size, progress=progress)["em"]
    return out
