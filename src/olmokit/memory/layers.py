"""MAC, MAG and MAL: a neural memory wired into one decoder layer of a frozen OLMo, through hooks.

Nothing of HF's modeling code is copied: a :class:`MemoryLayer` is registered as a submodule of the
decoder layer (so ``.to()``, optimizers, DDP and ``state_dict`` see it) by
:class:`olmokit.inject.Injection`, and runs from a hook on a module the family adapter names:

* **MAG** (memory as gate) — post-hook on the attention module: ``out = attn(x) + g ⊙ M(x)`` where
  ``x`` is the attention's input (contextual for layers >= 1) and ``M`` stores and retrieves token by
  token (``y_t = M_t(q_t)``).
* **MAL** (memory as layer) — pre-hook on the decoder layer: the layer reads ``x + g ⊙ M(x)``.

With ``retrieval_norm`` (the default) ``M(x)`` above is RMS-normalised per token before the gate
(see :meth:`MemoryLayer.read_write` for why).
* **MAC** (memory as context, the paper's order) — post-hook on the attention module: retrieve
  ``h = M*_{t-1}(x)`` for every token of the segment with the state of the segment start, attend over
  ``[persistent ‖ h ‖ segment]`` with the module's own frozen projections (a segment token at position
  ``i`` sees every persistent token, retrieved tokens ``h_j`` for ``j <= i`` only, and segment tokens
  ``j <= i``), then store the segment (its attention output, or its input) into the memory.
  ``out = attn(x) + g_a ⊙ (attn_ext(x) - attn(x))``.

Persistent tokens with MAG/MAL are attended the same way (``[persistent ‖ segment]``).

**Identity at initialisation:** every gate ``g``/``g_a`` is a per-channel vector initialised to
exactly zero, so the layer adds ``0 ⊙ (...)`` and the step-0 logits equal the base's bit for bit
(after one optimizer step the gates open and every upstream parameter receives gradient).

Memory math runs in float32 (parameters and state) whatever the base dtype; the result is cast back.
The per-call context (carried states, chunk size, generation caches) lives in
:class:`LayerRuntime`, owned by :class:`olmokit.memory.model.MemoryModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..family import FamilyAdapter
from .config import ResolvedMemory
from .neural import NeuralMemory, NeuralMemoryConfig
from .state import MemoryState

__all__ = ["RETRIEVAL_NORM_EPS", "LayerRuntime", "MemoryLayer", "neural_config"]

#: eps of the RMS normalisation of the memory's read (``retrieval_norm``)
RETRIEVAL_NORM_EPS = 1e-6


def neural_config(resolved: ResolvedMemory) -> NeuralMemoryConfig:
    """The engine config of one memory layer: the settings' engine fields plus the base's width."""
    kw = resolved.settings.engine_kwargs()
    kw["head_dim"] = resolved.head_dim
    return NeuralMemoryConfig(dim=resolved.hidden_size, **kw)


@dataclass
class LayerRuntime:
    """What one memory layer needs during a call, set by :class:`~olmokit.memory.model.MemoryModel`.

    ``managed=False`` (a plain HF call on a model with memory attached): every call starts from a
    fresh state and nothing is kept, so the HF model stays a pure function of its input.
    """

    managed: bool = False
    state: MemoryState | None = None  #: carried state (MAC: the write state)
    read_state: MemoryState | None = None  #: MAC: the state of the segment start, M_{t-1}
    chunk: int | None = None  #: engine chunk for this call (None: train/prefill by module mode)
    use_cache: bool = False  #: generation: keep the extended tokens' keys/values in ``cache``
    cache: Any = None  #: private KV cache of the extended attention (persistent / retrieved)
    cache_keys: list[tuple[str, int]] = field(default_factory=list)  #: (kind, position) per key
    position: int = 0  #: position of the call's first token inside the segment

    def start_segment(self) -> None:
        """A new segment: MAC reads what the previous segment wrote; generation caches restart.
        (The query convolution's history, advanced by retrieval, moves to the new read state.)"""
        if self.read_state is not None and self.state is not None:
            if self.read_state.conv_q is not None:
                self.state = replace(self.state, conv_q=self.read_state.conv_q)
        self.read_state = self.state
        self.cache, self.cache_keys, self.position = None, [], 0


class MemoryLayer(nn.Module):
    """The memory added to one decoder layer (see the module docstring for MAC/MAG/MAL)."""

    def __init__(self, resolved: ResolvedMemory, layer: int, adapter: FamilyAdapter):
        super().__init__()
        s = resolved.settings
        self.mode, self.source, self.layer_index = s.mode, s.source, layer
        self.chunk_train, self.chunk_prefill = s.chunk_train, s.chunk_prefill
        self.retrieval_norm = s.retrieval_norm
        self.window = adapter.layer_sliding_window(layer)
        hidden = resolved.hidden_size
        device = adapter.embed_tokens().weight.device
        gen = (
            torch.Generator().manual_seed(s.init_seed + layer) if s.init_seed is not None else None
        )
        with _seeded(gen):
            self.memory = NeuralMemory(neural_config(resolved))
        self.memory.to(device=device, dtype=torch.float32)
        # Gates start at exactly zero: the layer is the identity until training opens them.
        if self.mode in ("mag", "mal"):
            self.mem_gate = nn.Parameter(torch.zeros(hidden, device=device))
        self.num_persistent = s.persistent_tokens
        if self.mode == "mac" or self.num_persistent:
            self.attn_gate = nn.Parameter(torch.zeros(hidden, device=device))
        if self.num_persistent:
            # the scale of the base's token embeddings, so the frozen k/v projections see familiar input
            emb = adapter.embed_tokens().weight.detach().float()
            std = float(emb.std()) if emb.numel() > 1 else 0.02
            p = torch.randn(self.num_persistent, hidden, generator=gen) * std
            self.persistent = nn.Parameter(p.to(device))
        self.rt = LayerRuntime()

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int) -> MemoryState:
        """A fresh state (the learned initial memory weights, graph-connected)."""
        return self.memory.init_state(batch_size, device=next(self.memory.parameters()).device)

    def _chunk(self) -> int:
        if self.rt.chunk is not None:
            return self.rt.chunk
        return self.chunk_train if self.training else self.chunk_prefill

    def _state(self, batch: int) -> MemoryState:
        st = self.rt.state if self.rt.managed else None
        if st is None:
            st = self.init_state(batch)
        return st

    def _keep(self, state: MemoryState) -> None:
        if self.rt.managed:
            self.rt.state = state

    # ------------------------------------------------------------------ MAG / MAL memory path
    def read_write(self, x: torch.Tensor) -> torch.Tensor:
        """Store and retrieve token by token (MAG/MAL): ``g ⊙ RMSNorm(M_t(q_t))`` in float32.

        Why the norm (``retrieval_norm``): the read's size is the product of the memory MLP's
        weights, so without it the outer optimiser makes the read louder by inflating the learned
        initial weights (their norm grew ~15x in 100 steps of the passkey demo); the inner
        gradient step's curvature grows with them until the inner updates turn unstable and the
        gradients through the recurrence explode (1e3-1e5, loss stuck at chance). Normalised, the
        read's size is the gate's alone. The gate still starts at zero: identity at init holds.
        """
        y, state = self.memory(x.float(), self._state(x.shape[0]), chunk_size=self._chunk())
        self._keep(state)
        y = y.float()
        if self.retrieval_norm:
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + RETRIEVAL_NORM_EPS)
        return self.mem_gate * y

    # ------------------------------------------------------------------ hooks
    def mal_pre_hook(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = FamilyAdapter.module_input(args, kwargs)
        new = (x.float() + self.read_write(x)).to(x.dtype)
        return FamilyAdapter.replace_module_input(args, kwargs, new)

    def attention_post_hook(
        self, attn: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> Any | None:
        """MAG and MAC (and persistent tokens of MAL): rewrite the attention module's output."""
        if getattr(self, "_busy", False):  # our own call of the attention module (extended tokens)
            return None
        x = FamilyAdapter.module_input(args, kwargs)
        base = FamilyAdapter.module_output(output)
        out = base.float()
        if self.mode == "mac":
            state = self.rt.read_state if self.rt.managed else None
            if state is None:
                state = self._state(x.shape[0])
            retrieved, read = self.memory.retrieve(x.float(), state, return_state=True)
            retrieved = retrieved.to(x.dtype)
            if self.rt.managed:
                self.rt.read_state = read  # same weights (M_{t-1}); q-conv history advanced
            ext = self._extended_attention(attn, args, kwargs, retrieved)
            out = out + self.attn_gate * (ext.float() - out)
            src = out.to(x.dtype) if self.source == "attention_output" else x
            write = self._state(x.shape[0])
            self._keep(self.memory.store(src.float(), write, chunk_size=self._chunk()))
        else:
            if self.num_persistent:
                ext = self._extended_attention(attn, args, kwargs, None)
                out = out + self.attn_gate * (ext.float() - out)
            if self.mode == "mag":
                out = out + self.read_write(x)
        self.rt.position += x.shape[1] if self.rt.managed else 0
        return FamilyAdapter.replace_module_output(output, out.to(base.dtype))

    # ------------------------------------------------------------------ extended attention
    def _extended_attention(
        self, attn: nn.Module, args: tuple, kwargs: dict, retrieved: torch.Tensor | None
    ) -> torch.Tensor:
        """The attention module's output for the call's tokens when it also attends over the
        persistent tokens and (MAC) the retrieved tokens, with its own frozen weights."""
        x = FamilyAdapter.module_input(args, kwargs)
        cos, sin = FamilyAdapter.attention_position_embeddings(args, kwargs)
        b, t, _ = x.shape
        pos0 = self.rt.position if self.rt.managed else 0
        cached = self.rt.managed and self.rt.use_cache
        first = not (cached and self.rt.cache_keys)
        extra, ecos, esin, kinds = [], [], [], []
        if first and self.num_persistent:
            if pos0 != 0:
                raise ConfigError("persistent tokens need each segment's first call at position 0")
            p = self.persistent.to(x.dtype).unsqueeze(0).expand(b, -1, -1)
            extra.append(p)
            # position 0: the identity rotation, the first row of a call that starts a segment
            ecos.append(cos[:, :1].expand(cos.shape[0], self.num_persistent, -1))
            esin.append(sin[:, :1].expand(sin.shape[0], self.num_persistent, -1))
            kinds += [("p", 0)] * self.num_persistent
        if retrieved is not None:
            extra.append(retrieved)
            ecos.append(cos)
            esin.append(sin)
            kinds += [("h", pos0 + j) for j in range(t)]
        kinds += [("s", pos0 + j) for j in range(t)]
        hidden = torch.cat([*extra, x], dim=1)
        pe = (torch.cat([*ecos, cos], dim=1), torch.cat([*esin, sin], dim=1))
        keys = (self.rt.cache_keys if cached else []) + kinds
        mask = self._mask(kinds, keys, x.dtype, x.device).expand(b, 1, -1, -1)
        cache = None
        if cached:
            if self.rt.cache is None:
                self.rt.cache = _new_cache()
            cache = self.rt.cache
            self.rt.cache_keys = keys
        self._busy = True
        try:
            out = FamilyAdapter.call_attention(attn, hidden, pe, mask, cache)
        finally:
            self._busy = False
        return out[:, -t:]

    def _mask(
        self, queries: list[tuple[str, int]], keys: list[tuple[str, int]], dtype, device
    ) -> torch.Tensor:
        """Additive mask ``[1, 1, q, k]``: persistent keys are always visible; retrieved and segment
        keys only at positions <= the query's (and inside a sliding window); a retrieved/persistent
        query row (whose output is discarded) sees no segment token."""
        qk = torch.tensor([_KIND[k] for k, _ in queries], device=device)
        qp = torch.tensor([p for _, p in queries], device=device)
        kk = torch.tensor([_KIND[k] for k, _ in keys], device=device)
        kp = torch.tensor([p for _, p in keys], device=device)
        causal = kp[None, :] <= qp[:, None]
        if self.window is not None:
            causal &= qp[:, None] - kp[None, :] < self.window
        is_p = (kk == _KIND["p"])[None, :]
        q_not_p = (qk != _KIND["p"])[:, None]
        k_h = (kk == _KIND["h"])[None, :]
        q_s = (qk == _KIND["s"])[:, None]
        allowed = is_p | (q_not_p & causal & (k_h | q_s))
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[None, None]


_KIND = {"p": 0, "h": 1, "s": 2}


def _new_cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


class _seeded:
    """Run a block with torch's global RNG seeded from ``gen`` (restored afterwards), so a memory's
    initialisation does not depend on what ran before (``init_seed``)."""

    def __init__(self, gen: torch.Generator | None):
        self.gen = gen

    def __enter__(self) -> None:
        if self.gen is not None:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(int(self.gen.initial_seed()))

    def __exit__(self, *exc: Any) -> None:
        if self.gen is not None:
            self._fork.__exit__(*exc)
