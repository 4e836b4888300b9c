"""Entry point of the ``olmokit`` command.

Each tool contributes one module exposing ``register(subparsers)``, which adds its subcommand and sets
``func`` on its parsers; :data:`COMMAND_MODULES` lists them (a tool is listed once it works).
An :class:`~olmokit.errors.OlmokitError` becomes a one-line message and exit code 2; ``--verbose`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from ..errors import OlmokitError

#: Modules that add a subcommand. Keep one per line (tools append theirs).
COMMAND_MODULES = [
    "olmokit.cli.info",
    "olmokit.cli.zoo",
    "olmokit.cli.config_keys",
    "olmokit.jola.cli",
    "olmokit.lens.cli",
    "olmokit.merge.cli",
    "olmokit.memory.cli",
    "olmokit.cli.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="olmokit",
        description="Edit, merge, extend and inspect OLMo v1/2/3 models. Without a model argument, "
        "commands use the shipped zoo model (olmo2-stdlib).",
    )
    parser.add_argument("--version", action="version", version=f"olmokit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # `olmokit` or `olmokit <tool>` alone: show the relevant help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 0 if args.command is None else 1
    try:
        return int(args.func(args) or 0)
    except OlmokitError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"olmokit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("olmokit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
