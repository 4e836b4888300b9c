"""Reusing the residual stream below the layer a merge step changes (teacher-forced metrics only).

Every candidate of a layer step differs from the current state only in layer ``k`` (a tensor step:
in one unit of layer ``k``; an ES offspring: in one tensor of it). Layers ``0 .. k-1`` and the
embedding are the same for all of them, so the hidden states *entering* layer ``k`` are too, for a
given batch. :class:`PrefixCache` keeps them, per evaluation batch, and a candidate's forward pass
runs only layers ``k .. N-1``, the final norm and ``lm_head``.

How, without re-implementing any family's forward: during a pass, decoder layers ``0 .. s-1`` of
the family adapter's layer list are temporarily replaced by stand-ins. The first ``s - 1`` return
their input unchanged (the embedding output, a lookup) and the last returns the cached hidden states
entering layer ``s``. The model's own forward still builds the masks, position ids and rotary
embeddings (per layer type for OLMo-3's sliding-window layers) exactly as in a full pass, and runs
the real layers ``s ..``, the final norm and ``lm_head``, with the same inputs and the same shapes.
So a score from the suffix path is *bit-identical* to the full forward's (tested on OLMo v1, 2 and
3), not merely close.

What is cached: for each batch ``slot`` (dataset, batch index of the evaluator's fixed plan), one
entry ``(start s, hidden states entering layer s, signature)``. It is captured by a forward hook on
layer ``s - 1`` during a pass that runs that layer for real, so capturing costs no extra forward: the
first candidate of a step pays the layers from the previous entry's start (after a forward layer
step, one more layer than the suffix), the others only the suffix. Memory: one ``[batch, seq,
hidden]`` tensor per teacher-forced batch, in the model's dtype.

Invalidation: the signature is ``(id, data_ptr, _version)`` of every parameter and buffer outside the
suffix (the embedding, tied ``lm_head`` included, layers ``< s``, the rotary buffers). Torch bumps a
tensor's version on every in-place write, so any swap, restore, ES write or replay that touches the
prefix makes the entry stale, and the next pass recomputes from the embedding. (Writes through
``tensor.data`` bypass the version counter; nothing in olmokit writes that way. Call
:meth:`PrefixCache.clear` after such a write.) A stale entry is never used: the cache can only
change how much is recomputed, never a score.

Grouped candidates (:meth:`PrefixCache.layer_output`, :meth:`PrefixCache.stacked_pass`, driven by
:meth:`olmokit.merge.evaluate.Evaluator.evaluate_group`): a candidate's pass is cut right after
layer ``k`` (a forward hook raises a private exception carrying the layer's output), and one later
pass runs layers ``k+1 ..`` for several candidates at once, the stand-in at layer ``k`` returning
their outputs stacked along the batch. With focus ``0`` (a layer-0 step) nothing is cached but the
candidates are still grouped.

Generation metrics (``exact_match``, ``diversity``) run the full path: their KV-cached decoding
feeds tokens the model itself chose, which differ between candidates.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..family import FamilyAdapter, get_adapter

__all__ = ["PrefixCache", "TEACHER_FORCED_MODES", "versions"]

#: Merge metrics computed from one teacher-forced forward pass per batch (the cache applies).
TEACHER_FORCED_MODES = ("bigram_loss", "nll")

Signature = tuple[tuple[int, int, int], ...]


@dataclass
class _Entry:
    start: int
    hidden: torch.Tensor
    signature: Signature


class _PassThrough(nn.Module):
    """A skipped layer: returns the hidden states it receives (the embedding output)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


#: One stand-in serves every skipped layer of every pass (it holds nothing).
_PASS = _PassThrough()


class _Replay(nn.Module):
    """The last skipped layer: returns the cached hidden states entering the next layer."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "hidden", hidden)  # a plain attribute, not a buffer

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hidden_states.shape != self.hidden.shape:  # a different batch than the one cached
            raise RuntimeError(
                f"prefix cache: batch of shape {tuple(hidden_states.shape)}, cached "
                f"{tuple(self.hidden.shape)}"
            )
        return self.hidden


class _Stop(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a forward hook to end a pass once the layer wanted has run; carries its output."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class PrefixCache:
    """Hidden states entering a decoder layer, per evaluation batch, for suffix-only passes.

    ``focus`` (:meth:`set_focus`) is the first layer the coming candidates may differ in: ``None``
    means anything may change (e.g. an embedding or base-selection step); ``0``, layer 0 and up
    (nothing below it to cache, but the candidates of a layer-0 step can still be grouped, see
    :meth:`layer_output`); ``num_layers`` means only the final norm / ``lm_head`` do.
    """

    def __init__(self, model: nn.Module, adapter: FamilyAdapter | None = None):
        self.model = model
        self.adapter = adapter or get_adapter(model)
        self.focus: int | None = None
        self._entries: dict[Hashable, _Entry] = {}
        self._signatures: dict[int, Signature] | None = None  # memo, only inside begin()
        self.suffix_passes = 0  #: passes that skipped at least one layer
        self.layers_skipped = 0  #: decoder layers not run, summed over passes

    def set_focus(self, layer: int | None) -> None:
        if layer is not None and not 0 <= layer <= self.adapter.num_layers:
            raise ValueError(f"focus layer {layer} outside 0..{self.adapter.num_layers}")
        self.focus = layer

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ signatures
    def _prefix_tensors(self, start: int) -> list[torch.Tensor]:
        """Every parameter and buffer a pass through layers ``< start`` depends on: everything but
        layers ``start ..``, the final norm and an untied ``lm_head`` (a tied one *is* the
        embedding, reached through it)."""
        layers = self.adapter.layers()
        suffix_roots = [*list(layers)[start:], self.adapter.final_norm()]
        head = self.model.get_output_embeddings()
        if head is not None:
            suffix_roots.append(head)
        suffix = {id(m) for root in suffix_roots for m in root.modules()}
        out: list[torch.Tensor] = []
        for module in self.model.modules():
            if id(module) in suffix:
                continue
            out += module.parameters(recurse=False)
            out += module.buffers(recurse=False)
        return out

    def signature(self, start: int) -> Signature:
        """Identity and write count of every prefix tensor (memoised for one :meth:`begin` block:
        nothing is written while an evaluation runs)."""
        memo = self._signatures
        sig = memo.get(start) if memo is not None else None
        if sig is None:
            sig = tuple(
                (id(t), t.data_ptr(), t._version)
                for t in self._prefix_tensors(start)
                if t.device.type != "meta"
            )
            if memo is not None:
                memo[start] = sig
        return sig

    @contextmanager
    def begin(self) -> Iterator[None]:
        """One evaluation (the weights do not change inside): signatures are computed once."""
        self._signatures = {}
        try:
            yield
        finally:
            self._signatures = None

    # ------------------------------------------------------------------ passes
    @contextmanager
    def pass_for(self, slot: Hashable) -> Iterator[None]:
        """Wrap the one forward pass of batch ``slot``: skip the layers a valid entry covers, and
        capture the hidden states entering the focus layer for the next candidates."""
        k = self.focus
        if not k:  # None or 0: nothing below the focus to reuse
            yield
            return
        with self._reusing(slot, k):
            yield

    @contextmanager
    def _reusing(self, slot: Hashable, k: int) -> Iterator[None]:
        """The pass of batch ``slot`` with layers ``0 .. k-1`` reused: those a valid entry covers
        are stand-ins (the last replays the entry), and the hidden states entering layer ``k`` are
        captured for the slot's next passes when the pass runs layer ``k - 1`` for real. The entry
        is stored only when the wrapped block exits normally."""
        entry = self._entries.get(slot)
        if entry is not None and not (
            entry.start <= k and entry.signature == self.signature(entry.start)
        ):
            del self._entries[slot]
            entry = None
        start = entry.start if entry is not None else 0
        layers = self.adapter.layers()
        originals = [layers[j] for j in range(start)]
        captured: list[torch.Tensor] = []
        handle = None
        if start < k:

            def capture(_module: nn.Module, _args: Any, output: Any) -> None:
                captured.append(_hidden(output).detach())

            handle = layers[k - 1].register_forward_hook(capture)
        try:
            if entry is not None:
                for j in range(start - 1):
                    layers[j] = _PASS
                layers[start - 1] = _Replay(entry.hidden)
                self.suffix_passes += 1
                self.layers_skipped += start
            yield
        finally:
            for j, module in enumerate(originals):
                layers[j] = module
            if handle is not None:
                handle.remove()
        if len(captured) == 1:  # exactly one pass ran through layer k - 1: keep what entered k
            self._entries[slot] = _Entry(k, captured[0], self.signature(k))

    # ------------------------------------------------------------------ grouped candidates
    def outside(self, layer: int) -> list[torch.Tensor]:
        """Every parameter and buffer *outside* decoder layer ``layer`` (each once): what a
        grouped candidate (:meth:`layer_output`) must leave alone. Compare
        :func:`versions` of them before and after a candidate is applied."""
        block = self.adapter.layers()[layer]
        inside = {id(t) for t in (*block.parameters(), *block.buffers())}
        seen: set[int] = set()
        out = []
        for t in (*self.model.parameters(), *self.model.buffers()):
            if id(t) in inside or id(t) in seen or t.device.type == "meta":
                continue
            seen.add(id(t))
            out.append(t)
        return out

    def layer_output(self, slot: Hashable, run: Any) -> torch.Tensor:
        """The output of the focus layer ``k`` for batch ``slot``: ``run()`` (the batch's metric
        call) is cut short right after layer ``k``, which runs on the cached hidden states
        entering it. Without a valid entry at ``k`` the pass starts at the nearest earlier valid
        entry (or the embedding) and captures the entry on the way, so the slot's next calls
        replay it. Layers ``< k`` must hold the current state (they do: candidates of a step
        differ from it only from ``k`` on), so the entry captured with any candidate in place is
        the current state's."""
        k = self.focus
        if k is None or k >= self.adapter.num_layers:
            raise ValueError(f"layer_output needs a focus in 0..num_layers-1, got {k}")

        def stop(_module: nn.Module, _args: Any, output: Any) -> None:
            raise _Stop(_hidden(output).detach())

        handle = self.adapter.layers()[k].register_forward_hook(stop)
        out: torch.Tensor | None = None
        try:
            with self._reusing(slot, k):
                try:
                    run()
                except _Stop as stopped:  # caught inside, so the entry entering k is kept
                    out = stopped.output
        finally:
            handle.remove()
        if out is None:
            raise RuntimeError(f"prefix cache: the pass of batch {slot!r} never reached layer {k}")
        return out

    @contextmanager
    def stacked_pass(self, hidden: torch.Tensor) -> Iterator[None]:
        """Wrap one forward pass whose layers ``0 .. k`` (``k`` the focus) are stand-ins and whose
        layer ``k`` returns ``hidden``: the outputs of layer ``k`` of several candidates stacked
        along the batch dimension (the pass's batch must have that many rows). The real layers
        ``k+1 ..``, the final norm and ``lm_head`` run once for all of them."""
        k = self.focus
        if k is None or k >= self.adapter.num_layers:
            raise ValueError(f"stacked_pass needs a focus in 0..num_layers-1, got {k}")
        layers = self.adapter.layers()
        originals = [layers[j] for j in range(k + 1)]
        try:
            for j in range(k):
                layers[j] = _PASS
            layers[k] = _Replay(hidden)
            self.suffix_passes += 1
            self.layers_skipped += k + 1
            yield
        finally:
            for j, module in enumerate(originals):
                layers[j] = module


def versions(tensors: list[torch.Tensor]) -> Signature:
    """``(id, data_ptr, _version)`` of each tensor: equal before and after a write-free block."""
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)
