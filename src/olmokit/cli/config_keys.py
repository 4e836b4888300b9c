"""``olmokit config-keys [TOOL]``: every config key of a tool, as a markdown table from its type.

``docs/config_keys.md`` is this command's output (``olmokit config-keys --write docs/config_keys.md``),
and a test regenerates it, so the documented keys, types and defaults cannot drift from the code.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import config_table
from ..errors import ConfigError
from ..files import atomic_write_text
from ..jola.config import JoLAConfig
from ..lens.config import JOB_CLASSES, LensConfig
from ..memory.config import MemoryConfig
from ..merge.config import MergeConfig

#: tool name -> (title, config class, how the tool is run)
TOOLS: dict[str, tuple[str, Any, str]] = {
    "jola": ("JoLA", JoLAConfig, "olmokit jola train CONFIG.yaml"),
    "merge": ("Merge (OLM)", MergeConfig, "olmokit merge run CONFIG.yaml"),
    "memory": ("Memory (Titans/MIRAS)", MemoryConfig, "olmokit memory train CONFIG.yaml"),
    "lens": ("Lens", LensConfig, "olmokit lens run CONFIG.yaml"),
}


def tool_section(tool: str) -> str:
    """The markdown section of one tool: its top-level keys, and for the lens each job kind's."""
    title, cls, command = TOOLS[tool]
    parts = [f"## {title} (`{command}`)", "", config_table(cls)]
    if tool == "lens":
        for kind, job_cls in JOB_CLASSES.items():
            parts += ["", f"### lens job `kind: {kind}` (an item of `jobs`)", ""]
            parts.append(config_table(job_cls, prefix="jobs[]."))
    return "\n".join(parts)


def document(tools: list[str] | None = None) -> str:
    """The whole reference page (every tool when ``tools`` is empty)."""
    names = tools or list(TOOLS)
    head = (
        "# Config keys\n\n"
        "Generated from the config types by `olmokit config-keys --write docs/config_keys.md`; "
        "a test regenerates it, so it cannot drift from the code. Dotted keys are YAML nesting "
        "(and `key.sub=value` command-line overrides).\n"
    )
    return head + "\n" + "\n\n".join(tool_section(t) for t in names) + "\n"


def _run(args: argparse.Namespace) -> int:
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        raise ConfigError(f"unknown tool(s) {unknown}; valid: {', '.join(TOOLS)}")
    text = document(args.tools)
    if args.write:
        atomic_write_text(args.write, text)
        print(f"wrote {args.write}")
    else:
        print(text, end="")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config-keys",
        help="every config key of each tool (type, default, meaning) as markdown",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "tools", nargs="*", metavar="TOOL", help=f"one or more of {', '.join(TOOLS)} (default: all)"
    )
    parser.add_argument("--write", metavar="PATH", help="write the page there (atomically)")
    parser.set_defaults(func=_run, _parser=parser)
