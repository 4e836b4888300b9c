"""Two-process DDP memory training on CPU (gloo) through `accelerate launch` (opt-in: slow on 2 cores).

Run with ``OLMOKIT_DDP_TEST=1 pytest tests/memory/test_memory_ddp.py``; the command is the one in
docs/memory.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from common import random_tokens

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OLMOKIT_DDP_TEST") != "1", reason="set OLMOKIT_DDP_TEST=1"),
]

SEG = 8


def test_accelerate_two_processes(tmp_path):
    launcher = shutil.which("accelerate")
    assert launcher, "accelerate is a dependency of olmokit"
    data = tmp_path / "rows.jsonl"
    rows = random_tokens(16, 3 * SEG, 4096, seed=7)
    data.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
    out = tmp_path / "ddp"
    cmd = [
        launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "olmokit.cli.main", "memory", "train",
        "model.name=olmo2-tiny-random", "model.device=cpu",
        "memory.memory_layers=[1]", "memory.mode=mac", f"memory.segment_len={SEG}",
        "memory.persistent_tokens=2", "memory.heads=2", "memory.hidden=16",
        "memory.chunk_train=4", "memory.chunk_prefill=4", "memory.chunk_decode=4",
        f"training.output_dir={out}", "training.max_steps=4", "training.save_steps=2",
        "training.per_device_train_batch_size=2", "training.disable_tqdm=true",
        "data.source=file", f"data.train_file={data}", f"data.seq_len={3 * SEG}",
        "--no-eval",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert (out / "adapter" / "memory_adapter.safetensors").is_file()
    assert json.loads((out / "environment.json").read_text())["tool"] == "memory"
    names = {p.name for p in (out / "checkpoints" / "checkpoint-4").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "memory_adapter.safetensors"} <= names
