"""A merge killed with SIGKILL (in a subprocess) and resumed ends with a model bit-identical to an
uninterrupted run with the same seed — killed after the first layer decision, and inside an ES
evaluation of the tensor phase; a corrupt or foreign report, a changed pool or a changed config is
refused, and nothing is overwritten without --overwrite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from merge_helpers import make_pool, write_sharegpt

from olmokit.errors import ReportError
from olmokit.merge.config import MergeConfig
from olmokit.merge.report import load_report
from olmokit.merge.run import run_merge

#: runs the CLI pausing at a given report write or evaluation (the victim's driver)
PAUSE_DRIVER = Path(__file__).with_name("pause_merge.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    pool = make_pool(root / "pool", seeds=(0, 1, 2))
    a = write_sharegpt(root / "prose.jsonl")
    b = write_sharegpt(root / "code.jsonl")
    config = {
        "models": pool,
        "datasets": [
            {"path": str(a), "mode": "bigram_loss", "samples": 4},
            {"path": str(b), "mode": "nll", "samples": 4},
        ],
        "layer_swap": True,
        "tensor_swap": True,
        "es_svd": True,
        "es_svd_generations": 2,
        "es_lambda": 4,
        "batch_size": 4,
        "seed": 3,
        "output_dir": str(root / "unused"),
    }
    path = root / "merge.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return root, path, config


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _victim(config: Path, out: Path, point: str, n: int, marker: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(PAUSE_DRIVER), point, str(n), str(marker),
           "merge", "run", str(config), f"output_dir={out}", "--no-progress"]  # fmt: skip
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _kill_when_paused(proc: subprocess.Popen, marker: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"victim exited early ({proc.returncode}): {proc.stderr.read()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError("victim never reached its pause point")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / "model" / "model.safetensors"))


def _decisions(report: dict) -> list:
    return [
        (d["step"], d["target"], d["winner"], d["es"], d["metrics"])
        for d in [*report["layers"].values(), *report["units"].values()]
    ]


def test_sigkill_resume_is_bit_identical(setup, one_thread):
    root, config_path, data = setup
    after_layer = _victim(config_path, root / "killed1", "decision", 2, root / "m1")
    in_es = _victim(config_path, root / "killed2", "evaluation", 40, root / "m2")
    try:
        reference = run_merge(
            MergeConfig.from_dict({**data, "output_dir": str(root / "ref")}), progress=False
        ).path
        _kill_when_paused(after_layer, root / "m1")
        _kill_when_paused(in_es, root / "m2")
    finally:
        for p in (after_layer, in_es):
            if p.poll() is None:
                p.kill()
                p.wait()
    ref_report = load_report(reference)
    ref_tensors = _tensors(reference)
    # the reference really did swap layers/units and accept ES steps
    assert any(d["changed"] for d in ref_report["layers"].values())
    assert any(d["es"] for d in ref_report["units"].values())

    # killed right after the first layer decision was written
    killed = load_report(root / "killed1")
    assert killed["status"] == "running" and list(killed["layers"]) == ["0"]
    assert not (root / "killed1" / "model").exists()
    # killed inside an evaluation of the tensor phase (ES on), some units already decided
    killed = load_report(root / "killed2")
    assert len(killed["layers"]) == 2 and 1 <= len(killed["units"]) < len(ref_report["units"])

    # resume 1 through the CLI (a fresh process), resume 2 in this process
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmokit.cli.main",
            "merge",
            "run",
            str(config_path),
            f"output_dir={root / 'killed1'}",
            "--resume",
            "--no-progress",
        ],  # fmt: skip
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    run_merge(
        MergeConfig.from_dict({**data, "output_dir": str(root / "killed2")}),
        resume=True,
        progress=False,
    )
    for name in ("killed1", "killed2"):
        tensors = _tensors(root / name)
        assert set(tensors) == set(ref_tensors)
        for key, value in ref_tensors.items():
            assert torch.equal(tensors[key], value), (name, key)
        report = load_report(root / name)
        assert report["status"] == "complete"
        assert _decisions(report) == _decisions(ref_report)


@pytest.fixture(scope="module")
def small_run(setup):
    """A fast complete run (layers only) whose directory the refusal tests copy."""
    root, _, data = setup
    cfg = {**data, "tensor_swap": False, "es_svd": False, "output_dir": str(root / "small")}
    return run_merge(MergeConfig.from_dict(cfg), progress=False).path, cfg


def _copy(small_run, tmp_path) -> tuple[Path, dict]:
    src, cfg = small_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, {**cfg, "output_dir": str(dst)}


def test_existing_run_is_never_overwritten_without_flag(small_run, tmp_path):
    run, cfg = _copy(small_run, tmp_path)
    before = (run / "merge_report.json").read_bytes()
    with pytest.raises(ReportError, match="--resume.*--overwrite"):
        run_merge(MergeConfig.from_dict(cfg), progress=False)
    assert (run / "merge_report.json").read_bytes() == before
    # a resume of a complete run changes nothing
    stamp = (run / "model" / "model.safetensors").stat().st_mtime_ns
    run_merge(MergeConfig.from_dict(cfg), resume=True, progress=False)
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (run / "merge_report.json").read_bytes() == before


def test_resume_refuses_a_changed_config(small_run, tmp_path):
    run, cfg = _copy(small_run, tmp_path)
    with pytest.raises(ReportError, match="epsilon: saved 0.0, now 0.1"):
        run_merge(MergeConfig.from_dict({**cfg, "epsilon": 0.1}), resume=True, progress=False)


def test_resume_refuses_a_changed_candidate_batch(small_run, tmp_path):
    """Grouped scores may differ from one-by-one ones in the last float32 bit (BLAS kernels chosen
    by shape), so a resume must group candidates as the run did: the key is part of the hash."""
    run, cfg = _copy(small_run, tmp_path)
    before = (run / "merge_report.json").read_bytes()
    with pytest.raises(ReportError, match="candidate_batch: saved 8, now 1"):
        run_merge(MergeConfig.from_dict({**cfg, "candidate_batch": 1}), resume=True, progress=False)
    assert (run / "merge_report.json").read_bytes() == before


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"schema_version": 1, "tool": "olmokit.merge", "layers": {"0": ', "corrupt"),
        (json.dumps({"test": {"base": {"acc": 0.5}}}), "not an olmokit merge report"),
    ],
    ids=["corrupt", "foreign"],
)
def test_resume_refuses_a_corrupt_or_foreign_report(small_run, tmp_path, content, match):
    run, cfg = _copy(small_run, tmp_path)
    (run / "merge_report.json").write_text(content, encoding="utf-8")
    with pytest.raises(ReportError, match=match):
        run_merge(MergeConfig.from_dict(cfg), resume=True, progress=False)
    assert (run / "merge_report.json").read_text(encoding="utf-8") == content


def test_resume_refuses_a_report_of_another_config(small_run, tmp_path):
    run, cfg = _copy(small_run, tmp_path)
    report = json.loads((run / "merge_report.json").read_text(encoding="utf-8"))
    report["config_hash"] = "0" * 64
    (run / "merge_report.json").write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(ReportError, match="different merge config"):
        run_merge(MergeConfig.from_dict(cfg), resume=True, progress=False)


def test_resume_refuses_a_changed_pool(setup, tmp_path):
    root, _, data = setup
    pool = [str(tmp_path / Path(p).name) for p in data["models"]]
    for src, dst in zip(data["models"], pool):
        shutil.copytree(src, dst)
    cfg = {**data, "models": pool, "tensor_swap": False, "es_svd": False,
           "output_dir": str(tmp_path / "run")}  # fmt: skip
    run_merge(MergeConfig.from_dict(cfg), progress=False)
    report = (tmp_path / "run" / "merge_report.json").read_text(encoding="utf-8")
    # member 1 retrained: same tensor names and shapes, other values
    make_pool(tmp_path / "other", seeds=(9,))
    shutil.copy(
        tmp_path / "other" / "m9" / "model.safetensors", Path(pool[1]) / "model.safetensors"
    )
    with pytest.raises(ReportError, match=f"pool model '{pool[1]}' changed"):
        run_merge(MergeConfig.from_dict(cfg), resume=True, progress=False)
    assert (tmp_path / "run" / "merge_report.json").read_text(encoding="utf-8") == report
