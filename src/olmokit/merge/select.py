"""Ranking candidates over several datasets: Copeland, Borda and Pareto, with deterministic ties.

Every metric is "lower is better". A candidate is one ``{dataset: metric}`` dict; its position in
the ``scores`` list is its identity (the caller keeps the list in a stable order: the current state
first, then donors in pool order), and that position is the last tie-break, so the same inputs
always give the same winner — the original broke ties by ``set()`` order (``PYTHONHASHSEED``).

Conventions shared by every function here:

- A metric that is missing, ``None`` or not finite (NaN, ±inf) is *worst*: worse than every
  finite value and tied with every other worst value. (``-inf`` is not "best": a non-finite loss is
  a broken evaluation, not a perfect one.)
- Ranks are *competition* ranks ("1224"): a candidate's rank on a dataset is 1 + the number of
  candidates strictly better there. Ties share the better rank, so a rank never depends on the order
  of the candidates or of the dict keys.
- ``wins[i][j]`` is the number of datasets on which candidate i is strictly better than j.
- Copeland score of i = Σ_{j≠i} (1 if wins[i][j] > wins[j][i], 0.5 if equal, 0 otherwise). The
  half point for a pairwise tie is the textbook Copeland rule; the original counted ties as 0, which
  ranks a candidate that ties everyone with one that loses to everyone.
- Borda score of i = Σ_d rank_d(i) (lower is better).
- Orders: ``copeland``: Copeland desc, then Borda asc, then index asc; ``borda``: Borda asc, then
  index; ``pareto``: Pareto layer asc (layer 0 = the non-dominated front, layer 1 = the front once
  layer 0 is removed, ...), then Borda asc, then index. The winner is ``order[0]``.

Nothing here knows about models; ``degraded`` and ``improved`` are the per-dataset comparisons the
merge steps and the ES acceptance rule are built from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from olmokit.errors import ConfigError

__all__ = [
    "METHODS",
    "Selection",
    "borda",
    "copeland",
    "degraded",
    "dominates",
    "improved",
    "metric_value",
    "pareto",
    "pareto_layers",
    "ranks",
    "select",
    "wins_matrix",
]

#: Selection methods accepted by :func:`select` (and by ``MergeConfig.selection``).
METHODS = ("copeland", "borda", "pareto")

Scores = Sequence[Mapping[str, float | None]]


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection, with everything the report needs to explain it.

    ``winner`` is ``order[0]``; ``order`` is every candidate index, best first; ``wins``,
    ``copeland`` and ``borda`` are computed for every method, so the report always shows the
    pairwise matrix.
    ``pareto_layer[i]`` is 0 for the non-dominated candidates (also computed for every method).
    """

    method: str
    winner: int
    order: list[int]
    wins: list[list[int]]
    copeland: list[float]
    borda: list[float]
    pareto_layer: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain JSON-able dict (ints and floats only) for ``merge_report.json``."""
        return {
            "method": self.method,
            "winner": self.winner,
            "order": list(self.order),
            "wins": [list(row) for row in self.wins],
            "copeland": list(self.copeland),
            "borda": list(self.borda),
            "pareto_layer": list(self.pareto_layer),
        }


def metric_value(metrics: Mapping[str, float | None], dataset: str) -> float | None:
    """The metric as a finite float, or None when it is missing, None or not finite (= worst)."""
    value = metrics.get(dataset)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # a tensor or a string here is a caller bug; float() would hide it or fail later
        raise TypeError(f"metric for dataset {dataset!r} must be a float or None, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _better(a: float | None, b: float | None) -> bool:
    """Strictly better (lower), with None worst and None tied with None."""
    if a is None:
        return False
    return b is None or a < b


def _check(scores: Scores, datasets: Sequence[str]) -> list[str]:
    if len(scores) == 0:
        raise ValueError("no candidates to rank")
    names = list(datasets)
    if not names:
        raise ValueError("no datasets to rank candidates on")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate dataset names: {names}")
    return names


def _table(scores: Scores, datasets: Sequence[str]) -> list[list[float | None]]:
    return [[metric_value(m, d) for d in datasets] for m in scores]


def ranks(scores: Scores, datasets: Sequence[str]) -> list[dict[str, float]]:
    """Per candidate, ``{dataset: competition rank}`` (1 = best; ties share the better rank)."""
    names = _check(scores, datasets)
    table = _table(scores, names)
    n = len(table)
    out: list[dict[str, float]] = [{} for _ in range(n)]
    for k, d in enumerate(names):
        for i in range(n):
            better = sum(_better(table[j][k], table[i][k]) for j in range(n))
            out[i][d] = float(1 + better)
    return out


def wins_matrix(scores: Scores, datasets: Sequence[str]) -> list[list[int]]:
    """``wins[i][j]`` = number of datasets where candidate i is strictly better than j."""
    names = _check(scores, datasets)
    table = _table(scores, names)
    n = len(table)
    return [
        [sum(_better(a, b) for a, b in zip(table[i], table[j], strict=True)) for j in range(n)]
        for i in range(n)
    ]


def dominates(
    a: Mapping[str, float | None], b: Mapping[str, float | None], datasets: Sequence[str]
) -> bool:
    """Pareto dominance: a is nowhere worse than b and strictly better somewhere."""
    va = [metric_value(a, d) for d in datasets]
    vb = [metric_value(b, d) for d in datasets]
    return not any(_better(y, x) for x, y in zip(va, vb, strict=True)) and any(
        _better(x, y) for x, y in zip(va, vb, strict=True)
    )


def pareto_layers(scores: Scores, datasets: Sequence[str]) -> list[int]:
    """Non-dominated sorting: 0 for the Pareto front, 1 for the front of the rest, and so on."""
    names = _check(scores, datasets)
    n = len(scores)
    dom = [[i != j and dominates(scores[i], scores[j], names) for j in range(n)] for i in range(n)]
    layer = [-1] * n
    remaining = set(range(n))
    level = 0
    while remaining:
        front = {j for j in remaining if not any(dom[i][j] for i in remaining)}
        # dominance is a strict partial order, so a finite set always has a non-dominated member
        assert front, "dominance cycle"
        for j in front:
            layer[j] = level
        remaining -= front
        level += 1
    return layer


def _selection(method: str, scores: Scores, datasets: Sequence[str]) -> Selection:
    names = _check(scores, datasets)
    n = len(scores)
    rank_rows = ranks(scores, names)
    borda_scores = [float(sum(r[d] for d in names)) for r in rank_rows]
    wins = wins_matrix(scores, names)
    copeland_scores = [
        sum(
            1.0 if wins[i][j] > wins[j][i] else 0.5 if wins[i][j] == wins[j][i] else 0.0
            for j in range(n)
            if j != i
        )
        for i in range(n)
    ]
    layers = pareto_layers(scores, names)
    if method == "copeland":
        key = lambda i: (-copeland_scores[i], borda_scores[i], i)  # noqa: E731
    elif method == "borda":
        key = lambda i: (borda_scores[i], i)  # noqa: E731
    elif method == "pareto":
        key = lambda i: (layers[i], borda_scores[i], i)  # noqa: E731
    else:
        raise ConfigError(f"selection method {method!r} not in {', '.join(METHODS)}")
    order = sorted(range(n), key=key)
    return Selection(
        method=method,
        winner=order[0],
        order=order,
        wins=wins,
        copeland=copeland_scores,
        borda=borda_scores,
        pareto_layer=layers,
    )


def copeland(scores: Scores, datasets: Sequence[str]) -> Selection:
    """Copeland selection: most pairwise majorities, then Borda, then candidate order."""
    return _selection("copeland", scores, datasets)


def borda(scores: Scores, datasets: Sequence[str]) -> Selection:
    """Borda selection: lowest rank sum, then candidate order."""
    return _selection("borda", scores, datasets)


def pareto(scores: Scores, datasets: Sequence[str]) -> Selection:
    """Pareto selection: the non-dominated front first (then later layers), Borda, then order."""
    return _selection("pareto", scores, datasets)


def select(method: str, scores: Scores, datasets: Sequence[str]) -> Selection:
    """Dispatch on ``method`` (one of :data:`METHODS`; anything else is a ConfigError)."""
    return _selection(method, scores, datasets)


def _dataset_names(
    candidate: Mapping[str, float | None],
    reference: Mapping[str, float | None],
    datasets: Sequence[str] | None,
) -> list[str]:
    return list(datasets) if datasets is not None else sorted(set(candidate) | set(reference))


def _check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    return epsilon


def degraded(
    candidate: Mapping[str, float | None],
    reference: Mapping[str, float | None],
    epsilon: float = 0.0,
    datasets: Sequence[str] | None = None,
) -> list[str]:
    """The datasets on which ``candidate`` is worse than ``reference`` beyond ``epsilon``.

    Finite vs finite: degraded when ``candidate > reference + epsilon`` (an absolute margin, in the
    metric's own units). A missing/None/non-finite candidate metric is degraded against a finite
    reference. Against a missing/non-finite reference nothing is degraded (the reference is already
    the worst value; None vs None is a tie), so ``degraded(x, x, eps) == []`` always holds and the
    current state never rejects itself. ``datasets`` defaults to the sorted union of both dicts'
    keys; the result follows that order.
    """
    epsilon = _check_epsilon(epsilon)
    out = []
    for d in _dataset_names(candidate, reference, datasets):
        c, r = metric_value(candidate, d), metric_value(reference, d)
        if r is None:
            continue
        if c is None or c > r + epsilon:
            out.append(d)
    return out


def improved(
    candidate: Mapping[str, float | None],
    reference: Mapping[str, float | None],
    datasets: Sequence[str] | None = None,
) -> list[str]:
    """The datasets on which ``candidate`` is strictly better than ``reference`` (None is worst)."""
    return [
        d
        for d in _dataset_names(candidate, reference, datasets)
        if _better(metric_value(candidate, d), metric_value(reference, d))
    ]
