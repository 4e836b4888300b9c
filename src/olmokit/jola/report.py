"""Which heads did JoLA open? A per-layer × per-head table and heatmap, additive and multiplicative
gates separately, from a model with JoLA attached or straight from a saved adapter (no base needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write_json, atomic_write_text
from ..plots import plot_gate_heatmap
from .config import JoLASettings
from .layer import HardConcrete, expected_gate, hard_gate, prob_open

__all__ = ["GateReport", "gate_report", "write_report"]


class GateReport:
    """Deterministic gate values ``g1`` (additive) and ``g2`` (multiplicative), each [layers, heads]."""

    def __init__(
        self,
        layers: list[int],
        log_g1: torch.Tensor,
        log_g2: torch.Tensor,
        settings: JoLASettings,
        norms: dict[str, torch.Tensor] | None = None,
        mode: str | None = None,
    ):
        self.layers, self.settings = layers, settings
        self.mode = mode or settings.eval_gate_mode
        hc = HardConcrete(settings.temperature, settings.stretch_limits, settings.eps)
        self.p1, self.p2 = prob_open(log_g1, hc), prob_open(log_g2, hc)
        if self.mode == "hard":
            self.g1, self.g2 = hard_gate(log_g1, hc, settings.hard_threshold), hard_gate(log_g2, hc, settings.hard_threshold)
        else:
            self.g1, self.g2 = expected_gate(log_g1, hc), expected_gate(log_g2, hc)
        if self.mode == "topk":
            k = settings.topk or log_g1.numel()
            for g, la in ((self.g1, log_g1), (self.g2, log_g2)):
                keep = torch.zeros(la.numel(), dtype=torch.bool)
                keep[torch.topk(la.flatten(), min(k, la.numel())).indices] = True
                g.view(-1)[~keep] = 0.0
        self.norms = norms or {}

    @property
    def num_heads(self) -> int:
        return int(self.g1.shape[1])

    def summary(self) -> dict[str, Any]:
        total = self.g1.numel()
        return {
            "mode": self.mode,
            "heads": total,
            "open_additive": int((self.g1 > 0).sum()),
            "open_multiplicative": int((self.g2 > 0).sum()),
            "open_either": int(((self.g1 > 0) | (self.g2 > 0)).sum()),
            "fully_open_additive": int((self.g1 >= 1).sum()),
            "fully_open_multiplicative": int((self.g2 >= 1).sum()),
        }

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for j, layer in enumerate(self.layers):
            for h in range(self.num_heads):
                row = {
                    "layer": layer,
                    "head": h,
                    "g_add": round(float(self.g1[j, h]), 4),
                    "g_mult": round(float(self.g2[j, h]), 4),
                    "p_open_add": round(float(self.p1[j, h]), 4),
                    "p_open_mult": round(float(self.p2[j, h]), 4),
                }
                for name, t in self.norms.items():
                    row[name] = round(float(t[j, h]), 5)
                out.append(row)
        return out

    def markdown(self) -> str:
        """Per layer: open additive / multiplicative heads, then the gate values head by head."""
        lines = [
            f"gate mode: {self.mode}; a gate is open when its deterministic value is > 0",
            "",
            "| layer | open add | open mult | additive gates g1 | multiplicative gates g2 |",
            "|---|---|---|---|---|",
        ]
        for j, layer in enumerate(self.layers):
            g1s = " ".join(f"{float(x):.2f}" for x in self.g1[j])
            g2s = " ".join(f"{float(x):.2f}" for x in self.g2[j])
            lines.append(
                f"| {layer} | {int((self.g1[j] > 0).sum())}/{self.num_heads} | "
                f"{int((self.g2[j] > 0).sum())}/{self.num_heads} | {g1s} | {g2s} |"
            )
        s = self.summary()
        lines += [
            "",
            f"open heads: additive {s['open_additive']}/{s['heads']}, multiplicative "
            f"{s['open_multiplicative']}/{s['heads']}, either {s['open_either']}/{s['heads']}",
        ]
        return "\n".join(lines) + "\n"

    def heatmap(self, path: str | os.PathLike[str], title: str = "JoLA gates") -> Path:
        """Two side-by-side heatmaps (layers × heads): additive g1 and multiplicative g2."""
        return plot_gate_heatmap(self.g1, self.g2, self.layers, path, title=f"{title} ({self.mode})")


def gate_report(source: nn.Module | str | os.PathLike[str], mode: str | None = None) -> GateReport:
    """Report from a model with JoLA attached, or from an adapter directory."""
    if isinstance(source, nn.Module):
        from .model import get_jola_state, jola_edits

        settings = get_jola_state(source).settings
        edits = jola_edits(source)
        layers = list(edits)
        stack = lambda name: torch.stack([getattr(e, name).detach().float().cpu() for e in edits.values()])  # noqa: E731
        g1, g2, a, v = stack("log_g1"), stack("log_g2"), stack("attn_A"), stack("attn_v")
    else:
        from .checkpoint import read_adapter

        meta, tensors = read_adapter(source)
        settings = JoLASettings.from_dict(meta.get("settings", {}), strict=False)
        layers = list(meta["applied_layers"])
        stack = lambda name: torch.stack([tensors[f"layers.{i}.{name}"].float() for i in layers])  # noqa: E731
        g1, g2, a, v = stack("log_g1"), stack("log_g2"), stack("attn_A"), stack("attn_v")
    norms = {"norm_A": a.norm(dim=-1), "norm_v": v.norm(dim=-1)}
    return GateReport(layers, g1, g2, settings, norms, mode)


def write_report(
    source: nn.Module | str | os.PathLike[str], out_dir: str | os.PathLike[str], mode: str | None = None
) -> dict[str, Path]:
    """Write ``gates.md``, ``gates.json`` and ``gates.png`` into ``out_dir``."""
    rep = gate_report(source, mode)
    out = Path(out_dir)
    paths = {
        "markdown": atomic_write_text(out / "gates.md", rep.markdown()),
        "json": atomic_write_json(out / "gates.json", {"summary": rep.summary(), "heads": rep.rows()}),
        "heatmap": rep.heatmap(out / "gates.png"),
    }
    return paths
