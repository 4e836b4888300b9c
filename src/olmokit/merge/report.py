"""``merge_report.json``: every decision of a merge, enough to explain it and to rebuild it bit for bit.

Schema (``schema_version`` 1; standard JSON — a non-finite metric is ``null`` and the candidate's
``reason`` says why)::

    {
      "schema_version": 1, "tool": "olmokit.merge", "status": "running" | "complete",
      "config_hash": "<sha256 of the resolved config, run-location keys excluded>",
      "seed": 0, "selection": "copeland", "epsilon": 0.0, "improve_against": "current",
      "datasets": [{"name", "mode", "samples"}],
      "pool": [{"name", "path", "fingerprint"}],          # every configured model, in pool order
      "initial_base": "<the model loaded first>",
      "base": "<the base after base selection>", "base_metrics": {dataset: metric},
      "base_selection": <decision> | null,               # step "base"
      "member_metrics": {name: metrics} (whole-model evaluations of base selection / max_models),
      "preselection": {"kept": [...], "dropped": [...], "borda": {name: rank sum}} | null,
      "boundary": <decision> | null,                      # step "boundary"
      "layers": {"<layer index>": <decision>},            # step "layer", in decision order
      "units": {"<unit name>": <decision>},               # step "unit", in decision order
      "sequence": n (decisions made so far), "dtype": "...", "num_layers": L,
      "unit_layers": {unit name: layer index | null} (the searchable units, for the merge map),
      "cache": {"hits": int, "misses": int},
      "model": "model" (when complete)
    }

    decision = {
      "step": "base" | "boundary" | "layer" | "unit", "target": "<layer index or unit name>",
      "sequence": n, "units": [unit names], "current": "<source before the step>",
      "winner": "<pool member>", "changed": bool,
      "candidates": [{"name", "current": bool, "metrics": {...}, "cached": bool,
                      "degraded": [datasets], "reason": str | null}],
      "selection": {"method", "candidates": [indices into candidates], "winner", "order",
                    "wins", "copeland", "borda", "pareto_layer"},   # indices into selection.candidates
      "es": [ESOp as dict, ...],                          # accepted ES steps, replayable in order
      "metrics": {dataset: metric},                       # the state after the decision (and ES)
      "seconds": float, "finished": "<UTC ISO time>"
    }

The report is rewritten atomically (:meth:`olmokit.runs.RunDir.write_json`) after every decision, so a
killed run leaves the last complete decision on disk and ``--resume`` continues after it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ReportError
from ..files import atomic_write_text

__all__ = [
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "TOOL",
    "IGNORE_IN_HASH",
    "config_hash",
    "decisions",
    "final_sources",
    "layer_donors",
    "load_report",
    "check_resumable",
    "trajectory",
    "mergekit_config",
    "mergekit_yaml",
    "write_mergekit",
    "decision_rows",
    "plot_report",
]

REPORT_FILE = "merge_report.json"
SCHEMA_VERSION = 1
TOOL = "olmokit.merge"
#: Config keys that may change between a run and its resume without changing any decision.
#: (``candidate_batch`` is hashed: stacked rows may round differently in the last float32 bit on
#: some BLAS kernels, so a resume must group candidates as the run did to stay bit-identical.)
IGNORE_IN_HASH = ("output_dir", "device")
#: Keys every report has (a file without them is not a merge report).
_REQUIRED = ("schema_version", "tool", "config_hash", "pool", "base", "layers", "units")


def config_hash(config: Any) -> str:
    """sha256 of the resolved config (every default filled in), minus :data:`IGNORE_IN_HASH`."""
    data = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    data = {k: v for k, v in data.items() if k not in IGNORE_IN_HASH}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check a merge report (a directory means its ``merge_report.json``).

    Corrupt JSON, another tool's file or an unknown schema version → :class:`ReportError` naming the
    file and what is wrong.
    """
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{p} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{p}: not valid JSON ({exc}); the merge report is corrupt") from None
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        raise ReportError(f'{p}: not an olmokit merge report (no "tool": "{TOOL}")')
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(
            f"{p}: merge report schema_version {data.get('schema_version')!r}; this olmokit "
            f"reads version {SCHEMA_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ReportError(f"{p}: merge report lacks {', '.join(missing)}")
    for name in ("layers", "units"):
        if not isinstance(data[name], dict):
            raise ReportError(f"{p}: merge report {name!r} must be an object")
    return data


def check_resumable(
    report: Mapping[str, Any],
    *,
    config_digest: str,
    pool: Sequence[Mapping[str, Any]],
    where: str = REPORT_FILE,
) -> None:
    """Refuse to continue a report made by another config or with a pool whose files changed."""
    if report.get("config_hash") != config_digest:
        raise ReportError(
            f"{where}: written by a different merge config (config_hash differs); resume with "
            "the run's saved config.yaml or start a new run with --overwrite"
        )
    saved = {m["name"]: m for m in report.get("pool", [])}
    now = {m["name"]: m for m in pool}
    if list(saved) != list(now):
        raise ReportError(
            f"{where}: the pool changed since the report was written (was {list(saved)}, now "
            f"{list(now)})"
        )
    for name, member in now.items():
        if saved[name].get("fingerprint") != member.get("fingerprint"):
            raise ReportError(
                f"{where}: pool model {name!r} changed since the report was written (its tensor "
                "files differ); the recorded decisions no longer describe it"
            )


def decisions(report: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every decision of the report in the order it was made (``sequence``)."""
    items: list[dict[str, Any]] = []
    for key in ("base_selection", "boundary"):
        if report.get(key):
            items.append(report[key])
    items.extend(report.get("layers", {}).values())
    items.extend(report.get("units", {}).values())
    yield from sorted(items, key=lambda d: d.get("sequence", 0))


def trajectory(report: Mapping[str, Any]) -> list[tuple[str, dict[str, float | None]]]:
    """``(step label, metrics)`` from the base through every decision (the merge's progress)."""
    out = [("base", dict(report.get("base_metrics") or {}))]
    for d in decisions(report):
        if d["step"] == "base":
            continue
        label = d["step"] if d["step"] == "boundary" else f"{d['step']} {d['target']}"
        out.append((label, dict(d.get("metrics") or {})))
    return out


def final_sources(report: Mapping[str, Any], unit_layers: Mapping[str, int | None]) -> dict:
    """unit name -> (donor, refined by ES?) after all decisions, for the units in ``unit_layers``."""
    base = report["base"]
    out = {u: (base, False) for u in unit_layers}
    for d in decisions(report):
        if d["step"] == "base":
            continue
        for u in d.get("units", []):
            out[u] = (d["winner"], bool(d.get("es")))
    return out


def layer_donors(report: Mapping[str, Any], num_layers: int | None = None) -> list[str]:
    """The donor of every decoder layer (the base where no layer decision was made)."""
    layers = {int(k): d["winner"] for k, d in report.get("layers", {}).items()}
    if num_layers is None:
        num_layers = report.get("num_layers") or (max(layers) + 1 if layers else 0)
    return [layers.get(i, report["base"]) for i in range(int(num_layers))]


# --------------------------------------------------------------------------------- mergekit
def mergekit_config(report: Mapping[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """A mergekit ``passthrough`` config assembling the chosen layer donors as ``slices``.

    Consecutive layers from the same donor become one slice (``layer_range`` is half-open, as in
    mergekit). Boundary tensors come from ``base_model`` (the boundary donor when one was chosen).
    Unit-wise decisions and ES refinements have no passthrough equivalent; they are listed in
    ``olmokit_not_exported`` so nobody mistakes the YAML for the full merge.
    """
    paths = {m["name"]: m.get("path") or m["name"] for m in report["pool"]}
    donors = layer_donors(report)
    if not donors:
        raise ReportError("the report records no layers; nothing to export as slices")
    slices: list[dict[str, Any]] = []
    start = 0
    for i in range(1, len(donors) + 1):
        if i == len(donors) or donors[i] != donors[start]:
            slices.append({"sources": [{"model": paths[donors[start]], "layer_range": [start, i]}]})
            start = i
    boundary = report.get("boundary") or {}
    base = boundary.get("winner", report["base"])
    config: dict[str, Any] = {
        "slices": slices,
        "merge_method": "passthrough",
        "base_model": paths.get(base, base),
        "dtype": dtype or report.get("dtype") or "float32",
    }
    extra = [u for u, d in report.get("units", {}).items() if d.get("changed") or d.get("es")]
    if extra:
        config["olmokit_not_exported"] = sorted(extra)
    return config


def mergekit_yaml(report: Mapping[str, Any], dtype: str | None = None) -> str:
    import yaml

    header = (
        "# mergekit passthrough config written by 'olmokit merge export-mergekit'\n"
        "# layer donors of the merge; unit-wise swaps and ES refinements are not representable\n"
    )
    return header + yaml.safe_dump(mergekit_config(report, dtype), sort_keys=False)


def write_mergekit(
    report: Mapping[str, Any], out: str | os.PathLike[str], dtype: str | None = None
) -> Path:

    return atomic_write_text(out, mergekit_yaml(report, dtype))


# --------------------------------------------------------------------------------- printing
def _fmt(v: Any) -> str:
    return "null" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)


def decision_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A table of decisions: step, target, winner, kept/changed, ES steps, metrics after."""
    names = [d["name"] for d in report.get("datasets", [])] or sorted(
        report.get("base_metrics", {})
    )
    headers = ["step", "target", "winner", "changed", "rejected", "es", *names]
    rows = [
        [
            "base",
            "-",
            report["base"],
            "-",
            "-",
            "-",
            *(_fmt(report["base_metrics"].get(n)) for n in names),
        ]
    ]
    for d in decisions(report):
        rejected = sum(1 for c in d.get("candidates", []) if c.get("degraded"))
        rows.append(
            [
                d["step"],
                str(d.get("target", "-")),
                d["winner"],
                "yes" if d.get("changed") else "no",
                str(rejected),
                str(len(d.get("es", []))),
                *(_fmt((d.get("metrics") or {}).get(n)) for n in names),
            ]
        )
    return headers, rows


def plot_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The merge map PNG: donor per layer x unit role, and each dataset's metric per step."""
    from ..plots import plot_merge_map

    donors = [m["name"] for m in report["pool"]]
    units = report.get("unit_layers") or {}
    rows: list[str] = []
    cols: list[str] = []
    for name, layer in units.items():
        row = "boundary" if layer is None else f"layer {layer}"
        col = name if layer is None else name.split(".", 2)[-1]
        if row not in rows:
            rows.append(row)
        if col not in cols:
            cols.append(col)
    sources = final_sources(report, units)
    grid = [[-1] * len(cols) for _ in rows]
    refined = [[False] * len(cols) for _ in rows]
    for name, layer in units.items():
        r = rows.index("boundary" if layer is None else f"layer {layer}")
        c = cols.index(name if layer is None else name.split(".", 2)[-1])
        donor, es = sources[name]
        grid[r][c] = donors.index(donor) if donor in donors else -1
        refined[r][c] = es
    steps = trajectory(report)
    names = [d["name"] for d in report.get("datasets", [])] or sorted(steps[0][1])
    series = {n: [m.get(n) for _, m in steps] for n in names}
    return plot_merge_map(
        grid, donors, rows, cols, series, [s for s, _ in steps], path, refined=refined
    )
