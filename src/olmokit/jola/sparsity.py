"""How localized is an edit, and making it more so: open-head counts and hard pruning.

A *head* (layer l, head h) is open when either of its gates is: its deterministic evaluation gate
``max(g1, g2) > 0`` (the paper's "a ≠ 0 ∨ m ≠ 0"); :func:`open_heads` also counts the heads whose
gate exceeds 0.5. :func:`prune_jola` hard-closes every head but the ``keep_top_k`` most open ones (or
those at or below ``threshold``): both of its log-alphas are set to :data:`CLOSED_LOG_ALPHA`, where the
evaluation gate is exactly 0 in every gate mode, so the pruned heads are the identity in the forward
pass, in merging and in reports, and the saved adapter records them closed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .model import get_jola_state, jola_edits, set_gate_mode

__all__ = ["CLOSED_LOG_ALPHA", "head_gates", "open_heads", "prune_jola"]

#: log-alpha of a pruned gate: far below ln(1/11) ≈ −2.40, where the expected gate reaches 0
CLOSED_LOG_ALPHA = -20.0


@torch.no_grad()
def head_gates(model: nn.Module) -> torch.Tensor:
    """``[layers, heads]`` deterministic gate of each head, ``max(g1, g2)``, in the model's gate mode."""
    out = []
    for e in jola_edits(model).values():
        g1, g2 = e.gates(training=False)
        out.append(torch.maximum(g1, g2).detach().float().cpu())
    return torch.stack(out)


def open_heads(model: nn.Module) -> dict[str, int]:
    """``{"open": heads with gate > 0, "open_05": heads with gate > 0.5, "heads": all edited heads}``."""
    g = head_gates(model)
    return {"open": int((g > 0).sum()), "open_05": int((g > 0.5).sum()), "heads": g.numel()}


@torch.no_grad()
def prune_jola(
    model: nn.Module, keep_top_k: int | None = None, threshold: float | None = None
) -> dict[str, int]:
    """Hard-close all heads but the ``keep_top_k`` most open (ranked by ``max(g1, g2)``, ties by the
    larger log-alpha), or every head whose gate is ``<= threshold``. Exactly one of the two.

    Heads already closed stay closed, so at most ``keep_top_k`` heads are open afterwards (exactly
    ``keep_top_k`` when at least that many were open). Returns :func:`open_heads` after pruning.
    """
    if (keep_top_k is None) == (threshold is None):
        raise ConfigError("prune_jola: pass exactly one of keep_top_k or threshold")
    if keep_top_k is not None and keep_top_k < 0:
        raise ConfigError(f"keep_top_k must be >= 0, got {keep_top_k}")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    state = get_jola_state(model)
    edits = jola_edits(model)
    g = head_gates(model)
    if keep_top_k is not None:
        la = torch.stack(
            [torch.maximum(e.log_g1, e.log_g2).detach().float().cpu() for e in edits.values()]
        )
        # rank by gate, then by log-alpha (saturated gates tie at 1)
        order = torch.argsort((g * 1e4 + la.clamp(-1e3, 1e3) * 1e-3).flatten(), descending=True)
        keep = torch.zeros(g.numel(), dtype=torch.bool)
        keep[order[: min(keep_top_k, g.numel())]] = True
        keep = keep.reshape(g.shape) & (g > 0)
    else:
        keep = g > threshold
    for j, e in enumerate(edits.values()):
        closed = ~keep[j].to(e.log_g1.device)
        e.log_g1[closed] = CLOSED_LOG_ALPHA
        e.log_g2[closed] = CLOSED_LOG_ALPHA
    s = state.settings
    if s.eval_gate_mode == "topk":  # masks depend on the log-alphas
        set_gate_mode(model, "topk", s.topk, s.hard_threshold)
    return open_heads(model)
