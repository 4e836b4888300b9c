"""Evaluator (per-dataset means of the merge metrics, split across processes) and StateCache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from merge_eval_worker import BATCH_SIZE, build, grouped_means, suffix_scores

from olmokit.eval.merge_metrics import merge_metric
from olmokit.merge.datasets import EvalSet
from olmokit.merge.evaluate import Evaluator, StateCache, init_distributed, plan_batches, world

pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = Path(__file__).with_name("merge_eval_worker.py")


@pytest.fixture(scope="module")
def model_and_sets():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield build()
    finally:
        torch.set_num_threads(n)


def test_means_equal_the_metrics_called_directly(model_and_sets):
    model, sets = model_and_sets
    means = Evaluator(model, sets, batch_size=1).evaluate()
    assert list(means) == ["prose_sharegpt", "code", "code_nll", "prose_div"]
    for es in sets:
        direct = merge_metric(es.mode, model, es.tokenizer, es.samples, 1, **es.options)
        assert means[es.name] == math.fsum(direct) / len(direct)  # one sample at a time: exact
        assert len(set(direct)) > 1 or es.mode == "diversity"  # real, varied per-sample scores
    # batched: the same numbers up to padding round-off
    batched = Evaluator(model, sets, batch_size=4).evaluate()
    for es in sets:
        direct = merge_metric(es.mode, model, es.tokenizer, es.samples, 4, **es.options)
        assert batched[es.name] == pytest.approx(sum(direct) / len(direct), rel=1e-5, abs=1e-6)


def test_pinned_values(model_and_sets):
    """The shipped olmo2-stdlib on the tiny config's data (changes only with the zoo model)."""
    model, sets = model_and_sets
    means = Evaluator(model, sets, batch_size=BATCH_SIZE).evaluate()
    assert means == pytest.approx(
        {
            "prose_sharegpt": 1.919036,  # prose answers: the code model is mostly wrong (max 2)
            "code": 1.174487,
            "code_nll": 3.094364,
            "prose_div": 1228.8,  # mean of 4096 / #unique words of three 6-token greedy answers
        },
        rel=1e-5,
    )


def test_evaluation_runs_in_eval_mode_without_grad(model_and_sets):
    model, sets = model_and_sets
    seen = []
    hook = model.register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))
    )
    model.train()
    try:
        Evaluator(model, sets[:1], batch_size=4).evaluate()
    finally:
        hook.remove()
    assert seen and set(seen) == {(False, False)}
    assert model.training  # restored
    model.eval()


def test_plan_batches_longest_first_and_counters(model_and_sets):
    model, sets = model_and_sets
    es = sets[0]
    plan = plan_batches(es, 2)
    lengths = [
        len(es.samples[i].context_ids) + len(es.samples[i].response_ids) for b in plan for i in b
    ]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(i for b in plan for i in b) == list(range(len(es)))
    assert [len(b) for b in plan] == [2, 2, 1]
    ev = Evaluator(model, [es], batch_size=2)
    ev.evaluate()
    ev.evaluate()
    assert ev.evaluations == 2 and ev.seconds > 0
    assert world() == (0, 1)


def test_evaluator_validates_its_inputs(model_and_sets):
    model, sets = model_and_sets
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Evaluator(model, sets, batch_size=0)
    dup = EvalSet("x", "nll", sets[2].samples, tokenizer=sets[2].tokenizer)
    with pytest.raises(ValueError, match="names must be unique"):
        Evaluator(model, [dup, dup])


def test_two_processes_equal_one_process(model_and_sets, tmp_path):
    """2 CPU processes (gloo) give the very per-sample scores and means of 1 process, and each
    process scored only its share of the batches; with the prefix cache replaying layer 0 too
    (compared against one process's full forwards), and for grouped candidates (compared against
    one process's full forwards of each)."""
    model, sets = model_and_sets
    single = Evaluator(model, sets, batch_size=BATCH_SIZE)
    scores, means = single.sample_scores(), single.evaluate()
    full = suffix_scores(Evaluator(model, sets, batch_size=BATCH_SIZE, prefix_cache=False), model)
    one_by_one = grouped_means(
        Evaluator(model, sets, batch_size=BATCH_SIZE, prefix_cache=False), model
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total_batches = sum(len(p) for p in single.plans)
    assert [r["world"] for r in results] == [[0, 2], [1, 2]]
    assert [r["batches_scored"] for r in results] == [
        sum(len(p[0::2]) for p in single.plans),
        sum(len(p[1::2]) for p in single.plans),
    ]
    assert results[0]["batches_scored"] + results[1]["batches_scored"] == total_batches
    # the pool both ranks built: written once (by rank 0) into the shared cache, read by both
    assert results[0]["pool_fingerprint"] == results[1]["pool_fingerprint"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["olmo2-tiny-random@1"]
    for r in results:
        assert r["scores"] == scores  # bit-identical per-sample scores
        assert r["means"] == means  # and means
        assert r["any_process"] == [True, False]  # the ES time-budget decision is shared
        assert r["suffix"]["scores"] == [full["scores"][0]] * 2  # captured, then replayed
        # grouped candidates: each rank stacks its own batches, one all_reduce for all three
        assert r["grouped"] == one_by_one
    # each rank replayed its teacher-forced batches (bigram 5 and nll 3 samples, 2 per batch)
    assert [r["suffix"]["passes"] for r in results] == [3, 2]
    assert full["scores"][0] != scores  # the layer-1 candidate does score differently


def test_state_key_is_order_independent_and_drops_base_units():
    k = StateCache.state_key
    assert k({"a": "m1", "b": "m2"}) == k({"b": "m2", "a": "m1"})
    assert k({"a": "m1"}) != k({"a": "m2"}) != k({"b": "m2"})
    assert k({"a": "base", "b": "m2"}, base="base") == k({"b": "m2"})
    assert k({"a": "base"}, base="base") == k({})
    es = {"donor": "m1", "es": [{"kind": "svd", "seed": 3, "offspring": 1}]}
    assert k({"a": es}) != k({"a": "m1"})
    assert k({"a": es}) == k({"a": json.loads(json.dumps(es))})
    assert len(k({})) == 32


def test_state_cache_counts_hits_and_misses():
    cache = StateCache()
    calls = []

    def evaluate():
        calls.append(1)
        return {"x": 0.5, "y": None}

    key = StateCache.state_key({"layers.0": "m1"})
    assert cache.get(key) is None
    assert cache.evaluate(key, evaluate) == {"x": 0.5, "y": None}
    assert cache.evaluate(key, evaluate) == {"x": 0.5, "y": None}
    assert len(calls) == 1 and key in cache and len(cache) == 1
    assert cache.stats() == {"hits": 1, "misses": 2, "states": 1}
    got = cache.get(key)
    got["x"] = 9.0  # callers get copies: the cache cannot be corrupted from outside
    assert cache.get(key)["x"] == 0.5


def test_init_distributed_leaves_a_single_process_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == (0, 1)
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------- grouped candidates
def _group_sets():
    """An nll set of 7 (batches of 3, 3 and 1 at batch size 3; the lone one, the shortest sample,
    has a 2-token response: a product of 3 rows, kept out of the stack), a bigram set of 5
    (batches of 3 and 2) and a generation set."""
    from olmokit.eval import ContextResponse
    from olmokit.loading import load_tokenizer

    tok = load_tokenizer("olmo2-stdlib")
    g = torch.Generator().manual_seed(5)

    def samples(n):
        out = []
        for _ in range(n):
            c = int(torch.randint(3, 20, (1,), generator=g))
            r = int(torch.randint(2, 8, (1,), generator=g))
            ids = torch.randint(4, 4000, (c + r,), generator=g).tolist()
            out.append(ContextResponse(ids[:c], ids[c:]))
        return out

    short = ContextResponse([7, 8], [9, 10])  # 4 tokens: shorter than any other sample
    return [
        EvalSet("n", "nll", [*samples(6), short], tokenizer=tok),
        EvalSet("b", "bigram_loss", samples(5), tokenizer=tok),
        EvalSet("e", "exact_match", samples(3), options={}, tokenizer=tok),
    ]


def _layer_candidates(model, k: int, m: int, seed: int = 0):
    """``m`` appliers each writing its own noise into every tensor of layer ``k``, and restore."""
    from olmokit.family import get_adapter

    tensors = list(get_adapter(model).layer(k).parameters())
    saved = [t.detach().clone() for t in tensors]
    g = torch.Generator().manual_seed(seed)
    noises = [[torch.randn(t.shape, generator=g) * 0.05 for t in tensors] for _ in range(m)]

    def writer(values):
        def apply():
            with torch.no_grad():
                for t, v in zip(tensors, values):
                    t.copy_(v)

        return apply

    appliers = [writer([s + z for s, z in zip(saved, noise)]) for noise in noises]
    return appliers, writer(saved), saved, tensors


@pytest.mark.parametrize("model_type", ["olmo", "olmo2", "olmo3"])
def test_grouped_scores_equal_one_by_one_bit_for_bit(model_type, monkeypatch):
    """Every focus 0..N-1 of a 4-layer model (OLMo-3: three sliding-window layers, window 8, and
    a full one; samples up to 26 tokens), 5 candidates in groups of 3 and 2: each candidate's
    metrics equal a full forward of it alone, exactly (float equality); the stacked pass really
    ran (one metric call per batch for the whole group), and the layer weights are restored."""
    import olmokit.merge.evaluate as ev_mod
    from olmokit.zoo.presets import random_model

    model = random_model(model_type, "tiny", seed=1, num_hidden_layers=4)
    sets = _group_sets()
    grouped = Evaluator(model, sets, batch_size=3, candidate_batch=3)
    solo = Evaluator(model, sets, batch_size=3, prefix_cache=False)
    calls = []
    real = ev_mod.merge_metric
    monkeypatch.setattr(
        ev_mod, "merge_metric", lambda *a, **kw: calls.append(len(a[3])) or real(*a, **kw)
    )
    for k in range(4):  # 0: a layer-0 step (nothing cached below it, still grouped)
        grouped.set_focus(k)
        appliers, restore, saved, tensors = _layer_candidates(model, k, 5, seed=k)
        expected = []
        for apply in appliers:
            apply()
            expected.append(solo.evaluate())
        restore()
        calls.clear()
        got = grouped.evaluate_group(appliers, restore)
        assert got == expected, k
        assert all(torch.equal(t, s) for t, s in zip(tensors, saved))
        # per group of m: every candidate's layer-k pass of each batch (n: 3, 3, 1; b: 3, 2)
        # and generation batch (e: 3), then one stacked pass per batch (m x its samples), but
        # the lone short sample's upper layers once per candidate
        expected_calls = []
        for m in (3, 2):
            expected_calls += m * [3, 3, 1, 3, 2, 3] + [3 * m, 3 * m, 3 * m, 2 * m] + m * [1]
        assert sorted(calls) == sorted(expected_calls)
        assert [grouped._stackable((0, b)) for b in range(3)] == [True, True, False]
    assert grouped.evaluations == 20


def test_grouped_evaluation_restores_on_every_failure_path(model_and_sets):
    """An applier that raises, a metric that raises inside the stacked pass, a candidate that
    writes outside the focus layer: the weights are restored and no stand-in layer is left."""
    from olmokit.family import get_adapter

    model, sets = model_and_sets
    ad = get_adapter(model)
    layers_before = list(ad.layers())
    ev = Evaluator(model, sets, batch_size=BATCH_SIZE, candidate_batch=4)
    ev.set_focus(1)
    appliers, restore, saved, tensors = _layer_candidates(model, 1, 3)

    def boom():
        raise RuntimeError("boom")

    def outside():
        with torch.no_grad():
            ad.final_norm().weight.add_(0.0)  # an in-place write: a new version

    for bad, match in ((boom, "boom"), (outside, "outside layer 1")):
        with pytest.raises(RuntimeError, match=match):
            ev.evaluate_group([appliers[0], bad, appliers[1]], restore)
        assert all(torch.equal(t, s) for t, s in zip(tensors, saved))
        assert list(ad.layers()) == layers_before

    import olmokit.merge.evaluate as ev_mod

    real, seen = ev_mod.merge_metric, []

    def failing(mode, model_, tok, samples, *a, **kw):
        seen.append(len(samples))
        if len(seen) > 3:  # past the first candidates' layer outputs
            raise RuntimeError("metric failed")
        return real(mode, model_, tok, samples, *a, **kw)

    ev_mod.merge_metric = failing
    try:
        with pytest.raises(RuntimeError, match="metric failed"):
            ev.evaluate_group(appliers, restore)
    finally:
        ev_mod.merge_metric = real
    assert all(torch.equal(t, s) for t, s in zip(tensors, saved))
    assert list(ad.layers()) == layers_before


def test_grouped_evaluation_in_waves_and_fallbacks():
    """A memory cap below one batch: one wave per batch, every candidate applied once per wave,
    same scores. No focus (an embedding step), candidate_batch 1, no prefix cache: one by one
    (each applied once), same scores."""
    from olmokit.zoo.presets import random_model

    model = random_model("olmo2", "tiny", seed=4)
    sets, batch = _group_sets(), 3
    ev = Evaluator(model, sets, batch_size=batch, candidate_batch=3)
    ev.set_focus(1)
    appliers, restore, _, _ = _layer_candidates(model, 1, 3)
    expected = ev.evaluate_group(appliers, restore)
    counted = [0, 0, 0]

    def counting(j):
        def apply():
            counted[j] += 1
            appliers[j]()

        return apply

    tight = Evaluator(model, sets, batch_size=batch, candidate_batch=3, group_bytes=1)
    tight.set_focus(1)
    assert tight.evaluate_group([counting(j) for j in range(3)], restore) == expected
    waves = len(tight._waves([(i, b) for i in (0, 1) for b in range(len(tight.plans[i]))], 3))
    assert waves == len(tight.plans[0]) + len(tight.plans[1]) == 5 and counted == [waves] * 3
    for kwargs, focus in (({"candidate_batch": 1}, 1), ({}, None), ({"prefix_cache": False}, 1)):
        counted[:] = [0, 0, 0]
        other = Evaluator(model, sets, batch_size=batch, **kwargs)
        other.set_focus(focus)
        assert not other.groupable() or kwargs
        got = other.evaluate_group([counting(j) for j in range(3)], restore)
        assert got == expected and counted == [1, 1, 1]
    with pytest.raises(ValueError, match="candidate_batch must be >= 1"):
        Evaluator(model, sets, candidate_batch=0)
