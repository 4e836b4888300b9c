"""Every PNG figure olmokit writes: lens heatmaps and tables, the JoLA gate heatmap, memory recall
curves.

Headless by construction: figures are built on the object-oriented :class:`matplotlib.figure.Figure`
with an Agg canvas attached directly, so no display is needed, ``pyplot``'s global state is never
touched and a user who already chose a matplotlib backend (an interactive one in a notebook, say)
keeps it — this module never calls ``matplotlib.use``. matplotlib itself is imported on the first plot,
so ``import olmokit`` (and every tool package) stays free of it.

Each function takes the data and a destination path and returns that path. The PNG is written to a
temporary file in the destination directory and renamed over the target, so a killed run never
leaves a truncated image. Data may be torch tensors (any device or dtype) or anything NumPy accepts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_path

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

__all__ = [
    "plot_accuracy_sparsity",
    "plot_attention_pattern",
    "plot_gate_heatmap",
    "plot_head_scores",
    "plot_logit_lens",
    "plot_merge_map",
    "plot_patching_heatmap",
    "plot_recall_vs_distance",
    "plot_recall_vs_pairs",
]

PathLike = str | os.PathLike[str]


def _figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """A new figure that renders with Agg, independent of the user's (or pyplot's) backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike, dpi: int = 80, tight: bool = True) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temp file in the same directory, then rename)."""
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        # the temp name ends in ".tmp", so the format must be named explicitly
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def _array(data: Any) -> np.ndarray:
    """A float NumPy array from a tensor (detached, moved to CPU) or any array-like."""
    import numpy as np

    if hasattr(
        data, "detach"
    ):  # a torch tensor; checked by duck type so torch is not imported here
        data = data.detach().float().cpu().numpy()
    return np.asarray(data, dtype=float)


def _short(tokens: Sequence[str], width: int = 8) -> list[str]:
    """Token strings as printable tick labels: escapes visible (``\\n``), cut to ``width`` characters."""
    return [repr(t)[1:-1][:width] for t in tokens]


def plot_attention_pattern(
    pattern: Any,
    str_tokens: Sequence[str] | None,
    path: PathLike,
    title: str = "",
    mark_offset: int | None = None,
) -> Path:
    """Heatmap of one head's ``[query, key]`` pattern (masked entries are exactly 0).

    ``mark_offset`` draws a dashed line on the diagonal ``key = query + mark_offset`` (for an induction
    check on a sequence repeated after ``n`` tokens: ``1 - n``, where an induction head's stripe sits).
    Token labels are drawn only up to 64 positions; beyond that they would overlap into a grey bar.
    """
    pattern = _array(pattern)
    n = pattern.shape[-1]
    size = min(8.0, 2.5 + 0.15 * n)
    fig = _figure((size + 1.0, size))
    ax = fig.subplots()
    im = ax.imshow(pattern, cmap="Blues", vmin=0.0, vmax=1.0)
    if mark_offset is not None:
        q0 = max(0, -mark_offset)
        ax.plot(
            [q0 + mark_offset, n - 1 + mark_offset],
            [q0, n - 1],
            "r--",
            linewidth=0.8,
            label="induction stripe",
        )
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


def plot_head_scores(
    scores: Any,
    path: PathLike,
    title: str = "",
    cmap: str = "viridis",
    symmetric: bool = False,
) -> Path:
    """``[n_layers, n_heads]`` scores (e.g. induction) with values written in the cells.

    ``symmetric`` is for signed scores (attributions): a diverging colour map centred at 0, so a
    head that pushes against the answer is as visible as one that pushes for it.
    """
    scores = _array(scores)
    n_layers, n_heads = scores.shape
    fig = _figure((1.2 + 0.7 * n_heads, 1.2 + 0.6 * n_layers))
    ax = fig.subplots()
    if symmetric:
        bound = max(float(abs(scores).max()), 1e-6)
        im = ax.imshow(scores, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    else:
        im = ax.imshow(scores, cmap=cmap, aspect="auto")
    color = "k" if symmetric else "w"  # dark text on the light middle of a diverging map
    for i in range(n_layers):
        for h in range(n_heads):
            ax.text(h, i, f"{scores[i, h]:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_patching_heatmap(
    values: Any,
    path: PathLike,
    row_label: str = "layer",
    col_labels: Sequence[str] | None = None,
    col_label: str = "position",
    title: str = "",
) -> Path:
    """A ``[rows, cols]`` (or ``[rows]``) patching result on a diverging scale centred at 0.

    After :func:`olmokit.lens.patching.normalize_patching`, 1 means "fully restores the clean run".
    """
    values = _array(values)
    if values.ndim == 1:
        values = values[:, None]
    rows, cols = values.shape
    bound = max(float(abs(values).max()), 1e-6)
    fig = _figure((min(14.0, 2.0 + 0.45 * cols), 1.5 + 0.45 * rows))
    ax = fig.subplots()
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
    top_probs: Any,
    top_tokens: Sequence[Sequence[str]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: PathLike,
    title: str = "logit lens",
) -> Path:
    """Table of the top-1 token per (residual stream, position), coloured by its probability."""
    probs = _array(top_probs)
    rows, cols = probs.shape
    fig = _figure((min(16.0, 2.0 + 0.9 * cols), 1.2 + 0.5 * rows))
    ax = fig.subplots()
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


def plot_gate_heatmap(
    additive: Any,
    multiplicative: Any,
    layers: Sequence[int],
    path: PathLike,
    title: str = "JoLA gates",
) -> Path:
    """Two side-by-side ``[layers, heads]`` heatmaps of JoLA gate values in [0, 1].

    ``additive`` is g1 (gating the bias vector v), ``multiplicative`` is g2 (gating the scale A);
    ``layers`` labels the rows with the model's layer indices (JoLA may edit only some layers).
    """
    g1, g2 = _array(additive), _array(multiplicative)
    n_layers, n_heads = g1.shape
    fig = _figure((2.5 + 0.45 * n_heads * 2, 2.2 + 0.35 * n_layers), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, g, name in ((axes[0], g1, "additive g1 (v)"), (axes[1], g2, "multiplicative g2 (A)")):
        im = ax.imshow(g, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(n_layers), [str(i) for i in layers])
        ax.set_xticks(range(n_heads))
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="gate")
    fig.suptitle(title)
    return _save(fig, path, dpi=100, tight=False)


def plot_accuracy_sparsity(
    series: dict[str, Sequence[tuple[float, float, str]]],
    path: PathLike,
    xlabel: str = "open heads",
    ylabel: str = "held-out score",
    references: dict[str, float] | None = None,
    title: str = "JoLA accuracy vs sparsity",
) -> Path:
    """Score against the number of open heads: one line per series of ``(x, y, label)`` points (each
    point annotated with its label, e.g. the gate_lambda), and horizontal reference lines (e.g. the
    base model's score)."""
    fig = _figure((6.0, 4.0))
    ax = fig.subplots()
    for name, pts in series.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for x, y, lab in pts:
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    for i, (name, y) in enumerate((references or {}).items()):
        ax.axhline(y, linestyle="--", color=f"C{len(series) + i}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi=100)


def plot_merge_map(
    grid: Sequence[Sequence[int]],
    donors: Sequence[str],
    rows: Sequence[str],
    cols: Sequence[str],
    series: dict[str, Sequence[float | None]],
    steps: Sequence[str],
    path: PathLike,
    refined: Sequence[Sequence[bool]] | None = None,
    title: str = "merge map",
) -> Path:
    """A merge at a glance: left, which donor each unit came from (``grid[row][col]`` is an index
    into ``donors``, -1 for none); cells refined by an evolution strategy carry a star. Right, each
    dataset's metric after every step, divided by its value at the first step (the base), so datasets
    on different scales share one axis (lower is better; a missing value leaves a gap).
    """
    import numpy as np
    from matplotlib.colors import ListedColormap

    g = np.asarray(grid, dtype=float) if len(rows) and len(cols) else np.full((1, 1), -1.0)
    g = np.where(g < 0, np.nan, g)
    n = max(len(donors), 1)
    fig = _figure((5.0 + 0.5 * len(cols) + 4.0, 2.5 + 0.35 * max(len(rows), 4)))
    ax_map, ax_traj = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(len(cols), 2), 4]})
    base_colors = [
        "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3",
        "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd",
    ]  # fmt: skip
    cmap = ListedColormap([base_colors[i % len(base_colors)] for i in range(n)])
    ax_map.imshow(g, cmap=cmap, vmin=-0.5, vmax=n - 0.5, aspect="auto")
    ax_map.set_yticks(range(len(rows)), list(rows))
    ax_map.set_xticks(range(len(cols)), list(cols), rotation=60, ha="right", fontsize=7)
    if refined is not None:
        for r, row in enumerate(refined):
            for c, flag in enumerate(row):
                if flag:
                    ax_map.text(c, r, "*", ha="center", va="center", color="white", fontsize=12)
    from matplotlib.patches import Patch

    ax_map.legend(
        handles=[Patch(color=cmap(i), label=str(d)) for i, d in enumerate(donors)],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35),
        fontsize=7,
        ncol=min(n, 3),
    )
    ax_map.set_title("donor per unit (* = ES-refined)")
    x = np.arange(len(steps))
    for name, values in series.items():
        v = np.array([np.nan if y is None else float(y) for y in values], dtype=float)
        ref = v[0] if len(v) and np.isfinite(v[0]) and v[0] != 0 else 1.0
        ax_traj.plot(x, v / ref, marker="o", markersize=3, label=str(name))
    ax_traj.set_xticks(x, list(steps), rotation=60, ha="right", fontsize=7)
    ax_traj.set_ylabel("metric / base (lower is better)")
    ax_traj.set_title("metric per step")
    ax_traj.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path, dpi=90)


def _recall_curves(
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    path: PathLike,
    xlabel: str,
    title: str,
    chance: float | None,
    log_x: bool,
) -> Path:
    fig = _figure((5.5, 3.6))
    ax = fig.subplots()
    for name, values in series.items():
        if len(values) != len(x):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(x)} x positions")
        ax.plot(list(x), [float(v) for v in values], marker="o", markersize=4, label=str(name))
    if chance is not None:
        ax.axhline(
            chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})"
        )
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path, dpi=100)


def plot_recall_vs_distance(
    windows: Sequence[float],
    series: dict[str, Sequence[float]],
    path: PathLike,
    chance: float | None = None,
    title: str = "passkey recall vs distance",
) -> Path:
    """Answer accuracy (one line per condition: base, memory, ...) against the needle's distance in
    attention windows (log-2 axis); ``chance`` draws the level a blind guess reaches."""
    return _recall_curves(windows, series, path, "distance (windows)", title, chance, True)


def plot_recall_vs_pairs(
    pairs: Sequence[int],
    series: dict[str, Sequence[float]],
    path: PathLike,
    chance: float | None = None,
    title: str = "associative recall vs number of pairs",
) -> Path:
    """Answer accuracy against the number of key→value pairs held at once (the memory's capacity
    curve; log-2 axis), one line per condition."""
    return _recall_curves(pairs, series, path, "key-value pairs", title, chance, True)
