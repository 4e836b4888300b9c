"""MergeConfig: strict keys, validation, the seed's olm_config.yaml accepted and mapped, renamed keys."""

from __future__ import annotations

import textwrap
import warnings

import pytest

from olmokit.errors import ConfigError
from olmokit.merge.config import (
    DTYPES,
    MERGE_MODES,
    REASONING_MASK,
    MergeConfig,
    from_olm_dict,
    is_olm_config,
)

MINIMAL = {"models": ["a", "b"], "datasets": [{"path": "d/x.jsonl", "mode": "nll"}]}

# A faithful copy of the shape of jeffmeloy/olm's olm_config.yaml (research/olm.md §1.8): directory
# keys, a list of hub ids, the per-file dataset mapping with mode/think, the switches and ES keys with
# the yaml's values, improve_all "base", a commented-out alternative pool.
SEED_OLM_CONFIG = textwrap.dedent(
    """\
    models_dir: ./input_models/
    output_dir: ./merged_model/
    metric_dir: ./model_metrics/
    dataset_dir: ./dataset/
    models:
      - Qwen/Qwen3-4B
      - huihui-ai/Qwen3-4B-abliterated
      - mlabonne/Qwen3-4B-abliterated
      # - Qwen/Qwen2.5-7B-Instruct
    dataset:
      mmlupro_sharegpt.json:
        mode: exact_match
        think: false
      longresponse2_sharegpt.json:
        mode: diversity
        think: true
    base_model_name: Qwen/Qwen3-4B
    base_select: false
    boundary_select: false
    layer_swap: false
    tensor_swap: true
    direction: backward
    samples: 200
    improve_all: base
    load_merge_report: false
    skip_norm: true
    es_svd: false
    es_svd_generations: 1
    es_svd_sigma: 0.05
    es_norm: false
    es_norm_generations: 1
    es_norm_sigma: 0.005
    max_models: 25
    """
)


def test_defaults_and_base_default_to_first_model():
    cfg = MergeConfig.from_dict(MINIMAL)
    assert cfg.base_model == "a" and cfg.models == ["a", "b"]
    assert (cfg.layer_swap, cfg.tensor_swap, cfg.selection) == (True, False, "copeland")
    ds = cfg.datasets[0]
    assert (ds.name, ds.samples, ds.max_new_tokens, ds.script_penalty) == ("x", 200, 256, ["cjk"])
    assert cfg.dataset_names == ["x"]


def test_base_model_not_in_pool_is_inserted_first_and_config_round_trips(tmp_path):
    cfg = MergeConfig.from_dict({**MINIMAL, "base_model": "c"})
    assert cfg.models == ["c", "a", "b"] and cfg.base_model == "c"
    path = tmp_path / "config.yaml"
    cfg.to_yaml(path)
    assert MergeConfig.from_yaml(path) == cfg  # the resolved file loads to the same config


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown key 'layer_swp'.*layer_swap.*tensor_swap"):
        MergeConfig.from_dict({**MINIMAL, "layer_swp": True})
    with pytest.raises(ConfigError, match=r"unknown key 'datasets\.0\.think'.*prompt_suffix"):
        MergeConfig.from_dict(
            {"models": ["a"], "datasets": [{"path": "x", "mode": "nll", "think": 1}]}
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": []}, "the pool is empty"),
        ({"models": ["a", "a"]}, "listed more than once: a"),
        ({"datasets": []}, "at least one evaluation dataset"),
        (
            {
                "datasets": [
                    {"path": "d/x.jsonl", "mode": "nll"},
                    {"path": "e/x.json", "mode": "nll"},
                ]
            },
            "names must be unique, repeated: x",
        ),
        (
            {"layer_swap": False},
            "enable at least one of base_select, boundary_select, layer_swap, tensor_swap",
        ),
        ({"es_svd_sigma": 0}, "es_svd_sigma"),
        ({"es_norm_sigma": -1.0}, "es_norm_sigma"),
        ({"es_svd_generations": 0}, "es_svd_generations"),
        ({"es_norm_generations": 0}, "es_norm_generations"),
        ({"es_noise_clamp": 0}, "es_noise_clamp"),
        ({"es_lambda": 0}, "es_lambda"),
        ({"es_max_evaluations": 0}, "es_max_evaluations"),
        ({"es_max_seconds": 0}, "es_max_seconds"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_models": 0}, "max_models"),
        ({"dtype": "int8"}, "dtype 'int8' unknown; valid: float32"),
        ({"selection": "ranks"}, "selection"),
        ({"datasets": [{"path": "x.json", "mode": "perplexity"}]}, r"datasets\.0\.mode"),
        ({"datasets": [{"path": "x.json", "mode": "nll", "samples": 0}]}, r"datasets\.0\.samples"),
        (
            {"datasets": [{"path": "x.json", "mode": "diversity", "script_penalty": ["latin"]}]},
            r"datasets\.0\.script_penalty",
        ),
    ],
)
def test_validation_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        MergeConfig.from_dict({**MINIMAL, **change})


def test_dataset_names_explicit_make_same_stems_unique():
    cfg = MergeConfig.from_dict(
        {
            **MINIMAL,
            "datasets": [
                {"path": "d/x.jsonl", "mode": "nll"},
                {"path": "e/x.jsonl", "mode": "bigram_loss", "name": "x2"},
            ],
        }
    )
    assert cfg.dataset_names == ["x", "x2"]


def test_constants_match_the_shared_layers():
    from olmokit.eval.merge_metrics import MERGE_METRICS
    from olmokit.loading import _DTYPES

    assert MERGE_MODES == MERGE_METRICS
    assert set(DTYPES) == set(_DTYPES)


def test_seed_olm_config_yaml_is_detected_and_mapped(tmp_path):
    path = tmp_path / "olm_config.yaml"
    path.write_text(SEED_OLM_CONFIG)
    with pytest.warns(UserWarning, match="ignoring models_dir, metric_dir"):
        cfg = MergeConfig.from_yaml(path)
    assert cfg.models == [
        "Qwen/Qwen3-4B",
        "huihui-ai/Qwen3-4B-abliterated",
        "mlabonne/Qwen3-4B-abliterated",
    ]
    assert cfg.base_model == "Qwen/Qwen3-4B"
    assert (cfg.base_select, cfg.boundary_select, cfg.layer_swap, cfg.tensor_swap) == (
        False,
        False,
        False,
        True,
    )
    assert cfg.direction == "backward" and cfg.skip_norm and cfg.max_models == 25
    assert cfg.improve_against == "current_and_base"
    assert cfg.output_dir == "./merged_model/"
    assert (cfg.es_svd, cfg.es_svd_generations, cfg.es_svd_sigma) == (False, 1, 0.05)
    assert (cfg.es_norm, cfg.es_norm_generations, cfg.es_norm_sigma) == (False, 1, 0.005)
    mmlu, longr = cfg.datasets
    assert (mmlu.path, mmlu.mode, mmlu.samples, mmlu.name) == (
        "dataset/mmlupro_sharegpt.json",
        "exact_match",
        200,
        "mmlupro_sharegpt",
    )
    assert mmlu.prompt_suffix == REASONING_MASK == "<think>\n\n</think>\n\nCorrect answer:"
    assert (longr.mode, longr.prompt_suffix, longr.script_penalty) == ("diversity", "", ["cjk"])
    # the explicit loader gives the same config; the mapped one round-trips as olmokit style
    with pytest.warns(UserWarning):
        assert MergeConfig.from_olm_yaml(path) == cfg
    out = tmp_path / "resolved.yaml"
    cfg.to_yaml(out)
    assert MergeConfig.from_yaml(out) == cfg


def test_seed_detection_by_keys():
    assert is_olm_config({"models": ["a"], "dataset": {}, "improve_all": "base"})
    assert not is_olm_config(MINIMAL)
    # an olmokit-only key makes it an olmokit config, whose old spellings are then errors
    assert not is_olm_config({**MINIMAL, "base_model_name": "a"})


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [
        ("base_model_name", "a", "use base_model"),
        ("dataset", {"x.json": {"mode": "nll"}}, "use datasets"),
        ("improve_all", "base", "use improve_against"),
        ("load_merge_report", True, "use the --resume flag"),
        ("samples", 10, r"use datasets\[\]\.samples"),
        ("dataset_dir", "d", r"use datasets\[\]\.path"),
    ],
)
def test_renamed_key_in_olmokit_config_names_the_new_spelling(old, value, new):
    with pytest.raises(ConfigError, match=f"'{old}' is a seed olm_config.yaml key; {new}"):
        MergeConfig.from_dict({**MINIMAL, old: value})


@pytest.mark.parametrize(
    ("improve_all", "expected"),
    [("base", "current_and_base"), ("all", "current_and_base"), ("", "current"), (None, "current")],
)
def test_improve_all_mapping(improve_all, expected):
    data = {"models": ["a"], "dataset": {"x.json": {"mode": "nll"}}, "improve_all": improve_all}
    assert MergeConfig.from_dict(data).improve_against == expected


@pytest.mark.parametrize("value", ["diversity", "bigram", "exact", "bigram_loss", 3])
def test_improve_all_per_mode_values_are_refused(value):
    data = {"models": ["a"], "dataset": {"x.json": {"mode": "nll"}}, "improve_all": value}
    with pytest.raises(ConfigError, match="improve_all: .* is not supported; valid: base, all"):
        MergeConfig.from_dict(data)


@pytest.mark.parametrize(
    ("value", "expected"), [("ranks", "copeland"), ("sum", "borda"), ("pareto", "pareto")]
)
def test_seed_selection_mapping(value, expected):
    data = {"models": ["a"], "dataset": {"x.json": {"mode": "nll"}}, "selection": value}
    assert MergeConfig.from_dict(data).selection == expected


def test_seed_config_errors():
    base = {"models": ["a"], "improve_all": "base"}
    with pytest.raises(
        ConfigError, match="'dataset' must map file names.*olmokit config.*'datasets'"
    ):
        MergeConfig.from_dict({**base, "dataset": [{"path": "x", "mode": "nll"}]})
    with pytest.raises(ConfigError, match=r"dataset\.x\.json: unknown keys \['samples'\]"):
        MergeConfig.from_dict({**base, "dataset": {"x.json": {"mode": "nll", "samples": 3}}})
    with pytest.raises(ConfigError, match="--resume"):
        MergeConfig.from_dict(
            {**base, "dataset": {"x.json": {"mode": "nll"}}, "load_merge_report": True}
        )
    with pytest.raises(ConfigError, match="markov windows are not supported"):
        MergeConfig.from_dict({**base, "dataset": {"x.json": {"mode": "nll"}}, "markov": 1})
    with pytest.raises(ConfigError, match=r"datasets\.0\.mode"):
        MergeConfig.from_dict({**base, "dataset": {"x.json": {"mode": "perplexity"}}})
    # a key neither config knows is refused with the valid (olmokit) keys listed
    with pytest.raises(ConfigError, match="unknown key 'frobnicate'.*valid keys here"):
        MergeConfig.from_dict({**base, "dataset": {"x.json": {"mode": "nll"}}, "frobnicate": 1})


def test_samples_and_dataset_dir_apply_to_every_dataset():
    data = {
        "models": ["a"],
        "dataset_dir": "data",
        "samples": 7,
        "dataset": {"p.jsonl": {"mode": "nll", "think": True}, "q.json": {"mode": "bigram_loss"}},
    }
    mapped = from_olm_dict(data)
    assert [d["path"] for d in mapped["datasets"]] == ["data/p.jsonl", "data/q.json"]
    cfg = MergeConfig.from_dict(data)
    assert [(d.samples, d.prompt_suffix) for d in cfg.datasets] == [(7, ""), (7, REASONING_MASK)]


def test_non_strict_drops_old_keys_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = MergeConfig.from_dict({**MINIMAL, "improve_all": "base"}, strict=False)
    assert cfg.improve_against == "current"
    assert any("improve_all" in str(w.message) for w in caught)
