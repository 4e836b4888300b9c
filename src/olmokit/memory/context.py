"""Carried attention context: the base's keys/values of the last tokens before a segment.

Why: Titans' MAG and MAL pair the memory with *sliding-window* attention (only MAC attends per
segment, over [persistent ‖ retrieved ‖ segment]). Run as isolated segments, a windowed base loses
its local context at every segment start: a token near a segment's end is invisible one token later,
so whatever the memory should write a token or two *after* it (its learned write gate fires there)
is lost. With ``carry_context = c`` each segment's base forward gets an HF ``DynamicCache`` holding
the keys/values of the ``c`` tokens before it (positions continue: absolute token indices, so RoPE
sees the true offsets), and attention is the base's own: a sliding-window layer sees at most
``window - 1`` earlier tokens (HF keeps no more in a sliding cache layer, and its mask hides more),
a full-attention layer sees the ``c`` carried tokens plus the segment. For an all-sliding base with
``c >= window - 1`` the segmented forward therefore equals one unsegmented forward (tested).

The carried keys/values are detached at every segment boundary: truncated backprop for the base's
KV path (the memory's own state keeps its ``bptt_segments`` setting). The memory path is unchanged:
each memory layer still reads and writes only the segment's tokens.

:class:`CarriedContext` is functional like :class:`~olmokit.memory.state.MemoryState`: building a
cache copies nothing into it that a later call could modify, and :func:`context_from_cache` returns a
new object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..family import FamilyAdapter, get_adapter

__all__ = ["CarriedContext", "context_cache", "context_from_cache", "run_with_context"]


@dataclass(frozen=True)
class CarriedContext:
    """Keys and values of the last ``tokens`` tokens, per base layer.

    Attributes:
        keys, values: per decoder layer, ``[batch, kv_heads, n_i, head_dim]`` with RoPE applied at the
            tokens' absolute positions; ``n_i = min(tokens, window_i - 1)`` for a sliding-window layer
            (what it can still see), ``tokens`` for a full-attention layer.
        tokens: how many tokens are carried (``min(carry_context, tokens seen)``); they end at the
            position the next segment starts at.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    tokens: int

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def _map(self, fn) -> CarriedContext:
        return CarriedContext(
            tuple(fn(t) for t in self.keys), tuple(fn(t) for t in self.values), self.tokens
        )

    def detach(self) -> CarriedContext:
        return self._map(lambda t: t.detach())

    def to(self, device: torch.device | str) -> CarriedContext:
        return self._map(lambda t: t.to(device))

    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors (detached contiguous copies) for safetensors."""
        out = {f"keys.{i}": t for i, t in enumerate(self.keys)}
        out.update({f"values.{i}": t for i, t in enumerate(self.values)})
        out = {k: t.detach().clone(memory_format=torch.contiguous_format) for k, t in out.items()}
        out["tokens"] = torch.tensor(self.tokens, dtype=torch.int64)
        return out

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, Tensor], device: torch.device | str | None = None
    ) -> CarriedContext:
        n = sum(1 for k in sd if k.startswith("keys."))
        try:
            get = (lambda t: t) if device is None else (lambda t: t.to(device))
            keys = tuple(get(sd[f"keys.{i}"]) for i in range(n))
            values = tuple(get(sd[f"values.{i}"]) for i in range(n))
            tokens = int(sd["tokens"])
        except KeyError as exc:
            raise CheckpointError(f"carried context is missing key {exc.args[0]!r}") from None
        if n == 0:
            raise CheckpointError("carried context has no keys.<i> tensors")
        return cls(keys, values, tokens)


def context_cache(model: nn.Module, context: CarriedContext | None) -> Any:
    """A fresh HF ``DynamicCache`` for ``model`` holding ``context`` (empty for None).

    The cache is built from the model's config, so sliding-window layers get HF's sliding cache
    layer: filled through its own ``update``, its bookkeeping (seen tokens, mask offsets) is HF's.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if context is not None and context.tokens > 0:
        for i, (k, v) in enumerate(zip(context.keys, context.values)):
            cache.update(k, v, i)
    return cache


def context_from_cache(cache: Any, carry: int, seen: int) -> CarriedContext:
    """The last ``min(carry, seen)`` tokens of ``cache`` (which has seen ``seen`` tokens in all),
    detached. A sliding-window layer holds at most ``window - 1`` of them; it keeps what it holds."""
    tokens = min(carry, seen)
    keys, values = [], []
    for k, v in FamilyAdapter.cache_keys_values(cache):
        n = min(tokens, k.shape[-2])
        keys.append(k[:, :, k.shape[-2] - n :].detach())
        values.append(v[:, :, v.shape[-2] - n :].detach())
    return CarriedContext(tuple(keys), tuple(values), tokens)


def run_with_context(
    model: nn.Module,
    input_ids: Tensor,
    start: int,
    cache: Any,
) -> Any:
    """One base forward of ``input_ids`` (tokens ``start`` .. of the sequence) attending over
    ``cache`` as well, at absolute positions; ``cache`` grows by the call's tokens."""
    n = input_ids.shape[1]
    position_ids = torch.arange(start, start + n, device=input_ids.device)[None]
    position_ids = position_ids.expand(input_ids.shape[0], -1)
    kw = {get_adapter(model).cache_keyword(model): cache}
    return model(input_ids=input_ids, position_ids=position_ids, use_cache=True, **kw)
