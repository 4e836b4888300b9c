"""Localization: gate learning rate group, a strong penalty closes gates, pruning to k heads, sweep."""

import json

import pytest
import torch

from olmokit.cli.main import main
from olmokit.data.readers import Record
from olmokit.errors import ConfigError
from olmokit.jola import (
    JoLASettings,
    JoLATrainer,
    attach_jola,
    head_gates,
    jola_edits,
    open_heads,
    prune_jola,
    training_arguments,
)
from olmokit.jola.config import TrainingSection
from olmokit.zoo.presets import random_model


def _records(n=16):
    words = ["alpha", "beta", "gamma", "delta"]
    msgs = lambda i: [  # noqa: E731
        {"role": "user", "content": f"Say {words[i % 4]} {i}"},
        {"role": "assistant", "content": words[i % 4]},
    ]
    return [Record("chat", {"messages": msgs(i)}, f"mem:{i}") for i in range(n)]


def _train(tmp_path, tok, settings, steps=12, **section):
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model, settings)
    kw = dict(max_steps=steps, warmup_steps=0, per_device_train_batch_size=4, eval_strategy="no",
              disable_tqdm=True, learning_rate=1e-2, lr_scheduler_type="constant", save_steps=None)  # fmt: skip
    kw.update(section)
    args = training_arguments(TrainingSection(**kw), str(tmp_path), use_cpu=True)
    tr = JoLATrainer(model=model, args=args, train_dataset=_records(16), tokenizer=tok,
                     max_seq_length=64, jola_settings=settings)  # fmt: skip
    tr.train()
    return model, tr


def test_gates_get_their_own_learning_rate(tmp_path, zoo_tokenizer):
    settings = JoLASettings(gate_learning_rate=0.05)
    model, tr = _train(tmp_path, zoo_tokenizer, settings, steps=1)
    gate_ids = {id(p) for e in jola_edits(model).values() for p in (e.log_g1, e.log_g2)}
    groups = tr.optimizer.param_groups
    gate_groups = [g for g in groups if any(id(p) in gate_ids for p in g["params"])]
    assert len(gate_groups) == 1 and {id(p) for p in gate_groups[0]["params"]} == gate_ids
    assert gate_groups[0]["lr"] == pytest.approx(0.05)  # constant schedule: lr unchanged
    others = [g for g in groups if g is not gate_groups[0]]
    assert all(g["lr"] == pytest.approx(1e-2) for g in others)
    assert not any(id(p) in gate_ids for g in others for p in g["params"])
    # null: one shared learning rate, as before
    _, tr2 = _train(tmp_path / "shared", zoo_tokenizer, JoLASettings(gate_learning_rate=None), 1)
    assert all(g["lr"] == pytest.approx(1e-2) for g in tr2.optimizer.param_groups)


def test_strong_penalty_closes_most_gates(tmp_path, zoo_tokenizer):
    # gates start open (log-alpha 3); closing needs a move of ~5.4 in 12 constant-lr steps
    strong = JoLASettings(gate_scheduler="constant", gate_lambda=1.0, gate_learning_rate=0.6)
    model, _ = _train(tmp_path / "strong", zoo_tokenizer, strong)
    oh = open_heads(model)
    assert oh["heads"] == 8 and oh["open"] <= 1  # of 2 layers x 4 heads, at most one left open
    free = JoLASettings(gate_scheduler="constant", gate_lambda=0.0, gate_learning_rate=0.6)
    model0, _ = _train(tmp_path / "free", zoo_tokenizer, free)
    assert open_heads(model0)["open"] >= 6  # the same run without the penalty keeps them open


def test_prune_leaves_exactly_k_open():
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model, JoLASettings(init_seed=3, log_alpha_init="xavier"))  # distinct gates
    g = head_gates(model)
    assert open_heads(model)["open"] == g.numel() == 8
    top3 = set(torch.topk(g.flatten(), 3).indices.tolist())
    out = prune_jola(model, keep_top_k=3)
    assert out["open"] == 3
    after = head_gates(model)
    assert {i for i, x in enumerate(after.flatten().tolist()) if x > 0} == top3
    assert torch.equal(after.flatten()[list(top3)], g.flatten()[list(top3)])  # kept ones untouched
    for e in jola_edits(model).values():  # closed heads are the identity: scale 1, shift 0
        scale, shift = e.scale_shift(training=False)
        closed = (e.gates(training=False)[0] == 0) & (e.gates(training=False)[1] == 0)
        rows = closed.repeat_interleave(e.head_dim)
        assert torch.all(scale[rows] == 1.0) and torch.all(shift[rows] == 0.0)
    # threshold: heads at or below it close; never reopens a closed head
    model2 = random_model("olmo2", "tiny", seed=0)
    attach_jola(model2, JoLASettings(init_seed=3, log_alpha_init="xavier"))
    t = float(g.median())
    assert prune_jola(model2, threshold=t)["open"] == int((g > t).sum())
    with pytest.raises(ConfigError, match="exactly one"):
        prune_jola(model2, keep_top_k=2, threshold=0.5)


def test_sweep_cli_records_points_and_prunes(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(
        [
            "jola", "sweep", "configs/jola/tiny.yaml",
            "training_config.max_steps=2", "training_config.eval_steps=2",
            "training_config.disable_tqdm=true",
            "data_config.train_size=16", "data_config.eval_size=8",
            "--gate-lambda", "0", "0.5", "--out", str(out), "--keep-top-k", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [p["gate_lambda"] for p in result["points"]] == [0.0, 0.5]
    for p in result["points"]:
        assert p["heads"] == 32 and 0 <= p["open_05"] <= p["open"] <= 32
        assert p["pruned_open"] == min(2, p["open"])
        assert p["valid"] is not None and p["test"] is not None and p["pruned_test"] is not None
        assert (tmp_path / "sweep" / f"lambda-{p['gate_lambda']:g}" / "adapter-pruned").is_dir()
    assert (
        out / "sweep.png"
    ).stat().st_size > 1000 and "| gate_lambda |" in capsys.readouterr().out
