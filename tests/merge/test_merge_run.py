"""run_merge end to end on a tiny 3-model pool: the merged model is a plain HF directory stock
``from_pretrained`` loads with no missing/unexpected keys and equals the search's working model; the
report is standard JSON with every decision; no donor is materialised whole during the search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers
from merge_helpers import make_pool, merge_config

from olmokit.errors import CheckpointError, DataError
from olmokit.merge import search as search_mod
from olmokit.merge.report import load_report
from olmokit.merge.run import run_merge


@pytest.fixture(scope="module")
def pool_dirs(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("pool"), seeds=(0, 1, 2))


def _refuse(*args, **kwargs):
    raise AssertionError("a donor was materialised whole during the search")


def _strict_json(text: str):
    def bad(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=bad)


def test_run_merge_writes_a_stock_loadable_model(tmp_path, pool_dirs, monkeypatch, one_thread):
    config = merge_config(
        tmp_path, pool_dirs, boundary_select=True, layer_swap=True, tensor_swap=True,
        es_svd=True, es_lambda=4,
    )  # fmt: skip
    seen: dict = {}
    original_run = search_mod.MergeSearch.run

    def guarded_run(self):
        # during the search every whole-model / whole-file load fails
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(transformers.PreTrainedModel, "from_pretrained", _refuse)
            mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _refuse)
            mp.setattr(safetensors.torch, "load_file", _refuse)
            mp.setattr(safetensors.torch, "load", _refuse)
            original_run(self)
        seen["state"] = {k: v.detach().clone() for k, v in self.working.model.state_dict().items()}

    monkeypatch.setattr(search_mod.MergeSearch, "run", guarded_run)
    run = run_merge(config, progress=False)

    text = (run.path / "merge_report.json").read_text(encoding="utf-8")
    report = _strict_json(text)
    assert report == load_report(run.path)
    assert report["status"] == "complete" and report["model"] == "model"
    assert report["boundary"] is not None
    assert list(report["layers"]) == ["0", "1"]
    assert len(report["units"]) == 16  # 2 x 7 projections + embed_tokens + lm_head (norms skipped)
    assert report["cache"]["hits"] >= 1 + 2 + 16  # the current state of every step
    assert [m["name"] for m in report["pool"]] == pool_dirs
    assert all(len(m["fingerprint"]) == 16 for m in report["pool"])

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        run.path / "model", output_loading_info=True
    )
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info.get("mismatched_keys")
    state = model.state_dict()
    assert set(state) == set(seen["state"])
    for key, value in seen["state"].items():
        assert torch.equal(state[key], value), key
    # the merged model is not simply the base: some unit came from another donor or was refined
    base = safetensors.torch.load_file(f"{pool_dirs[0]}/model.safetensors")
    assert any(not torch.equal(state[k], base[k]) for k in base)
    assert (run.path / "model" / "tokenizer.json").is_file() or (
        run.path / "model" / "tokenizer_config.json"
    ).is_file()

    # the report's last metrics are the merged model's metrics
    last = list(report["units"].values())[-1]["metrics"]
    assert set(last) == {"prose", "code"}
    for name in last:
        assert last[name] <= report["base_metrics"][name]


def test_tied_pool_merges_and_loads(tmp_path, one_thread):
    dirs = make_pool(tmp_path / "pool", seeds=(0, 1), tied=True)
    config = merge_config(tmp_path, dirs, boundary_select=True, layer_swap=False, tensor_swap=True)
    run = run_merge(config, progress=False)
    report = load_report(run.path)
    assert report["boundary"]["units"] == ["embed_tokens", "final_norm"]
    assert "lm_head" not in report["units"]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        run.path / "model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("model_type", ["olmo", "olmo3"])
def test_other_generations_merge_and_load(tmp_path, model_type, one_thread):
    """OLMo v1 (non-parametric layer norms: no norm units) and OLMo-3 (sliding-window layers)."""
    dirs = make_pool(tmp_path / "pool", seeds=(0, 1), model_type=model_type)
    config = merge_config(tmp_path, dirs, layer_swap=True, tensor_swap=True, skip_norm=False)
    run = run_merge(config, progress=False)
    report = load_report(run.path)
    layers = 4 if model_type == "olmo3" else 2
    assert list(report["layers"]) == [str(i) for i in range(layers)]
    per_layer = 7 if model_type == "olmo" else 11  # + q/k norms and two post-norms on OLMo-3
    boundary = 2 if model_type == "olmo" else 3  # embed_tokens, (final norm), lm_head
    assert len(report["units"]) == layers * per_layer + boundary
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        run.path / "model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.model_type == model_type


def test_missing_dataset_file_fails_before_the_run_directory_exists(tmp_path, pool_dirs):
    config = merge_config(tmp_path, pool_dirs)
    config = config.model_copy(
        update={"datasets": [config.datasets[0].model_copy(update={"path": "nope/x.jsonl"})]}
    )
    with pytest.raises(DataError, match=r"dataset file not found: nope/x\.jsonl \(relative paths"):
        run_merge(config, progress=False)
    assert not Path(config.output_dir).exists()


@pytest.mark.parametrize(
    ("typo", "match"),
    [
        ("runs/expert-prse/model", "neither a directory, a zoo model"),
        ("zoo:olmo2-stdlibb", "no zoo model"),
        ("olmo2-stdlib@3", "only for random zoo models"),
    ],
)
def test_a_pool_name_typo_fails_before_the_run_directory_exists(tmp_path, pool_dirs, typo, match):
    config = merge_config(tmp_path, [*pool_dirs, typo])
    with pytest.raises(CheckpointError, match=match):
        run_merge(config, progress=False)
    assert not Path(config.output_dir).exists()
