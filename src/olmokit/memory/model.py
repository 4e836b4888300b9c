"""A frozen OLMo with neural memory: segmented forward, carried state, generation, save and load.

:func:`attach_memory` adds a :class:`~olmokit.memory.layers.MemoryLayer` to each chosen decoder layer
(through :class:`olmokit.inject.Injection`, at family-adapter sites), freezes the base and returns a
:class:`MemoryModel`. The HF model keeps its class; :meth:`MemoryModel.detach` gives it back plain.

Why segments: the memory's job is to carry context *beyond* the attention span. A long input is run
as consecutive segments of ``segment_len`` tokens (<= the base's sliding window), each a separate base
forward with positions starting at 0, so attention never spans two segments and everything a segment
knows about earlier ones comes through the memory state (:class:`MemoryModelState`, one
:class:`~olmokit.memory.state.MemoryState` per memory layer, keyed by layer index so layers without
memory need no placeholder). With ``carry_context`` (MAG/MAL, Titans' sliding-window attention) each
segment's attention also sees the last tokens before it through the base's KV cache, carried in the
state too (:mod:`olmokit.memory.context`); positions are then absolute. Controls for experiments:
``reset_every_segment=True`` (a fresh state per segment: the memory can only help inside a
segment) and ``shuffle_state`` (once, at one segment boundary — by default the start of the last
segment, where a task's question sits — each example is handed the memory another example
accumulated, and carries on from it; never re-shuffled, since repeated fixed rolls compose and would
hand each example its own memory back after ``batch`` boundaries).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..eval.nll import token_logprobs
from ..family import get_adapter
from ..files import atomic_save_safetensors, load_safetensors
from ..inject import (
    AdapterFormat,
    Injection,
    freeze_base,
    has_injection,
    layer_site,
    load_adapter,
    read_adapter,
    save_adapter,
)
from .config import MemoryConfig, MemorySettings, ResolvedMemory
from .context import CarriedContext, context_cache, context_from_cache, run_with_context
from .layers import MemoryLayer
from .state import MemoryState

__all__ = [
    "ADAPTER_FORMAT",
    "MemoryModel",
    "MemoryModelState",
    "MemoryOutput",
    "attach_memory",
    "iter_memory_layers",
    "load_memory",
    "read_memory_settings",
    "save_memory_state",
    "load_memory_state",
]

INJECTION_NAME = "memory"
ADAPTER_FORMAT = AdapterFormat(
    name="olmokit-memory",
    version=1,
    weights_file="memory_adapter.safetensors",
    config_file="memory_config.json",
    label="memory",
)
STATE_FORMAT = "olmokit-memory-state"


# ---------------------------------------------------------------------------------------- state
@dataclass
class MemoryModelState:
    """The memory of every memory layer after ``tokens`` tokens (a multiple of ``segment_len``
    between :meth:`MemoryModel.forward` calls), and with ``carry_context`` the base's keys/values
    of the last tokens (:class:`~olmokit.memory.context.CarriedContext`; None without)."""

    per_layer: dict[int, MemoryState]
    tokens: int = 0
    context: CarriedContext | None = None

    @property
    def batch_size(self) -> int:
        return next(iter(self.per_layer.values())).batch_size

    def _with(self, per_layer: dict[int, MemoryState], context: CarriedContext | None):
        return MemoryModelState(per_layer, self.tokens, context)

    def detach(self) -> MemoryModelState:
        """Cut from the autograd graph (truncated backprop stops here)."""
        ctx = None if self.context is None else self.context.detach()
        return self._with({i: s.detach() for i, s in self.per_layer.items()}, ctx)

    def to(self, device: torch.device | str) -> MemoryModelState:
        ctx = None if self.context is None else self.context.to(device)
        return self._with({i: s.to(device) for i, s in self.per_layer.items()}, ctx)

    def permute(self, perm: torch.Tensor) -> MemoryModelState:
        """Example ``b`` gets the memory of example ``perm[b]`` (the shuffled-state control).

        The carried attention context is NOT permuted: it is the base's view of the example's own
        last tokens (what its sliding window would see anyway), not something the memory learned;
        the control swaps only what crosses the window through the memory."""
        return self._with(
            {i: _permute_state(s, perm) for i, s in self.per_layer.items()}, self.context
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"tokens": torch.tensor(self.tokens, dtype=torch.int64)}
        for i, s in self.per_layer.items():
            out.update({f"layers.{i}.{k}": v for k, v in s.state_dict().items()})
        if self.context is not None:
            out.update({f"context.{k}": v for k, v in self.context.state_dict().items()})
        return out

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], device: torch.device | str | None = None
    ) -> MemoryModelState:
        per: dict[int, dict[str, torch.Tensor]] = {}
        ctx: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            if key.startswith("layers."):
                _, idx, rest = key.split(".", 2)
                per.setdefault(int(idx), {})[rest] = value
            elif key.startswith("context."):
                ctx[key.split(".", 1)[1]] = value
        if not per or "tokens" not in sd:
            raise CheckpointError("not a memory state (no layers.<i>.* tensors or no 'tokens')")
        layers = {i: MemoryState.from_state_dict(d, device) for i, d in sorted(per.items())}
        context = CarriedContext.from_state_dict(ctx, device) if ctx else None
        return cls(layers, int(sd["tokens"]), context)


def _permute_state(s: MemoryState, perm: torch.Tensor) -> MemoryState:
    """Permute a state's batch rows (``[batch·heads, ...]`` tensors and ``[batch, ...]`` conv caches)."""
    b, h = s.batch_size, s.heads
    perm = perm.to(s.device)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, h, *t.shape[1:])[perm].reshape(t.shape)

    return replace(
        s,
        weights=tuple(rows(t) for t in s.weights),
        momentum=tuple(rows(t) for t in s.momentum),
        pending_k=rows(s.pending_k),
        pending_v=rows(s.pending_v),
        pending_gates=rows(s.pending_gates),
        conv_q=None if s.conv_q is None else s.conv_q[perm],
        conv_kv=None if s.conv_kv is None else s.conv_kv[perm],
    )


def save_memory_state(state: MemoryModelState, path: str | os.PathLike[str]) -> Path:
    """Write a memory state (safetensors, atomically) to continue a long document later."""
    path = Path(path)
    atomic_save_safetensors(path, state.state_dict(), metadata={"format": STATE_FORMAT})
    return path


def load_memory_state(
    path: str | os.PathLike[str], device: torch.device | str | None = None
) -> MemoryModelState:
    try:
        sd = load_safetensors(path)
    except FileNotFoundError:
        raise CheckpointError(f"memory state file not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable memory state ({exc})") from None
    return MemoryModelState.from_state_dict(sd, device)


@dataclass
class MemoryOutput:
    """What :meth:`MemoryModel.forward` returns (dict-style access works too, for ``Trainer``)."""

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    memory_state: MemoryModelState
    segment_losses: list[torch.Tensor] = field(default_factory=list)  #: summed CE per segment
    segment_counts: list[int] = field(default_factory=list)  #: scored tokens per segment

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        return tuple(v for v in (self.loss, self.logits) if v is not None)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]  # Trainer reads outputs[0] (the loss) and outputs[1:]

    def keys(self) -> list[str]:
        return [k for k in ("loss", "logits") if getattr(self, k) is not None]


# ---------------------------------------------------------------------------------------- model
class MemoryModel(nn.Module):
    """A frozen HF OLMo with memory layers (see the module docstring). Build with
    :func:`attach_memory` or :func:`load_memory`."""

    def __init__(self, model: nn.Module, resolved: ResolvedMemory, injection: Injection):
        super().__init__()
        self.model = model
        self.resolved = resolved
        self.injection = injection
        self.memory_layers: dict[int, MemoryLayer] = {
            int(key.split(".")[1]): m for key, m in injection.modules.items()
        }
        #: also return logits from training-mode forwards (off: Trainer needs only the loss)
        self.logits_in_training = False

    # ------------------------------------------------------------------ facts
    @property
    def settings(self) -> MemorySettings:
        return self.resolved.settings

    @property
    def segment_len(self) -> int:
        return self.resolved.segment_len

    @property
    def carry_context(self) -> int:
        """Tokens before a segment its attention also sees (0: segments are isolated)."""
        return self.resolved.carry_context

    @property
    def config(self) -> Any:
        """The base model's HF config (``Trainer`` and ``generate`` helpers read it)."""
        return self.model.config

    def memory_parameters(self) -> list[nn.Parameter]:
        return self.injection.parameters()

    def num_memory_parameters(self) -> int:
        return self.injection.num_parameters()

    def memory_state_dict(self) -> dict[str, torch.Tensor]:
        return self.injection.state_dict()

    def load_memory_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.injection.load_state_dict(tensors)

    def init_state(self, batch_size: int) -> MemoryModelState:
        """Fresh memory for ``batch_size`` examples (the learned initial weights)."""
        return MemoryModelState(
            {i: m.init_state(batch_size) for i, m in self.memory_layers.items()}
        )

    def disabled(self):
        """``with mm.disabled():`` runs the plain base (memory hooks pass through)."""
        return self.injection.disabled()

    def detach(self) -> nn.Module:
        """Remove the memory; returns the plain HF model (still frozen)."""
        return self.injection.remove()

    # ------------------------------------------------------------------ running segments
    def _begin(self, state: MemoryModelState, chunk: int | None, use_cache: bool) -> None:
        for i, m in self.memory_layers.items():
            rt = m.rt
            rt.managed, rt.chunk, rt.use_cache = True, chunk, use_cache
            rt.state, rt.read_state = state.per_layer[i], None
            rt.start_segment()

    def _collect(self, tokens: int, context: CarriedContext | None = None) -> MemoryModelState:
        return MemoryModelState(
            {i: m.rt.state for i, m in self.memory_layers.items()}, tokens, context
        )

    def _check_context(self, state: MemoryModelState) -> None:
        """A carried state must match this model's ``carry_context`` (chained = one call)."""
        has = state.context is not None and state.context.tokens > 0
        if has and not self.carry_context:
            raise ConfigError(
                "the memory state carries attention context but this memory has carry_context 0; "
                "continue it with the memory it came from (or set memory.carry_context)"
            )
        if self.carry_context and state.tokens and not has:
            raise ConfigError(
                f"this memory has carry_context {self.carry_context} but the given memory state "
                f"({state.tokens} tokens) carries no attention context (saved by a memory with "
                "carry_context 0?)"
            )
        if has and state.context.batch_size != state.batch_size:
            raise ConfigError(
                f"memory state context has batch {state.context.batch_size}, its memory "
                f"{state.batch_size}"
            )

    def _run_segment(
        self, ids: torch.Tensor, state: MemoryModelState
    ) -> tuple[Any, CarriedContext | None]:
        """One base forward of a segment (the memory layers' runtime already begun): isolated, or
        with carried context (see :mod:`olmokit.memory.context`)."""
        if not self.carry_context:
            return self.model(input_ids=ids, use_cache=False), None
        cache = context_cache(self.model, state.context)
        out = run_with_context(self.model, ids, state.tokens, cache)
        seen = state.tokens + ids.shape[1]
        return out, context_from_cache(cache, self.carry_context, seen)

    def _end(self) -> None:
        for m in self.memory_layers.values():
            m.rt.managed, m.rt.state, m.rt.read_state, m.rt.cache = False, None, None, None
            m.rt.cache_keys = []

    def _boundary_state(
        self,
        state: MemoryModelState,
        k: int,
        reset: bool,
        perm: torch.Tensor | None,
        batch: int,
    ) -> MemoryModelState:
        """The state segment ``k`` starts from: reset, shuffled (``perm`` is given only at the one
        shuffling boundary) and/or detached (truncated BPTT). A reset or shuffle changes the memory
        only: the carried attention context is the example's own last tokens, which the base alone
        would see in its sliding window."""
        if reset:
            return replace(self.init_state(batch), tokens=state.tokens, context=state.context)
        if perm is not None:
            state = state.permute(perm)
        bptt = self.settings.bptt_segments
        if bptt is not None and k % bptt == 0:
            state = state.detach()
        return state

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        state: MemoryModelState | None = None,
        reset_every_segment: bool = False,
        shuffle_state: bool | torch.Tensor = False,
        shuffle_at: int | None = None,
        return_logits: bool | None = None,
    ) -> MemoryOutput:
        """Run ``input_ids`` ``[batch, length]`` in segments of ``segment_len``, carrying the memory.

        ``labels`` follow HF's convention (aligned with ``input_ids``, shifted inside; -100 = not
        scored); the loss is the mean over all scored tokens of the sequence, including each
        segment's last token (predicting the next segment's first). ``state``: continue from a
        state a previous call returned (it must end on a segment boundary). ``reset_every_segment``
        and ``shuffle_state`` are the controls. ``shuffle_state`` (True: example b is handed example
        b-1's memory, a derangement; or a permutation tensor, ``perm[b]`` = whose memory b gets)
        permutes the accumulated state ONCE, at the segment boundary at token ``shuffle_at`` of this
        call (a multiple of ``segment_len``, > 0; default: the start of the last segment, where a
        task's question sits); the examples then carry on from the memory they were handed.
        Padding is not supported: ``attention_mask`` must be None or all ones (score fewer tokens
        with -100 labels instead).
        """
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be [batch, length], got {list(input_ids.shape)}")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ConfigError(
                "MemoryModel does not support padding (attention_mask with zeros); give "
                "equal-length sequences and mark unscored tokens with label -100"
            )
        batch, length = input_ids.shape
        seg = self.segment_len
        if state is None:
            state = self.init_state(batch)
        elif state.tokens % seg:
            raise ConfigError(
                f"the given memory state ends inside a segment ({state.tokens} tokens, segment_len "
                f"{seg}); continue it with generate(), or pass whole segments"
            )
        elif state.batch_size != batch:
            raise ConfigError(f"memory state has batch {state.batch_size}, input has {batch}")
        self._check_context(state)
        perm = _permutation(shuffle_state, batch, input_ids.device)
        shuffle_k = _shuffle_segment(perm, shuffle_at, length, seg, state.tokens)
        if return_logits is None:
            return_logits = not self.training or self.logits_in_training
        chunk = self.settings.chunk_train if self.training else self.settings.chunk_prefill
        logits_parts, seg_losses, seg_counts = [], [], []
        try:
            for k, start in enumerate(range(0, length, seg)):
                end = min(start + seg, length)
                if k > 0 or state.tokens > 0:
                    here = perm if k == shuffle_k else None
                    state = self._boundary_state(state, k, reset_every_segment, here, batch)
                self._begin(state, chunk, use_cache=False)
                out, context = self._run_segment(input_ids[:, start:end], state)
                state = self._collect(state.tokens + end - start, context)
                logits = out.logits
                if labels is not None:
                    n = min(end, length - 1) - start
                    target = labels[:, start + 1 : start + 1 + n]
                    ce = -token_logprobs(logits[:, :n], target.to(logits.device)).sum()
                    seg_losses.append(ce)
                    seg_counts.append(int((target != -100).sum()))
                if return_logits:
                    logits_parts.append(logits)
        finally:
            self._end()
        loss = None
        if labels is not None:
            total = sum(seg_counts)
            loss = torch.stack(seg_losses).sum() / max(total, 1)
        logits = torch.cat(logits_parts, 1) if return_logits else None
        return MemoryOutput(loss, logits, state, seg_losses, seg_counts)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        *,
        state: MemoryModelState | None = None,
        use_cache: bool = True,
        eos_token_id: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, MemoryModelState]:
        """Continue ``input_ids`` ``[batch, length]`` by ``max_new_tokens`` tokens.

        Segments as in :meth:`forward`; the memory is carried across them. With ``use_cache`` the
        current segment keeps a KV cache (the base's, and the memory layers' for their persistent
        and retrieved tokens) and each new token is one base call (chunk ``chunk_decode``); without
        it, each step recomputes the current segment (chunk ``chunk_prefill``). With
        ``carry_context`` the base's cache of each segment starts from the carried keys/values of
        the tokens before it (both paths), and at a segment boundary its last ``carry_context``
        tokens move on in the state. Full segments of the prompt run through :meth:`forward`.
        Returns the whole sequence (prompt + new tokens), and the memory state with
        ``return_state``.
        """
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        try:
            return self._generate(
                input_ids, max_new_tokens, state, use_cache, eos_token_id, do_sample,
                temperature, generator, return_state,
            )  # fmt: skip
        finally:
            self.train(was_training)

    def _generate(
        self, input_ids, max_new_tokens, state, use_cache, eos_token_id, do_sample, temperature,
        generator, return_state,
    ):  # fmt: skip
        seg = self.segment_len
        batch, length = input_ids.shape
        if length == 0:
            raise ConfigError("generate needs a prompt of at least one token")
        full = (length - 1) // seg * seg  # whole segments before the one holding the last token
        if state is None:
            state = self.init_state(batch)
        elif state.tokens % seg:
            raise ConfigError(
                f"the given memory state ends inside a segment ({state.tokens} tokens, segment_len "
                f"{seg}); generate from a state that ends on a segment boundary"
            )
        else:
            self._check_context(state)
        if full:
            state = self.forward(input_ids[:, :full], state=state, return_logits=False).memory_state
        seq = input_ids
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        cur_start = full  # where the current (open) segment starts
        session = _Session(self, state, use_cache)
        try:
            logits = session.feed(seq[:, cur_start:], 0)
            for _ in range(max_new_tokens):
                nxt = _pick(logits[:, -1], do_sample, temperature, generator)
                if eos_token_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                    done |= nxt == eos_token_id
                seq = torch.cat([seq, nxt[:, None]], 1)
                if eos_token_id is not None and bool(done.all()):
                    break
                pos = seq.shape[1] - 1 - cur_start  # position of the new token in its segment
                if pos == seg:  # the new token opens the next segment
                    session.close()
                    cur_start, pos = seq.shape[1] - 1, 0
                    session = _Session(self, session.state, use_cache)
                if use_cache:
                    logits = session.feed(nxt[:, None], pos)
                else:
                    logits = session.feed(seq[:, cur_start:], 0)
            if return_state:
                session.close()
                return seq, session.state
            return seq
        finally:
            self._end()

    # ------------------------------------------------------------------ save / load
    def save_pretrained(
        self, out_dir: str | os.PathLike[str], state: MemoryModelState | None = None, **meta: Any
    ) -> Path:
        """Write the memory parameters (safetensors) and its settings + base fingerprint (JSON);
        nothing of the base. ``state`` also saves a memory state (``memory_state.safetensors``)."""
        out = save_adapter(
            out_dir,
            ADAPTER_FORMAT,
            self.memory_state_dict(),
            self.model,
            meta={"memory": self.settings.as_dict(), "segment_len": self.segment_len, **meta},
        )
        if state is not None:
            save_memory_state(state, out / "memory_state.safetensors")
        return out


class _Session:
    """One open segment of generation: the base's KV cache and the memory layers' runtime.

    With ``carry_context`` the cache starts from the state's carried keys/values, positions are
    absolute, and closing the segment keeps the cache's last ``carry_context`` tokens in the state;
    without a cache every step rebuilds the segment's cache from the same carried context."""

    def __init__(self, mm: MemoryModel, state: MemoryModelState, use_cache: bool):
        self.mm, self.state, self.use_cache = mm, state, use_cache
        self.cache, self.fed, self._last = None, 0, None
        if use_cache:
            self.cache = context_cache(mm.model, state.context if mm.carry_context else None)

    def feed(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        mm, s = self.mm, self.mm.settings
        if self.use_cache:
            chunk = s.chunk_prefill if pos == 0 else s.chunk_decode
            if pos == 0:
                mm._begin(self.state, chunk, use_cache=True)
            else:
                for m in mm.memory_layers.values():
                    m.rt.chunk = chunk
            n = ids.shape[1]
            # positions restart at each segment without carried context, else absolute
            start = pos + (self.state.tokens if mm.carry_context else 0)
            position_ids = torch.arange(start, start + n, device=ids.device)[None].expand(
                ids.shape[0], -1
            )
            kw = {get_adapter(mm.model).cache_keyword(mm.model): self.cache}
            out = mm.model(input_ids=ids, position_ids=position_ids, use_cache=True, **kw)
            self.fed += n
            return out.logits
        # no cache: recompute the open segment from its start with the segment-start state
        mm._begin(self.state, s.chunk_prefill, use_cache=False)
        out, context = mm._run_segment(ids, self.state)
        self._last = mm._collect(self.state.tokens + ids.shape[1], context)
        return out.logits

    def close(self) -> None:
        """End the segment: the memory state (and carried context) now includes it."""
        if self.use_cache:
            if self.fed:
                seen = self.state.tokens + self.fed
                context = None
                if self.mm.carry_context:
                    context = context_from_cache(self.cache, self.mm.carry_context, seen)
                self.state = self.mm._collect(seen, context)
        elif self._last is not None:
            self.state = self._last
        self.mm._end()


def _pick(
    logits: torch.Tensor, do_sample: bool, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _permutation(
    shuffle: bool | torch.Tensor, batch: int, device: torch.device
) -> torch.Tensor | None:
    if isinstance(shuffle, torch.Tensor):
        perm = shuffle.to(device=device, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(batch)):
            raise ConfigError(f"shuffle_state must be a permutation of 0..{batch - 1}")
        return perm
    if not shuffle:
        return None
    if batch < 2:
        raise ConfigError("shuffle_state needs a batch of at least 2 examples")
    return torch.roll(torch.arange(batch, device=device), 1)


def _shuffle_segment(
    perm: torch.Tensor | None, shuffle_at: int | None, length: int, seg: int, carried: int
) -> int | None:
    """The index of the segment whose start state is shuffled (None: no shuffling)."""
    if perm is None:
        if shuffle_at is not None:
            raise ConfigError(
                "shuffle_at is given but shuffle_state is off; pass shuffle_state=True"
            )
        return None
    n_segments = -(-length // seg)
    if shuffle_at is None:
        if n_segments < 2 and carried == 0:
            raise ConfigError(
                f"shuffle_state needs an input of at least 2 segments ({2 * seg} tokens) or a "
                "carried state: there is no accumulated memory to shuffle otherwise"
            )
        return n_segments - 1
    if shuffle_at % seg or not (0 <= shuffle_at < length) or (shuffle_at == 0 and carried == 0):
        raise ConfigError(
            f"shuffle_at must be a segment boundary (a multiple of segment_len {seg}) inside the "
            f"input (> 0 without a carried state, < {length}), got {shuffle_at}"
        )
    return shuffle_at // seg


# ---------------------------------------------------------------------------------------- attach
def attach_memory(
    model: nn.Module, config: MemoryConfig | MemorySettings | None = None
) -> MemoryModel:
    """Add memory layers to a loaded OLMo (in place), freeze the base and return a
    :class:`MemoryModel`. At initialisation its logits equal the base's exactly."""
    settings = config.memory if isinstance(config, MemoryConfig) else (config or MemorySettings())
    if has_injection(model, INJECTION_NAME):
        raise ConfigError("this model already has memory attached; detach it first")
    resolved = settings.resolve(model)
    adapter = get_adapter(model)
    if settings.mode == "mac" or settings.persistent_tokens:
        impl = adapter.attn_implementation()
        if impl not in ("eager", "sdpa"):
            raise ConfigError(
                f"memory mode {settings.mode} with persistent/retrieved tokens attends with an explicit "
                f"mask, which attn_implementation {impl!r} cannot take; load the base with "
                "attn_implementation 'sdpa' or 'eager'"
            )
    injection = Injection(model, INJECTION_NAME)
    try:
        for i in resolved.layer_indices:
            layer = MemoryLayer(resolved, i, adapter)
            attn = model.get_submodule(adapter.module_path(i, "attn"))
            if settings.mode == "mal":
                injection.add(
                    layer_site(model, i, target="layer", owner="layer"),
                    layer,
                    hook="pre",
                    rewrite=lambda m, a, kw: m.mal_pre_hook(a, kw),
                )
                if settings.persistent_tokens:
                    hook = _attention_hook(layer, attn, injection)
                    injection._handles.append(attn.register_forward_hook(hook, with_kwargs=True))
            else:
                injection.add(
                    layer_site(model, i, target="attn", owner="layer"),
                    layer,
                    hook="post",
                    rewrite=_rewrite(attn),
                )
    except Exception:
        injection.remove()
        raise
    freeze_base(model, injection.parameters())
    return MemoryModel(model, resolved, injection)


def _rewrite(attn: nn.Module):
    def fn(layer: MemoryLayer, args: tuple, kwargs: dict, output: Any) -> Any:
        return layer.attention_post_hook(attn, args, kwargs, output)

    return fn


def _attention_hook(layer: MemoryLayer, attn: nn.Module, injection: Injection):
    """MAL with persistent tokens: the attention module also attends over them. The hook's handle
    joins the injection's, so ``remove()`` drops it and ``disabled()`` switches it off."""

    def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not injection.enabled:
            return None
        return layer.attention_post_hook(attn, args, kwargs, output)

    return hook


def read_memory_settings(
    adapter_dir: str | os.PathLike[str],
) -> tuple[dict[str, Any], MemorySettings]:
    """``(meta, settings)`` of a saved memory adapter, without a base model."""
    meta, _ = read_adapter(adapter_dir, ADAPTER_FORMAT)
    saved = dict(meta.get("memory", {}))
    # adapters saved before ``retrieval_norm`` existed were trained with the unnormalised read
    saved.setdefault("retrieval_norm", False)
    settings = MemorySettings.from_dict(saved, source=str(adapter_dir), strict=False)
    return meta, settings


def load_memory(
    model: nn.Module, adapter_dir: str | os.PathLike[str], *, strict_weights: bool = False
) -> MemoryModel:
    """Attach the memory saved in ``adapter_dir`` to ``model`` (checked against the recorded base
    fingerprint: another architecture is refused, other weights warn) and load its parameters."""
    _, settings = read_memory_settings(adapter_dir)
    mm = attach_memory(model, settings)
    try:
        load_adapter(mm.injection, adapter_dir, ADAPTER_FORMAT, strict_weights=strict_weights)
    except Exception:
        mm.detach()
        raise
    return mm


def iter_memory_layers(mm: MemoryModel) -> Iterator[tuple[int, MemoryLayer]]:
    """``(layer index, MemoryLayer)`` in layer order (for diagnostics: gates, memory parameters)."""
    yield from sorted(mm.memory_layers.items())
