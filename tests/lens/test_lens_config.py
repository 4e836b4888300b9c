"""Lens config: job kinds as a tagged union, unknown keys and kinds named, empty prompts refused."""

from __future__ import annotations

import pytest

from olmokit.errors import ConfigError
from olmokit.lens.config import JOB_CLASSES, JOB_KINDS, LensConfig


def _one(job: dict) -> LensConfig:
    return LensConfig.from_dict({"jobs": [job]}, source="lens.yaml")


def test_every_kind_parses_with_defaults_and_gets_a_name():
    config = LensConfig.from_dict({"jobs": [{"kind": k} for k in JOB_KINDS]})
    assert tuple(JOB_CLASSES) == JOB_KINDS
    assert [type(j) for j in config.jobs] == [JOB_CLASSES[k] for k in JOB_KINDS]
    assert config.job_names() == [f"{i}_{k}" for i, k in enumerate(JOB_KINDS)]
    assert config.model.name == "olmo2-stdlib" and config.output_dir == "runs/lens"


def test_round_trips_through_yaml(tmp_path):
    config = LensConfig.from_dict({"jobs": [{"kind": k} for k in JOB_KINDS]})
    path = tmp_path / "c.yaml"
    config.to_yaml(path)
    assert LensConfig.from_yaml(path) == config


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        _one({"kind": "probe"})
    assert str(exc.value) == (
        "lens.yaml: jobs[0]: unknown kind 'probe'; valid kinds: "
        "logit_lens, patching, attribution, head_scores, attention_pattern"
    )


def test_unknown_job_key_lists_that_jobs_keys():
    with pytest.raises(ConfigError) as exc:
        LensConfig.from_dict({"jobs": [{"kind": "logit_lens"}, {"kind": "patching", "promt": "x"}]})
    assert str(exc.value) == (
        "jobs[1] (patching): unknown key 'promt'; valid keys here: "
        "answer, clean, corrupted, kind, name, patches, wrong"
    )


def test_unknown_model_key_lists_the_model_keys():
    with pytest.raises(ConfigError, match="unknown key 'model.nme'; valid keys here: "):
        LensConfig.from_dict({"model": {"nme": "x"}, "jobs": [{"kind": "logit_lens"}]})


@pytest.mark.parametrize(
    "job,field",
    [
        ({"kind": "logit_lens", "prompt": ""}, "prompt"),
        ({"kind": "patching", "clean": ""}, "clean"),
        ({"kind": "patching", "corrupted": ""}, "corrupted"),
        ({"kind": "patching", "answer": ""}, "answer"),
        ({"kind": "patching", "wrong": ""}, "wrong"),
        ({"kind": "attribution", "prompt": ""}, "prompt"),
        ({"kind": "attribution", "answer": ""}, "answer"),
        ({"kind": "attention_pattern", "prompt": ""}, "prompt"),
    ],
)
def test_empty_prompt_is_a_config_error(job, field):
    with pytest.raises(ConfigError) as exc:
        _one(job)
    assert f"jobs.0.{job['kind']}.{field}: is empty; give the text" in str(exc.value)


def test_whitespace_prompt_is_allowed():
    """An indent or a newline is a meaningful start for code (as for ``zoo generate``)."""
    assert _one({"kind": "logit_lens", "prompt": "\n    "}).jobs[0].prompt == "\n    "


@pytest.mark.parametrize(
    "job,message",
    [
        ({"kind": "attention_pattern", "layer": 1}, "give both layer and head, or neither"),
        ({"kind": "attention_pattern", "head": 1}, "give both layer and head, or neither"),
        ({"kind": "head_scores", "seq_len": 1}, "greater than or equal to 2"),
        ({"kind": "patching", "patches": []}, "at least 1 item"),
        ({"kind": "patching", "patches": ["z"]}, "jobs.0.patching.patches.0"),
        ({"kind": "logit_lens", "name": "a/b"}, "plain file-name stem"),
        ({"kind": "logit_lens", "top_k": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_values_are_named(job, message):
    with pytest.raises(ConfigError, match=message):
        _one(job)


def test_job_names_must_be_unique():
    jobs = [{"kind": "logit_lens", "name": "x"}, {"kind": "head_scores", "name": "x"}]
    with pytest.raises(ConfigError, match=r"job names must be unique; repeated: \['x'\]"):
        LensConfig.from_dict({"jobs": jobs})
    # a default name cannot collide with an explicit one by accident of index
    jobs = [{"kind": "logit_lens"}, {"kind": "logit_lens", "name": "0_logit_lens"}]
    with pytest.raises(ConfigError, match="repeated"):
        LensConfig.from_dict({"jobs": jobs})


def test_jobs_are_required():
    with pytest.raises(ConfigError, match="jobs: Field required"):
        LensConfig.from_dict({})
    with pytest.raises(ConfigError, match="at least 1 item"):
        LensConfig.from_dict({"jobs": []})


def test_overrides_reach_the_model_and_output(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("jobs:\n  - kind: head_scores\n")
    config = LensConfig.from_yaml(path, ["model.device=auto", "output_dir=somewhere"])
    assert config.model.device == "auto" and config.output_dir == "somewhere"
