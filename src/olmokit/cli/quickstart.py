"""``olmokit quickstart``: every tool working end to end on the zoo models, offline, in minutes.

Steps (``--only`` picks some): ``info`` (the zoo models), ``jola`` (train, base vs JoLA, gate heatmap,
fold and re-score), ``merge`` (a small pool, OLM with layer and tensor swaps and a short ES, the merge
map), ``memory`` (passkey beyond the attention window, memory on vs off), ``lens`` (induction heads
and the top head's attention pattern), then ``summary`` (``SUMMARY.md`` and a console table of every
artifact and measured number). Each tool step leaves the tool's ordinary run directory under
``--out`` (see :mod:`olmokit.cli.quickstart_steps`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .common import print_table

__all__ = ["register", "run", "render_summary"]


def register(subparsers: Any) -> None:
    from .quickstart_steps import DEFAULT_OUT, STEPS

    p = subparsers.add_parser(
        "quickstart",
        help="run every tool end to end on the zoo models (offline, minutes on a CPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output directory (default {DEFAULT_OUT}); rerunning "
        "a step replaces that step's outputs there",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=STEPS,
        metavar="STEP",
        help=f"run only these steps ({', '.join(STEPS)}); the summary always ends the run",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="the configs-quickstart/*-fast.yaml variants: seconds per step (numbers mean little)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .quickstart_steps import STEPS, Context, run_step

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in STEPS if s != "summary" and (not args.only or s in args.only)]
    ctx = Context(out=out, fast=args.fast, progress=not args.no_progress)
    t0 = time.perf_counter()
    for i, step in enumerate(chosen, 1):
        print(f"\n== olmokit quickstart [{i}/{len(chosen)}]: {step} ==", flush=True)
        res = run_step(step, ctx)
        print(f"== {step}: done in {res.seconds:.1f} s ==", flush=True)
    text, rows = render_summary(out)
    print(f"\n== olmokit quickstart: summary ({time.perf_counter() - t0:.1f} s this run) ==")
    print_table(["step", "number", "value", "read from"], rows)
    print(f"\nwrote {out / 'SUMMARY.md'} (every artifact and number)")
    return 0


def render_summary(out: Path) -> tuple[str, list[tuple[str, str, str, str]]]:
    """Write ``SUMMARY.md`` from ``quickstart.json`` (every step run so far under ``out``) and return
    its text and the console table's rows."""
    from ..files import atomic_write_text
    from .quickstart_steps import RESULTS_FILE, STEPS

    results = json.loads((out / RESULTS_FILE).read_text(encoding="utf-8"))
    steps = results["steps"]
    lines = [
        "# olmokit quickstart",
        "",
        f"Output directory `{out}`"
        + (" (`--fast`: numbers mean little)" if results.get("fast") else "")
        + ". Every number below was read from the file named next to it (or computed from it) by the "
        "step that wrote it; `quickstart.json` holds them all.",
        "",
        "| step | seconds | run directory |",
        "|---|---|---|",
    ]
    rows = []
    for step in STEPS:
        if step in steps:
            s = steps[step]
            lines.append(f"| {step} | {s['seconds']:.1f} | {s['run_dir'] or '-'} |")
    for step in STEPS:
        if step not in steps:
            continue
        s = steps[step]
        lines += ["", f"## {step}", ""]
        for table in s["tables"]:
            lines += [table, ""]
        lines += ["| number | value | read from |", "|---|---|---|"]
        for n in s["numbers"]:
            where = n["source"] + (f" `{'.'.join(map(str, n['key']))}`" if n["key"] else "")
            lines.append(f"| {n['name']} | {_fmt(n['value'])} | {where} |")
            rows.append((step, n["name"], _fmt(n["value"]), n["source"]))
        lines += ["", "Artifacts:", ""] + [f"- `{a}`" for a in s["artifacts"]]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "SUMMARY.md", text)
    return text, rows


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"
