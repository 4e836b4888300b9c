"""JoLATrainer: penalty, scheduler stepping, early stopping/best restore, NaN handling, bad data."""

import json

import pytest
import torch
from transformers import TrainerCallback

from olmokit.data.readers import Record
from olmokit.errors import DataError
from olmokit.files import load_safetensors
from olmokit.jola import (
    JoLASettings,
    JoLATrainer,
    TrainingDivergedError,
    attach_jola,
    detach_jola,
    gate_penalty,
    has_jola,
    jola_edits,
    jola_state_dict,
    read_adapter,
    training_arguments,
)
from olmokit.jola.config import TrainingSection
from olmokit.jola.layer import prob_open
from olmokit.zoo.presets import random_model


def _records(n=24):
    words = ["alpha", "beta", "gamma", "delta"]
    return [
        Record(
            "chat",
            {
                "messages": [
                    {"role": "user", "content": f"Say {words[i % 4]} {i}"},
                    {"role": "assistant", "content": words[i % 4]},
                ]
            },
            f"mem:{i}",
        )
        for i in range(n)
    ]


def _trainer(tmp_path, tok, model=None, settings=None, **section):
    model = model or random_model("olmo2", "tiny", seed=0)
    # one shared learning rate and the expon schedule: what these tests were written against
    settings = settings or JoLASettings(
        gate_lambda=0.01, gate_learning_rate=None, gate_scheduler="expon"
    )
    if not has_jola(model):
        attach_jola(model, settings)
    kw = dict(
        max_steps=6,
        warmup_steps=0,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        disable_tqdm=True,
        learning_rate=1e-2,
    )
    kw.update(section)
    patience = kw.pop("early_stopping_patience", None)
    args = training_arguments(TrainingSection(**kw), str(tmp_path), use_cpu=True)
    recs = _records()
    return JoLATrainer(
        model=model,
        args=args,
        train_dataset=recs[:16],
        eval_dataset=recs[16:],
        tokenizer=tok,
        max_seq_length=64,
        early_stopping_patience=patience,
        jola_settings=settings,
    )


def test_penalty_forms():
    m = random_model("olmo2", "tiny", seed=0)
    attach_jola(m)
    edits = list(jola_edits(m).values())
    hc = edits[0].hc
    p1 = torch.stack([prob_open(e.log_g1, hc) for e in edits])
    p2 = torch.stack([prob_open(e.log_g2, hc) for e in edits])
    strength = gate_penalty(m, JoLASettings(gate_lambda=0.5), 0.1)
    torch.testing.assert_close(strength, 0.5 * 0.1 * (p1.sum() + p2.sum()))
    mixing = gate_penalty(m, JoLASettings(penalty="mixing", gate_lambda=123.0), 0.3)
    LH = p1.numel()
    torch.testing.assert_close(mixing, 0.3 * p1.mean(-1).sum() / LH + 0.7 * p2.mean(-1).sum() / LH)
    # a real strength: zero lambda, zero penalty
    assert gate_penalty(m, JoLASettings(gate_lambda=0.0), 0.1).item() == 0.0


def test_train_steps_scheduler_and_restores_best(tmp_path, zoo_tokenizer):
    tr = _trainer(tmp_path, zoo_tokenizer)
    before = {k: v.clone() for k, v in jola_state_dict(tr.model).items()}
    tr.evaluate()
    assert tr.gate_scheduler.step == 0  # evaluation never advances the scheduler
    out = tr.train()
    assert out.global_step == 6 and tr.gate_scheduler.step == 6
    assert tr.gate_scheduler.value == pytest.approx(0.1 * torch.exp(torch.tensor(-0.06)).item())
    after = jola_state_dict(tr.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the best evaluation's adapter is the one restored at the end, and scores its eval loss again
    assert all(torch.equal(tr._best[2][k], after[k]) for k in after)
    again = tr.evaluate()
    assert tr.best == {
        "eval_loss": pytest.approx(again["eval_loss"], rel=1e-6),
        "objective": pytest.approx(again["eval_objective"], rel=1e-6),
        "step": 6,
    }
    # base weights untouched
    fresh = random_model("olmo2", "tiny", seed=0)
    base_sd = {k: v for k, v in tr.model.state_dict().items() if ".jola." not in k}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in base_sd.items())
    tr.save_model(str(tmp_path / "saved"))
    meta, tensors = read_adapter(tmp_path / "saved")
    assert set(tensors) == set(after) and not (tmp_path / "saved" / "model.safetensors").exists()


def test_early_stopping(tmp_path, zoo_tokenizer):
    # lr so small the eval loss cannot improve -> stop after `patience` evaluations without improvement
    tr = _trainer(
        tmp_path,
        zoo_tokenizer,
        max_steps=40,
        eval_steps=1,
        learning_rate=1e-30,
        early_stopping_patience=2,
    )
    out = tr.train()
    assert out.global_step == 3


class _PoisonBase(TrainerCallback):
    """Sets a base weight to NaN after optimizer step `at`, so the next loss is NaN."""

    def __init__(self, model, at):
        self.model, self.at = model, at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            with torch.no_grad():
                self.model.get_submodule("model.embed_tokens").weight.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good(tmp_path, zoo_tokenizer):
    tr = _trainer(tmp_path, zoo_tokenizer, max_steps=10, eval_strategy="no")
    snap = {}

    class _Grab(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                snap.update({k: v.clone() for k, v in jola_state_dict(tr.model).items()})

    tr.add_callback(_Grab())
    tr.add_callback(_PoisonBase(tr.model, 3))
    with pytest.raises(
        TrainingDivergedError,
        match=r"non-finite loss \(nan\) at optimizer step 4.*from optimizer step 3",
    ):
        tr.train()
    got = jola_state_dict(tr.model)
    assert all(torch.equal(got[k], snap[k]) for k in snap)
    _, saved = read_adapter(tmp_path / "last_good")
    assert all(torch.equal(saved[k], snap[k]) for k in snap)


def test_bad_dataset_files(tmp_path, zoo_tokenizer):
    m = random_model("olmo2", "tiny", seed=0)
    attach_jola(m)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        JoLATrainer(model=m, train_dataset=str(empty), tokenizer=zoo_tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + "{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        JoLATrainer(model=m, train_dataset=str(bad), tokenizer=zoo_tokenizer)


def test_penalty_counted_once_per_optimizer_step(tmp_path, zoo_tokenizer):
    """With gradient accumulation and a CE already normalised over the accumulated batch, each
    micro-batch carries penalty / accumulation_steps, so one optimizer step sees the penalty once."""
    tr = _trainer(tmp_path, zoo_tokenizer, gradient_accumulation_steps=2)
    model = tr.model
    model.train()
    batch = tr.data_collator(tr.train_dataset[:4])
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    pen = gate_penalty(model, tr.jola_settings, tr.gate_scheduler.value).item()
    tr.current_gradient_accumulation_steps = 2
    torch.manual_seed(0)
    total = tr.compute_loss(model, dict(batch), num_items_in_batch=n_items).item()
    torch.manual_seed(0)
    ce = model(**batch, num_items_in_batch=n_items).loss.item()
    assert tr._loss_scaled_for_ga(n_items)
    assert total == pytest.approx(ce + pen / 2, rel=1e-5)
    torch.manual_seed(0)
    total = tr.compute_loss(model, dict(batch)).item()  # not pre-scaled: Trainer divides the sum
    torch.manual_seed(0)
    assert total == pytest.approx(model(**batch).loss.item() + pen, rel=1e-5)


def test_seed_style_scheduler_argument(zoo_tokenizer):
    m = random_model("olmo2", "tiny", seed=0)
    attach_jola(m)
    tr = JoLATrainer(
        model=m, train_dataset=_records(4), tokenizer=zoo_tokenizer, gate_scheduler="linear"
    )
    assert tr.gate_scheduler.name == "linear" and tr.processing_class is zoo_tokenizer
    assert (
        JoLATrainer(model=m, tokenizer=zoo_tokenizer).gate_scheduler.name == "constant"
    )  # the default (olmokit's; the reference's expon decays the penalty to nothing)
    assert JoLATrainer(model=m, gate_scheduler=None).gate_scheduler.name == "constant"
    # penalty settings and scheduler come from the constructor, never from the model's attach settings
    detach_jola(m)
    attach_jola(m, JoLASettings(gate_scheduler="cyclic", gate_lambda=0.5))
    tr = JoLATrainer(model=m, tokenizer=zoo_tokenizer)
    assert (
        tr.gate_scheduler.name == "constant"
        and tr.jola_settings.gate_lambda == JoLASettings().gate_lambda
    )
    tr = JoLATrainer(model=m, jola_settings=JoLASettings(gate_scheduler="perform", gate_lambda=0.2))
    assert tr.gate_scheduler.name == "perform" and tr.jola_settings.gate_lambda == 0.2


def test_checkpoints_hold_the_adapter_and_jola_state_only(tmp_path, zoo_tokenizer):
    tr = _trainer(tmp_path, zoo_tokenizer, max_steps=4, save_steps=2, save_total_limit=1)
    tr.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]  # save_total_limit
    ckpt = tmp_path / "checkpoint-4"
    names = {p.name for p in ckpt.iterdir()}
    assert {"jola_adapter.safetensors", "jola_config.json", "optimizer.pt", "scheduler.pt"} <= names
    assert {"rng_state.pth", "trainer_state.json", "jola_trainer_state.json"} <= names
    assert not any(n.startswith("model") for n in names)  # never the base weights
    state = json.loads((ckpt / "jola_trainer_state.json").read_text())
    assert state["scheduler"] == {"name": "expon", "step": 4, "total_steps": 4}
    # step 4 was the last evaluation, so the checkpoint's best is the run's best, and its tensors are
    # the adapter restored at the end
    assert state["best"] == tr.best and state["bad_evals"] == tr._bad_evals
    best = load_safetensors(ckpt / "jola_best.safetensors")
    final = jola_state_dict(tr.model)
    assert set(best) == set(final) and all(torch.equal(best[k], final[k]) for k in final)


class _SpoilAfter(TrainerCallback):
    """Records the adapter after optimizer step `keep`, and wrecks it after step `at` (every additive
    gate forced open onto a large v), so every later evaluation is worse than the one at `keep`."""

    def __init__(self, model, keep, at):
        self.model, self.keep, self.at, self.kept = model, keep, at, None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.keep:
            self.kept = {k: v.clone() for k, v in jola_state_dict(self.model).items()}
        if state.global_step == self.at:
            with torch.no_grad():
                for e in jola_edits(self.model).values():
                    e.attn_v.fill_(3.0)
                    e.log_g1.fill_(10.0)


def test_early_stopping_restores_the_best_step_not_the_last(tmp_path, zoo_tokenizer):
    tr = _trainer(tmp_path, zoo_tokenizer, max_steps=20, eval_steps=2, early_stopping_patience=2)
    spoil = _SpoilAfter(tr.model, keep=2, at=3)
    tr.add_callback(spoil)
    out = tr.train()
    assert out.global_step == 6  # evaluations at 4 and 6 did not improve on step 2: patience 2
    assert tr.best["step"] == 2
    final = jola_state_dict(tr.model)
    assert all(torch.equal(final[k], spoil.kept[k]) for k in final)  # step 2's adapter, restored
    assert tr.evaluate()["eval_loss"] == pytest.approx(tr.best["eval_loss"], rel=1e-6)


class _CloseAllGates(TrainerCallback):
    """After optimizer step `at`, every gate is shut (log-alpha -20: the edit is the identity and
    the penalty 0), so from then on the eval loss is the base model's."""

    def __init__(self, model, at):
        self.model, self.at = model, at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            with torch.no_grad():
                for e in jola_edits(self.model).values():
                    e.log_g1.fill_(-20.0)
                    e.log_g2.fill_(-20.0)


class _Objectives(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self.seen.append((state.global_step, metrics["eval_loss"], metrics["eval_objective"]))


def test_best_step_is_chosen_by_the_validation_objective(tmp_path, zoo_tokenizer):
    """The best adapter is the one with the lowest eval loss + gate penalty (what training
    minimizes), not the lowest eval loss: with a strong penalty, the open-gated steps before every
    gate is shut cost ~lambda per open gate, so the shut (identity) steps win whatever their loss."""
    settings = JoLASettings(gate_scheduler="constant", gate_lambda=1.0)
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model, settings)
    tr = _trainer(tmp_path, zoo_tokenizer, model=model, settings=settings, max_steps=6)
    record = _Objectives()
    tr.add_callback(_CloseAllGates(tr.model, at=3))
    tr.add_callback(record)
    tr.train()
    steps = {step: (loss, obj) for step, loss, obj in record.seen}
    assert set(steps) == {2, 4, 6}
    for step, (loss, obj) in steps.items():
        assert obj >= loss and (obj - loss > 1.0) == (step == 2)  # 16 gates open at step 2
    assert tr.best["step"] == min(steps, key=lambda s: (steps[s][1], s))
    assert tr.best["step"] in (4, 6)
    assert tr.best["objective"] == pytest.approx(steps[tr.best["step"]][1])
    assert tr.best["eval_loss"] == pytest.approx(steps[tr.best["step"]][0])
