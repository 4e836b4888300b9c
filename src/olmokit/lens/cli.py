"""``olmokit lens``: hook names and cache sizes, activation patching, induction heads, logit lens.

Every verb defaults to the shipped zoo model and writes PNGs into ``--out`` (default ``lens-out/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli.common import add_model_args, add_tool_parser, print_json, print_table

__all__ = ["register"]

# __init__ takes arguments, __repr__ only self: the zoo model predicts "," vs "):" after "self".
DEFAULT_CLEAN = "class Point:\n    def __init__(self"
DEFAULT_CORRUPTED = "class Point:\n    def __repr__(self"


def register(subparsers: Any) -> None:
    _, verbs = add_tool_parser(subparsers, "lens", "inspect a model with hooks: cache sizes, patching, induction heads")

    p = verbs.add_parser("info", help="list hook names with shapes and estimate the cache size")
    add_model_args(p, positional=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--filter", default=None, help="only hooks whose name contains this text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)

    p = verbs.add_parser("patch", help="activation patching between a clean and a corrupted prompt (PNG heatmaps)")
    add_model_args(p)
    p.add_argument("--clean", default=DEFAULT_CLEAN, help="clean prompt")
    p.add_argument("--corrupted", default=DEFAULT_CORRUPTED, help="corrupted prompt (same number of tokens)")
    p.add_argument("--answer", default=None, help="answer token text (default: clean run's top prediction)")
    p.add_argument("--wrong", default=None, help="wrong token text (default: corrupted run's top prediction)")
    p.add_argument("--out", default="lens-out", help="output directory")
    p.set_defaults(func=run_patch)

    p = verbs.add_parser("induction", help="induction-head scores on repeated random tokens (PNG)")
    add_model_args(p, positional=True)
    p.add_argument("--seq-len", type=int, default=32, help="length of the repeated half")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--out", default="lens-out", help="output directory")
    p.set_defaults(func=run_induction)

    p = verbs.add_parser("logit-lens", help="top prediction after every layer (PNG table)")
    add_model_args(p)
    p.add_argument("--prompt", default="def main():\n    return")
    p.add_argument("--out", default="lens-out", help="output directory")
    p.set_defaults(func=run_logit_lens)


def _load(args: argparse.Namespace):
    from .hooked import HookedOlmo

    return HookedOlmo.from_pretrained(args.model, dtype=args.dtype, device=args.device, revision=args.revision)


def run_info(args: argparse.Namespace) -> int:
    from .planner import format_bytes

    model = _load(args)
    names = [n for n in model.hook_dict if args.filter is None or args.filter in n]
    plan = model.plan_cache((args.batch, args.seq_len), names)
    if args.json:
        print_json({"hooks": [{"name": n, "shape": list(s), "bytes": b} for n, s, b in plan.entries],
                    "total_bytes": plan.total_bytes, "unique_bytes": plan.unique_bytes})
        return 0
    specs = model.specs
    rows = [(n, " ".join(specs[n].shape), format_bytes(b), specs[n].doc) for n, _, b in plan.entries
            if specs[n].layer in (None, 0)]
    print(f"{len(names)} hook points; block 0 and global hooks shown (blocks 1..{model.adapter.num_layers - 1} repeat them)")
    print_table(["hook", "shape", f"bytes @ {args.batch}x{args.seq_len}", "what"], rows)
    print(f"\ncache estimate for run_with_cache at batch {args.batch}, seq {args.seq_len}: {plan.summary()}")
    return 0


def _single_token(model, text: str | None, fallback: int) -> int:
    if text is None:
        return fallback
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        from ..errors import ConfigError

        raise ConfigError(f"{text!r} is {len(ids)} tokens; --answer/--wrong must be a single token")
    return ids[0]


def run_patch(args: argparse.Namespace) -> int:
    import torch

    from .. import plots
    from ..errors import ConfigError
    from . import patching

    model = _load(args)
    clean, corrupted = model.to_tokens(args.clean), model.to_tokens(args.corrupted)
    if clean.shape != corrupted.shape:
        raise ConfigError(f"prompts must have the same token length: {clean.shape[1]} vs {corrupted.shape[1]}")
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_z")))
        corrupted_logits = model(corrupted)
    answer = _single_token(model, args.answer, int(clean_logits[0, -1].argmax()))
    wrong = _single_token(model, args.wrong, int(corrupted_logits[0, -1].argmax()))
    if answer == wrong:
        raise ConfigError("answer and wrong token are the same; pass --answer/--wrong")
    metric = patching.logit_diff_metric(answer, wrong)
    c, k = float(metric(clean_logits)), float(metric(corrupted_logits))
    out, toks = Path(args.out), model.to_str_tokens(clean)
    print(f"answer {model.tokenizer.decode([answer])!r} vs {model.tokenizer.decode([wrong])!r}: logit diff clean {c:.3f}, corrupted {k:.3f}")
    every = patching.normalize_patching(patching.get_act_patch_block_every(model, corrupted, cache, metric), c, k)
    for i, name in enumerate(("resid_pre", "attn_out", "mlp_out")):
        path = plots.plot_patching_heatmap(every[i], out / f"patch_{name}.png", col_labels=toks, title=f"{name} patching (1 = clean)")
        print(f"wrote {path}")
    heads = patching.normalize_patching(patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric), c, k)
    path = plots.plot_patching_heatmap(heads, out / "patch_heads.png", col_label="head", title="head output (z) patching, all positions")
    print(f"wrote {path}")
    return 0


def run_induction(args: argparse.Namespace) -> int:
    from .. import plots
    from .heads import induction_score

    model = _load(args)
    result = induction_score(model, seq_len=args.seq_len, batch=args.batch, seed=args.seed)
    prev = result.previous_token
    print_table(
        ["layer", "head", "induction score", "previous-token score"],
        [(layer, h, f"{s:.3f}", f"{prev[layer, h]:.3f}") for layer, h, s in result.top(args.top)],
    )
    n = args.seq_len
    uniform = sum(1 / (q + 1) for q in range(n, 2 * n)) / n
    print(f"a head attending uniformly to all earlier tokens scores {uniform:.3f}; "
          f"NLL drop on the repeat (in-context copying): {result.copy_gain:.3f} nats")
    out = Path(args.out)
    name = Path(str(args.model).removeprefix("zoo:")).name.replace(":", "_")
    path = plots.plot_head_scores(result.scores, out / f"induction_{name}.png", title=f"induction scores, {name} (repeat of {args.seq_len} tokens)")
    print(f"wrote {path}")
    layer, head, _ = result.top(1)[0]
    _, cache = model.run_with_cache(result.tokens[:1], names_filter=f"blocks.{layer}.attn.hook_pattern")
    path = plots.plot_attention_pattern(
        cache[("pattern", layer)][0, head], None, out / f"pattern_{name}_L{layer}H{head}.png",
        title=f"L{layer}H{head} (top induction score) on a repeated random sequence",
        mark_offset=1 - args.seq_len,
    )
    print(f"wrote {path}")
    return 0


def run_logit_lens(args: argparse.Namespace) -> int:
    from .. import plots
    from .logit_lens import logit_lens

    model = _load(args)
    result = logit_lens(model, args.prompt)
    decode = model.tokenizer.decode
    top = [[decode([int(t)]) for t in row[:, 0]] for row in result.top_ids]
    rows = [(label, " | ".join(repr(t) for t in row[-4:])) for label, row in zip(result.labels, top)]
    print_table(["residual", "top-1 at the last 4 positions"], rows)
    path = plots.plot_logit_lens(result.top_probs[..., 0], top, result.labels, model.to_str_tokens(args.prompt),
                                 Path(args.out) / "logit_lens.png")
    print(f"wrote {path}")
    return 0
