"""``olmokit jola sweep``: one JoLA run per ``gate_lambda``, accuracy against open heads.

Each grid point is a full :func:`~olmokit.jola.run.run_jola` of the same config with only
``jola_config.gate_lambda`` changed, in ``<out>/lambda-<value>/``. Per point the sweep records the
validation score (the validation split carved from the training data — the number to choose a
setting by), the held-out test score, the best validation loss and the open heads (evaluation gate
> 0 and > 0.5). With ``keep_top_k`` or ``threshold`` each trained adapter is also pruned
(:func:`~olmokit.jola.sparsity.prune_jola`), re-evaluated, and saved to ``<point>/adapter-pruned``.

Outputs in ``<out>``: ``sweep.json`` (every point), ``sweep.md`` (a table) and ``sweep.png`` (the
accuracy–sparsity curve, validation and test, base as a reference line). Existing points are reused
when ``resume`` is set, so a killed sweep continues where it stopped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..eval import eval_mode
from ..files import atomic_write_json, atomic_write_text
from ..plots import plot_accuracy_sparsity
from .checkpoint import save_jola
from .config import JoLAConfig
from .run import _run, compare_on
from .sparsity import prune_jola

__all__ = ["sweep_jola", "sweep_markdown"]


def _score(res: dict[str, Any] | None) -> float | None:
    """Accuracy for multiple-choice data, exact match for generation."""
    if not res:
        return None
    return res.get("acc", res.get("em"))


def _label(lam: float) -> str:
    return f"{lam:g}"


def sweep_jola(
    config: JoLAConfig,
    gate_lambdas: list[float],
    out_dir: str | os.PathLike[str],
    *,
    keep_top_k: int | None = None,
    threshold: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one adapter per ``gate_lambda``; returns (and writes) ``{"points": [...], "base": ...}``."""
    if not gate_lambdas:
        raise ConfigError("sweep: give at least one --gate-lambda value")
    if any(not math.isfinite(x) or x < 0 for x in gate_lambdas):
        raise ConfigError(f"gate_lambda values must be finite and >= 0, got {gate_lambdas}")
    if keep_top_k is not None and threshold is not None:
        raise ConfigError("sweep: pass at most one of keep_top_k or threshold")
    out = Path(out_dir)
    points: list[dict[str, Any]] = []
    base: float | None = None
    for lam in gate_lambdas:
        point_dir = out / f"lambda-{_label(lam)}"
        cfg = config.merge(
            [f"jola_config.gate_lambda={lam!r}", f"training_config.output_dir={point_dir}"]
        )
        outcome = _run(cfg, resume=resume, overwrite=overwrite, progress=progress, evaluate=True)
        s = outcome.summary
        test = s.get("test") or {}
        base = _score(test.get("base")) if base is None else base
        point: dict[str, Any] = {
            "gate_lambda": lam,
            "valid": _score(s.get("valid")),
            "test": _score(test.get("jola")),
            "valid_loss": (s.get("best") or {}).get("eval_loss"),
            **{f"{k}": v for k, v in s["open_heads"].items()},
            "dir": str(point_dir),
        }
        if keep_top_k is not None or threshold is not None:
            model, tok, data = outcome.model, outcome.tokenizer, outcome.data
            pruned = prune_jola(model, keep_top_k=keep_top_k, threshold=threshold)
            lo = cfg.data.loss_on
            kw = {"first_line": lo == "answer", "loss_on": lo, "base": False}
            bs = cfg.training.per_device_eval_batch_size
            with eval_mode(model):
                if data.valid_examples:
                    v = compare_on(model, tok, data.valid_examples, bs, progress, **kw)
                    point["pruned_valid"] = _score(v["jola"])
                if data.test:
                    t = compare_on(model, tok, data.test, bs, progress, **kw)
                    point["pruned_test"] = _score(t["jola"])
            point["pruned_open"], point["pruned_open_05"] = pruned["open"], pruned["open_05"]
            save_jola(model, point_dir / "adapter-pruned")
        points.append(point)
    result = {
        "base": base,
        "keep_top_k": keep_top_k,
        "threshold": threshold,
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep.json", result)
    atomic_write_text(out / "sweep.md", sweep_markdown(result))
    series: dict[str, list[tuple[float, float, str]]] = {}
    for key, name in (("valid", "validation"), ("test", "held-out test")):
        pts = [(p["open"], p[key], _label(p["gate_lambda"])) for p in points if p[key] is not None]
        if pts:
            series[name] = pts
    if keep_top_k is not None or threshold is not None:
        pts = [
            (p["pruned_open"], p["pruned_test"], _label(p["gate_lambda"]))
            for p in points
            if p.get("pruned_test") is not None
        ]
        if pts:
            series["held-out test, pruned"] = pts
    if series:
        refs = {"base (test)": base} if base is not None else None
        plot_accuracy_sparsity(series, out / "sweep.png", references=refs)
    return result


def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def sweep_markdown(result: dict[str, Any]) -> str:
    """The sweep as a markdown table (one row per gate_lambda)."""
    pruned = result.get("keep_top_k") is not None or result.get("threshold") is not None
    head = ["gate_lambda", "valid", "test", "valid loss", "open (g>0)", "open (g>0.5)", "heads"]
    if pruned:
        head += ["pruned open", "pruned valid", "pruned test"]
    lines = [
        f"base (test): {_fmt(result.get('base'))}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for p in result["points"]:
        row = [_label(p["gate_lambda"]), p["valid"], p["test"], p["valid_loss"], p["open"]]
        row += [p["open_05"], p["heads"]]
        if pruned:
            row += [p.get("pruned_open"), p.get("pruned_valid"), p.get("pruned_test")]
        lines.append("| " + " | ".join(_fmt(x) for x in row) + " |")
    return "\n".join(lines) + "\n"
