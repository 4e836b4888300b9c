"""A JoLA run killed with SIGKILL after a checkpoint and resumed with ``--resume`` ends with adapter
tensors bit-identical to an uninterrupted run with the same seed (CPU); resuming with another config
and clobbering an existing run are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from olmokit.cli.main import main
from olmokit.jola import read_adapter

# Early stopping, the perform scheduler (which reacts to evaluations) and an evaluation at every
# checkpoint: the JoLA trainer state beyond Trainer's own must survive the kill too.
CONFIG = """\
model_config:
  pretrained_model_name_or_path: olmo2-tiny-random
  device: cpu
training_config:
  learning_rate: 0.02
  per_device_train_batch_size: 4
  max_steps: 6
  warmup_steps: 1
  eval_strategy: steps
  eval_steps: 2
  save_steps: 2
  save_total_limit: 5
  logging_steps: 1
  early_stopping_patience: 3
  disable_tqdm: true
jola_config:
  gate_scheduler: perform
  gate_lambda: 0.01
data_config:
  task: stdlib_module
  train_size: 24
  eval_size: 8
  max_seq_length: 256
"""


#: runs the CLI with every JoLA trainer sleeping after a given optimizer step (the victim's driver)
HANG_DRIVER = Path(__file__).with_name("hang_after_step.py")


def _cmd(config: Path, out: Path, *flags: str, hang_after: int | None = None) -> list[str]:
    entry = (
        ["-m", "olmokit.cli.main"] if hang_after is None else [str(HANG_DRIVER), str(hang_after)]
    )
    return [sys.executable, *entry, "jola", "train", str(config),
            f"training_config.output_dir={out}", "--no-eval", *flags]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, *sys.path]))
    env.update(extra)
    return env


@pytest.fixture
def start():
    """Start a training subprocess; any still running at teardown (a failed test) is killed."""
    procs: list[subprocess.Popen] = []

    def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait(proc: subprocess.Popen, what: str) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"


@pytest.fixture
def config(tmp_path) -> Path:
    p = tmp_path / "resume.yaml"
    p.write_text(CONFIG)
    return p


def test_sigkill_then_resume_is_bit_identical(tmp_path, config, start):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    # the uninterrupted reference and the run to be killed, side by side
    ref = start(_cmd(config, ref_dir), _env())
    # this one sleeps after optimizer step 3, i.e. after checkpoint-2 and before checkpoint-4
    victim = start(_cmd(config, run_dir, hang_after=3), _env())
    done = run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while not done.is_file():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint-2 within 120 s"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert (
        not (run_dir / "adapter").exists()
        and not (run_dir / "checkpoints" / "checkpoint-4").exists()
    )

    resumed = start(_cmd(config, run_dir, "--resume"), _env())
    _wait(ref, "reference run")
    _wait(resumed, "resumed run")

    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "checkpoint-2")
    want = json.loads((ref_dir / "eval.json").read_text())
    assert want["resumed_from"] is None
    assert summary["global_step"] == want["global_step"] == 6
    assert summary["best"] == want["best"]  # same best eval loss at the same step
    _, got_t = read_adapter(run_dir / "adapter")
    _, want_t = read_adapter(ref_dir / "adapter")
    assert sorted(got_t) == sorted(want_t)
    for k in want_t:
        assert torch.equal(got_t[k], want_t[k]), k
    # the trained adapter really moved away from its initialisation (not trivially equal)
    _, first = read_adapter(run_dir / "checkpoints" / "checkpoint-2")
    assert any(not torch.equal(first[k], want_t[k]) for k in want_t)
    env = json.loads((run_dir / "environment.json").read_text())
    assert [s["resumed"] for s in env["starts"]] == [False, True]


def test_refuses_other_config_and_clobbering(tmp_path, config, capsys):
    out = tmp_path / "run"

    def train(*overrides_and_flags: str) -> int:
        return main(["jola", "train", str(config), f"training_config.output_dir={out}",
                     *overrides_and_flags, "--no-eval"])  # fmt: skip

    assert train("training_config.max_steps=2") == 0
    capsys.readouterr()
    assert train("training_config.max_steps=2") == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    assert train("training_config.max_steps=3", "jola_config.gate_lambda=0.5", "--resume") == 2
    err = capsys.readouterr().err
    assert "different config" in err
    assert "training_config.max_steps: saved 2, now 3" in err
    assert "jola_config.gate_lambda: saved 0.01, now 0.5" in err
    assert train("training_config.max_steps=3", "--overwrite") == 0
    assert json.loads((out / "eval.json").read_text())["global_step"] == 3
