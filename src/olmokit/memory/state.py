"""The carried state of a :class:`~olmokit.memory.neural.NeuralMemory`.

Why a separate object: long inputs run in segments (and generation one token at a time), and the
memory must continue exactly where it stopped. Chunk boundaries are absolute (multiples of the chunk
size from position 0), so a call that ends inside a chunk leaves its tokens *pending*: their keys,
values and gates are kept, the weights stay those of the chunk start, and the next call redoes that
chunk with the new tokens appended. This makes chained calls equal to one call, and prefill followed
by token-by-token decode equal to one full forward (at the same chunk size).

The state is functional: every memory call returns a new state; :meth:`MemoryState.detach` returns a
copy cut from the autograd graph (truncated backprop across segments); tensors are not modified in
place. All memory tensors are fp32 (fp64 when the module is fp64) whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from olmokit.errors import CheckpointError

__all__ = ["MemoryState"]


@dataclass(frozen=True)
class MemoryState:
    """Fast weights, momentum, the pending-token buffer and the position of one memory module.

    Attributes:
        weights: per MLP layer, ``[batch·heads, in, out]``: the weights at the start of the current
            (unfinished) chunk; row ``b * heads + h`` is head h of batch row b.
        momentum: the momentum S at the same point, same shapes.
        position: number of tokens stored so far (absolute; chunk boundaries are multiples of the
            chunk size).
        pending_k, pending_v: ``[batch·heads, p, head_dim]`` keys/values of the p tokens stored since
            the last chunk boundary (p < chunk size).
        pending_gates: ``[batch·heads, p, 3]``: (log(1-α), log η, θ) of those tokens; at
            ``granularity: chunk`` (α logit, η logit, θ), since a chunk's gates come from its mean
            logits. A state therefore belongs to modules of one granularity.
        pending_chunk: the chunk size the pending tokens were stored with (0 when p = 0). A call with
            another chunk size first closes that partial chunk.
        conv_q, conv_kv: the last ``conv_kernel - 1`` pre-convolution q and k|v projections
            ``[batch, kernel-1, heads·head_dim]`` / ``[batch, kernel-1, 2·heads·head_dim]``, or None
            without convolution.
        batch_size, heads: the layout, checked against every call.
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...]
    position: int
    pending_k: Tensor
    pending_v: Tensor
    pending_gates: Tensor
    pending_chunk: int
    conv_q: Tensor | None
    conv_kv: Tensor | None
    batch_size: int
    heads: int

    @property
    def pending(self) -> int:
        """Number of tokens of the unfinished chunk."""
        return self.pending_k.shape[1]

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    def _map(self, fn) -> MemoryState:
        return replace(
            self,
            weights=tuple(fn(t) for t in self.weights),
            momentum=tuple(fn(t) for t in self.momentum),
            pending_k=fn(self.pending_k),
            pending_v=fn(self.pending_v),
            pending_gates=fn(self.pending_gates),
            conv_q=None if self.conv_q is None else fn(self.conv_q),
            conv_kv=None if self.conv_kv is None else fn(self.conv_kv),
        )

    def detach(self) -> MemoryState:
        """A copy cut from the autograd graph (same storage): truncated backprop stops here."""
        return self._map(lambda t: t.detach())

    def to(self, device: torch.device | str) -> MemoryState:
        """A copy on ``device`` (dtype unchanged: memory tensors stay fp32/fp64)."""
        return self._map(lambda t: t.to(device))

    def state_dict(self) -> dict[str, Tensor]:
        """Flat name → tensor dict (ints as 0-d int64 tensors): detached contiguous copies that share
        no storage, so ``safetensors.torch.save_file`` takes it as is."""
        out: dict[str, Tensor] = {}
        for i, t in enumerate(self.weights):
            out[f"weights.{i}"] = t.detach()
        for i, t in enumerate(self.momentum):
            out[f"momentum.{i}"] = t.detach()
        out["pending_k"] = self.pending_k.detach()
        out["pending_v"] = self.pending_v.detach()
        out["pending_gates"] = self.pending_gates.detach()
        if self.conv_q is not None:
            out["conv_q"] = self.conv_q.detach()
            out["conv_kv"] = self.conv_kv.detach()
        out = {k: t.clone(memory_format=torch.contiguous_format) for k, t in out.items()}
        for name in ("position", "pending_chunk", "batch_size", "heads"):
            out[name] = torch.tensor(getattr(self, name), dtype=torch.int64)
        return out

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, Tensor], device: torch.device | str | None = None
    ) -> MemoryState:
        """Rebuild a state written by :meth:`state_dict` (optionally onto ``device``)."""
        try:
            depth = sum(1 for key in sd if key.startswith("weights."))
            if depth < 2:
                raise KeyError("weights.0/weights.1")

            def get(key: str) -> Tensor:
                t = sd[key]
                return t if device is None else t.to(device)

            state = cls(
                weights=tuple(get(f"weights.{i}") for i in range(depth)),
                momentum=tuple(get(f"momentum.{i}") for i in range(depth)),
                position=int(sd["position"]),
                pending_k=get("pending_k"),
                pending_v=get("pending_v"),
                pending_gates=get("pending_gates"),
                pending_chunk=int(sd["pending_chunk"]),
                conv_q=get("conv_q") if "conv_q" in sd else None,
                conv_kv=get("conv_kv") if "conv_kv" in sd else None,
                batch_size=int(sd["batch_size"]),
                heads=int(sd["heads"]),
            )
        except KeyError as exc:
            raise CheckpointError(f"memory state is missing key {exc.args[0]!r}") from None
        return state
