"""The quality benchmark's LoFiT baseline: stage 2 must leave an edit on exactly the selected heads.

A LoFiT row that scores exactly the base is what a stage 2 that trains nothing (or whose edit is
dropped before evaluation) would give, so this pins what is evaluated: k heads carry a non-zero,
trained edit, every other head is the identity, and the held-out log-likelihoods move.
"""

import importlib.util
import json
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


def test_model_flag_trains_and_records_the_named_model(jq):
    """``--model``/``model_name`` must reach the trained model: a tiny OLMo-3 (4 layers x 4 heads of
    width 16; its preset has both sliding and full layers) gives 16 heads and 4*4*(2*16+2) = 544
    JoLA parameters, not the zoo model's 32 / 2,112."""
    torch.set_num_threads(1)
    tok = load_tokenizer("olmo3-tiny-random")
    data = jq.task_data("stdlib_module", tok, 8, 4, test_limit=4)
    res = jq.train_method(
        "jola", data, tok, 0, steps=2, eval_every=2, model_name="olmo3-tiny-random"
    )
    assert (res["heads"], res["params"]) == (16, 544)
    assert jq._model_tag(None) == "olmo2-stdlib"
    assert jq._model_tag("/tmp/x/olmo2-stdlib-wide") == "olmo2-stdlib-wide"


def test_report_from_refuses_to_mix_models(jq, monkeypatch, tmp_path):
    """Runs of two models in one table would compare nothing; files from before ``--model`` count
    as the shipped zoo model."""
    run = {"test": 0.5, "valid": 0.5, "params": 1}
    old = {"base": {"t": 0.1}, "runs": {"t": {"jola": []}}}
    new = {"model": "olmo2-stdlib-wide", "base": {"t": 0.2}, "runs": {"t": {"lora": [run]}}}
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    files = f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}"
    plot = str(tmp_path / "p.png")
    monkeypatch.setattr(sys, "argv", ["jq", "--report-from", files, "--plot", plot])
    with pytest.raises(SystemExit, match="mixes models"):
        jq.main()


def test_report_from_refuses_to_mix_task_splits(jq, monkeypatch, tmp_path):
    """Files run before the held-out splits got their own generator (no ``task_splits`` key) hold
    figures of another held-out draw: one table must not mix them with current files."""
    run = {"test": 0.5, "valid": 0.5, "params": 1}
    old = {"model": "olmo2-stdlib", "base": {"t": 0.1}, "runs": {"t": {"lora": [run]}}}
    new = {**old, "task_splits": jq.TASK_SPLITS}
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    monkeypatch.setattr(sys, "argv", ["jq", "--report-from", f"{tmp_path / 'b.json'}"])
    jq.main()  # one split: fine
    files = f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}"
    monkeypatch.setattr(sys, "argv", ["jq", "--report-from", files])
    with pytest.raises(SystemExit, match="task splits"):
        jq.main()


def test_lora_grid_point_parses_rank_targets_and_lr(jq):
    """``lora:r=1/targets=o`` is the parameter-matched LoRA of the capacity comparison: rank 1 on
    ``o_proj`` is 4 layers x (256 + 256) = 2,048 trainable parameters on the zoo model (JoLA: 2,112);
    the plain ``lora`` keeps r 8 on q and v (32,768). Unknown keys and targets are refused."""
    assert jq.parse_lora_variant("lora") == (8, ["q", "v"], 1e-3)
    assert jq.parse_lora_variant("lora:r=1/targets=o+v/lr=2e-3") == (1, ["o", "v"], 2e-3)
    with pytest.raises(SystemExit, match="valid: q, k, v, o"):
        jq.parse_lora_variant("lora:targets=o_proj")
    with pytest.raises(SystemExit, match="valid: r, targets, lr"):
        jq.parse_lora_variant("lora:rank=1")


def test_lora_grid_point_has_jolas_parameter_budget(jq):
    """Training through PEFT (the ``[bench]`` extra, as every PEFT baseline): rank 1 on ``o_proj``
    trains exactly 4 x (256 + 256) parameters."""
    pytest.importorskip("peft")
    torch.set_num_threads(1)
    tok = load_tokenizer()
    data = jq.task_data("stdlib_module", tok, 8, 4, test_limit=4)
    res = jq.train_method("lora:r=1/targets=o", data, tok, 0, steps=2, eval_every=2)
    assert res["params"] == 2048


def test_result_line_is_strict_json_without_a_base_run(jq, monkeypatch, tmp_path, capsys):
    """A partial run without ``base`` (e.g. only a LoRA grid point) printed ``"base": NaN``, which
    strict JSON parsers refuse; it is ``null`` now, and a present base keeps its value."""
    run = {"test": 0.5, "valid": 0.4, "params": 2048}
    d = {
        "model": "olmo2-stdlib",
        "base": {"u": 0.25, "u:valid": 0.3},
        "runs": {"t": {"lora": [run]}, "u": {"lora": [run]}},
    }
    (tmp_path / "a.json").write_text(json.dumps(d))
    monkeypatch.setattr(sys, "argv", ["jq", "--report-from", str(tmp_path / "a.json")])
    jq.main()
    out = capsys.readouterr().out
    # the base row shows its validation score when the run recorded one, "-" otherwise
    assert "| u | accuracy | base | - | 0.250 | 0.300 | 0 |" in out
    assert "| t | accuracy | base | - | nan | - | 0 |" in out
    line = out.strip().splitlines()[-1]
    assert line.startswith("RESULT ")
    result = json.loads(line[len("RESULT ") :], parse_constant=lambda c: pytest.fail(c))
    assert result == {"t": {"base": None, "lora": 0.5}, "u": {"base": 0.25, "lora": 0.5}}


def test_refit_fixes_open_gates_at_one_and_closed_at_zero(jq):
    """``refit`` (localize, then refit gate-free): after ``_fix_gates`` every gate that was open at
    evaluation is exactly 1 in training and evaluation, every closed one exactly 0, and no log-alpha
    trains any more; the set of open gates is the one the evaluation gate had."""
    from olmokit.jola import JoLASettings, attach_jola

    torch.manual_seed(0)
    model = load_model(None)
    attach_jola(model, JoLASettings(log_alpha_init=0.0))
    edits = jola_edits(model)
    with torch.no_grad():  # a mix: clearly open, clearly closed, and borderline gates
        for e in edits.values():
            e.log_g1.copy_(torch.linspace(-4, 4, e.log_g1.numel()))
            e.log_g2.copy_(torch.linspace(4, -4, e.log_g2.numel()))
    before = [tuple(g > 0 for g in e.gates(training=False)) for e in edits.values()]
    jq._fix_gates(model)
    for e, (o1, o2) in zip(edits.values(), before, strict=True):
        for train in (True, False):
            g1, g2 = e.gates(training=train)
            assert torch.equal(g1, o1.float()) and torch.equal(g2, o2.float())
        assert not e.log_g1.requires_grad and not e.log_g2.requires_grad
    assert 0 < sum(int(o1.sum() + o2.sum()) for o1, o2 in before) < 2 * 32


def test_unknown_method_is_refused_before_any_training(jq, monkeypatch):
    """Unknown names fell through to the PEFT branch (and trained IA3 under a wrong label)."""
    monkeypatch.setattr(sys, "argv", ["jq", "--tasks", "stdlib_module", "--methods", "jola,lorra"])
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['lorra'\]; valid: base, jola"):
        jq.main()
