"""``olmokit zoo list|generate|build``: the models olmokit ships and builds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import add_model_args, add_tool_parser, print_table, require_prompt


def register(subparsers: Any) -> None:
    _, verbs = add_tool_parser(subparsers, "zoo", "models olmokit ships and can build offline")

    p = verbs.add_parser("list", help="list zoo models")
    p.set_defaults(func=run_list)

    p = verbs.add_parser("generate", help="sample text from a model (KV cache)")
    add_model_args(p)
    p.add_argument("--prompt", default="def ", help="text to continue")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a chat user turn")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_generate)

    from ..zoo.build.config import ZooBuildConfig

    p = verbs.add_parser(
        "build",
        help="rebuild a zoo model from CPython's own text (corpus, tokenizer, pretraining, card)",
        description="Reproduce a shipped model: `olmokit zoo build NAME` reruns the recipe recorded "
        "in its directory (build_config.yaml); --config builds from a YAML file instead. Killed "
        "builds resume from --work-dir.",
        epilog="config keys (in --config YAML or as key=value):\n" + ZooBuildConfig.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML with ZooBuildConfig keys")
    p.add_argument("--out", default=None, help="output model directory (default zoo-build/<name>)")
    p.add_argument(
        "--work-dir", default=None, help="tokenizer/token streams/checkpoints (for resume)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="[NAME] key=value",
        help="a shipped zoo model to rebuild (e.g. olmo2-induction), then key=value overrides, "
        "e.g. steps=200 model_type=olmo3",
    )
    p.set_defaults(func=run_build)


def run_list(args: argparse.Namespace) -> int:
    from ..zoo.registry import DEFAULT_MODEL, list_models

    rows = []
    for e in list_models():
        status = (
            "shipped"
            if e.kind == "shipped" and e.available
            else ("missing" if e.kind == "shipped" else "built on load")
        )
        rows.append(
            (
                e.name + (" (default)" if e.name == DEFAULT_MODEL else ""),
                e.model_type,
                status,
                e.description,
            )
        )
    print_table(["name", "model_type", "weights", "description"], rows)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from ..eval.generation import sample_text
    from ..loading import load_model, load_tokenizer

    require_prompt(args.prompt)
    model = load_model(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    tokenizer = load_tokenizer(args.model, revision=args.revision)
    text = sample_text(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        chat=args.chat,
    )
    print(args.prompt + text if not args.chat else text)
    return 0


def run_build(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..zoo.build import ZooBuildConfig, build_zoo_model
    from ..zoo.registry import zoo_entry

    names = [o for o in args.overrides if "=" not in o]
    overrides = [o for o in args.overrides if "=" in o]
    if len(names) > 1 or (names and args.config):
        raise ConfigError(
            "zoo build takes one model NAME or --config, not several: got "
            + ", ".join(names + (["--config"] if args.config else []))
        )
    if names:
        entry = zoo_entry(names[0])
        recipe = entry.path / "build_config.yaml" if entry.kind == "shipped" else None
        if recipe is None or not recipe.is_file():
            raise ConfigError(
                f"zoo model {entry.name!r} has no build recipe (random models are built on load)"
            )
        cfg = ZooBuildConfig.from_yaml(recipe, overrides)
    elif args.config:
        cfg = ZooBuildConfig.from_yaml(args.config, overrides)
    else:
        cfg = ZooBuildConfig.from_dict({}).merge(overrides)
    out = Path(args.out or Path("zoo-build") / cfg.name)
    build_zoo_model(cfg, out, args.work_dir)
    print(f"wrote {out}")
    return 0
