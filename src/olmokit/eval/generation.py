"""Greedy generation with a KV cache, and exact match of generated answers.

:func:`greedy_generate` is the one decoding loop of olmokit's scorers: left-padded batches (every
prompt ends at the last column, so each step appends one column), position ids that skip the
padding, one token per row per step from the cache, and the probability of the chosen token
recorded at every step (the merge metrics score the model's confidence). It equals decoding each
prompt alone without a cache, token by token (tested on every family, OLMo-3's sliding window
included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.collate import PaddingCollator
from ..data.formatting import record_segments
from ..data.tasks import MultipleChoiceExample
from ..errors import DataError
from .modes import eval_mode, model_device
from .nll import log_probs

__all__ = [
    "GreedyOutput",
    "greedy_generate",
    "stop_token_ids",
    "prompt_text",
    "exact_match",
    "sample_text",
]


@dataclass
class GreedyOutput:
    """What :func:`greedy_generate` produced, one list per prompt.

    ``tokens[i]``: the new tokens, stop token excluded. ``max_probs[i][t]``: probability of the
    arg-max token at step ``t`` (the token chosen), one entry per entry of ``tokens[i]`` plus one
    for the stop token when the row stopped. ``stopped[i]``: the row ended on a stop token.
    """

    tokens: list[list[int]]
    max_probs: list[list[float]]
    stopped: list[bool]


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Iterable[int] = (),
    pad_token_id: int | None = 0,
) -> GreedyOutput:
    """Arg-max decoding of every prompt for at most ``max_new_tokens`` steps, batched, KV-cached.

    A row ends at the first token in ``stop_ids`` (not returned); with no ``stop_ids`` every row
    runs ``max_new_tokens`` steps. Rows that ended keep decoding until the batch does (their extra
    tokens are dropped), so the batch never has to be reshaped. Ties go to the lowest token id
    (``torch.argmax``). Runs in eval mode; an empty prompt is a :class:`DataError`.
    """
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise DataError(f"greedy_generate: prompt {empty[0]} is empty (nothing to condition on)")
    n = len(prompts)
    out = GreedyOutput([[] for _ in range(n)], [[] for _ in range(n)], [False] * n)
    if n == 0 or max_new_tokens <= 0:
        return out
    stop = {int(t) for t in stop_ids}
    device = model_device(model)
    pad = pad_token_id if pad_token_id is not None else 0  # any id: padding is masked out
    batch = PaddingCollator(pad, padding_side="left")([{"input_ids": p} for p in prompts])
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    live = torch.ones(n, dtype=torch.bool)
    with eval_mode(model):
        result = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        next_pos = pos[:, -1:] + 1
        for step in range(max_new_tokens):
            best = log_probs(result.logits[:, -1]).max(-1)
            token, p_max = best.indices.cpu(), best.values.exp().cpu()
            for i in live.nonzero().flatten().tolist():
                out.max_probs[i].append(float(p_max[i]))
                if int(token[i]) in stop:
                    out.stopped[i] = True
                    live[i] = False
                else:
                    out.tokens[i].append(int(token[i]))
            if not live.any() or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=-1)
            result = model(
                input_ids=token[:, None].to(device),
                attention_mask=mask,
                position_ids=next_pos,
                cache=result.cache,
                use_cache=True,
            )
            next_pos = next_pos + 1
    return out


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids that end an answer: EOS and, when the vocabulary has it, ChatML's ``<|im_end|>``."""
    ids = {tokenizer.eos_token_id}
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None)


def prompt_text(example: MultipleChoiceExample, tokenizer: Any) -> str:
    """Everything before the target (the chat template's generation prompt included)."""
    segments = record_segments(example.record(), tokenizer)
    first_target = next(i for i, (_, target) in enumerate(segments) if target)
    return "".join(text for text, _ in segments[:first_target])


def exact_match(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: bool = False,
    first_line: bool = False,
) -> dict[str, Any]:
    """Greedy answers; ``em`` = fraction whose stripped text equals the stripped reference answer.

    ``first_line``: compare only the output's first non-empty line (the reference JoLA evaluation
    keeps the first line), for models trained on the answer but not on ending the turn.

    Generation stops at :func:`stop_token_ids`; ``max_new_tokens`` defaults to the longest reference
    answer plus 4 tokens (a longer output cannot match anyway). Returns ``em``, ``n``, ``outputs``.
    """
    stop = stop_token_ids(tokenizer)
    if max_new_tokens is None:
        longest = max(
            (
                len(tokenizer(ex.answer_text, add_special_tokens=False)["input_ids"])
                for ex in examples
            ),
            default=0,
        )
        max_new_tokens = longest + 4
    outputs: list[str] = []
    bar = tqdm(
        range(0, len(examples), batch_size), desc="generating", disable=not progress, leave=False
    )
    for start in bar:
        chunk = examples[start : start + batch_size]
        prompts = [
            tokenizer(prompt_text(ex, tokenizer), add_special_tokens=False)["input_ids"]
            for ex in chunk
        ]
        gen = greedy_generate(model, prompts, max_new_tokens, stop, tokenizer.pad_token_id)
        outputs += [tokenizer.decode(t, skip_special_tokens=True).strip() for t in gen.tokens]
    if first_line:
        outputs = [o.split("\n", 1)[0].strip() for o in outputs]
    hits = [int(o == ex.answer_text.strip()) for o, ex in zip(outputs, examples)]
    return {"em": sum(hits) / max(1, len(hits)), "n": len(hits), "outputs": outputs}


def sample_text(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
    chat: bool = False,
) -> str:
    """Continue ``prompt`` (or answer it as a chat user turn with ``chat=True``); returns the new text.

    Sampling (``temperature > 0``, top-k) for looking at a model's text, as ``olmokit zoo generate``
    does; ``temperature=0`` is greedy. HF ``generate`` with the KV cache does the decoding; scorers use
    :func:`greedy_generate` instead, which also records the chosen tokens' probabilities.
    """
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model_device(model))
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=top_k if temperature > 0 else None,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
