"""The prefix cache: suffix-only passes score bit-identically to full forwards, skip the layers
they claim to, are invalidated by any write below the focus layer, and leave a whole merge run
(layers, units, ES, forward and backward) exactly as it is without them."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from common import TOOL_FAMILIES
from merge_helpers import make_pool, merge_config

from olmokit.eval import ContextResponse
from olmokit.family import get_adapter
from olmokit.loading import load_tokenizer
from olmokit.merge import run as run_mod
from olmokit.merge.datasets import EvalSet
from olmokit.merge.evaluate import Evaluator
from olmokit.merge.report import load_report
from olmokit.zoo.presets import random_model


def _samples(seed: int, n: int) -> list[ContextResponse]:
    """Contexts of 3..19 and responses of 2..7 tokens: batches need left padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        c = int(torch.randint(3, 20, (1,), generator=g))
        r = int(torch.randint(2, 8, (1,), generator=g))
        ids = torch.randint(4, 4000, (c + r,), generator=g).tolist()
        out.append(ContextResponse(ids[:c], ids[c:]))
    return out


def _evalsets():
    tok = load_tokenizer("olmo2-stdlib")
    return [
        EvalSet("n", "nll", _samples(1, 7), tokenizer=tok),
        EvalSet("b", "bigram_loss", _samples(2, 5), tokenizer=tok),
        EvalSet("e", "exact_match", _samples(3, 3), options={}, tokenizer=tok),
    ]


def _suffix_tensors(model, k: int) -> list[torch.Tensor]:
    """What a candidate at focus ``k`` may change: layer ``k``'s weights, or (``k`` = N) the final
    norm's and lm_head's."""
    ad = get_adapter(model)
    if k < ad.num_layers:
        return list(ad.layer(k).parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    head = [] if tied else list(ad.lm_head().parameters())  # a tied lm_head is never searched
    return [*ad.final_norm().parameters(), *head]


@pytest.mark.parametrize("model_type", TOOL_FAMILIES["merge"])
def test_suffix_pass_scores_equal_the_full_forward_bit_for_bit(model_type, one_thread):
    model = random_model(model_type, "tiny", seed=1, tie_word_embeddings=model_type == "olmo2")
    sets = _evalsets()
    fast = Evaluator(model, sets, batch_size=3)
    slow = Evaluator(model, sets, batch_size=3, prefix_cache=False)
    n = get_adapter(model).num_layers
    g = torch.Generator().manual_seed(0)
    for k in [*range(n + 1), 1, n]:  # forward through every layer, then jumps back and up
        fast.set_focus(k)
        for _ in range(3):  # three candidates at layer k, each restored afterwards
            tensors = [t for t in _suffix_tensors(model, k) if t.dim() > 0]
            saved = [t.detach().clone() for t in tensors]
            with torch.no_grad():
                for t in tensors:
                    t.add_(torch.randn(t.shape, generator=g) * 0.05)
            assert fast.sample_scores() == slow.sample_scores(), k  # exact float equality
            with torch.no_grad():
                for t, s in zip(tensors, saved):
                    t.copy_(s)
    prefix = fast.prefix
    assert prefix.suffix_passes > 0
    # per focus k > 0, the 2 teacher-forced sets have 3 + 2 batches; all but the first candidate's
    # pass replay k layers, the first replays the previous entry's (k - 1 going forward)
    forward = sum(5 * (2 * k + (k - 1)) for k in range(1, n + 1))
    assert prefix.layers_skipped >= forward


@pytest.mark.parametrize("model_type", TOOL_FAMILIES["merge"])
def test_a_write_below_the_focus_invalidates_the_cached_prefix(model_type, one_thread):
    model = random_model(model_type, "tiny", seed=2)
    ad = get_adapter(model)
    sets = _evalsets()[:2]
    fast = Evaluator(model, sets, batch_size=4)
    slow = Evaluator(model, sets, batch_size=4, prefix_cache=False)
    fast.set_focus(ad.num_layers)
    first = fast.sample_scores()
    assert len(fast.prefix) == 4  # one entry per teacher-forced batch
    # in place, as WorkingModel/ES write: the embedding, then a low layer's weight
    for tensor in (ad.embed_tokens().weight, next(ad.layer(0).parameters())):
        with torch.no_grad():
            tensor.mul_(1.5)
        got = fast.sample_scores()
        assert got == slow.sample_scores() and got != first
        first = got
    # an unchanged prefix is reused: the next pass skips every layer
    skipped = fast.prefix.layers_skipped
    fast.sample_scores()
    assert fast.prefix.layers_skipped - skipped == 4 * ad.num_layers


def test_generation_metrics_and_focus_zero_take_the_full_path(one_thread):
    model = random_model("olmo2", "tiny", seed=3)
    sets = _evalsets()
    ev = Evaluator(model, sets[2:], batch_size=3)
    ev.set_focus(1)
    ev.sample_scores()
    assert len(ev.prefix) == 0
    ev = Evaluator(model, sets[:1], batch_size=3)
    ev.set_focus(0)
    ev.sample_scores()
    assert len(ev.prefix) == 0 and ev.prefix.suffix_passes == 0
    with pytest.raises(ValueError, match="outside 0..2"):
        ev.set_focus(3)


def _without_prefix_cache(*args, **kwargs):
    return Evaluator(*args, **kwargs, prefix_cache=False)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_merge_run_is_the_same_with_and_without_the_prefix_cache_and_grouping(
    tmp_path, monkeypatch, direction, one_thread
):
    """Layers, units (norms included), SVD-ES and norm-ES, three ways: grouped candidates (the
    default ``candidate_batch`` 8), one by one with the prefix cache (``candidate_batch`` 1), and
    full forwards one by one: every candidate's metrics in the report and the merged model are
    identical, bit for bit."""
    dirs = make_pool(tmp_path / "pool", seeds=(0, 1, 2))
    runs, made = [], []
    joint = {"grouped": 0, "solo": 0, "plain": 0}
    real_joint = Evaluator._joint

    def recording(*args, **kwargs):
        made.append(Evaluator(*args, **kwargs))
        return made[-1]

    for label in ("grouped", "solo", "plain"):
        factory = recording if label != "plain" else _without_prefix_cache

        def counting(self, appliers, _label=label):
            joint[_label] += 1
            return real_joint(self, appliers)

        monkeypatch.setattr(run_mod, "Evaluator", factory)
        monkeypatch.setattr(Evaluator, "_joint", counting)
        (tmp_path / label).mkdir(exist_ok=True)
        config = merge_config(
            tmp_path / label, dirs, layer_swap=True, tensor_swap=True, skip_norm=False,
            es_svd=True, es_norm=True, es_lambda=4, direction=direction,
            candidate_batch=1 if label == "solo" else 8, output_dir=str(tmp_path / label / "run"),
        )  # fmt: skip
        runs.append(run_mod.run_merge(config, progress=False).path)
    assert made[0].prefix.suffix_passes > 0  # the cached runs did skip layers
    # layer 1's step, its units' steps and their ES generations were grouped
    assert joint["grouped"] > 10 and joint["solo"] == joint["plain"] == 0
    reports = [load_report(p) for p in runs]
    for r in reports:
        for d in [*r["layers"].values(), *r["units"].values()]:
            d.pop("seconds"), d.pop("finished")
    for other in reports[1:]:
        assert json.dumps(reports[0]["layers"]) == json.dumps(other["layers"])
        assert json.dumps(reports[0]["units"]) == json.dumps(other["units"])
    assert any(d["es"] for d in reports[0]["units"].values())  # ES ran and was accepted
    kinds = {op["kind"] for d in reports[0]["units"].values() for op in d["es"]}
    assert kinds == {"svd", "norm"}
    a, *others = (safetensors.torch.load_file(str(p / "model" / "model.safetensors")) for p in runs)
    for b in others:
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
