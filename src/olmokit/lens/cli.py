"""``olmokit lens``: run a YAML list of lens jobs, or one job through a shortcut verb.

``olmokit lens run CONFIG.yaml [key=value ...] [--resume|--overwrite]`` runs every job of the config
(see :mod:`olmokit.lens.config`) into its run directory. ``patch``, ``induction`` and ``logit-lens``
build a one- or two-job config from their flags and call the same :func:`~olmokit.lens.run.run_lens`,
then print the job's numbers; ``info`` lists hook names and cache sizes and writes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli.common import add_model_args, add_run_dir_args, add_tool_parser, print_json, print_table
from .config import DEFAULT_CLEAN, DEFAULT_CORRUPTED, DEFAULT_PROMPT, LensConfig

if TYPE_CHECKING:
    from ..runs import RunDir

__all__ = ["register"]


def register(subparsers: Any) -> None:
    _, verbs = add_tool_parser(
        subparsers, "lens", "inspect a model with hooks: cache sizes, patching, induction heads"
    )

    p = verbs.add_parser(
        "run",
        help="run the lens jobs of a YAML config into a run directory (JSON + PNG per job)",
        description="Run lens jobs. CONFIG has model/output_dir/jobs (see configs/lens/tiny.yaml); "
        "key.sub=value overrides follow it.",
    )
    p.add_argument("config", help="YAML config")
    p.add_argument(
        "overrides", nargs="*", help="overrides like output_dir=runs/x model.device=cuda"
    )
    _add_run_dir_args(p, default_out=None)
    p.set_defaults(func=run_config)

    p = verbs.add_parser("info", help="list hook names with shapes and estimate the cache size")
    add_model_args(p, positional=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--filter", default=None, help="only hooks whose name contains this text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)

    p = verbs.add_parser(
        "patch", help="activation patching between a clean and a corrupted prompt (PNG heatmaps)"
    )
    add_model_args(p)
    p.add_argument("--clean", default=DEFAULT_CLEAN, help="clean prompt")
    p.add_argument(
        "--corrupted", default=DEFAULT_CORRUPTED, help="corrupted prompt (same number of tokens)"
    )
    p.add_argument("--answer", default=None, help="answer token (default: clean top prediction)")
    p.add_argument("--wrong", default=None, help="wrong token (default: corrupted top prediction)")
    _add_run_dir_args(p, default_out="lens-out/patch")
    p.set_defaults(func=run_patch)

    p = verbs.add_parser("induction", help="induction-head scores on repeated random tokens (PNG)")
    add_model_args(p, positional=True)
    p.add_argument("--seq-len", type=int, default=32, help="length of the repeated half")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5)
    _add_run_dir_args(p, default_out="lens-out/induction")
    p.set_defaults(func=run_induction)

    p = verbs.add_parser("logit-lens", help="top prediction after every layer (PNG table)")
    add_model_args(p)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    _add_run_dir_args(p, default_out="lens-out/logit-lens")
    p.set_defaults(func=run_logit_lens)


def _add_run_dir_args(p: argparse.ArgumentParser, default_out: str | None) -> None:
    if default_out is None:
        p.add_argument(
            "--out", default=None, help="run directory (default: the config's output_dir)"
        )
    else:
        p.add_argument("--out", default=default_out, help=f"run directory (default {default_out})")
    add_run_dir_args(p)


def _run(args: argparse.Namespace, config: LensConfig) -> RunDir:
    """Run ``config`` with the flags' resume/overwrite; returns the run directory."""
    from .run import run_lens

    return run_lens(config, resume=args.resume, overwrite=args.overwrite, log=print)


def _shortcut_config(args: argparse.Namespace, jobs: list[dict[str, Any]]) -> LensConfig:
    model = {
        "name": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "revision": args.revision,
    }
    return LensConfig.from_dict(
        {"model": model, "output_dir": args.out, "jobs": jobs},
        source=f"olmokit lens {args.lens_command}",
    )


def run_config(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    config = LensConfig.from_yaml(args.config, overrides)
    run = _run(args, config)
    summary = run.read_json("summary.json")
    print_table(
        ["job", "kind", "headline"],
        [
            (j["name"], j["kind"], ", ".join(f"{k}={_fmt(v)}" for k, v in j["headline"].items()))
            for j in summary["jobs"]
        ],
    )
    print(f"run directory: {run.path}")
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def run_info(args: argparse.Namespace) -> int:
    from .hooked import HookedOlmo
    from .planner import format_bytes

    model = HookedOlmo.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, revision=args.revision
    )
    names = [n for n in model.hook_dict if args.filter is None or args.filter in n]
    plan = model.plan_cache((args.batch, args.seq_len), names)
    if args.json:
        print_json(
            {
                "hooks": [{"name": n, "shape": list(s), "bytes": b} for n, s, b in plan.entries],
                "total_bytes": plan.total_bytes,
                "unique_bytes": plan.unique_bytes,
            }
        )
        return 0
    specs = model.specs
    rows = [
        (n, " ".join(specs[n].shape), format_bytes(b), specs[n].doc)
        for n, _, b in plan.entries
        if specs[n].layer in (None, 0)
    ]
    last = model.adapter.num_layers - 1
    print(
        f"{len(names)} hook points; block 0 and global hooks shown (blocks 1..{last} repeat them)"
    )
    print_table(["hook", "shape", f"bytes @ {args.batch}x{args.seq_len}", "what"], rows)
    print(
        f"\ncache estimate for run_with_cache at batch {args.batch}, seq {args.seq_len}: "
        f"{plan.summary()}"
    )
    return 0


def run_patch(args: argparse.Namespace) -> int:
    job = {"kind": "patching", "name": "patch", "clean": args.clean, "corrupted": args.corrupted}
    job.update(answer=args.answer, wrong=args.wrong)
    run = _run(args, _shortcut_config(args, [job]))
    r = run.read_json("patch.json")
    d = r["logit_diff"]
    print(
        f"answer {r['answer']['text']!r} vs {r['wrong']['text']!r}: "
        f"logit diff clean {d['clean']:.3f}, corrupted {d['corrupted']:.3f}"
    )
    return 0


def run_induction(args: argparse.Namespace) -> int:
    name = Path(str(args.model).removeprefix("zoo:")).name.replace(":", "_")
    common = {"seq_len": args.seq_len, "batch": args.batch, "seed": args.seed}
    jobs = [
        {"kind": "head_scores", "name": f"induction_{name}", "top": args.top, **common},
        {"kind": "attention_pattern", "name": f"pattern_{name}", **common},
    ]
    run = _run(args, _shortcut_config(args, jobs))
    r = run.read_json(f"induction_{name}.json")
    print_table(
        ["layer", "head", "induction score", "previous-token score"],
        [
            (t["layer"], t["head"], f"{t['induction']:.3f}", f"{t['previous_token']:.3f}")
            for t in r["top"]
        ],
    )
    print(
        f"a head attending uniformly to all earlier tokens scores {r['uniform_baseline']:.3f}; "
        f"NLL drop on the repeat (in-context copying): {r['copy_gain']:.3f} nats"
    )
    return 0


def run_logit_lens(args: argparse.Namespace) -> int:
    job = {"kind": "logit_lens", "name": "logit_lens", "prompt": args.prompt}
    run = _run(args, _shortcut_config(args, [job]))
    r = run.read_json("logit_lens.json")
    rows = [
        (label, " | ".join(repr(pos[0]) for pos in row[-4:]))
        for label, row in zip(r["labels"], r["top_tokens"])
    ]
    print_table(["residual", "top-1 at the last 4 positions"], rows)
    return 0
