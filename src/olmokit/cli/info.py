"""``olmokit info MODEL``: family, sizes, head layout, attention layout, parameters, dtype."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_model_args, print_json, print_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("info", help="describe an OLMo model", description=__doc__)
    add_model_args(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--units", action="store_true", help="also list the parameter units")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..family import get_adapter
    from ..loading import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    adapter = get_adapter(model)
    info = {"model": args.model, **adapter.describe()}
    if args.json:
        if args.units:
            info["units"] = [u.name for u in adapter.units()]
        print_json(info)
        return 0
    print_table(["property", "value"], info.items())
    if args.units:
        units = adapter.units()
        print(f"\n{len(units)} parameter units")
        print_table(
            ["unit", "block", "tensors"], [(u.name, u.block, ", ".join(u.keys)) for u in units]
        )
    return 0
