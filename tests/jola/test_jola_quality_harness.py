"""The quality benchmark's LoFiT baseline: stage 2 must leave an edit on exactly the selected heads.

A LoFiT row that scores exactly the base is what a stage 2 that trains nothing (or whose edit is
dropped before evaluation) would give, so this pins what is evaluated: k heads carry a non-zero,
trained edit, every other head is the identity, and the held-out log-likelihoods move.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from olmokit.eval import choice_logprobs
from olmokit.jola import jola_edits
from olmokit.loading import load_model, load_tokenizer

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "jola_quality.py"


@pytest.fixture(scope="module")
def jq():
    spec = importlib.util.spec_from_file_location("jola_quality_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_lofit_stage2_edits_exactly_the_selected_heads(jq, monkeypatch, tmp_path):
    torch.set_num_threads(1)
    tok = load_tokenizer()
    data = jq.task_data("stdlib_module", tok, 16, 8, test_limit=8)
    seen = {}
    real_score = jq.score

    def spy(model, tok_, examples, generative, loss_on="answer"):
        if "edits" not in seen:  # the model exactly as the benchmark evaluates it
            seen["edits"] = {
                i: (e.attn_A.detach().clone(), e.attn_v.detach().clone())
                for i, e in jola_edits(model).items()
            }
            seen["lp"] = choice_logprobs(model, tok_, examples[:4], loss_on=loss_on)
        return real_score(model, tok_, examples, generative, loss_on)

    monkeypatch.setattr(jq, "score", spy)
    res = jq.train_method("lofit", data, tok, 0, steps=8, eval_every=4, lofit_k=3)
    assert res["open_heads"] == 3 and res["edited_heads"] == 3
    assert sum(res["selected_per_layer"]) == 3
    nonzero = [
        (i, h)
        for i, (a, v) in seen["edits"].items()
        for h in range(a.shape[0])
        if bool((a[h] != 0).any() or (v[h] != 0).any())
    ]
    assert len(nonzero) == 3
    for i, h in nonzero:  # stage 2 trained both A and v of every selected head
        a, v = seen["edits"][i]
        assert float(a[h].abs().max()) > 1e-4 and float(v[h].abs().max()) > 1e-4
    base_lp = choice_logprobs(load_model(None), tok, data.valid_ex[:4], loss_on="answer")
    moved = max(
        abs(x - y) for xs, ys in zip(seen["lp"], base_lp, strict=True) for x, y in zip(xs, ys)
    )
    assert moved > 1e-3
