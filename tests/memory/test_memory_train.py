"""Training with HF Trainer: memory-only checkpoints, exact resume, the finite-loss guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
from common import random_tokens
from transformers import TrainerCallback

from olmokit.errors import DataError
from olmokit.inject import TrainingDivergedError
from olmokit.memory import MemorySettings, TrainingSection, attach_memory, load_memory
from olmokit.memory.train import SequenceCollator, train_memory
from olmokit.zoo.presets import random_model

SEG = 8


def make(mode: str = "mag"):
    model = random_model("olmo2", "tiny", seed=0)
    s = MemorySettings(memory_layers=[1], mode=mode, segment_len=SEG, chunk_train=4,
                       chunk_prefill=4, heads=2, hidden=16)  # fmt: skip
    return attach_memory(model, s)


def dataset(n: int = 16, length: int = 3 * SEG) -> list[dict[str, torch.Tensor]]:
    ids = random_tokens(n, length, 4096, seed=3)
    return [{"input_ids": row} for row in ids]


def section(**kw) -> TrainingSection:
    base = dict(max_steps=4, per_device_train_batch_size=4, learning_rate=0.01, logging_steps=1,
                save_steps=None, disable_tqdm=True, seed=1)  # fmt: skip
    return TrainingSection(**{**base, **kw})


def test_trains_only_the_memory_and_checkpoints_hold_only_the_adapter(tmp_path):
    mm = make()
    base_before = {k: v.clone() for k, v in mm.model.state_dict().items() if ".memory." not in k}
    args = section(save_steps=2, eval_strategy="steps", eval_steps=2)
    summary = train_memory(mm, dataset(), dataset(4), args=args, output_dir=tmp_path)
    assert summary["global_step"] == 4 and summary["world_size"] == 1
    history = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    evals = [h["eval_loss"] for h in history["log_history"] if "eval_loss" in h]
    assert len(evals) == 2 and all(math.isfinite(e) for e in evals)
    gate = mm.memory_layers[1].mem_gate
    assert gate.abs().sum() > 0  # moved away from the identity init
    after = mm.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    ckpt = tmp_path / "checkpoint-4"
    names = {p.name for p in ckpt.iterdir()}
    assert {"memory_adapter.safetensors", "memory_config.json", "optimizer.pt"} <= names
    assert not any(n.startswith("model") for n in names)  # no base weights
    # the checkpoint's adapter loads onto a fresh base and reproduces the trained memory
    again = load_memory(random_model("olmo2", "tiny", seed=0), ckpt)
    assert torch.equal(again.memory_layers[1].mem_gate, gate.detach())


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    ref = make()
    train_memory(ref, dataset(), args=section(save_steps=2), output_dir=tmp_path / "a")
    resumed = make()
    train_memory(
        resumed,
        dataset(),
        args=section(save_steps=2),
        output_dir=tmp_path / "b",
        resume_from_checkpoint=tmp_path / "a" / "checkpoint-2",
    )
    want, got = ref.memory_state_dict(), resumed.memory_state_dict()
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[k], got[k]) for k in want)


class _PoisonAfter(TrainerCallback):
    """Sets a memory gate to NaN when the step after ``step`` begins, so that step's loss is NaN."""

    def __init__(self, mm, step: int):
        self.mm, self.step = mm, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                self.mm.memory_layers[1].mem_gate.fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_memory(tmp_path):
    mm = make()
    with pytest.raises(TrainingDivergedError, match="non-finite loss .* optimizer step 3") as info:
        train_memory(
            mm, dataset(), args=section(), output_dir=tmp_path, callbacks=[_PoisonAfter(mm, 2)]
        )
    assert "from optimizer step 2" in str(info.value)
    gate = mm.memory_layers[1].mem_gate
    assert bool(torch.isfinite(gate).all()) and gate.abs().sum() > 0
    saved = load_memory(random_model("olmo2", "tiny", seed=0), tmp_path / "last_good")
    assert torch.equal(saved.memory_layers[1].mem_gate, gate.detach())


def test_collator_refuses_ragged_rows_and_defaults_labels():
    c = SequenceCollator()
    batch = c([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6], "labels": [-100, 5, 6]}])
    assert batch["labels"].tolist() == [[1, 2, 3], [-100, 5, 6]]
    with pytest.raises(DataError, match=r"one length; this batch has \[2, 3\]"):
        c([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
