"""``olmokit merge run|report|export-mergekit|make-demo-pool`` — thin wrappers over the library."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli.common import add_run_dir_args, add_tool_parser, print_table

__all__ = ["register"]


def register(subparsers: Any) -> None:
    _, verbs = add_tool_parser(
        subparsers,
        "merge",
        "OLM merging: choose a donor per layer / parameter unit from a model pool by evaluation",
    )

    p = verbs.add_parser(
        "run",
        help="run (or --resume) a merge from a YAML config; writes <output_dir>/model",
        description="Run a merge. CONFIG is an olmokit merge config or a seed-style "
        "olm_config.yaml; key=value overrides follow it (e.g. epsilon=0.01 "
        "output_dir=runs/m2). The run directory gets config.yaml, merge_report.json (rewritten "
        "after every decision) and model/ (a plain Hugging Face model directory).",
    )
    p.add_argument("config", help="YAML merge config")
    p.add_argument(
        "overrides", nargs="*", help="overrides like epsilon=0.01 or datasets.0.samples=50"
    )
    p.add_argument("--output-dir", help="shortcut for output_dir=...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_dir_args(p)
    p.set_defaults(func=_run)

    p = verbs.add_parser(
        "report",
        help="print a merge report's decisions and draw its merge map PNG",
        description="Print every decision of REPORT (merge_report.json or its run directory) and "
        "draw the merge map: the donor of every layer/unit and each dataset's metric per step.",
    )
    p.add_argument("report", help="merge_report.json (or the run directory holding it)")
    p.add_argument("--png", help="where to draw the merge map (default: next to the report)")
    p.set_defaults(func=_report)

    p = verbs.add_parser(
        "export-mergekit",
        help="write the chosen layer donors as a mergekit passthrough (slices) YAML",
        description="Write a mergekit config (merge_method: passthrough, one slice per run of "
        "layers from the same donor). Unit-wise swaps and ES refinements have no passthrough "
        "equivalent; they are listed under olmokit_not_exported.",
    )
    p.add_argument("report", help="merge_report.json (or the run directory holding it)")
    p.add_argument("out", help="output YAML path")
    p.add_argument("--dtype", help="mergekit dtype (default: the merge's)")
    p.set_defaults(func=_export)

    p = verbs.add_parser(
        "make-demo-pool",
        help="build the demo pool: the zoo base plus prose and code experts (CPU minutes)",
        description="Fine-tune the shipped olmo2-stdlib briefly on the prose half and the code "
        "half of the zoo corpus, and write the pool, evaluation sets and a merge config to OUT.",
    )
    p.add_argument("out", nargs="?", default="runs/merge-demo-pool", help="output directory")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per expert")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _run(args: argparse.Namespace) -> int:
    from .config import MergeConfig
    from .run import run_merge

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = MergeConfig.from_yaml(args.config, overrides)
    run = run_merge(
        config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    from .report import REPORT_FILE, load_report

    report = load_report(run.path / REPORT_FILE)
    _print_decisions(report)
    print(f"merged model: {run.path / 'model'}; report: {run.path / REPORT_FILE}")
    return 0


def _print_decisions(report: dict[str, Any]) -> None:
    from .report import decision_rows

    headers, rows = decision_rows(report)
    print_table(headers, rows)
    cache = report.get("cache") or {}
    print(
        f"base: {report['base']}; evaluation cache: {cache.get('hits', 0)} hits, "
        f"{cache.get('misses', 0)} misses; status: {report.get('status', '?')}"
    )


def _report(args: argparse.Namespace) -> int:
    from .report import load_report, plot_report

    report = load_report(args.report)
    src = Path(args.report)
    png = Path(args.png) if args.png else (src if src.is_dir() else src.parent) / "merge_map.png"
    _print_decisions(report)
    plot_report(report, png)
    print(f"merge map: {png}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .report import load_report, write_mergekit

    out = write_mergekit(load_report(args.report), args.out, args.dtype)
    print(f"mergekit config: {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import make_demo_pool

    pool = make_demo_pool(args.out, steps=args.steps, seed=args.seed)
    print(f"demo pool: {', '.join(str(m) for m in pool.models)}; merge config: {pool.config}")
    return 0
