"""``HookedOlmo.generate``: TransformerLens's sampling loop, with the lens's hooks active.

Every step is a lens forward, so hooks added with ``model.hooks(fwd_hooks=...)``, ``add_hook`` or
``add_perma_hook`` fire while generating (steering: add a vector at ``hook_resid_post``). With
``use_past_kv_cache`` (the default) the first step reads the prompt and later steps read only the
newest token with HF's KV cache, so a hook sees ``pos = 1`` after the first step, as in TL. Hooks that
act on every position the same way give the same tokens with and without the cache (tested).

Sampling follows TL: ``do_sample`` with ``temperature``, ``top_k``, ``top_p`` and ``freq_penalty``;
``do_sample=False`` (or ``temperature=0``) is greedy. ``stop_at_eos`` stops a sequence at EOS and pads
it with EOS afterwards. ``return_type="input"`` returns what was given (string in, string out).
"""

from __future__ import annotations

from typing import Any

import torch
import tqdm.auto as tqdm

__all__ = ["GenerateMixin", "sample_logits"]


def sample_logits(
    logits: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens ``[batch]`` from final-position logits ``[batch, d_vocab]`` (TL's rules)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if freq_penalty > 0 and tokens is not None:
        counts = torch.zeros_like(logits)
        counts.scatter_add_(-1, tokens, torch.ones_like(tokens, dtype=logits.dtype))
        logits = logits - freq_penalty * counts
    if top_k is not None and top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[..., 0]


class GenerateMixin:
    """``generate`` for ``HookedOlmo`` (needs ``forward`` with ``past_kv_cache`` and the tokenizer mixin)."""

    @torch.no_grad()
    def generate(
        self,
        input: str | list[str] | torch.Tensor = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: str | None = "input",
        verbose: bool = True,
        generator: torch.Generator | None = None,
    ) -> Any:
        """Continue ``input`` by ``max_new_tokens`` tokens; returns a string for string input
        (``return_type="input"`` or ``"str"``), else tokens ``[batch, pos + new]``."""
        if return_type not in ("input", "str", "tokens", None):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        was_text = isinstance(input, (str, list)) and (not input or isinstance(input[0], str))
        if was_text:
            tokens, mask = self._tokenize(input, prepend_bos, padding_side or "left")
        else:
            tokens = torch.as_tensor(input, device=self._device())
            tokens = tokens[None] if tokens.dim() == 1 else tokens
            mask = None
        if eos_token_id is None and stop_at_eos and self.tokenizer is not None:
            eos_token_id = self.tokenizer.eos_token_id
        if stop_at_eos and eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id (the model has no tokenizer)")
        greedy = not do_sample or temperature == 0.0
        batch = tokens.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        cache = None
        out = tokens
        step_tokens = tokens
        for _ in tqdm.tqdm(range(max_new_tokens), disable=not verbose):
            if use_past_kv_cache:
                if cache is None:
                    logits, cache = self._forward_with_kv(step_tokens, mask, None)
                else:
                    logits, cache = self._forward_with_kv(step_tokens, mask, cache)
            else:
                logits = self.forward(out, attention_mask=mask)
            last = logits[:, -1, :]
            if greedy:
                nxt = last.argmax(-1)
            else:
                nxt = sample_logits(
                    last, top_k, top_p, temperature, freq_penalty, out, generator=generator
                )
            if stop_at_eos:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished = finished | (nxt == eos_token_id)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_tokens = nxt[:, None]
            if stop_at_eos and bool(finished.all()):
                break
        if return_type in ("input", "str") and (was_text or return_type == "str"):
            # the text as given plus the continuation: no left padding, no BOS we added (as TL)
            starts = [0] * batch if mask is None else (mask == 0).sum(-1).tolist()
            skip_bos = int(was_text and self._resolve_bos(prepend_bos))
            texts = [self.to_string(out[r, int(starts[r]) + skip_bos :]) for r in range(batch)]
            return texts[0] if isinstance(input, str) else texts
        return out
