"""olmokit.eval is the only place that turns logits into log-probabilities.

A second implementation drifts (dtype, masking, shift) without anyone noticing; this keeps every
NLL in olmokit on the one tested against float64. Calls are matched, not names:
``unigram_cross_entropy`` (a count-based baseline, no logits) is fine, ``F.cross_entropy(`` or
``x.log_softmax(`` is not.
"""

from __future__ import annotations

import re
from pathlib import Path

import olmokit

SRC = Path(olmokit.__file__).parent
#: a call of a log-prob or NLL primitive: torch.log_softmax(, F.cross_entropy(, x.log_softmax(, ...
CALL = re.compile(r"(?<![\w])(log_softmax|cross_entropy|nll_loss|CrossEntropyLoss|NLLLoss)\s*\(")


def offenders(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "eval":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CALL.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return found


def test_only_eval_computes_log_probabilities():
    assert offenders(SRC) == [], "use olmokit.eval (token_nll / mean_nll / sequence_nll) instead"


def test_the_pattern_catches_calls_not_names(tmp_path):
    (tmp_path / "a.py").write_text(
        "loss = F.cross_entropy(x, y)\nlp = logits.log_softmax(-1)\nz = torch.log_softmax (x, -1)\n"
        "u = unigram_cross_entropy(a, b)\nfrom m import unigram_cross_entropy\n"
        "# log_softmax(x) in a comment\n"
    )
    assert [line.split(":")[1] for line in offenders(tmp_path)] == ["1", "2", "3"]


def _olmokit_imports(path: Path) -> set[str]:
    """The olmokit modules ``path`` imports (relative imports resolved), lazy ones included."""
    import ast

    package = "olmokit." + ".".join(path.relative_to(SRC).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = (
                package.split(".")[: len(package.split(".")) - (node.level - 1)]
                if node.level
                else []
            )
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n.startswith("olmokit")}


def test_eval_sits_below_the_tools():
    """eval is a shared layer: it may use data/ and errors, never a tool, the CLI or the zoo (so the
    lens, JoLA, merge and the zoo build can all import it without a cycle)."""
    allowed = ("olmokit.eval", "olmokit.data", "olmokit.errors")
    for path in sorted((SRC / "eval").glob("*.py")):
        bad = sorted(m for m in _olmokit_imports(path) if not m.startswith(allowed))
        assert bad == [], f"{path.name} imports {bad}"
