"""Text that ships with every CPython: the offline corpus the zoo models are pretrained on and the
source of the built-in ``stdlib_module`` task (:mod:`olmokit.data.tasks`).

It lives in ``data/`` (not in the zoo's build recipe) because it is data both of them read: the recipe
imports it from here, and ``data`` imports nothing from ``zoo``.

* prose — ``pydoc_data.topics`` (the language reference topics ``help()`` shows) and the docstrings of
  the standard library's modules, classes and functions (read with :mod:`ast`, never imported: importing
  every stdlib module has side effects);
* code — the standard library's own ``.py`` sources, tests excluded.

The held-out split is fixed by a hash of each document's *source* (file path or topic name), so it does
not depend on file order, and a docstring always falls on the same side as the file it comes from.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Document",
    "Corpus",
    "build_corpus",
    "stdlib_root",
    "stdlib_source_files",
    "is_held_out",
    "iter_docstrings",
    "module_name",
    "python_fingerprint",
]

#: Directory names whose contents are tests or third-party code, not the standard library proper.
EXCLUDED_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
#: One source in this many is held out.
HELD_OUT_MODULUS = 10


@dataclass(frozen=True)
class Document:
    source: str  #: "topic:<name>", "doc:<path>:<qualname>" or "code:<path>"
    kind: str  #: "prose" or "code"
    text: str
    held_out: bool


@dataclass
class Corpus:
    documents: list[Document] = field(default_factory=list)

    def split(self, held_out: bool, kind: str | None = None) -> list[Document]:
        return [
            d for d in self.documents if d.held_out == held_out and (kind is None or d.kind == kind)
        ]

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for split_name, flag in (("train", False), ("heldout", True)):
            for kind in ("prose", "code"):
                docs = self.split(flag, kind)
                out[f"{split_name}_{kind}_docs"] = len(docs)
                out[f"{split_name}_{kind}_chars"] = sum(len(d.text) for d in docs)
        return out


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(source_key: str) -> bool:
    digest = hashlib.sha1(source_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % HELD_OUT_MODULUS == 0


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests or site-packages."""
    root = root or stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in EXCLUDED_DIRS for p in parts) or parts[0].startswith("test"):
            continue
        files.append(path)
    return files


def module_name(path: Path, root: Path | None = None) -> str:
    """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
    rel = path.relative_to(root or stdlib_root()).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def iter_docstrings(source: str) -> Iterator[tuple[str, str]]:
    """``(qualified name, docstring)`` for the module and every class/function, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    module_doc = ast.get_docstring(tree)
    if module_doc:
        yield "", module_doc

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    yield qual, doc
                yield from visit(child, qual + ".")

    yield from visit(tree, "")


def build_corpus(root: Path | None = None) -> Corpus:
    """Collect the corpus deterministically (same CPython → same documents, same split)."""
    from pydoc_data.topics import topics

    root = root or stdlib_root()
    corpus = Corpus()
    for name in sorted(topics):
        key = f"topic:{name}"
        corpus.documents.append(Document(key, "prose", topics[name].strip(), is_held_out(key)))
    for path in stdlib_source_files(root):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        held = is_held_out(f"file:{rel}")
        mod = module_name(path, root)
        for qual, doc in iter_docstrings(text):
            title = f"{mod}.{qual}" if qual else mod
            corpus.documents.append(
                Document(f"doc:{rel}:{qual}", "prose", f"{title}\n\n{doc}", held)
            )
        corpus.documents.append(Document(f"code:{rel}", "code", text, held))
    return corpus


def python_fingerprint() -> str:
    return f"CPython {sys.version.split()[0]}"
