"""run_memory: the run directory, evaluation, data errors, and a SIGKILLed run resumed with
``--resume`` ending bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from common import random_tokens

from olmokit.cli.main import main
from olmokit.errors import DataError
from olmokit.inject import read_adapter
from olmokit.memory import ADAPTER_FORMAT, MemoryConfig
from olmokit.memory.run import run_memory

SEG = 8


def write_rows(path: Path, n: int, length: int, seed: int) -> Path:
    ids = random_tokens(n, length, 4096, seed=seed)
    path.write_text("".join(json.dumps({"input_ids": row.tolist()}) + "\n" for row in ids))
    return path


@pytest.fixture
def config_file(tmp_path) -> Path:
    train = write_rows(tmp_path / "train.jsonl", 16, 3 * SEG, seed=1)
    valid = write_rows(tmp_path / "valid.jsonl", 4, 3 * SEG, seed=2)
    text = f"""\
model:
  name: olmo2-tiny-random
  device: cpu
memory:
  memory_layers: [1]
  mode: mac
  segment_len: {SEG}
  persistent_tokens: 2
  heads: 2
  hidden: 16
  chunk_train: 4
  chunk_prefill: 4
  chunk_decode: 4
training:
  learning_rate: 0.01
  per_device_train_batch_size: 4
  max_steps: 6
  save_steps: 2
  save_total_limit: 5
  logging_steps: 1
  disable_tqdm: true
data:
  source: file
  train_file: {train}
  eval_file: {valid}
  seq_len: {3 * SEG}
"""
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_run_writes_adapter_and_evaluation(tmp_path, config_file):
    cfg = MemoryConfig.from_yaml(config_file, [f"training.output_dir={tmp_path / 'run'}"])
    run = run_memory(cfg, progress=False)
    summary = run.read_json("eval.json")
    assert summary["global_step"] == 6 and summary["segment_len"] == SEG
    ev = summary["eval"]
    assert ev["n"] == 4 and ev["start"] == SEG
    # the memory is trained (no longer the identity) and the reset control differs from it
    assert (
        ev["memory"]["loss"] != ev["base"]["loss"] and ev["memory"]["loss"] != ev["reset"]["loss"]
    )
    diff = ev["memory"]["loss"] - ev["base"]["loss"]
    assert ev["memory_minus_base"] == pytest.approx(diff)
    meta, tensors = read_adapter(run.path / "adapter", ADAPTER_FORMAT)
    assert meta["memory"]["mode"] == "mac" and meta["summary"]["global_step"] == 6
    assert sum(t.numel() for t in tensors.values()) == summary["memory_parameters"]
    assert (run.path / "config.yaml").is_file() and (run.path / "environment.json").is_file()


def test_data_errors_come_before_the_run_directory(tmp_path, config_file):
    out = tmp_path / "never"
    cfg = MemoryConfig.from_yaml(
        config_file, [f"training.output_dir={out}", "data.train_file=missing.jsonl"]
    )
    with pytest.raises(DataError, match="data file not found: missing.jsonl"):
        run_memory(cfg, progress=False)
    cfg = MemoryConfig.from_yaml(config_file, [f"training.output_dir={out}", "data.seq_len=100"])
    with pytest.raises(DataError, match="24 tokens, data.seq_len is 100"):
        run_memory(cfg, progress=False)
    assert not out.exists()


HANG_DRIVER = Path(__file__).with_name("hang_memory_after_step.py")


def _cmd(config: Path, out: Path, *flags: str, hang_after: int | None = None) -> list[str]:
    entry = (
        ["-m", "olmokit.cli.main"] if hang_after is None else [str(HANG_DRIVER), str(hang_after)]
    )
    return [sys.executable, *entry, "memory", "train", str(config),
            f"training.output_dir={out}", "--no-eval", *flags]  # fmt: skip


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, *sys.path]))


@pytest.fixture
def start():
    """Start a training subprocess; any still running at teardown (a failed test) is killed."""
    procs: list[subprocess.Popen] = []

    def _start(cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"


def test_sigkill_then_resume_is_bit_identical(tmp_path, config_file, start):
    """Every run is a fresh interpreter (as a user's would be): the reference runs beside the victim,
    the resumed run after the kill. (In-process runs after the rest of the suite can differ from a
    fresh process in the last bit, which is not what this test is about.)"""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = start(_cmd(config_file, ref_dir))
    victim = start(_cmd(config_file, run_dir, hang_after=3))  # after checkpoint-2, before -4
    done = run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 180
    while not done.is_file():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint-2 within 180 s"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter").exists()
    resumed = start(_cmd(config_file, run_dir, "--resume"))
    _wait(ref, "reference run")
    _wait(resumed, "resumed run")
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "checkpoint-2")
    assert summary["global_step"] == 6
    _, got = read_adapter(run_dir / "adapter", ADAPTER_FORMAT)
    _, want = read_adapter(ref_dir / "adapter", ADAPTER_FORMAT)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    _, first = read_adapter(run_dir / "checkpoints" / "checkpoint-2", ADAPTER_FORMAT)
    assert any(not torch.equal(first[k], want[k]) for k in want)  # training moved on after step 2
    env = json.loads((run_dir / "environment.json").read_text())
    assert [s["resumed"] for s in env["starts"]] == [False, True]


def test_refuses_other_config_and_clobbering(tmp_path, config_file, capsys):
    out = tmp_path / "run"

    def train(*overrides: str, flag: str | None = None) -> int:
        return main(["memory", "train", str(config_file), f"training.output_dir={out}",
                     "training.max_steps=2", *overrides, "--no-eval",
                     *([flag] if flag else [])])  # fmt: skip

    assert train() == 0
    capsys.readouterr()
    assert train() == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err
    assert train("memory.max_lr=0.5", flag="--resume") == 2
    assert "memory.max_lr: saved 0.1, now 0.5" in capsys.readouterr().err
    assert train(flag="--overwrite") == 0
