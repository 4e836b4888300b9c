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
from ..data.formatting import IGNORE_INDEX, encode_record, record_segments
from ..data.tasks import MultipleChoiceExample

__all__ = ["mc_accuracy", "exact_match", "evaluate_examples", "choice_logprobs"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def choice_logprobs(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
) -> list[list[float]]:
    """Summed log-probability of each choice's target tokens, per example."""
    was_training = model.training
    model.eval()
    device = _device(model)
    collate = PaddingCollator(tokenizer.pad_token_id)
    flat = [
        (k, encode_record(ex.record(c), tokenizer, max_length))
        for k, ex in enumerate(examples)
        for c in range(len(ex.choices))
    ]
    scores: list[list[float]] = [[] for _ in examples]
    bar = tqdm(range(0, len(flat), batch_size), desc="scoring choices", disable=not progress, leave=False)
    for start in bar:
        chunk = flat[start : start + batch_size]
        batch = collate([e for _, e in chunk])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        tok = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums = (tok * keep).sum(-1)
        for (k, _), s in zip(chunk, sums.tolist()):
            scores[k].append(s)
    model.train(was_training)
    return scores


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
