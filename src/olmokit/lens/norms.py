"""The two OLMo norms as *scale × centred input*, so the lens can expose and freeze the scale.

OLMo v1's norm is a parameter-free LayerNorm: ``(x - mean(x)) / s`` with ``s = sqrt(var(x) + 1e-5)``.
OLMo-2/3 use RMSNorm: ``w * x / s`` with ``s = sqrt(mean(x²) + eps)``. ``s`` is what ``hook_scale``
exposes, as in TransformerLens (the number the input is divided by). Both compute in fp32 and cast back,
as HF does. Given ``s`` the norm is *linear* in ``x``; freezing ``s`` at the value of a real forward pass
(the "frozen-norm-scale linearisation") is what makes per-component attributions add up exactly to the
normalised total, which is how direct logit attribution is defined for post-norm OLMo-2/3.
"""

from __future__ import annotations

import torch
from torch import nn

from ..family import FamilyAdapter

__all__ = ["norm_scale", "apply_norm_with_scale"]


def _is_layernorm(adapter: FamilyAdapter) -> bool:
    return adapter.spec.norm_type == "layernorm_nonparametric"


def norm_scale(x: torch.Tensor, module: nn.Module, adapter: FamilyAdapter) -> torch.Tensor:
    """The fp32 scale ``[..., 1]`` the norm ``module`` divides ``x`` by (std for v1, rms for v2/3).

    HF multiplies by ``rsqrt`` (and v1 uses the fused ``F.layer_norm``), so dividing by this scale can
    differ from HF's output by rounding; that is why the lens never recomputes a norm output unless the
    scale was edited, and why attributions built on it are compared with a tolerance.
    """
    xf = x.to(torch.float32)
    eps = adapter.norm_eps(module)
    if _is_layernorm(adapter):
        return torch.sqrt(xf.var(-1, keepdim=True, unbiased=False) + eps)
    return torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def apply_norm_with_scale(
    x: torch.Tensor,
    scale: torch.Tensor,
    module: nn.Module,
    adapter: FamilyAdapter,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The norm of ``x`` with a given (e.g. frozen or edited) scale; linear in ``x``.

    v1: ``(x - mean(x)) / scale``; v2/3: ``weight * x / scale``. Computed in fp32, cast to ``out_dtype``
    (default ``x.dtype``).
    """
    out_dtype = out_dtype or x.dtype
    xf = x.to(torch.float32)
    if _is_layernorm(adapter):
        return ((xf - xf.mean(-1, keepdim=True)) / scale).to(out_dtype)
    return (module.weight * (xf / scale)).to(out_dtype)
