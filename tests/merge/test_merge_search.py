"""The search steps on a tiny 3-model pool with constructed evaluators (functions of the working
state), so the outcomes are known exactly: no step worsens a dataset, degraded candidates are rejected,
Copeland ties reach the report, ES steps are recorded and replay bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from merge_helpers import DictCache, make_pool

from olmokit.loading import load_model
from olmokit.merge.config import MergeConfig
from olmokit.merge.pool import Pool
from olmokit.merge.search import MergeSearch, replay_decisions
from olmokit.merge.state import WorkingModel

DATASETS = ("a", "b", "c")


@pytest.fixture(scope="module")
def pool_dirs(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("pool"), seeds=(0, 1, 2))


def _working(pool_dirs) -> WorkingModel:
    pool = Pool(pool_dirs)
    w = WorkingModel(load_model(pool_dirs[0]), pool, base=pool_dirs[0])
    pool.check_architecture(w.adapter)
    return w


def _search(pool_dirs, evaluate, **cfg):
    data = dict(
        models=pool_dirs,
        datasets=[{"path": f"{d}.jsonl", "mode": "nll"} for d in DATASETS],
        **cfg,
    )
    config = MergeConfig.from_dict(data)
    w = _working(pool_dirs)
    report = {"layers": {}, "units": {}, "base_metrics": None, "base": pool_dirs[0]}
    saves: list[dict] = []
    search = MergeSearch(
        w,
        config,
        lambda: evaluate(w),
        DictCache(),
        report,
        save=lambda: saves.append(copy.deepcopy(report)),
        members=pool_dirs,
        progress=False,
    )
    report["base_metrics"] = search.current = search.base_metrics()
    search.run()
    return search, report, saves


def _weight_metrics(w: WorkingModel) -> dict[str, float]:
    """A deterministic, rugged function of every unit's weights (no structure to exploit)."""
    out = {}
    for k, d in enumerate(DATASETS):
        total = 0.0
        for name, u in w.units.items():
            t = w.tensor(u.keys[0]).detach().double()
            total += float(torch.sin(t.sum() * (k + 1) * 7.0 + len(name)))
        out[d] = total
    return out


def test_no_step_worsens_any_dataset(pool_dirs):
    search, report, saves = _search(
        pool_dirs, _weight_metrics, boundary_select=True, layer_swap=True, tensor_swap=True
    )
    trajectory = [report["base_metrics"]] + [
        d["metrics"]
        for d in [report["boundary"], *report["layers"].values(), *report["units"].values()]
    ]
    assert len(trajectory) == 1 + 1 + 2 + 16  # base, boundary, 2 layers, 16 non-norm units
    for before, after in zip(trajectory, trajectory[1:]):
        assert all(after[d] <= before[d] for d in DATASETS), (before, after)
    decisions = [report["boundary"], *report["layers"].values(), *report["units"].values()]
    assert any(d["changed"] for d in decisions)  # the search did move
    assert any(c["degraded"] for d in decisions for c in d["candidates"])  # and rejected some
    assert _weight_metrics(search.working) == pytest.approx(trajectory[-1], abs=0, rel=0)
    assert len(saves) == 1 + 2 + 16  # the report was written after every decision
    # the current state is always candidate 0 and never evaluated again: each step's lookup is a hit
    assert search.cache.hits == len(saves)


def _table_evaluator(table: dict[int, dict[str, float]], unit: str = "layers.0.mlp.up_proj"):
    """Metrics decided by which pool member (by index) layer 0 currently comes from."""

    def evaluate(w: WorkingModel) -> dict[str, float]:
        return dict(table[w.pool.names.index(w.source(unit))])

    return evaluate


def test_degraded_candidate_is_rejected_even_when_copeland_prefers_it(pool_dirs):
    table = {
        0: {"a": 1.0, "b": 1.0, "c": 1.0},
        1: {"a": 0.5, "b": 0.5, "c": 1.2},  # better on two datasets, worse on c
        2: {"a": 1.0, "b": 1.0, "c": 1.0},  # the same as the current state
    }
    _, report, _ = _search(pool_dirs, _table_evaluator(table), layer_swap=True)
    d = report["layers"]["0"]
    assert [c["name"] for c in d["candidates"]] == pool_dirs
    assert d["candidates"][1]["degraded"] == ["c"]
    assert "worse than current beyond epsilon=0 on c" in d["candidates"][1]["reason"]
    assert d["winner"] == pool_dirs[0] and d["changed"] is False
    # only the current state and member 2 were eligible; they tie, and the tie keeps the current
    sel = d["selection"]
    assert sel["candidates"] == [0, 2]
    assert sel["copeland"] == [0.5, 0.5] and sel["borda"] == [3.0, 3.0]
    assert sel["order"] == [0, 1] and sel["winner"] == 0

    # within epsilon the same candidate is eligible, and Copeland picks it (2 datasets to 1)
    _, report, _ = _search(pool_dirs, _table_evaluator(table), layer_swap=True, epsilon=0.25)
    d = report["layers"]["0"]
    assert d["candidates"][1]["degraded"] == [] and d["winner"] == pool_dirs[1]
    assert d["metrics"] == table[1]


def test_current_and_base_rejects_against_the_base_too(pool_dirs):
    # layer 0 from member 1 is within epsilon of the base on c (1.2 vs 1.0, epsilon 0.25); with
    # improve_against=current_and_base, layer 1's candidate must then also stay within the base's
    def evaluate(w):
        src = [w.pool.names.index(w.source(f"layers.{i}.mlp.up_proj")) for i in (0, 1)]
        base = {"a": 1.0, "b": 1.0, "c": 1.0}
        if src[0] == 1:
            base = {"a": 0.5, "b": 0.5, "c": 1.2}
        if (
            src[1] == 2
        ):  # within epsilon of the current c (1.2 -> 1.4), beyond the base's 1.0 + 0.25
            base = {"a": base["a"] - 0.2, "b": base["b"] - 0.2, "c": base["c"] + 0.2}
        return base

    _, report, _ = _search(pool_dirs, evaluate, layer_swap=True, epsilon=0.25)
    assert report["layers"]["1"]["winner"] == pool_dirs[2]
    _, report, _ = _search(
        pool_dirs, evaluate, layer_swap=True, epsilon=0.25, improve_against="current_and_base"
    )
    d = report["layers"]["1"]
    assert d["winner"] == pool_dirs[0]
    assert "worse than base beyond epsilon=0.25 on c" in d["candidates"][2]["reason"]


def test_copeland_tie_between_donors_goes_to_pool_order(pool_dirs):
    table = {
        0: {"a": 1.0, "b": 1.0, "c": 1.0},
        1: {"a": 0.5, "b": 0.5, "c": 0.5},
        2: {"a": 0.5, "b": 0.5, "c": 0.5},
    }
    _, report, _ = _search(pool_dirs, _table_evaluator(table), layer_swap=True)
    sel = report["layers"]["0"]["selection"]
    assert sel["copeland"] == [0.0, 1.5, 1.5] and sel["borda"] == [9.0, 3.0, 3.0]
    assert sel["wins"] == [[0, 0, 0], [3, 0, 0], [3, 0, 0]]
    assert sel["order"] == [1, 2, 0]
    assert report["layers"]["0"]["winner"] == pool_dirs[1]
    # layer 1 changes nothing (every candidate ties the current state): kept, no evaluation wasted
    assert report["layers"]["1"]["winner"] == pool_dirs[0]


def test_backward_direction_visits_layers_last_first(pool_dirs):
    _, report, saves = _search(pool_dirs, _weight_metrics, layer_swap=True, direction="backward")
    assert list(report["layers"]) == ["1", "0"]


def test_base_selection_and_preselection(pool_dirs):
    # member 2 is the best whole model, member 1 the worst: base selection picks 2 and
    # max_models=2 keeps it and member 0 (the next best)
    def evaluate(w):
        sources = {w.source(u) for u in w.units}
        rank = {pool_dirs[0]: 1.0, pool_dirs[1]: 2.0, pool_dirs[2]: 0.5}
        if len(sources) == 1:
            v = rank[sources.pop()]
        else:
            v = 0.5
        return {d: v for d in DATASETS}

    search, report, _ = _search(
        pool_dirs, evaluate, base_select=True, max_models=2, layer_swap=True
    )
    assert report["base"] == pool_dirs[2]
    assert report["base_selection"]["winner"] == pool_dirs[2]
    assert report["base_metrics"] == {d: 0.5 for d in DATASETS}
    assert report["preselection"]["kept"] == [pool_dirs[0], pool_dirs[2]]
    assert report["preselection"]["dropped"] == [pool_dirs[1]]
    layer0 = report["layers"]["0"]
    assert [c["name"] for c in layer0["candidates"]] == [pool_dirs[2], pool_dirs[0]]
    # the working model holds member 2 exactly
    donor = Pool([pool_dirs[2]]).members[0].donor
    for key, t in search.working.model.state_dict().items():
        assert torch.equal(t, donor.get(key)), key


def _distance_metrics(w: WorkingModel) -> dict[str, float]:
    """Smaller weights are better on a and b; c never changes (ES must improve one, worsen none)."""
    sq = sum(float(w.tensor(u.keys[0]).detach().double().pow(2).sum()) for u in w.units.values())
    return {"a": sq, "b": 2 * sq, "c": 1.0}


def test_es_steps_are_recorded_and_replay_bit_for_bit(pool_dirs):
    search, report, _ = _search(
        pool_dirs,
        _distance_metrics,
        layer_swap=False,
        tensor_swap=True,
        es_svd=True,
        es_norm=True,
        es_lambda=4,
        es_svd_generations=2,
    )
    ops = [op for d in report["units"].values() for op in d["es"]]
    assert {op["kind"] for op in ops} == {"svd", "norm"}
    assert all(op["lam"] == 4 for op in ops)
    # every ES step improved a and b and kept c
    for d in report["units"].values():
        if d["es"]:
            sel = d["selection"]
            chosen = d["candidates"][sel["candidates"][sel["winner"]]]["metrics"]
            assert d["metrics"]["a"] < chosen["a"] and d["metrics"]["b"] < chosen["b"]
            assert d["metrics"]["c"] == 1.0
    assert (
        _distance_metrics(search.working) == report["units"][list(report["units"])[-1]]["metrics"]
    )

    fresh = _working(pool_dirs)
    replay_decisions(fresh, report)
    assert fresh.overrides == search.working.overrides
    for key, t in search.working.model.state_dict().items():
        assert torch.equal(t, fresh.model.state_dict()[key]), key


@pytest.mark.parametrize("rule", ["fixed", "one_fifth"])
def test_es_step_rules_reach_each_kind(pool_dirs, monkeypatch, rule):
    """``es_norm_step_rule`` reaches norm-ES (it was always the fixed decay) and
    ``es_svd_step_rule`` SVD-ES; the group size is ``candidate_batch``."""
    from olmokit.merge import es as es_mod

    seen = []
    real = es_mod.run_es

    def spy(kind, *args, **kwargs):
        seen.append((kind, kwargs["step_rule"], kwargs["group_size"]))
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(es_mod, "run_es", spy)
    other = "one_fifth" if rule == "fixed" else "fixed"
    _search(
        pool_dirs, _distance_metrics, layer_swap=False, tensor_swap=True, es_svd=True,
        es_norm=True, es_lambda=4, es_norm_step_rule=rule, es_svd_step_rule=other,
        candidate_batch=3,
    )  # fmt: skip
    assert seen and {(k, r) for k, r, _ in seen} == {("svd", other), ("norm", rule)}
    assert {g for *_, g in seen} == {3}
