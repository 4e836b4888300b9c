"""The per-layer JoLA edit: HardConcrete gates and one vectorised per-head scale-and-shift.

For decoder layer l with H query heads of width d, the input of ``o_proj`` is the concatenation
``z = [z_1, ..., z_H]`` of the per-head attention outputs. JoLA rewrites every token's ``z`` as

    z'_h = (1 + g2_h * A_h) ⊙ z_h + g1_h * v_h            A_h, v_h ∈ R^d,   g1_h, g2_h ∈ [0, 1]

where g1 ("additive", parameter ``log_g1``) and g2 ("multiplicative", ``log_g2``) are HardConcrete gates
(Louizos et al. 2018): stretched, clamped, temperature-β sigmoids of logistic noise during training
and deterministic at evaluation. The whole edit is two ``[H*d]`` vectors per forward pass,
``scale = 1 + (g2[:, None] * A).flatten()`` and ``shift = (g1[:, None] * v).flatten()``, applied
with a single fused ``addcmul`` — no Python loop over heads. All JoLA math runs in fp32 whatever the
base dtype, and the result is cast back, so with A = v = 0 the output is bit-identical to the input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "EVAL_GATE_MODES",
    "HardConcrete",
    "JoLAEdit",
    "eval_gate",
    "expected_gate",
    "hard_gate",
    "prob_open",
    "sample_gate",
    "topk_mask",
]

#: deterministic gate modes used at evaluation, for merging and in reports
EVAL_GATE_MODES = ("expected", "hard", "topk")


class HardConcrete:
    """HardConcrete hyper-parameters: temperature β, stretch interval (l, r), noise clipping eps."""

    def __init__(self, temperature: float = 0.33, stretch_limits=(-0.1, 1.1), eps: float = 1e-6):
        self.temperature = float(temperature)
        self.low, self.high = (float(x) for x in stretch_limits)
        self.eps = float(eps)

    @classmethod
    def from_settings(cls, settings: Any) -> HardConcrete:
        """From anything with ``temperature``, ``stretch_limits`` and ``eps`` (``JoLASettings``): the
        one way the rest of JoLA builds it, so no place forgets a field."""
        return cls(settings.temperature, settings.stretch_limits, settings.eps)

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "stretch_limits": [self.low, self.high],
            "eps": self.eps,
        }


def sample_gate(log_alpha: torch.Tensor, hc: HardConcrete, generator=None) -> torch.Tensor:
    """One training-time sample per gate: g = clamp(σ((log u − log(1−u) + logα)/β)·(r−l) + l, 0, 1).

    One uniform draw per head per forward pass, shared by the whole batch and every token (as in the
    reference); gradient checkpointing replays the RNG state, so a recomputed forward draws the same u.
    """
    u = torch.rand(
        log_alpha.shape, device=log_alpha.device, dtype=torch.float32, generator=generator
    )
    # logit(u) with u clamped to [eps, 1 - eps] is log u − log(1−u), in one kernel
    s = torch.sigmoid((torch.logit(u, eps=hc.eps) + log_alpha) / hc.temperature)
    return (s * (hc.high - hc.low) + hc.low).clamp(0.0, 1.0)


def expected_gate(log_alpha: torch.Tensor, hc: HardConcrete) -> torch.Tensor:
    """The reference's deterministic gate: clamp(σ(logα)·(r−l) + l, 0, 1) (= 1.2σ(logα) − 0.1)."""
    return (torch.sigmoid(log_alpha) * (hc.high - hc.low) + hc.low).clamp(0.0, 1.0)


def hard_gate(log_alpha: torch.Tensor, hc: HardConcrete, threshold: float = 0.5) -> torch.Tensor:
    """Binary gate: 1 where the expected gate exceeds ``threshold``, else 0."""
    return (expected_gate(log_alpha, hc) > threshold).to(log_alpha.dtype)


def prob_open(log_alpha: torch.Tensor, hc: HardConcrete) -> torch.Tensor:
    """P(gate ≠ 0) = σ(logα − β·log(−l/r)), the expected-L0 term (clamped like the reference)."""
    shift = hc.temperature * math.log(-hc.low / hc.high)
    return torch.sigmoid(log_alpha - shift).clamp(1e-6, 1.0 - 1e-6)


def topk_mask(log_alpha: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask (same shape) keeping the ``k`` largest log-alphas of the whole tensor — across every
    edited layer when ``log_alpha`` is ``[layers, heads]``."""
    flat = log_alpha.detach().float().reshape(-1)
    keep = torch.zeros_like(flat)
    keep[torch.topk(flat, min(k, flat.numel())).indices] = 1.0
    return keep.reshape(log_alpha.shape)


def eval_gate(
    log_alpha: torch.Tensor,
    hc: HardConcrete,
    mode: str = "expected",
    hard_threshold: float = 0.5,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The deterministic gate of ``mode``: "expected" (:func:`expected_gate`), "hard"
    (:func:`hard_gate`) or "topk" (the expected gate times a :func:`topk_mask`). The one gate
    selection shared by the edit's forward pass, merging and the gate report."""
    if mode == "hard":
        return hard_gate(log_alpha, hc, hard_threshold)
    g = expected_gate(log_alpha, hc)
    if mode == "topk":
        if mask is None:
            raise ValueError("topk gate mode needs a mask (see topk_mask / set_gate_mode)")
        return g * mask.to(device=g.device, dtype=g.dtype)
    if mode != "expected":
        raise ValueError(f"gate mode {mode!r} not in {', '.join(EVAL_GATE_MODES)}")
    return g


class JoLAEdit(nn.Module):
    """The trainable edit of one decoder layer: ``attn_A``, ``attn_v`` ([H, d]) and ``log_g1``,
    ``log_g2`` ([H]) — H·(2d + 2) parameters, always fp32.

    It is registered as a submodule of the layer's attention module (so DDP/FSDP, ``.to()`` and
    ``named_parameters()`` see it) and called from a forward-pre-hook on ``o_proj``.
    """

    def __init__(self, num_heads: int, head_dim: int, hc: HardConcrete, device=None):
        super().__init__()
        self.num_heads, self.head_dim, self.hc = num_heads, head_dim, hc
        kw = dict(device=device, dtype=torch.float32)
        self.attn_A = nn.Parameter(torch.zeros(num_heads, head_dim, **kw))
        self.attn_v = nn.Parameter(torch.zeros(num_heads, head_dim, **kw))
        self.log_g1 = nn.Parameter(torch.zeros(num_heads, **kw))
        self.log_g2 = nn.Parameter(torch.zeros(num_heads, **kw))
        #: evaluation gate mode ("expected" | "hard" | "topk") and its settings, set by the owner
        self.gate_mode = "expected"
        self.hard_threshold = 0.5
        #: for "topk": 0/1 masks [H] chosen across all layers by the owner, or None
        self.topk_masks: tuple[torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, hardconcrete={self.hc.as_dict()}"

    @torch.no_grad()
    def reset_parameters(self, std: float = 1e-3, log_alpha_init="xavier", generator=None) -> None:
        """Fresh initialisation (A, v ~ N(0, std²); log-alphas xavier-uniform on [H, 1] or constant)."""
        for p in (self.attn_A, self.attn_v):
            p.copy_(
                torch.randn(p.shape, generator=generator) * std if std > 0 else torch.zeros(p.shape)
            )
        for p in (self.log_g1, self.log_g2):
            if log_alpha_init == "xavier":
                bound = math.sqrt(6.0 / (self.num_heads + 1))
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            else:
                p.fill_(float(log_alpha_init))

    def gates(self, training: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g1, g2)``, each [H]: sampled when training, else deterministic per ``gate_mode``."""
        training = self.training if training is None else training
        if training:  # both gate kinds in one set of kernels (this runs on every forward pass)
            g = sample_gate(torch.stack((self.log_g1, self.log_g2)), self.hc)
            return g[0], g[1]
        if self.gate_mode == "topk" and self.topk_masks is None:
            raise RuntimeError("topk gate mode without masks; set it through set_gate_mode()")
        m1, m2 = self.topk_masks or (None, None)
        return (
            eval_gate(self.log_g1, self.hc, self.gate_mode, self.hard_threshold, m1),
            eval_gate(self.log_g2, self.hc, self.gate_mode, self.hard_threshold, m2),
        )

    def scale_shift(self, training: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The edit as two flat fp32 vectors: ``z' = scale ⊙ z + shift`` over the ``H*d`` features."""
        g1, g2 = self.gates(training)
        scale = 1.0 + (g2[:, None] * self.attn_A).reshape(-1)  # [H*d]
        shift = (g1[:, None] * self.attn_v).reshape(-1)  # [H*d]
        return scale, shift

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the edit to ``z`` of shape [..., H*d] (any dtype; math in fp32, result in z's dtype)."""
        scale, shift = self.scale_shift()
        return torch.addcmul(shift, z.float(), scale).to(z.dtype)

    def forward_loop(self, z: torch.Tensor) -> torch.Tensor:
        """The reference's per-head Python loop (slow; kept only to benchmark against ``forward``)."""
        g1, g2 = self.gates()
        out = z.float().clone()
        d = self.head_dim
        for h in range(self.num_heads):
            out[..., h * d : (h + 1) * d] = (self.attn_A[h] * g2[h] + 1) * out[
                ..., h * d : (h + 1) * d
            ].clone() + g1[h] * self.attn_v[h]
        return out.to(z.dtype)
