"""``olmokit jola train|eval|merge|report|sweep|prune`` — thin wrappers over the library functions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli.common import add_run_dir_args, add_tool_parser, print_json, print_table

__all__ = ["register"]


def register(subparsers: Any) -> None:
    _, verbs = add_tool_parser(
        subparsers,
        "jola",
        "JoLA: train, evaluate, merge and inspect per-head gated attention edits",
    )

    p = verbs.add_parser(
        "train",
        help="train a JoLA adapter from a YAML config (default: zoo model + built-in task)",
        description="Train JoLA. CONFIG has model_config/training_config/jola_config/data_config "
        "sections; key.sub=value overrides follow it. Multi-process: accelerate launch "
        "--num_processes 2 $(which olmokit) jola train CONFIG.",
    )
    p.add_argument("config", nargs="?", help="YAML config (default: all defaults)")
    p.add_argument("overrides", nargs="*", help="overrides like training_config.max_steps=50")
    p.add_argument("--model", help="shortcut for model_config.pretrained_model_name_or_path")
    p.add_argument("--output-dir", help="shortcut for training_config.output_dir")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    add_run_dir_args(p)
    p.set_defaults(func=_train)

    p = verbs.add_parser("eval", help="held-out accuracy / exact match of the base and of adapters")
    p.add_argument(
        "adapters", nargs="*", help="adapter directories to evaluate (base is always included)"
    )
    p.add_argument(
        "--model", help="base model (default: the first adapter's base, else the zoo model)"
    )
    p.add_argument("--task", default="stdlib_module", help="built-in task (default stdlib_module)")
    p.add_argument(
        "--data", help="JSON/JSONL held-out file (records with 'choices' get MC accuracy)"
    )
    p.add_argument(
        "--limit", type=int, default=200, help="number of held-out examples (default 200)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-generate", action="store_true", help="skip greedy exact match")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_eval)

    p = verbs.add_parser(
        "merge", help="fold an adapter into the base weights; writes a plain HF model dir"
    )
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("out", help="output directory (loads with stock from_pretrained)")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument(
        "--gate-mode", choices=["expected", "hard", "topk"], help="override the adapter's gate mode"
    )
    p.add_argument("--topk", type=int, help="with --gate-mode topk")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=_merge)

    p = verbs.add_parser(
        "sweep",
        help="train one adapter per gate_lambda; accuracy vs open heads (table, JSON, plot)",
        description="Runs CONFIG once per --gate-lambda value into OUT/lambda-<value>/ and writes "
        "OUT/sweep.json, sweep.md and sweep.png (validation and held-out score against open heads). "
        "Choose settings by the validation column: the test column is the held-out split.",
    )
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*", help="overrides like training_config.max_steps=50")
    p.add_argument(
        "--gate-lambda", type=float, nargs="+", required=True, help="grid of gate_lambda values"
    )
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument(
        "--keep-top-k", type=int, help="also prune each adapter to its k most open heads"
    )
    p.add_argument("--threshold", type=float, help="also prune heads whose gate is <= this")
    add_run_dir_args(p)
    p.set_defaults(func=_sweep)

    p = verbs.add_parser(
        "prune",
        help="hard-close all but the k most open heads (or those <= a threshold) of an adapter",
    )
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("out", help="where the pruned adapter goes")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--keep-top-k", type=int, help="heads to keep open")
    group.add_argument("--threshold", type=float, help="close heads whose gate is <= this")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument(
        "--task", default=None, help="re-evaluate on this built-in task's held-out split"
    )
    p.add_argument("--data", help="re-evaluate on this JSON/JSONL held-out file")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_prune)

    p = verbs.add_parser(
        "report", help="per-layer x per-head open gates: table, JSON and heatmap PNG"
    )
    p.add_argument("adapter", help="adapter directory (no base model needed)")
    p.add_argument("--out", help="output directory (default: ADAPTER/report)")
    p.add_argument(
        "--mode", choices=["expected", "hard", "topk"], help="gate mode (default: the adapter's)"
    )
    p.set_defaults(func=_report)


def _train(args: argparse.Namespace) -> int:
    from .config import JoLAConfig
    from .run import run_jola

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not Path(args.config).exists():
        overrides.insert(0, args.config)  # `olmokit jola train key=value` without a config file
        args.config = None
    if args.model:
        overrides.append(f"model_config.pretrained_model_name_or_path={args.model}")
    if args.output_dir:
        overrides.append(f"training_config.output_dir={args.output_dir}")
    config = (
        JoLAConfig.from_yaml(args.config, overrides)
        if args.config
        else JoLAConfig().merge(overrides)
    )
    run = run_jola(
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=True,
        evaluate=not args.no_eval,
    )
    if run.exists("eval.json"):  # only the main process writes it under accelerate launch
        _print_summary(run.read_json("eval.json"))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    if "test" not in summary:
        print_json({k: v for k, v in summary.items() if k != "report"})
        return
    rows = [
        [name, *(_fmt(res.get(k)) for k in ("acc", "em")), res.get("n")]
        for name, res in summary["test"].items()
    ]
    print_table(["model", "acc", "exact match", "n"], rows)
    print(
        f"JoLA parameters: {summary['jola_parameters']:,}; steps: {summary['global_step']}; "
        f"adapter: {Path(summary['output_dir']) / 'adapter'}"
    )
    if "report" in summary:
        print(f"gate report: {summary['report']['markdown']} and {summary['report']['heatmap']}")


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def _eval(args: argparse.Namespace) -> int:
    from .run import evaluate_adapters

    out = evaluate_adapters(
        args.adapters,
        model=args.model,
        task=args.task,
        data_file=args.data,
        limit=args.limit,
        batch_size=args.batch_size,
        generate=not args.no_generate,
        device=args.device,
        json_path=args.json,
    )
    rows = [
        [name, _fmt(r.get("acc")) if out["mc"] else "-", _fmt(r.get("em")), r.get("n")]
        for name, r in out["results"].items()
    ]
    print(f"model: {out['model']}; {out['n']} held-out examples")
    print_table(["model", "acc", "exact match", "n"], rows)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .checkpoint import merge_adapter

    out, merged, base_name = merge_adapter(
        args.adapter,
        args.out,
        model=args.model,
        gate_mode=args.gate_mode,
        topk=args.topk,
        dtype=args.dtype,
    )
    bias = merged.config.attention_bias
    print(f"merged {args.adapter} into {base_name}: {out} (attention_bias={bias})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import gate_report, write_report

    out = Path(args.out) if args.out else Path(args.adapter) / "report"
    paths = write_report(args.adapter, out, args.mode)
    print(gate_report(args.adapter, args.mode).markdown())
    print_json({k: str(v) for k, v in paths.items()})
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .config import JoLAConfig
    from .sweep import sweep_jola, sweep_markdown

    config = JoLAConfig.from_yaml(args.config, args.overrides)
    result = sweep_jola(
        config,
        args.gate_lambda,
        args.out,
        keep_top_k=args.keep_top_k,
        threshold=args.threshold,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=True,
    )
    print(sweep_markdown(result))
    print(f"plot: {Path(args.out) / 'sweep.png'}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .run import prune_adapter

    out = prune_adapter(
        args.adapter,
        args.out,
        keep_top_k=args.keep_top_k,
        threshold=args.threshold,
        model=args.model,
        task=args.task,
        data_file=args.data,
        limit=args.limit,
        device=args.device,
    )
    print_json(out)
    return 0
