"""Closed-form ("dual form") chunked update of a Titans/MIRAS MLP memory.

Semantics (Titans eqs. 10/13, per head, per token t, chunk size b with absolute boundaries)::

    u_t = ∇_W ℓ(M(k_t; W_c), v_t)          # W_c = the weights at the start of t's chunk
    S_t = η_t S_{t-1} - θ_t s_t u_t         # momentum; s_t = soft clip of ||u_t||
    W_t = (1 - α_t) W_{t-1} + S_t           # forget gate α, per token
    y_t = M(q_t; W_t)                       # retrieval after writing x_t

Why closed form: every u_t is a sum of rank-1 outer products ``a_{l-1}ᵀ δ_l`` (one per layer) taken at
the chunk-start weights, so they are computed for the whole chunk at once with a hand-written backward
(no autograd in the inner loop, so the *outer* backward stays plain autograd and nothing is detached).
Momentum and decay unroll to ``W_i = β_i W_c + cS_i S_c - Σ_{r≤i} C[i,r] u_r`` with a b×b coefficient
matrix ``C`` built from log-space cumulative sums of ``log(1-α)`` and ``log η`` (the caller passes
those logs directly, computed with ``logsigmoid``, so there is never a ``log(0)``). Retrieval never
materialises a per-token weight: layer l of ``M(q_i; W_i)`` is
``β_i x W_l + cS_i x S_l - (C ⊙ x Aᵀ_{l-1}) Δ_l`` (attention-like b×b matmuls). Only the T/b chunk
steps run in sequence; batch×heads is the batched-matmul dimension. All math is in the dtype of the
state (fp32, or fp64 in tests).

Memory model M (per head, weights ``[N, in, out]`` with N = batch·heads): an MLP of depth L ≥ 2 without
biases, ``z_l = a_{l-1} W_l``, ``a_l = gelu(z_l)`` (exact erf GELU) for l < L, output ``z_L``; with
``residual_norm`` M(x) = x + LayerNorm(MLP(x)) (LayerNorm without affine; its backward is folded into
the closed form). Attentional bias (the inner loss, MIRAS): ``l2`` = mean_d e², ``huber`` (Yaad) =
(2/d) Σ huber_δ(e), ``lp`` (Moneta) = (1/d) Σ (e² + ε)^{p/2}, with e = M(k) - v; only dℓ/dy changes.

Soft clip: ``s_t = (1 + ||u_t||²/c²)^{-1/2}`` with ||u_t||² = Σ_l ||a_{l-1}||² ||δ_l||² (exact for rank-1
terms), so ||s_t u_t|| < c and grows like ||u_t|| when small; it folds into θ. It keeps huge inputs from
blowing the weights up (NaN) without a hard, non-smooth cut.

Reference semantics for all of this: :mod:`olmokit.memory.reference` (per-token autograd loop).

All of the above is ``granularity="token"``. :func:`memory_scan_per_chunk` / :func:`chunk_step` (end of
this module) implement ``granularity="chunk"``: the same chunk-start gradients, summed and applied as
one update per chunk with gates from the chunk's mean logits (titans-pytorch's ``chunk_size=b,
batch_size=b``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "EngineSpec",
    "attentional_bias_grad",
    "chunk_coefficients",
    "chunk_step",
    "dual_chunk",
    "commit_partial",
    "memory_scan",
    "memory_scan_per_chunk",
    "mlp_forward",
]

#: the attentional biases (inner losses) the engine implements
BIASES = ("l2", "huber", "lp")


@dataclass(frozen=True)
class EngineSpec:
    """Everything about the inner memory that is not a tensor (shared by engine and reference)."""

    depth: int = 2
    residual_norm: bool = False
    bias: str = "l2"
    huber_delta: float = 1.0
    lp_p: float = 3.0
    lp_eps: float = 1e-6
    grad_clip: float | None = 1.0
    ln_eps: float = 1e-5


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_grad(z: Tensor) -> Tensor:
    """d gelu(z)/dz for the exact (erf) GELU: Φ(z) + z φ(z)."""
    return 0.5 * (1.0 + torch.erf(z * _INV_SQRT2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT2PI


def _layer_norm(o: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Parameter-free LayerNorm over the last dim; returns (normalised, 1/σ)."""
    mu = o.mean(-1, keepdim=True)
    c = o - mu
    rstd = torch.rsqrt((c * c).mean(-1, keepdim=True) + eps)
    return c * rstd, rstd


def attentional_bias_grad(e: Tensor, spec: EngineSpec) -> Tensor:
    """dℓ/dy for the residual e = M(k) - v, per token (the only place the attentional bias enters)."""
    d = e.shape[-1]
    if spec.bias == "l2":
        return e * (2.0 / d)
    if spec.bias == "huber":
        return e.clamp(-spec.huber_delta, spec.huber_delta) * (2.0 / d)
    if spec.bias == "lp":
        p = spec.lp_p
        return (e * e + spec.lp_eps).pow((p - 2.0) / 2.0) * e * (p / d)
    raise ValueError(f"unknown attentional bias {spec.bias!r}; valid: {', '.join(BIASES)}")


def mlp_forward(x: Tensor, weights: list[Tensor], spec: EngineSpec) -> Tensor:
    """M(x; W) with fixed weights (read-only retrieval). x [N, n, d], weights[l] [N, in, out]."""
    a = x
    for w in weights[:-1]:
        a = F.gelu(a @ w)
    o = a @ weights[-1]
    if spec.residual_norm:
        return x + _layer_norm(o, spec.ln_eps)[0]
    return o


def _tri_exp(cum: Tensor) -> Tensor:
    """[..., n] cumulative logs L -> [..., n, n] lower-triangular exp(L_i - L_j) (i ≥ j), else 0.

    The upper triangle is filled with -inf *before* the exp, so no overflow (and no 0·inf NaN in the
    backward) can come from the unused entries.
    """
    n = cum.shape[-1]
    diff = cum[..., :, None] - cum[..., None, :]
    keep = torch.ones(n, n, dtype=torch.bool, device=cum.device).tril()
    return diff.masked_fill(~keep, float("-inf")).exp()


def chunk_coefficients(log_keep: Tensor, log_eta: Tensor) -> tuple[Tensor, ...]:
    """Gate-only coefficients of one chunk (or a stack of equal chunks), from per-token logs.

    log_keep = log(1-α), log_eta = log η, both ``[..., n]``. Returns

    * ``RD [..., n, n]``: RD[i, r] = Σ_{s=r..i} (β_i/β_s) Π_{j=r+1..s} η_j  (C = RD · θ'_r),
    * ``beta [..., n]``: β_i = Π_{j≤i} (1-α_j) (decay of the chunk-start weights),
    * ``cs [..., n]``: cS_i = Σ_{s≤i} (β_i/β_s) Π_{j≤s} η_j (weight of the chunk-start momentum),
    * ``dlast [..., n]``: Π_{j=r+1..n-1} η_j (carry of token r's surprise into the final momentum),
    * ``eta_all [...]``: Π_{j≤n-1} η_j (carry of the chunk-start momentum).
    """
    lb = torch.cumsum(log_keep, -1)
    le = torch.cumsum(log_eta, -1)
    r = _tri_exp(lb)  # R[i, s] = β_i / β_s
    dm = _tri_exp(le)  # D[s, r] = Π_{j=r+1..s} η_j
    rd = r @ dm
    pe = le.exp()
    cs = (r @ pe.unsqueeze(-1)).squeeze(-1)
    return rd, lb.exp(), cs, dm[..., -1, :], pe[..., -1]


def _key_pass(weights: list[Tensor], k: Tensor, v: Tensor, spec: EngineSpec):
    """Forward on the keys at the chunk-start weights and the closed-form backward.

    Returns (inputs a_{l-1} per layer, δ_l = dℓ/dz_l per layer, squared per-token grad norm [N, n]).
    """
    acts = [k]
    pre = []
    a = k
    for w in weights[:-1]:
        z = a @ w
        pre.append(z)
        a = F.gelu(z)
        acts.append(a)
    o = a @ weights[-1]
    if spec.residual_norm:
        nrm, rstd = _layer_norm(o, spec.ln_eps)
        g = attentional_bias_grad(k + nrm - v, spec)
        # LayerNorm backward (no affine): (g - mean g - n·mean(g n)) / σ
        delta = (g - g.mean(-1, keepdim=True) - nrm * (g * nrm).mean(-1, keepdim=True)) * rstd
    else:
        delta = attentional_bias_grad(o - v, spec)
    deltas = [delta]
    for layer in range(len(weights) - 2, -1, -1):
        # fused g·gelu'(z) (differentiable twice, like the unfused formula _gelu_grad)
        delta = torch.ops.aten.gelu_backward(delta @ weights[layer + 1].mT, pre[layer])
        deltas.append(delta)
    deltas.reverse()
    sq = sum((a * a).sum(-1) * (d * d).sum(-1) for a, d in zip(acts, deltas))
    return acts, deltas, sq


def dual_chunk(
    weights: list[Tensor],
    momentum: list[Tensor],
    k: Tensor,
    v: Tensor,
    q: Tensor | None,
    theta: Tensor,
    coeffs: tuple[Tensor, ...],
    spec: EngineSpec,
    commit: bool,
) -> tuple[Tensor | None, list[Tensor] | None, list[Tensor] | None]:
    """One chunk of n tokens: outputs y_i = M(q_i; W_i) and (if ``commit``) the end-of-chunk state.

    k, v [N, n, d]; q [N, m, d] (the last m ≤ n tokens' queries) or None (store only); theta [N, n]
    (inner lr before clipping); coeffs from :func:`chunk_coefficients` of this chunk's gates.
    """
    rd, beta, cs, dlast, eta_all = coeffs
    acts, deltas, sq = _key_pass(weights, k, v, spec)
    if spec.grad_clip:
        theta = theta * torch.rsqrt(1.0 + sq / (spec.grad_clip * spec.grad_clip))
    c = rd * theta.unsqueeze(-2)  # C[i, r] = RD[i, r] θ'_r
    y = None
    if q is not None:
        m = q.shape[-2]
        n = k.shape[-2]
        cq = c[..., n - m :, :]
        b_ = beta[..., n - m :, None]
        s_ = cs[..., n - m :, None]
        x = q
        last = len(weights) - 1
        for layer, (w, s) in enumerate(zip(weights, momentum)):
            # row scalings go on the narrower side of the matmul
            if w.shape[-2] <= w.shape[-1]:
                base = (b_ * x) @ w + (s_ * x) @ s
            else:
                base = b_ * (x @ w) + s_ * (x @ s)
            z = torch.baddbmm(base, cq * (x @ acts[layer].mT), deltas[layer], alpha=-1.0)
            x = F.gelu(z) if layer < last else z
        y = q + _layer_norm(x, spec.ln_eps)[0] if spec.residual_norm else x
    if not commit:
        return y, None, None
    cl = c[..., -1, :, None]  # C[n-1, r]
    mw = (dlast * theta).unsqueeze(-1)
    bl = beta[..., -1, None, None]
    sl = cs[..., -1, None, None]
    el = eta_all[..., None, None]
    new_w = [
        torch.baddbmm(bl * w + sl * s, a.mT, cl * d, alpha=-1.0)
        for w, s, a, d in zip(weights, momentum, acts, deltas)
    ]
    new_s = [
        torch.baddbmm(el * s, a.mT, mw * d, alpha=-1.0) for s, a, d in zip(momentum, acts, deltas)
    ]
    return y, new_w, new_s


def _segments(start: int, total: int, chunk: int) -> list[tuple[int, int]]:
    """Split stream indices [0, total) whose first token sits at absolute position ``start`` at the
    absolute multiples of ``chunk``."""
    out = []
    lo = 0
    nxt = (start // chunk + 1) * chunk - start
    while lo < total:
        hi = min(nxt, total)
        out.append((lo, hi))
        lo, nxt = hi, hi + chunk
    return out


def memory_scan(
    weights: list[Tensor],
    momentum: list[Tensor],
    k: Tensor,
    v: Tensor,
    q: Tensor | None,
    gates: Tensor,
    *,
    start: int,
    n_skip: int,
    chunk: int,
    spec: EngineSpec,
) -> tuple[Tensor | None, list[Tensor], list[Tensor], int]:
    """Run the chunked memory over a token stream whose first token has absolute position ``start``.

    The stream is the pending tokens of an unfinished chunk (``n_skip`` of them, already answered, so
    their queries are not passed) followed by the new ones: k, v [N, n, d], q [N, n - n_skip, d] or
    None, gates [N, n, 3] = (log(1-α), log η, θ). Chunks end at absolute multiples of ``chunk``.
    Returns (y [N, n - n_skip, d] or None, weights, momentum, number of trailing tokens of an
    unfinished chunk — the new pending tokens; weights/momentum are then those at that chunk's start).
    """
    n = k.shape[-2]
    segs = _segments(start, n, chunk)
    sizes = [hi - lo for lo, hi in segs]
    # split once (the backward of a split is one concatenation; per-chunk slicing would build a
    # full-size zero gradient per chunk, quadratic in T)
    ks, vs, gs = k.split(sizes, 1), v.split(sizes, 1), gates.split(sizes, 1)
    qs = [None] * len(segs)
    if q is not None:
        rows = [max(0, hi - max(lo, n_skip)) for lo, hi in segs]
        qs = [qi if r else None for qi, r in zip(q.split(rows, 1), rows)]
    # batch the gate coefficients of all full chunks that sit between the first and the last segment
    full = [i for i, size in enumerate(sizes) if size == chunk]
    pre = {}
    if len(full) > 1 and full == list(range(full[0], full[-1] + 1)):
        lo0, hi0 = segs[full[0]][0], segs[full[-1]][1]
        g = gates[:, lo0:hi0].unflatten(1, (len(full), chunk))
        per_chunk = [t.unbind(1) for t in chunk_coefficients(g[..., 0], g[..., 1])]
        for j, i in enumerate(full):
            pre[i] = tuple(t[j] for t in per_chunk)
    ys = []
    pending = 0
    for i, (lo, hi) in enumerate(segs):
        commit = (start + hi) % chunk == 0
        g = gs[i]
        co = pre.get(i)
        if co is None:
            co = chunk_coefficients(g[..., 0], g[..., 1])
        y, nw, ns = dual_chunk(weights, momentum, ks[i], vs[i], qs[i], g[..., 2], co, spec, commit)
        if y is not None:
            ys.append(y)
        if commit:
            weights, momentum = nw, ns
        else:
            pending = hi - lo
    y = None
    if q is not None:
        y = torch.cat(ys, 1) if ys else q.new_zeros(q.shape)
    return y, weights, momentum, pending


def commit_partial(
    weights: list[Tensor],
    momentum: list[Tensor],
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    spec: EngineSpec,
) -> tuple[list[Tensor], list[Tensor]]:
    """The weights and momentum after the tokens of an unfinished chunk (the "current" memory)."""
    if k.shape[-2] == 0:
        return weights, momentum
    co = chunk_coefficients(gates[..., 0], gates[..., 1])
    _, w, s = dual_chunk(weights, momentum, k, v, None, gates[..., 2], co, spec, True)
    return w, s


# ---------------------------------------------------------------------------------------------------
# Per-chunk granularity (titans-pytorch ``NeuralMemory(chunk_size=b, batch_size=b)`` semantics)
#
#     U_c = Σ_{t ∈ c} θ'_t ∇_W ℓ(M(k_t; W_c), v_t)     # θ'_t = θ_t s_t (per-token soft clip)
#     S_{c+1} = η_c S_c - U_c;   W_{c+1} = (1 - α_c) W_c + S_{c+1}
#     α_c = sigmoid(mean_{t ∈ c} z^α_t),  η_c = sigmoid(mean_{t ∈ c} z^η_t)   (gate logits averaged)
#     y_t = M(q_t; W after every chunk that ended at or before t)
#
# One update per chunk: U_l = A_{l-1}ᵀ (θ' ⊙ Δ_l) is a single matmul per layer, and retrieval is a
# plain MLP forward at one set of weights per chunk (no b×b coefficients, no momentum terms). A
# chunk's last token reads the weights *after* its chunk; the others read the chunk-start weights.
# The tokens of an unfinished chunk need no key pass at all until their chunk completes.
# ---------------------------------------------------------------------------------------------------


def chunk_step(
    weights: list[Tensor],
    momentum: list[Tensor],
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    spec: EngineSpec,
) -> tuple[list[Tensor], list[Tensor]]:
    """One per-chunk update from the chunk-start weights: the weights and momentum after the chunk.

    k, v [N, n, d]; gates [N, n, 3] = (α logit, η logit, θ) per token; the chunk's α and η are the
    sigmoids of the mean logits (titans-pytorch's average pooling of the chunk before its gate
    projections, which are linear).
    """
    acts, deltas, sq = _key_pass(weights, k, v, spec)
    theta = gates[..., 2]
    if spec.grad_clip:
        theta = theta * torch.rsqrt(1.0 + sq / (spec.grad_clip * spec.grad_clip))
    zm = gates[..., :2].mean(1)
    keep = torch.sigmoid(-zm[:, 0])[:, None, None]  # 1 - α_c
    eta = torch.sigmoid(zm[:, 1])[:, None, None]
    new_w, new_s = [], []
    for w, s, a, d in zip(weights, momentum, acts, deltas):
        # θ' scales the narrower operand of U = aᵀ (θ' d)
        if a.shape[-1] <= d.shape[-1]:
            s2 = torch.baddbmm(eta * s, (a * theta.unsqueeze(-1)).mT, d, alpha=-1.0)
        else:
            s2 = torch.baddbmm(eta * s, a.mT, d * theta.unsqueeze(-1), alpha=-1.0)
        new_s.append(s2)
        new_w.append(keep * w + s2)
    return new_w, new_s


def memory_scan_per_chunk(
    weights: list[Tensor],
    momentum: list[Tensor],
    k: Tensor,
    v: Tensor,
    q: Tensor | None,
    gates: Tensor,
    *,
    start: int,
    n_skip: int,
    chunk: int,
    spec: EngineSpec,
) -> tuple[Tensor | None, list[Tensor], list[Tensor], int]:
    """:func:`memory_scan` at per-chunk granularity (same arguments and returns).

    gates [N, n, 3] = (α logit, η logit, θ). Query row i (stream index n_skip + i) is answered with
    the weights after every chunk of the stream that ends at or before it; the pending tokens of an
    unfinished chunk are only read (their key pass runs when the chunk completes).
    """
    n = k.shape[-2]
    segs = _segments(start, n, chunk)
    sizes = [hi - lo for lo, hi in segs]
    commits = [(start + hi) % chunk == 0 for _, hi in segs]
    ys: list[Tensor] = []
    q_groups: list[Tensor | None] = []
    if q is not None:
        # group j = the query rows read with the weights after j commits: stream cuts at the last
        # token of each committed chunk (that token already reads its own chunk's update)
        cuts = [hi - 1 for (_, hi), c in zip(segs, commits) if c]
        bounds = [n_skip] + [max(n_skip, c) for c in cuts] + [n]
        rows = [hi - lo for lo, hi in zip(bounds, bounds[1:])]
        q_groups = [g if r else None for g, r in zip(q.split(rows, 1), rows)]
    ks, vs, gs = k.split(sizes, 1), v.split(sizes, 1), gates.split(sizes, 1)
    pending = 0
    version = 0
    for i, commit in enumerate(commits):
        if q_groups and q_groups[version] is not None:
            ys.append(mlp_forward(q_groups[version], weights, spec))
        if commit:
            weights, momentum = chunk_step(weights, momentum, ks[i], vs[i], gs[i], spec)
            version += 1
        else:
            pending = sizes[i]
    if q_groups and version < len(q_groups) and q_groups[version] is not None and commits[-1]:
        ys.append(mlp_forward(q_groups[version], weights, spec))
    y = None
    if q is not None:
        y = torch.cat(ys, 1) if ys else q.new_zeros(q.shape)
    return y, weights, momentum, pending
