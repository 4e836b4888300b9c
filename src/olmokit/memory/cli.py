"""``olmokit memory train|eval|generate`` — thin wrappers over the library functions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli.common import add_run_dir_args, add_tool_parser, print_table, require_prompt
from .demo import register_demo

__all__ = ["register"]


def register(subparsers: Any) -> None:
    _, verbs = add_tool_parser(
        subparsers,
        "memory",
        "Titans/MIRAS neural long-term memory on a frozen OLMo: train, evaluate, generate",
    )

    p = verbs.add_parser(
        "train",
        help="train a memory from a YAML config (default: zoo model + zoo corpus)",
        description="Train a neural memory on a frozen base. CONFIG has model/memory/training/data "
        "sections; key.sub=value overrides follow it. Multi-process: accelerate launch "
        "--num_processes 2 $(which olmokit) memory train CONFIG.",
    )
    p.add_argument("config", nargs="?", help="YAML config (default: all defaults)")
    p.add_argument("overrides", nargs="*", help="overrides like training.max_steps=50")
    p.add_argument("--model", help="shortcut for model.name")
    p.add_argument("--output-dir", help="shortcut for training.output_dir")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    add_run_dir_args(p)
    p.set_defaults(func=_train)

    p = verbs.add_parser(
        "eval",
        help="loss beyond the first segment: base vs memory vs memory reset every segment",
        description="Evaluate a saved memory adapter on long held-out blocks of the zoo corpus (or "
        "a JSONL file of {input_ids, labels}): mean loss on tokens after the first segment for the "
        "windowed base, the memory and the memory reset every segment.",
    )
    p.add_argument("adapter", help="memory adapter directory (a run's adapter/)")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument("--data", help="JSONL file of {input_ids, labels} rows (default: zoo corpus)")
    p.add_argument(
        "--seq-len", type=int, default=None, help="tokens per sequence (default 8 segments)"
    )
    p.add_argument("--limit", type=int, default=16, help="number of sequences (default 16)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_eval)

    p = verbs.add_parser(
        "generate",
        help="generate text with the memory carried across segments",
        description="Greedy (or sampled) continuation of a prompt by a base with a saved memory; "
        "the prompt may be longer than a segment: the memory carries what attention cannot see.",
    )
    p.add_argument("adapter", help="memory adapter directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--prompt-file", action="store_true", help="--prompt names a file to read")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute each segment (slow; a check)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_generate)

    register_demo(verbs)  # olmokit memory make-demo-base (M3's demo recipe)


def _train(args: argparse.Namespace) -> int:
    from .config import MemoryConfig
    from .run import run_memory

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not Path(args.config).exists():
        overrides.insert(0, args.config)  # `olmokit memory train key=value` without a config file
        args.config = None
    if args.model:
        overrides.append(f"model.name={args.model}")
    if args.output_dir:
        overrides.append(f"training.output_dir={args.output_dir}")
    config = (
        MemoryConfig.from_yaml(args.config, overrides)
        if args.config
        else MemoryConfig().merge(overrides)
    )
    run = run_memory(
        config, resume=args.resume, overwrite=args.overwrite, evaluate=not args.no_eval
    )
    if run.exists("eval.json"):  # only the main process writes it under accelerate launch
        summary = run.read_json("eval.json")
        if "eval" in summary:
            _print_eval(summary["eval"])
        print(
            f"memory parameters: {summary['memory_parameters']:,}; steps: "
            f"{summary['global_step']}; adapter: {Path(summary['output_dir']) / 'adapter'}"
        )
    return 0


def _print_eval(res: dict[str, Any]) -> None:
    rows = [
        [k, f"{res[k]['loss']:.4f}", f"{res[k]['stderr']:.4f}"] for k in ("base", "memory", "reset")
    ]
    print(f"loss on tokens after the first {res['start']} (n = {res['n']} sequences)")
    print_table(["condition", "loss", "stderr"], rows)
    print(
        f"memory - base: {res['memory_minus_base']:+.4f} "
        f"(paired stderr {res['memory_minus_base_stderr']:.4f})"
    )


def _eval(args: argparse.Namespace) -> int:
    from ..files import atomic_write_json
    from ..loading import load_tokenizer
    from .config import DataSection
    from .run import evaluate_memory, load_run_model, load_sequences

    mm = load_run_model(args.adapter, args.model, args.device)
    seq_len = args.seq_len or 8 * mm.segment_len
    data = DataSection(
        source="file" if args.data else "corpus",
        train_file=args.data,
        eval_file=args.data,
        seq_len=seq_len,
        eval_size=args.limit,
    )
    tokenizer = None if args.data else load_tokenizer(mm.model.name_or_path)
    rows = load_sequences(data, tokenizer, "eval")
    res = evaluate_memory(mm, rows, args.batch_size)
    _print_eval(res)
    if args.json:
        atomic_write_json(args.json, {"adapter": args.adapter, **res})
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from ..loading import load_tokenizer
    from .run import load_run_model

    prompt = require_prompt(args.prompt)
    if args.prompt_file:
        prompt = Path(prompt).read_text(encoding="utf-8")
    mm = load_run_model(args.adapter, args.model, args.device)
    tok = load_tokenizer(mm.model.name_or_path)
    ids = torch.tensor([tok(prompt)["input_ids"]], device=next(mm.parameters()).device)
    out = mm.generate(
        ids,
        args.max_new_tokens,
        use_cache=not args.no_cache,
        eos_token_id=tok.eos_token_id,
        do_sample=args.sample,
        temperature=args.temperature,
        generator=torch.Generator(device=ids.device).manual_seed(args.seed),
    )
    print(tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True))
    return 0
