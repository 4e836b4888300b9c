"""Two-process DDP training on CPU through `accelerate launch` (opt-in: ~40 s on 2 cores).

Run with ``OLMOKIT_DDP_TEST=1 pytest tests/jola/test_jola_distributed.py``; the command is the one
documented in docs/jola.md.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OLMOKIT_DDP_TEST") != "1", reason="set OLMOKIT_DDP_TEST=1"),
]


def test_accelerate_two_processes(tmp_path):
    launcher = shutil.which("accelerate")
    assert launcher, "accelerate is a dependency of olmokit"
    out = tmp_path / "ddp"
    cmd = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "olmokit.cli.main",
        "jola",
        "train",
        "configs/jola/tiny.yaml",
        f"training_config.output_dir={out}",
        "training_config.max_steps=4",
        "training_config.eval_steps=2",
        "training_config.disable_tqdm=true",
        "training_config.save_steps=2",
        "data_config.train_size=32",
        "data_config.eval_size=8",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert (out / "adapter" / "jola_adapter.safetensors").is_file()
    # one run directory, written by the main process; checkpoints hold both ranks' RNG states
    assert json.loads((out / "environment.json").read_text())["tool"] == "jola"
    ckpt = out / "checkpoints" / "checkpoint-4"
    names = {p.name for p in ckpt.iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "jola_trainer_state.json"} <= names
    assert {"jola_adapter.safetensors", "trainer_state.json", "optimizer.pt"} <= names
