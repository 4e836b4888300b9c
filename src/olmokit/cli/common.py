"""Small helpers shared by subcommands: model arguments, tool parsers, printing tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ConfigError
from ..zoo.registry import DEFAULT_MODEL

__all__ = [
    "add_model_args",
    "add_run_dir_args",
    "add_tool_parser",
    "print_table",
    "print_json",
    "require_prompt",
]


def require_prompt(prompt: str | None, option: str = "--prompt") -> str:
    """Refuse an empty prompt before any model is loaded (a run on zero tokens fails deep inside HF).

    Whitespace is allowed: ``"\n"`` or an indent is a meaningful start for code. Every verb that takes
    a prompt (``zoo generate``, the lens verbs) calls this first.
    """
    if prompt is None or prompt == "":
        raise ConfigError(f"{option} is empty; give the text the model should read")
    return prompt


def add_tool_parser(subparsers: Any, name: str, help: str) -> tuple[argparse.ArgumentParser, Any]:
    """A tool-level parser (``olmokit jola``) whose bare invocation prints its help."""
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(_parser=parser, func=None)
    return parser, parser.add_subparsers(dest=f"{name}_command", metavar="VERB")


def add_model_args(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """``MODEL`` (path, hub id or zoo name; default: the shipped zoo model) plus dtype/device."""
    if positional:
        parser.add_argument(
            "model",
            nargs="?",
            default=DEFAULT_MODEL,
            help=f"path, hub id or zoo name (default {DEFAULT_MODEL})",
        )
    else:
        parser.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help=f"path, hub id or zoo name (default {DEFAULT_MODEL})",
        )
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def add_run_dir_args(parser: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--overwrite``: the one contract of every tool that writes a run directory
    (see :class:`olmokit.runs.RunDir`). Without either, an existing run is never touched."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output directory (from its last checkpoint where the tool "
        "has them); refused, naming the keys, if that run was made with another config",
    )
    mode.add_argument(
        "--overwrite", action="store_true", help="replace what the output directory holds"
    )


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain markdown table (readable in a terminal, pasteable into notes)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
