"""PNG figures with matplotlib (Agg backend, no display needed): attention pattern, head scores,
patching heatmap and the logit-lens table. Each function writes one file and returns its path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["plot_attention_pattern", "plot_head_scores", "plot_patching_heatmap", "plot_logit_lens"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _plt().close(fig)
    return path


def _short(tokens: Sequence[str], width: int = 8) -> list[str]:
    return [repr(t)[1:-1][:width] for t in tokens]


def plot_attention_pattern(
    pattern: torch.Tensor,
    str_tokens: Sequence[str] | None,
    path: str | os.PathLike[str],
    title: str = "",
    mark_offset: int | None = None,
) -> Path:
    """Heatmap of one head's ``[query, key]`` pattern (masked entries are exactly 0).

    ``mark_offset`` draws a dashed line on the diagonal ``key = query + mark_offset`` (for an induction
    check on a sequence repeated after ``n`` tokens: ``1 - n``, where an induction head's stripe sits).
    """
    plt = _plt()
    pattern = pattern.detach().float().cpu().numpy()
    n = pattern.shape[-1]
    size = min(8.0, 2.5 + 0.15 * n)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(pattern, cmap="Blues", vmin=0.0, vmax=1.0)
    if mark_offset is not None:
        q0 = max(0, -mark_offset)
        ax.plot([q0 + mark_offset, n - 1 + mark_offset], [q0, n - 1], "r--", linewidth=0.8, label="induction stripe")
        ax.legend(loc="upper right", fontsize=7)
    if str_tokens is not None and n <= 64:
        labels = _short(str_tokens)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(n), labels, fontsize=6)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.7)
    return _save(fig, path)


def plot_head_scores(scores: torch.Tensor, path: str | os.PathLike[str], title: str = "", cmap: str = "viridis") -> Path:
    """``[n_layers, n_heads]`` scores (e.g. induction) with values written in the cells."""
    plt = _plt()
    scores = scores.detach().float().cpu().numpy()
    n_layers, n_heads = scores.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n_heads, 1.2 + 0.6 * n_layers))
    im = ax.imshow(scores, cmap=cmap, aspect="auto")
    for i in range(n_layers):
        for h in range(n_heads):
            ax.text(h, i, f"{scores[i, h]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_patching_heatmap(
    values: torch.Tensor,
    path: str | os.PathLike[str],
    row_label: str = "layer",
    col_labels: Sequence[str] | None = None,
    col_label: str = "position",
    title: str = "",
) -> Path:
    """A ``[rows, cols]`` patching result on a diverging scale centred at 0 (1 = fully restored)."""
    plt = _plt()
    values = values.detach().float().cpu()
    if values.dim() == 1:
        values = values[:, None]
    rows, cols = values.shape
    bound = max(float(values.abs().max()), 1e-6)
    values = values.numpy()
    fig, ax = plt.subplots(figsize=(min(14.0, 2.0 + 0.45 * cols), 1.5 + 0.45 * rows))
    im = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    if col_labels is not None:
        ax.set_xticks(range(cols), _short(col_labels), rotation=90, fontsize=7)
    ax.set_yticks(range(rows))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_logit_lens(
    top_probs: torch.Tensor,
    top_tokens: Sequence[Sequence[str]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "logit lens",
) -> Path:
    """Table of the top-1 token per (layer, position), coloured by its probability."""
    plt = _plt()
    probs = top_probs.detach().float().cpu().numpy()
    rows, cols = probs.shape
    fig, ax = plt.subplots(figsize=(min(16.0, 2.0 + 0.9 * cols), 1.2 + 0.5 * rows))
    im = ax.imshow(probs, cmap="Greens", vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            ax.text(c, r, _short([top_tokens[r][c]], 6)[0], ha="center", va="center", fontsize=6)
    ax.set_xticks(range(cols), _short(col_labels), rotation=90, fontsize=7)
    ax.set_yticks(range(rows), list(row_labels), fontsize=7)
    ax.set_xlabel("input position (prediction of the next token)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="top-1 probability")
    return _save(fig, path)
