"""NeuralMemory: the Titans/MIRAS long-term memory as an ``nn.Module`` (outer parameters + state).

Outer (trained) parameters: an input RMSNorm, bias-free q/k/v projections (optionally followed by a
short causal depthwise convolution), per-head data-dependent gates α (forget), η (momentum) and
θ = sigmoid(·)·max_lr (inner learning rate), the learned per-head initial memory weights, and an output
projection. The inner (fast) weights live in a :class:`~olmokit.memory.state.MemoryState` and are updated
by :mod:`olmokit.memory.engine` (closed-form chunked update). Nothing is run under ``no_grad`` or
detached: the outer loss reaches every parameter through the inner updates unless the caller detaches
the state.

``config.granularity`` picks the update: "token" (default; per-token gates, momentum and decay, the
Titans equations) or "chunk" (one update per chunk, titans-pytorch's ``chunk_size=b, batch_size=b``).

Three calls: ``mem(x, state)`` stores and retrieves (y_t = M_t(q_t), after writing x_t; per chunk:
with the weights after the last chunk that ended at or before t);
``mem.store(x, state)`` writes only; ``mem.retrieve(x, state)`` reads with the state's current weights
(MAC's M*_{t-1}(q)). The engine math runs in fp32 (fp64 if the module is fp64) whatever x's dtype;
outputs are cast back to x's dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from olmokit.errors import ConfigError
from olmokit.memory.engine import (
    BIASES,
    EngineSpec,
    chunk_step,
    commit_partial,
    memory_scan,
    memory_scan_per_chunk,
    mlp_forward,
)
from olmokit.memory.state import MemoryState

__all__ = ["GRANULARITIES", "NeuralMemory", "NeuralMemoryConfig"]

#: update granularities: one update per token (Titans' equations) or one per chunk (titans-pytorch)
GRANULARITIES = ("token", "chunk")
QK_INITS = ("independent", "tied")
KEY_CONV_INITS = ("identity", "previous_token")

#: eps of the q/k ℓ2 normalisation: x / sqrt(Σx² + eps)
QK_NORM_EPS = 1e-6
#: eps of the input RMSNorm
RMS_EPS = 1e-6


@dataclass
class NeuralMemoryConfig:
    """Shape and inner-loop settings of one memory module.

    Args:
        dim: model width (input and output of the module).
        heads, head_dim: memory heads; q/k/v are ``heads × head_dim`` wide.
        hidden: hidden width of each head's memory MLP.
        depth: MLP layers (≥ 2).
        residual_norm: M(x) = x + LayerNorm(MLP(x)) instead of MLP(x).
        bias: attentional bias (inner loss): "l2", "huber" (Yaad; ``huber_delta``) or "lp" (Moneta;
            ``lp_p``, smoothed |e| with ``lp_eps``).
        conv_kernel: 0 = no convolution; else a causal depthwise conv of that width on q, k, v.
        max_lr: θ = sigmoid(·) · max_lr.
        grad_clip: soft clip of each token's inner gradient norm (None/0 = off); prevents NaN.
        chunk_train, chunk_prefill, chunk_decode: chunk sizes used when a call passes none
            (train mode; eval mode with more than one token; eval mode with one token).
        alpha_bias, eta_bias, theta_bias: initial biases of the gate projections (sigmoid(-5)≈0.007
            forgetting, sigmoid(2)≈0.88 momentum, θ = max_lr/2).
        granularity: "token" (default): per-token gates, momentum and decay inside a chunk (b
            updates per chunk, all gradients at the chunk-start weights), y_t reads W_t — Titans'
            equations, and titans-pytorch's ``chunk_size=1, batch_size=b``. "chunk": one update per
            chunk — the θ-weighted gradients of the chunk summed, α and η from the chunk's mean gate
            logits, y_t reads the weights after the last chunk that ended at or before t — the
            semantics of titans-pytorch's ``chunk_size=b, batch_size=b``; cheaper (no b×b terms),
            and the forget gate then acts once per chunk instead of once per token.
        qk_init: "independent" (default) draws ``to_q`` and ``to_k`` separately; "tied" starts
            ``to_q`` as a copy of ``to_k``, so that at step 0 a query already retrieves what a token
            with the same features wrote (content addressing the outer loop otherwise has to
            discover: with independent projections a 2-layer memory on associative recall learned
            to return *a* stored value, not the one its key addresses). Training unties them.
        key_conv_init: "identity" (default) starts the key convolution as the identity; with
            "previous_token" (needs ``conv_kernel`` >= 2) the key of token t starts as token t-1's
            projection, so the memory stores (token t-1 → token t): the key→value form of
            associative recall, where the value follows its key. Queries and values keep the
            identity.
    """

    dim: int
    heads: int = 4
    head_dim: int = 32
    hidden: int = 128
    depth: int = 2
    residual_norm: bool = False
    bias: str = "l2"
    huber_delta: float = 1.0
    lp_p: float = 3.0
    lp_eps: float = 1e-6
    conv_kernel: int = 0
    max_lr: float = 0.1
    grad_clip: float | None = 1.0
    chunk_train: int = 16
    chunk_prefill: int = 64
    chunk_decode: int = 1
    alpha_bias: float = -5.0
    eta_bias: float = 2.0
    theta_bias: float = 0.0
    granularity: str = "token"
    qk_init: str = "independent"
    key_conv_init: str = "identity"

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "heads",
            "head_dim",
            "hidden",
            "chunk_train",
            "chunk_prefill",
            "chunk_decode",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"NeuralMemoryConfig.{name} must be a positive integer, got {value!r}"
                )
        if not isinstance(self.depth, int) or self.depth < 2:
            raise ConfigError(
                f"NeuralMemoryConfig.depth must be an integer >= 2, got {self.depth!r}"
            )
        if self.bias not in BIASES:
            raise ConfigError(
                f"NeuralMemoryConfig.bias must be one of {', '.join(BIASES)}, got {self.bias!r}"
            )
        if not isinstance(self.conv_kernel, int) or self.conv_kernel < 0:
            raise ConfigError(
                f"NeuralMemoryConfig.conv_kernel must be 0 (off) or a positive integer, "
                f"got {self.conv_kernel!r}"
            )
        if not self.max_lr > 0:
            raise ConfigError(f"NeuralMemoryConfig.max_lr must be > 0, got {self.max_lr!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(
                f"NeuralMemoryConfig.grad_clip must be >= 0 or None, got {self.grad_clip!r}"
            )
        if self.huber_delta <= 0:
            raise ConfigError(
                f"NeuralMemoryConfig.huber_delta must be > 0, got {self.huber_delta!r}"
            )
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"NeuralMemoryConfig.granularity must be one of {', '.join(GRANULARITIES)}, "
                f"got {self.granularity!r}"
            )
        if self.qk_init not in QK_INITS:
            raise ConfigError(
                f"NeuralMemoryConfig.qk_init must be one of {', '.join(QK_INITS)}, "
                f"got {self.qk_init!r}"
            )
        if self.key_conv_init not in KEY_CONV_INITS:
            raise ConfigError(
                f"NeuralMemoryConfig.key_conv_init must be one of {', '.join(KEY_CONV_INITS)}, "
                f"got {self.key_conv_init!r}"
            )
        if self.key_conv_init == "previous_token" and self.conv_kernel < 2:
            raise ConfigError(
                "NeuralMemoryConfig.key_conv_init 'previous_token' needs conv_kernel >= 2 (the "
                f"key convolution must reach the token before), got conv_kernel {self.conv_kernel}"
            )
        if self.lp_p < 1 or self.lp_eps <= 0:
            raise ConfigError(
                f"NeuralMemoryConfig.lp_p must be >= 1 and lp_eps > 0, got {self.lp_p!r}, {self.lp_eps!r}"
            )

    @property
    def spec(self) -> EngineSpec:
        """The engine's view of this config."""
        return EngineSpec(
            depth=self.depth,
            residual_norm=self.residual_norm,
            bias=self.bias,
            huber_delta=float(self.huber_delta),
            lp_p=float(self.lp_p),
            lp_eps=float(self.lp_eps),
            grad_clip=float(self.grad_clip) if self.grad_clip else None,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _l2norm(x: Tensor) -> Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + QK_NORM_EPS)


class NeuralMemory(nn.Module):
    """A Titans/MIRAS neural long-term memory (see the module docstring).

    Parameters (names are stable; the reference implementation reads them): ``norm_weight`` [dim],
    ``to_q``/``to_k``/``to_v`` (Linear dim → heads·head_dim, no bias), ``conv_q``/``conv_k``/``conv_v``
    ([heads·head_dim, kernel], only with ``conv_kernel`` > 0; initialised to the identity), ``to_alpha``/
    ``to_eta``/``to_theta`` (Linear dim → heads), ``init_weights`` (ParameterList, layer l
    ``[heads, in, out]``), ``to_out`` (Linear heads·head_dim → dim, no bias).
    """

    def __init__(self, config: NeuralMemoryConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        inner = c.heads * c.head_dim
        self.norm_weight = nn.Parameter(torch.ones(c.dim))
        self.to_q = nn.Linear(c.dim, inner, bias=False)
        self.to_k = nn.Linear(c.dim, inner, bias=False)
        self.to_v = nn.Linear(c.dim, inner, bias=False)
        if c.conv_kernel > 0:
            ident = torch.zeros(inner, c.conv_kernel)
            ident[:, -1] = 1.0
            self.conv_q = nn.Parameter(ident.clone())
            self.conv_k = nn.Parameter(ident.clone())
            self.conv_v = nn.Parameter(ident.clone())
            if c.key_conv_init == "previous_token":
                with torch.no_grad():
                    self.conv_k[:, -1] = 0.0
                    self.conv_k[:, -2] = 1.0
        self.to_alpha = nn.Linear(c.dim, c.heads)
        self.to_eta = nn.Linear(c.dim, c.heads)
        self.to_theta = nn.Linear(c.dim, c.heads)
        with torch.no_grad():
            for lin, b in (
                (self.to_alpha, c.alpha_bias),
                (self.to_eta, c.eta_bias),
                (self.to_theta, c.theta_bias),
            ):
                lin.weight.mul_(0.1)
                lin.bias.fill_(b)
        sizes = [c.head_dim] + [c.hidden] * (c.depth - 1) + [c.head_dim]
        self.init_weights = nn.ParameterList(
            nn.Parameter(torch.randn(c.heads, i, o) / math.sqrt(i))
            for i, o in zip(sizes, sizes[1:])
        )
        self.to_out = nn.Linear(inner, c.dim, bias=False)
        if c.qk_init == "tied":  # after every draw: the other parameters match "independent"
            with torch.no_grad():
                self.to_q.weight.copy_(self.to_k.weight)
        self.spec = c.spec

    # ------------------------------------------------------------------ helpers
    @property
    def per_chunk(self) -> bool:
        """One memory update per chunk (``granularity: chunk``) instead of one per token."""
        return self.config.granularity == "chunk"

    @property
    def state_dtype(self) -> torch.dtype:
        """fp64 when the module is fp64 (tests), else fp32."""
        return torch.float64 if self.init_weights[0].dtype == torch.float64 else torch.float32

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """A fresh state: the learned initial weights (graph-connected, so they get gradients), zero
        momentum, nothing pending, position 0."""
        c = self.config
        dev = self.init_weights[0].device if device is None else torch.device(device)
        dt = self.state_dtype
        n = batch_size * c.heads
        weights = tuple(
            w.to(device=dev, dtype=dt)
            .unsqueeze(0)
            .expand(batch_size, *w.shape)
            .reshape(n, *w.shape[1:])
            for w in self.init_weights
        )
        momentum = tuple(
            torch.zeros(n, *w.shape[1:], device=dev, dtype=dt) for w in self.init_weights
        )
        inner = c.heads * c.head_dim
        conv_q = conv_kv = None
        if c.conv_kernel > 0:
            conv_q = torch.zeros(batch_size, c.conv_kernel - 1, inner, device=dev, dtype=dt)
            conv_kv = torch.zeros(batch_size, c.conv_kernel - 1, 2 * inner, device=dev, dtype=dt)
        return MemoryState(
            weights=weights,
            momentum=momentum,
            position=0,
            pending_k=torch.zeros(n, 0, c.head_dim, device=dev, dtype=dt),
            pending_v=torch.zeros(n, 0, c.head_dim, device=dev, dtype=dt),
            pending_gates=torch.zeros(n, 0, 3, device=dev, dtype=dt),
            pending_chunk=0,
            conv_q=conv_q,
            conv_kv=conv_kv,
            batch_size=batch_size,
            heads=c.heads,
        )

    def resolve_chunk(self, chunk_size: int | None, tokens: int) -> int:
        """The chunk size of a call: the given one, else chunk_train (train mode), chunk_decode (eval,
        one token) or chunk_prefill (eval, more tokens)."""
        if chunk_size is None:
            if self.training:
                return self.config.chunk_train
            return self.config.chunk_decode if tokens == 1 else self.config.chunk_prefill
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return chunk_size

    def _check(self, x: Tensor, state: MemoryState | None) -> MemoryState:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.dim:
            raise ConfigError(
                f"NeuralMemory expects x of shape [batch, tokens, {c.dim}], got {list(x.shape)}"
            )
        if state is None:
            return self.init_state(x.shape[0], x.device)
        if state.batch_size != x.shape[0] or state.heads != c.heads:
            raise ConfigError(
                f"memory state was made for batch {state.batch_size} × {state.heads} heads; this call has "
                f"batch {x.shape[0]} × {c.heads} heads (make a new state with init_state)"
            )
        if len(state.weights) != c.depth or state.weights[0].shape[-2] != c.head_dim:
            raise ConfigError("memory state does not match this module's depth/head_dim")
        return state

    def _norm(self, x: Tensor) -> Tensor:
        x = x.to(self.state_dtype)
        return (
            x * torch.rsqrt((x * x).mean(-1, keepdim=True) + RMS_EPS) * self.norm_weight.to(x.dtype)
        )

    def _conv(self, raw: Tensor, cache: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv over time with the previous kernel-1 inputs from ``cache``."""
        kern = weight.shape[-1]
        full = torch.cat([cache, raw], 1)  # [B, kern-1+T, C]
        out = F.conv1d(full.mT, weight.to(raw.dtype).unsqueeze(1), groups=weight.shape[0]).mT
        return out, full[:, full.shape[1] - (kern - 1) :]

    def _heads(self, t: Tensor) -> Tensor:
        """[B, T, H·d] -> [B·H, T, d]."""
        b, n, _ = t.shape
        return (
            t.view(b, n, self.config.heads, -1)
            .transpose(1, 2)
            .reshape(b * self.config.heads, n, -1)
        )

    def _query(self, xn: Tensor, state: MemoryState) -> tuple[Tensor, Tensor | None]:
        dt = xn.dtype
        q = F.linear(xn, self.to_q.weight.to(dt))
        conv_q = state.conv_q
        if self.config.conv_kernel > 0:
            q, conv_q = self._conv(q, state.conv_q, self.conv_q)
        return _l2norm(self._heads(q)), conv_q

    def _write_inputs(self, xn: Tensor, state: MemoryState):
        dt = xn.dtype
        k = F.linear(xn, self.to_k.weight.to(dt))
        v = F.linear(xn, self.to_v.weight.to(dt))
        conv_kv = state.conv_kv
        if self.config.conv_kernel > 0:
            kv, conv_kv = self._conv(
                torch.cat([k, v], -1), state.conv_kv, torch.cat([self.conv_k, self.conv_v], 0)
            )
            k, v = kv.chunk(2, -1)

        def gate(lin: nn.Linear) -> Tensor:  # [B, T, H] -> [B·H, T]
            z = F.linear(xn, lin.weight.to(dt), lin.bias.to(dt))
            return z.transpose(1, 2).reshape(-1, z.shape[1])

        if self.per_chunk:
            # the chunk's α and η are sigmoids of its *mean* logits: keep the logits
            gates = torch.stack(
                [
                    gate(self.to_alpha),  # α logit
                    gate(self.to_eta),  # η logit
                    torch.sigmoid(gate(self.to_theta)) * self.config.max_lr,  # θ
                ],
                -1,
            )
        else:
            gates = torch.stack(
                [
                    F.logsigmoid(-gate(self.to_alpha)),  # log(1 - α)
                    F.logsigmoid(gate(self.to_eta)),  # log η
                    torch.sigmoid(gate(self.to_theta)) * self.config.max_lr,  # θ
                ],
                -1,
            )
        return _l2norm(self._heads(k)), self._heads(v), gates, conv_kv

    def _out(self, y: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
        """[B·H, T, d] -> [B, T, dim] in the caller's dtype."""
        n = y.shape[1]
        inner = self.config.heads * self.config.head_dim
        y = (
            y.view(batch, self.config.heads, n, self.config.head_dim)
            .transpose(1, 2)
            .reshape(batch, n, inner)
        )
        return F.linear(y, self.to_out.weight.to(y.dtype)).to(dtype)

    def _flush(self, state: MemoryState, chunk: int) -> MemoryState:
        """Close the pending partial chunk when this call uses another chunk size."""
        if state.pending == 0 or state.pending_chunk == chunk:
            return state
        commit = chunk_step if self.per_chunk else commit_partial
        w, s = commit(
            list(state.weights),
            list(state.momentum),
            state.pending_k,
            state.pending_v,
            state.pending_gates,
            self.spec,
        )
        return MemoryState(
            weights=tuple(w),
            momentum=tuple(s),
            position=state.position,
            pending_k=state.pending_k[:, :0],
            pending_v=state.pending_v[:, :0],
            pending_gates=state.pending_gates[:, :0],
            pending_chunk=0,
            conv_q=state.conv_q,
            conv_kv=state.conv_kv,
            batch_size=state.batch_size,
            heads=state.heads,
        )

    def _write(self, x: Tensor, state: MemoryState, chunk_size: int | None, read: bool):
        state = self._check(x, state)
        chunk = self.resolve_chunk(chunk_size, x.shape[1])
        if x.shape[1] == 0:  # nothing to store: same state, empty output
            n = state.batch_size * state.heads
            return state.pending_k.new_zeros(n, 0, self.config.head_dim), state
        xn = self._norm(x)
        k, v, gates, conv_kv = self._write_inputs(xn, state)
        q, conv_q = self._query(xn, state) if read else (None, state.conv_q)
        state = self._flush(state, chunk)
        p = state.pending
        kk = torch.cat([state.pending_k, k], 1)
        vv = torch.cat([state.pending_v, v], 1)
        gg = torch.cat([state.pending_gates, gates], 1)
        scan = memory_scan_per_chunk if self.per_chunk else memory_scan
        y, w, s, npend = scan(
            list(state.weights),
            list(state.momentum),
            kk,
            vv,
            q,
            gg,
            start=state.position - p,
            n_skip=p,
            chunk=chunk,
            spec=self.spec,
        )
        total = kk.shape[1]
        new = MemoryState(
            weights=tuple(w),
            momentum=tuple(s),
            position=state.position + x.shape[1],
            pending_k=kk[:, total - npend :],
            pending_v=vv[:, total - npend :],
            pending_gates=gg[:, total - npend :],
            pending_chunk=chunk if npend else 0,
            conv_q=conv_q,
            conv_kv=conv_kv,
            batch_size=state.batch_size,
            heads=state.heads,
        )
        return y, new

    # ------------------------------------------------------------------ public calls
    def forward(
        self, x: Tensor, state: MemoryState | None = None, chunk_size: int | None = None
    ) -> tuple[Tensor, MemoryState]:
        """Store x and retrieve: returns (y [B, T, dim], new state) with y_t = M_t(q_t)."""
        y, new = self._write(x, state, chunk_size, read=True)
        return self._out(y, x.shape[0], x.dtype), new

    def store(
        self, x: Tensor, state: MemoryState | None = None, chunk_size: int | None = None
    ) -> MemoryState:
        """Write x into the memory; returns the new state (no retrieval is computed)."""
        return self._write(x, state, chunk_size, read=False)[1]

    def current_weights(self, state: MemoryState) -> list[Tensor]:
        """The weights the next read uses: after the last stored token (the pending tokens applied);
        at ``granularity: chunk``, after the last completed chunk (pending tokens count only when
        their chunk completes, as in the forward's reads)."""
        if self.per_chunk:
            return list(state.weights)
        w, _ = commit_partial(
            list(state.weights),
            list(state.momentum),
            state.pending_k,
            state.pending_v,
            state.pending_gates,
            self.spec,
        )
        return w

    def retrieve(
        self, x: Tensor, state: MemoryState | None = None, *, return_state: bool = False
    ) -> Tensor | tuple[Tensor, MemoryState]:
        """Read only: y = M(q) with the state's current weights for every token of x (MAC's
        M*_{t-1}(q)). With ``return_state`` also returns the state with the q-convolution history
        advanced (only differs from the input state when ``conv_kernel`` > 0)."""
        state = self._check(x, state)
        if x.shape[1] == 0:
            out = x.new_zeros(x.shape)
            return (out, state) if return_state else out
        q, conv_q = self._query(self._norm(x), state)
        y = mlp_forward(q, self.current_weights(state), self.spec)
        out = self._out(y, x.shape[0], x.dtype)
        if return_state:
            return out, replace(state, conv_q=conv_q)
        return out
