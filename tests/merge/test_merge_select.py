"""Copeland / Borda / Pareto selection: hand-computed cases, ties, worst values, determinism."""

from __future__ import annotations

import math
import random

import pytest

from olmokit.errors import ConfigError
from olmokit.merge.select import (
    METHODS,
    borda,
    copeland,
    degraded,
    dominates,
    improved,
    pareto,
    pareto_layers,
    ranks,
    select,
    wins_matrix,
)

D3 = ["d1", "d2", "d3"]


def rows(*values):
    """Candidates from rows of metrics over D3 (or fewer datasets, by position)."""
    return [dict(zip(D3, row, strict=False)) for row in values]


def test_methods_disagree_as_computed_by_hand():
    # c0 wins every pairwise majority (d1, d2) but is last on d3; c1..c3 tie on d3.
    # ranks d1/d2: 1,2,3,4; d3: c1=c2=c3=1 (competition ranking), c0=4
    # Borda: c0=1+1+4=6, c1=2+2+1=5, c2=3+3+1=7, c3=4+4+1=9
    scores = rows((1, 1, 100), (2, 2, 0), (3, 3, 0), (4, 4, 0))
    assert ranks(scores, D3) == [
        {"d1": 1.0, "d2": 1.0, "d3": 4.0},
        {"d1": 2.0, "d2": 2.0, "d3": 1.0},
        {"d1": 3.0, "d2": 3.0, "d3": 1.0},
        {"d1": 4.0, "d2": 4.0, "d3": 1.0},
    ]
    wins = [[0, 2, 2, 2], [1, 0, 2, 2], [1, 0, 0, 2], [1, 0, 0, 0]]
    c = copeland(scores, D3)
    assert c.wins == wins
    assert c.copeland == [3.0, 2.0, 1.0, 0.0]
    assert c.borda == [6.0, 5.0, 7.0, 9.0]
    assert (c.winner, c.order) == (0, [0, 1, 2, 3])
    b = borda(scores, D3)
    assert (b.winner, b.order) == (1, [1, 0, 2, 3])
    assert (
        b.wins == wins and b.copeland == c.copeland
    )  # the report gets the matrix for every method
    # c0 and c1 trade off (front); c1 dominates c2 (d3 tied), c2 dominates c3
    p = pareto(scores, D3)
    assert p.pareto_layer == [0, 0, 1, 2]
    assert (p.winner, p.order) == (1, [1, 0, 2, 3])  # the front ordered by Borda (5 < 6)


def test_condorcet_cycle_is_broken_by_borda_then_index():
    # A>B>C>A by 2-1 majorities; D loses to all three. d3 ranks: B=1, D=2, C=3, A=4.
    # Copeland: A=B=C=2 (one pairwise win in the cycle + beating D), D=0
    # Borda: A=1+2+4=7, B=2+3+1=6, C=3+1+3=7, D=4+4+2=10 -> B first, then A before C by index
    scores = rows((1, 2, 3), (2, 3, 1), (3, 1, 2), (4, 4, 1.5))
    c = copeland(scores, D3)
    assert c.wins == [[0, 2, 1, 2], [1, 0, 2, 3], [2, 1, 0, 2], [1, 0, 1, 0]]
    assert c.copeland == [2.0, 2.0, 2.0, 0.0]
    assert c.borda == [7.0, 6.0, 7.0, 10.0]
    assert c.order == [1, 0, 2, 3]
    # swap A and C: the Borda tie between them now resolves the other way (index order)
    swapped = [scores[2], scores[1], scores[0], scores[3]]
    assert copeland(swapped, D3).order == [1, 0, 2, 3]  # i.e. B, C, A, D in the original names


def test_pure_cycle_falls_back_to_candidate_order():
    # a 3-cycle of strict permutations: every score ties, the order is the candidate order
    scores = rows((1, 2, 3), (2, 3, 1), (3, 1, 2))
    c = copeland(scores, D3)
    assert c.copeland == [1.0, 1.0, 1.0] and c.borda == [6.0, 6.0, 6.0]
    assert c.order == [0, 1, 2]
    assert copeland(scores[::-1], D3).order == [0, 1, 2]


def test_pairwise_tie_counts_half_not_zero():
    # c0 ties c1 on every dataset; c2 loses to both. The original (ties = 0) scored c0 and c1
    # like c2 against each other.
    scores = rows((1, 1), (1, 1), (2, 2))
    c = copeland(scores, ["d1", "d2"])
    assert c.copeland == [1.5, 1.5, 0.0]
    assert c.wins == [[0, 0, 2], [0, 0, 2], [0, 0, 0]]


def test_missing_none_and_non_finite_are_worst_and_tied():
    scores = [
        {"x": 1.0, "y": None},
        {"x": 1.0, "y": 2.0},
        {"x": 0.5, "y": 2.0},
        {"x": math.nan, "y": 3.0},
        {
            "y": -math.inf
        },  # x missing, y = -inf: both worst (a broken evaluation is not a perfect one)
    ]
    xy = ["x", "y"]
    assert ranks(scores, xy) == [
        {"x": 2.0, "y": 4.0},
        {"x": 2.0, "y": 1.0},
        {"x": 1.0, "y": 1.0},
        {"x": 4.0, "y": 3.0},
        {"x": 4.0, "y": 4.0},
    ]
    c = copeland(scores, xy)
    assert c.wins == [
        [0, 0, 0, 1, 1],
        [1, 0, 0, 2, 2],
        [2, 1, 0, 2, 2],
        [1, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ]
    assert c.copeland == [1.5, 3.0, 4.0, 1.5, 0.0]
    assert c.borda == [6.0, 3.0, 2.0, 7.0, 8.0]
    assert c.order == [2, 1, 0, 3, 4]
    assert pareto_layers(scores, xy) == [2, 1, 0, 2, 3]


def test_all_worst_everywhere_is_a_full_tie():
    scores = [{"x": None}, {"x": math.inf}, {}]
    c = copeland(scores, ["x"])
    assert c.wins == [[0, 0, 0]] * 3
    assert c.copeland == [1.0, 1.0, 1.0] and c.borda == [1.0, 1.0, 1.0]
    assert c.order == [0, 1, 2]


def test_dominance_and_pareto_front_pinned():
    xy = ["x", "y"]
    assert dominates({"x": 1, "y": 1}, {"x": 1, "y": 2}, xy)
    assert not dominates({"x": 1, "y": 2}, {"x": 1, "y": 2}, xy)  # equal is not dominance
    assert not dominates({"x": 0, "y": 3}, {"x": 1, "y": 2}, xy)  # a trade-off
    assert dominates({"x": 1, "y": 5}, {"x": 1, "y": None}, xy)
    # front {0, 1, 3}; 2 is dominated by 1; 4 by 2 (and others)
    scores = [
        {"x": 0, "y": 9},
        {"x": 2, "y": 2},
        {"x": 3, "y": 2},
        {"x": 9, "y": 0},
        {"x": 9, "y": 9},
    ]
    assert pareto_layers(scores, xy) == [0, 0, 1, 0, 2]
    # ranks x: 1,2,3,4,4; y: 4,2,2,1,4 -> Borda 5,4,5,5,8: front by Borda then index = 1, 0, 3
    p = pareto(scores, xy)
    assert p.borda == [5.0, 4.0, 5.0, 5.0, 8.0]
    assert p.order == [1, 0, 3, 2, 4]


def _shuffled_dict(d: dict, rng: random.Random) -> dict:
    keys = list(d)
    rng.shuffle(keys)
    return {k: d[k] for k in keys}


@pytest.mark.parametrize("method", METHODS)
def test_independent_of_dict_and_dataset_order_and_equivariant_in_candidates(method):
    rng = random.Random(0)
    names = ["a", "b", "c", "d"]
    for _ in range(60):
        n = rng.randint(1, 6)
        # few distinct values so ties are common; some worst values
        pick = [0.0, 1.0, 2.0, None, math.nan]
        scores = [{d: rng.choice(pick) for d in names} for _ in range(n)]
        ref = select(method, scores, names)
        shuffled_names = rng.sample(names, len(names))
        again = select(method, [_shuffled_dict(s, rng) for s in scores], shuffled_names)
        assert again == ref
        # permuting the candidates permutes every score; the order changes only among full ties
        perm = rng.sample(range(n), n)
        p = select(method, [scores[i] for i in perm], names)
        assert [p.copeland[k] for k in range(n)] == [ref.copeland[i] for i in perm]
        assert [p.borda[k] for k in range(n)] == [ref.borda[i] for i in perm]
        assert p.wins == [[ref.wins[i][j] for j in perm] for i in perm]
        w, w_ref = perm[p.winner], ref.winner
        if w != w_ref:  # another winner only when it ties the first on every sort key
            keys = ("copeland", "borda") if method == "copeland" else ("borda",)
            for attr in keys:
                assert getattr(ref, attr)[w] == getattr(ref, attr)[w_ref]
            if method == "pareto":
                assert ref.pareto_layer[w] == ref.pareto_layer[w_ref] == 0


def test_copeland_agrees_with_a_direct_reference():
    # reference: the textbook definition written independently over sorted value lists
    rng = random.Random(1)
    names = ["a", "b", "c"]
    for _ in range(40):
        n = rng.randint(2, 7)
        scores = [{d: float(rng.randint(0, 3)) for d in names} for _ in range(n)]
        c = copeland(scores, names)
        for i in range(n):
            exp = 0.0
            for j in range(n):
                if i == j:
                    continue
                wi = sum(scores[i][d] < scores[j][d] for d in names)
                wj = sum(scores[j][d] < scores[i][d] for d in names)
                exp += 1.0 if wi > wj else 0.5 if wi == wj else 0.0
            assert c.copeland[i] == exp
            b = sum(1 + sorted(s[d] for s in scores).index(scores[i][d]) for d in names)
            assert c.borda[i] == b
        expected = sorted(range(n), key=lambda i: (-c.copeland[i], c.borda[i], i))
        assert c.order == expected and c.winner == expected[0]


def test_select_errors():
    with pytest.raises(ConfigError, match="'best' not in copeland, borda, pareto"):
        select("best", [{"x": 1}], ["x"])
    with pytest.raises(ValueError, match="no candidates"):
        copeland([], ["x"])
    with pytest.raises(ValueError, match="no datasets"):
        copeland([{"x": 1}], [])
    with pytest.raises(ValueError, match="duplicate"):
        copeland([{"x": 1}], ["x", "x"])
    with pytest.raises(TypeError, match="dataset 'x'"):
        copeland([{"x": "1.0"}], ["x"])


def test_single_candidate_wins():
    s = copeland([{"x": None}], ["x"])
    assert (s.winner, s.order, s.wins, s.copeland, s.borda) == (0, [0], [[0]], [0.0], [1.0])
    assert s.to_json() == {
        "method": "copeland",
        "winner": 0,
        "order": [0],
        "wins": [[0]],
        "copeland": [0.0],
        "borda": [1.0],
        "pareto_layer": [0],
    }


def test_wins_matrix_counts_strict_wins_only():
    # d1 tied (no win for either), d2 won by c0, d3 by c1
    m = wins_matrix(rows((1, 2, 3), (1, 3, 2)), D3)
    assert m == [[0, 1], [1, 0]]


def test_degraded_and_improved():
    ref = {"a": 1.0, "b": 2.0, "c": None, "d": 0.5}
    cand = {"a": 1.05, "b": 1.0, "c": 3.0, "d": None}
    assert degraded(cand, ref, 0.0) == ["a", "d"]  # sorted union of keys
    assert degraded(cand, ref, 0.1) == ["d"]  # 1.05 <= 1.0 + 0.1
    assert degraded(cand, ref, 0.05) == ["d"]  # the margin is inclusive: equal is not degraded
    assert degraded(cand, ref, 0.0, datasets=["d", "a"]) == ["d", "a"]  # caller's order
    assert improved(cand, ref) == ["b", "c"]  # finite beats a worst reference
    assert degraded({"a": math.nan}, {"a": 1.0}) == ["a"]
    assert degraded({}, {"a": 1.0}) == ["a"]  # missing = worst
    assert degraded({"a": None}, {"a": math.inf}) == []  # worst vs worst is a tie
    # a state never rejects itself, whatever its values
    for s in (ref, cand, {"a": math.nan}):
        assert degraded(s, s, 0.0) == [] and improved(s, s) == []
    with pytest.raises(ValueError, match="epsilon"):
        degraded(cand, ref, -0.1)
    with pytest.raises(ValueError, match="epsilon"):
        degraded(cand, ref, math.nan)
