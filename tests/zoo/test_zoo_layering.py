"""Imports run one way: the zoo registry and ``data`` sit below ``loading`` and the build recipe.

Checked on the source (every ``import``, including lazy ones inside functions), so a cycle cannot hide
behind an import that only runs on some code path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "olmokit"


def _imports(path: Path) -> set[str]:
    """Absolute ``olmokit.*`` module names a file imports (relative imports resolved)."""
    package = ["olmokit", *path.relative_to(SRC).parent.parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("olmokit")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module.startswith("olmokit"):
                out.add(module)
                out |= {f"{module}.{a.name}" for a in node.names}
    return out


def _files(*parts: str, exclude: str | None = None) -> list[Path]:
    root = SRC.joinpath(*parts)
    return [p for p in sorted(root.rglob("*.py")) if exclude is None or exclude not in p.parts]


@pytest.mark.parametrize(
    "files,forbidden",
    [
        # the registry: what ships and how to load it, never how it was built nor the loader above it
        (
            _files("zoo", exclude="build"),
            ("olmokit.zoo.build", "olmokit.loading", "olmokit.data", "olmokit.cli"),
        ),
        # data is below the zoo: the CPython corpus lives in data/stdlib.py
        (_files("data"), ("olmokit.zoo", "olmokit.loading", "olmokit.cli")),
        # the build recipe is above the registry and data, below the CLI
        (_files("zoo", "build"), ("olmokit.loading", "olmokit.cli")),
    ],
    ids=["zoo-registry", "data", "zoo-build"],
)
def test_imports_run_one_way(files, forbidden):
    assert files
    bad = {
        f"{p.relative_to(SRC)} imports {m}"
        for p in files
        for m in _imports(p)
        if any(m == f or m.startswith(f + ".") for f in forbidden)
    }
    assert not bad, sorted(bad)


def test_the_build_recipe_reads_the_corpus_from_data():
    assert "olmokit.data.stdlib" in _imports(SRC / "zoo" / "build" / "run.py")
    assert "olmokit.data.stdlib" in _imports(SRC / "data" / "tasks.py")
