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
from .checkpoint import read_adapter
from .config import JoLASettings
from .layer import HardConcrete, eval_gate, prob_open, topk_mask
from .model import get_jola_state, jola_edits, jola_state_dict

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
        hc = HardConcrete.from_settings(settings)
        self.p1, self.p2 = prob_open(log_g1, hc), prob_open(log_g2, hc)
        k = settings.topk or log_g1.numel()  # a report in topk mode without k shows every head
        self.g1, self.g2 = (
            eval_gate(
                la,
                hc,
                self.mode,
                settings.hard_threshold,
                topk_mask(la, k) if self.mode == "topk" else None,
            )
            for la in (log_g1, log_g2)
        )
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
        return plot_gate_heatmap(
            self.g1, self.g2, self.layers, path, title=f"{title} ({self.mode})"
        )


def gate_report(source: nn.Module | str | os.PathLike[str], mode: str | None = None) -> GateReport:
    """Report from a model with JoLA attached, or from an adapter directory."""
    if isinstance(source, nn.Module):
        settings = get_jola_state(source).settings
        layers = list(jola_edits(source))
        tensors = jola_state_dict(source)
    else:
        meta, tensors = read_adapter(source)
        settings = JoLASettings.from_dict(meta.get("settings", {}), strict=False)
        layers = list(meta["applied_layers"])
    g1, g2, a, v = (
        torch.stack([tensors[f"layers.{i}.{name}"].detach().float().cpu() for i in layers])
        for name in ("log_g1", "log_g2", "attn_A", "attn_v")
    )
    norms = {"norm_A": a.norm(dim=-1), "norm_v": v.norm(dim=-1)}
    return GateReport(layers, g1, g2, settings, norms, mode)


def write_report(
    source: nn.Module | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    mode: str | None = None,
) -> dict[str, Path]:
    """Write ``gates.md``, ``gates.json`` and ``gates.png`` into ``out_dir``."""
    rep = gate_report(source, mode)
    out = Path(out_dir)
    paths = {
        "markdown": atomic_write_text(out / "gates.md", rep.markdown()),
        "json": atomic_write_json(
            out / "gates.json", {"summary": rep.summary(), "heads": rep.rows()}
        ),
        "heatmap": rep.heatmap(out / "gates.png"),
    }
    return paths
