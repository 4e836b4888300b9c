"""A slow, obviously correct per-token memory: the oracle the chunked engine is tested against.

It reads a :class:`~olmokit.memory.neural.NeuralMemory`'s parameters but shares none of its code (or
the engine's): projections, convolution, gates, the memory MLP and the inner losses are written out
again from their definitions, the inner gradient is taken by ``torch.autograd.grad`` (with
``create_graph=True``, so outer gradients flow through it), and the update is applied token by token
with the plain products (1-α), η — no log space, no closed form::

    for each token t (chunk start c = t - t % b):
        u_t = ∇_W ℓ(M(k_t; W_c), v_t);  s_t = (1 + ||u_t||²/clip²)^{-1/2}
        S_t = η_t S_{t-1} - θ_t s_t u_t;  W_t = (1 - α_t) W_{t-1} + S_t;  y_t = M(q_t; W_t)

Use it in float64 for parity tests and as the "per-token loop" of the speed benchmark.

At ``granularity: chunk`` (:func:`reference_forward_per_chunk`, which :func:`reference_forward`
dispatches to) the same per-token gradients are summed over each chunk and applied once, with the
chunk's gates computed from the mean of its normalised inputs (titans-pytorch's average pooling)::

    for each complete chunk c (its tokens' gradients all at W_c):
        U = Σ_{t∈c} θ_t s_t u_t;  α_c, η_c = sigmoid(mean_{t∈c}(x̂_t) W + b)
        S ← η_c S - U;  W ← (1 - α_c) W + S
    y_t = M(q_t; W after every chunk that ended at or before t)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["reference_forward", "reference_forward_per_chunk", "reference_loss"]


def reference_loss(
    y: Tensor, v: Tensor, bias: str, huber_delta: float, lp_p: float, lp_eps: float
) -> Tensor:
    """The attentional bias ℓ(y, v) per row (sum over the rows is what autograd differentiates)."""
    e = y - v
    d = e.shape[-1]
    if bias == "l2":
        return (e**2).mean(-1)
    if bias == "huber":
        small = 0.5 * e**2
        large = huber_delta * (e.abs() - 0.5 * huber_delta)
        return torch.where(e.abs() <= huber_delta, small, large).sum(-1) * (2.0 / d)
    if bias == "lp":
        return ((e**2 + lp_eps) ** (lp_p / 2.0)).sum(-1) / d
    raise ValueError(bias)


def _mlp(x: Tensor, ws: list[Tensor], residual_norm: bool) -> Tensor:
    h = x
    for i, w in enumerate(ws):
        h = torch.einsum("ni,nio->no", h, w)
        if i < len(ws) - 1:
            h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    if residual_norm:
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        h = x + (h - mu) / torch.sqrt(var + 1e-5)
    return h


def _causal_conv(raw: Tensor, weight: Tensor) -> Tensor:
    """out[t, c] = Σ_j weight[c, j] raw[t - (K-1) + j, c] (zero before the start)."""
    kern = weight.shape[-1]
    out = torch.zeros_like(raw)
    for t in range(raw.shape[1]):
        for j in range(kern):
            src = t - (kern - 1) + j
            if src >= 0:
                out[:, t] = out[:, t] + weight[:, j] * raw[:, src]
    return out


def _prepare(mem, x: Tensor) -> dict:
    """Per-head inputs of the memory, from the parameter definitions: normalised input, q/k/v, gates."""
    c = mem.config
    bsz, n_tok, _ = x.shape
    h, d = c.heads, c.head_dim
    x = x.to(mem.init_weights[0].dtype)
    xn = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * mem.norm_weight
    q = xn @ mem.to_q.weight.T
    k = xn @ mem.to_k.weight.T
    v = xn @ mem.to_v.weight.T
    if c.conv_kernel > 0:
        q = _causal_conv(q, mem.conv_q)
        k = _causal_conv(k, mem.conv_k)
        v = _causal_conv(v, mem.conv_v)
    alpha = torch.sigmoid(xn @ mem.to_alpha.weight.T + mem.to_alpha.bias)  # [B, T, H]
    eta = torch.sigmoid(xn @ mem.to_eta.weight.T + mem.to_eta.bias)
    theta = torch.sigmoid(xn @ mem.to_theta.weight.T + mem.to_theta.bias) * c.max_lr

    def per_head(t: Tensor) -> Tensor:  # [B, T, H*d] -> [B*H, T, d]
        return t.reshape(bsz, n_tok, h, d).permute(0, 2, 1, 3).reshape(bsz * h, n_tok, d)

    def unit(t: Tensor) -> Tensor:
        return t / torch.sqrt((t**2).sum(-1, keepdim=True) + 1e-6)

    q, k, v = unit(per_head(q)), unit(per_head(k)), per_head(v)
    alpha, eta, theta = (g.permute(0, 2, 1).reshape(bsz * h, n_tok) for g in (alpha, eta, theta))
    weights = [
        w.unsqueeze(0).expand(bsz, *w.shape).reshape(bsz * h, *w.shape[1:])
        for w in mem.init_weights
    ]
    return dict(xn=xn, q=q, k=k, v=v, alpha=alpha, eta=eta, theta=theta, weights=weights)


def _token_grad(mem, start: list[Tensor], k: Tensor, v: Tensor, theta: Tensor):
    """Token t's inner gradient at the chunk-start weights and its clipped learning rate."""
    c = mem.config
    loss = reference_loss(
        _mlp(k, start, c.residual_norm), v, c.bias, c.huber_delta, c.lp_p, c.lp_eps
    )
    grads = torch.autograd.grad(loss.sum(), start, create_graph=True)
    lr = theta
    if c.grad_clip:
        sq = sum((g**2).sum((-2, -1)) for g in grads)
        lr = lr / torch.sqrt(1.0 + sq / c.grad_clip**2)
    return grads, lr


def _merge_heads(mem, ys: list[Tensor], bsz: int) -> Tensor:
    c = mem.config
    h, d, n_tok = c.heads, c.head_dim, len(ys)
    y = torch.stack(ys, 1)  # [B*H, T, d]
    y = y.reshape(bsz, h, n_tok, d).permute(0, 2, 1, 3).reshape(bsz, n_tok, h * d)
    return F.linear(y, mem.to_out.weight)


def reference_forward(
    mem, x: Tensor, chunk_size: int, chunk_lengths: list[int] | None = None
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Store and retrieve ``x`` [B, T, dim] from a fresh state, one token at a time.

    Chunks start at multiples of ``chunk_size``, or, with ``chunk_lengths``, at the running sums of
    those lengths (to check calls that switch chunk size). Returns (y [B, T, dim], final weights,
    final momentum), weights as ``[B·heads, in, out]``. A module with ``granularity: chunk`` is
    handed to :func:`reference_forward_per_chunk`.
    """
    if mem.config.granularity == "chunk":
        return reference_forward_per_chunk(mem, x, chunk_size, chunk_lengths)
    if chunk_lengths is None:
        starts = set(range(0, x.shape[1], chunk_size))
    else:
        starts = {sum(chunk_lengths[:i]) for i in range(len(chunk_lengths))}
    c = mem.config
    p = _prepare(mem, x)
    q, k, v, alpha, eta, theta = (p[n] for n in ("q", "k", "v", "alpha", "eta", "theta"))
    weights = p["weights"]
    momentum = [torch.zeros_like(w) for w in weights]
    start = list(weights)
    ys = []
    for t in range(x.shape[1]):
        if t in starts:
            start = list(weights)
        grads, lr = _token_grad(mem, start, k[:, t], v[:, t], theta[:, t])
        momentum = [
            eta[:, t, None, None] * s - lr[:, None, None] * g for s, g in zip(momentum, grads)
        ]
        weights = [(1 - alpha[:, t, None, None]) * w + s for w, s in zip(weights, momentum)]
        ys.append(_mlp(q[:, t], weights, c.residual_norm))
    return _merge_heads(mem, ys, x.shape[0]), weights, momentum


def reference_forward_per_chunk(
    mem, x: Tensor, chunk_size: int, chunk_lengths: list[int] | None = None
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``granularity: chunk``: one update per complete chunk (see the module docstring).

    Chunks are ``chunk_size`` long from position 0 (a trailing shorter chunk is incomplete: not
    applied), or, with ``chunk_lengths``, exactly those chunks, each applied after its last token.
    Returns (y [B, T, dim], weights, momentum) after the last applied chunk.
    """
    c = mem.config
    bsz, n_tok, _ = x.shape
    if chunk_lengths is None:
        ends = set(range(chunk_size, n_tok + 1, chunk_size))
    else:
        ends = {sum(chunk_lengths[: i + 1]) for i in range(len(chunk_lengths))}
    p = _prepare(mem, x)
    q, k, v, theta, xn = (p[n] for n in ("q", "k", "v", "theta", "xn"))
    weights = p["weights"]
    momentum = [torch.zeros_like(w) for w in weights]
    first = 0  # the current chunk's first token
    acc = [torch.zeros_like(w) for w in weights]
    ys = []
    for t in range(n_tok):
        grads, lr = _token_grad(mem, weights, k[:, t], v[:, t], theta[:, t])
        acc = [a + lr[:, None, None] * g for a, g in zip(acc, grads)]
        if t + 1 in ends:
            pooled = xn[:, first : t + 1].mean(1)  # [B, dim]: the chunk's mean normalised input
            alpha, eta = (
                torch.sigmoid(pooled @ lin.weight.T + lin.bias).reshape(-1, 1, 1)  # [B*H, 1, 1]
                for lin in (mem.to_alpha, mem.to_eta)
            )
            momentum = [eta * s - u for s, u in zip(momentum, acc)]
            weights = [(1 - alpha) * w + s for w, s in zip(weights, momentum)]
            acc = [torch.zeros_like(w) for w in weights]
            first = t + 1
        ys.append(_mlp(q[:, t], weights, c.residual_norm))
    return _merge_heads(mem, ys, bsz), weights, momentum
