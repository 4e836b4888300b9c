"""Run directories: resolved config, environment record, refusal to clobber or mix runs, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from pydantic import Field

from olmokit.config import OlmokitConfig
from olmokit.errors import ReportError
from olmokit.runs import RunDir, config_differences, json_safe


class _Inner(OlmokitConfig):
    lr: float = 1e-3
    steps: int = 10


class _Cfg(OlmokitConfig):
    name: str = "tiny"
    inner: _Inner = Field(default_factory=_Inner)
    out: str = "runs/x"


def test_new_run_writes_resolved_config_and_environment(tmp_path):
    run = RunDir.create(tmp_path / "r", _Cfg(name="a"), tool="test", seed=7)
    assert run.resumed is False
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    # every default is filled in, not only the keys the user gave
    assert saved == {"name": "a", "inner": {"lr": 1e-3, "steps": 10}, "out": "runs/x"}
    env = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert env["tool"] == "test"
    assert env["seed"] == 7
    assert env["torch"] == torch.__version__
    assert len(env["starts"]) == 1 and env["starts"][0]["resumed"] is False


def test_existing_run_is_not_overwritten_without_flag(tmp_path):
    run = RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    run.write_json("eval.json", {"acc": 0.5})
    with pytest.raises(ReportError, match="--resume .*--overwrite"):
        RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    assert run.read_json("eval.json") == {"acc": 0.5}


def test_overwrite_removes_old_outputs(tmp_path):
    run = RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    run.write_json("eval.json", {"acc": 0.5})
    run2 = RunDir.create(tmp_path / "r", _Cfg(name="b"), tool="test", overwrite=True)
    assert not run2.exists("eval.json")
    assert yaml.safe_load(run2.config_path.read_text())["name"] == "b"


def test_resume_same_config_appends_a_start(tmp_path):
    RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    run = RunDir.create(tmp_path / "r", _Cfg(), tool="test", resume=True)
    assert run.resumed is True
    env = run.read_json("environment.json")
    assert [s["resumed"] for s in env["starts"]] == [False, True]


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    changed = _Cfg(name="other", inner=_Inner(lr=0.5))
    with pytest.raises(ReportError) as err:
        RunDir.create(tmp_path / "r", changed, tool="test", resume=True)
    msg = str(err.value)
    assert "2 keys differ" in msg
    assert "inner.lr: saved 0.001, now 0.5" in msg
    assert "name: saved 'tiny', now 'other'" in msg
    # an ignored key (e.g. the output path) does not block a resume
    RunDir.create(
        tmp_path / "r", _Cfg(out="elsewhere"), tool="test", resume=True, ignore_on_resume=["out"]
    )
    with pytest.raises(ReportError, match=r"\(1 key differs: name: saved 'tiny', now 'x'\)"):
        RunDir.create(tmp_path / "r", _Cfg(name="x"), tool="test", resume=True)


def test_resume_on_an_empty_directory_starts_fresh(tmp_path):
    run = RunDir.create(tmp_path / "new", _Cfg(), tool="test", resume=True)
    assert run.resumed is False
    assert run.config_path.is_file()


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="no config.yaml"):
        RunDir.create(tmp_path / "r", _Cfg(), tool="test", resume=True)
    with pytest.raises(ReportError, match="exclude each other"):
        RunDir.create(tmp_path / "r", _Cfg(), tool="test", resume=True, overwrite=True)


def test_json_outputs_are_standard_json(tmp_path):
    run = RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    path = run.write_json(
        "report.json",
        {
            "best": math.inf,
            "worst": -math.inf,
            "nan": math.nan,
            "t": torch.tensor([1.5, 2.0]),
            "p": tmp_path,
        },
    )
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {
        "best": None,
        "worst": None,
        "nan": None,
        "t": [1.5, 2.0],
        "p": str(tmp_path),
    }
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_last_checkpoint_skips_incomplete_ones(tmp_path):
    run = RunDir.create(tmp_path / "r", _Cfg(), tool="test")
    assert run.last_checkpoint() is None
    for step in (2, 10, 4):
        d = run.checkpoints / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text("{}")
    (run.checkpoints / "checkpoint-12").mkdir()  # killed while writing: no trainer_state.json
    (run.checkpoints / "notes").mkdir()
    assert run.last_checkpoint().name == "checkpoint-10"


def test_config_differences_handles_nested_additions():
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == [
        "a.c: not in the saved config, now 2"
    ]
    assert json_safe({"x": (1, float("nan"))}) == {"x": [1, None]}


def test_config_differences_names_the_field_inside_a_list_of_sections():
    saved = {"jobs": [{"kind": "a", "seq_len": 8}, {"kind": "b"}], "layers": [0, 1]}
    now = {"jobs": [{"kind": "a", "seq_len": 16}, {"kind": "b"}], "layers": [0, 2]}
    assert config_differences(saved, now) == [
        "jobs.0.seq_len: saved 8, now 16",
        "layers: saved [0, 1], now [0, 2]",
    ]


def test_only_the_main_process_creates_the_run(tmp_path, monkeypatch):
    """Other ranks of a distributed launch get a handle but write nothing (rank 0 checks and
    creates the directory); rank 0 (or no launcher) behaves exactly like ``create``."""
    monkeypatch.setenv("RANK", "1")
    other = RunDir.create_on_main_process(tmp_path / "r", _Cfg(), tool="test", resume=True)
    assert other.path == tmp_path / "r" and other.resumed is True
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("RANK", "0")
    main = RunDir.create_on_main_process(tmp_path / "r", _Cfg(), tool="test", seed=3)
    assert main.resumed is False
    assert (tmp_path / "r" / "config.yaml").is_file()
    with pytest.raises(ReportError, match="--resume"):
        RunDir.create_on_main_process(tmp_path / "r", _Cfg(), tool="test")
