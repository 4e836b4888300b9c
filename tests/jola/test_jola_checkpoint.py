"""Adapter save/load exactness, wrong-base refusal, and the exact fold into plain HF weights."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from olmokit.errors import CheckpointError
from olmokit.jola import (
    JoLASettings,
    attach_jola,
    has_jola,
    jola_edits,
    jola_state_dict,
    load_jola,
    merge_jola,
    read_adapter,
    save_jola,
    set_gate_mode,
)
from olmokit.jola.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from olmokit.zoo.presets import random_model

IDS = torch.tensor(
    [[5, 17, 99, 3, 250, 1000, 7, 8, 9, 10, 11, 12], [42, 43, 44, 45, 1, 2, 3, 4, 5, 6, 7, 8]]
)


def _trained_like(model, seed=0, la_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in jola_edits(model).values():
            e.attn_A.copy_(torch.randn(e.attn_A.shape, generator=g) * 0.5)
            e.attn_v.copy_(torch.randn(e.attn_v.shape, generator=g) * 0.5)
            e.log_g1.copy_(torch.randn(e.log_g1.shape, generator=g) * la_scale)
            e.log_g2.copy_(torch.randn(e.log_g2.shape, generator=g) * la_scale)


def test_save_load_exact(tiny_model, model_type, tmp_path):
    attach_jola(
        tiny_model,
        JoLASettings(temperature=0.5, eval_gate_mode="hard", hard_threshold=0.3),
        applied_layers=[0, 1],
    )
    _trained_like(tiny_model)
    want = tiny_model(IDS).logits
    save_jola(tiny_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    meta = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert meta["base_model"]["model_type"] == model_type and meta["applied_layers"] == [0, 1]
    assert meta["num_parameters"] == 2 * 4 * (2 * 16 + 2)
    _, tensors = read_adapter(tmp_path)
    assert set(tensors) == {
        f"layers.{i}.{n}" for i in (0, 1) for n in ("attn_A", "attn_v", "log_g1", "log_g2")
    }

    fresh = random_model(model_type, "tiny", seed=0)
    load_jola(fresh, tmp_path)
    got = jola_state_dict(fresh)
    assert all(torch.equal(got[k], v) for k, v in jola_state_dict(tiny_model).items())
    e = next(iter(jola_edits(fresh).values()))
    assert e.hc.temperature == 0.5 and e.gate_mode == "hard" and e.hard_threshold == 0.3
    assert torch.equal(fresh(IDS).logits, want)
    # loading again onto the already-attached model replaces the tensors, never re-initialises
    load_jola(fresh, tmp_path)
    assert torch.equal(fresh(IDS).logits, want)


def test_wrong_base_refused(tmp_path):
    m = random_model("olmo2", "tiny", seed=0)
    attach_jola(m)
    save_jola(m, tmp_path)
    with pytest.raises(CheckpointError, match="OLMo-2.*OLMo v1|model_type 'olmo2'"):
        load_jola(random_model("olmo", "tiny", seed=0), tmp_path)
    with pytest.raises(CheckpointError, match="num_heads: adapter 4 vs model 8"):
        load_jola(
            random_model("olmo2", "tiny", seed=0, num_attention_heads=8, num_key_value_heads=8),
            tmp_path,
        )
    with pytest.raises(CheckpointError, match="num_layers: adapter 2 vs model 3"):
        load_jola(random_model("olmo2", "tiny", seed=0, num_hidden_layers=3), tmp_path)
    with pytest.raises(CheckpointError, match="not a JoLA adapter"):
        load_jola(random_model("olmo2", "tiny", seed=0), tmp_path / "nope")


def test_corrupt_tensors_refused(tmp_path):
    from olmokit.files import atomic_save_safetensors

    m = random_model("olmo2", "tiny", seed=0)
    attach_jola(m)
    save_jola(m, tmp_path)
    _, tensors = read_adapter(tmp_path)
    tensors["layers.0.attn_A"] = torch.zeros(3, 3)
    atomic_save_safetensors(tmp_path / ADAPTER_WEIGHTS, tensors)
    with pytest.raises(CheckpointError, match="shape"):
        load_jola(random_model("olmo2", "tiny", seed=0), tmp_path)


@pytest.mark.parametrize("mode", ["expected", "hard", "topk"])
def test_fold_parity_and_stock_load(tiny_model, model_type, mode, tmp_path):
    attach_jola(tiny_model, applied_layers=[0, 1] if model_type != "olmo3" else [0, 3])
    _trained_like(tiny_model, seed=1)
    set_gate_mode(tiny_model, mode, topk=3 if mode == "topk" else None)
    tiny_model.eval()
    want = tiny_model(IDS).logits
    merged = merge_jola(tiny_model)
    assert not has_jola(merged) and type(merged).__name__.endswith("ForCausalLM")
    assert not any("jola" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(IDS).logits, want, rtol=0, atol=1e-5)

    merged.save_pretrained(tmp_path)
    stock, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert stock.config.attention_bias is True
    torch.testing.assert_close(stock(IDS).logits, want, rtol=0, atol=1e-5)


def test_fold_multiplicative_only_keeps_config(tiny_model):
    """No additive part -> no bias needed; the config stays attention_bias=False."""
    attach_jola(tiny_model)
    _trained_like(tiny_model)
    with torch.no_grad():
        for e in jola_edits(tiny_model).values():
            e.log_g1.fill_(-10.0)
    want = tiny_model(IDS).logits
    merged = merge_jola(tiny_model)
    assert merged.config.attention_bias is False
    torch.testing.assert_close(merged(IDS).logits, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tensor", ["attn_A", "attn_v", "log_g1", "log_g2"])
def test_fold_refuses_non_finite(tensor):
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model)
    _trained_like(model)
    with torch.no_grad():
        getattr(jola_edits(model)[1], tensor).view(-1)[2] = float(
            "inf" if tensor == "log_g1" else "nan"
        )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"layer 1 tensor {tensor} has 1 non-finite value"):
        merge_jola(model)
    assert has_jola(model) and model.config.attention_bias is False  # nothing was touched
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


def test_version_1_adapter_still_loads(tmp_path):
    """Adapters written before the base fingerprint (format version 1) load exactly as before."""
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model, applied_layers=[1])
    _trained_like(model, seed=4)
    want = model(IDS).logits
    save_jola(model, tmp_path)
    meta = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert meta["format_version"] == 2 and len(meta["base_model"]["weights_hash"]) == 16
    base = meta["base_model"]
    meta["format_version"] = 1
    meta["base_model"] = {
        "name_or_path": "zoo:olmo2-tiny-random", "revision": None, "model_type": "olmo2",
        "family": "OLMo-2", **{k: base["sizes"][k] for k in ("num_layers", "num_heads", "head_dim", "hidden_size")},
    }  # fmt: skip
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(meta))
    fresh = random_model("olmo2", "tiny", seed=0)
    load_jola(fresh, tmp_path)
    assert torch.equal(fresh(IDS).logits, want)
    with pytest.raises(CheckpointError, match="num_layers: adapter 2 vs model 3"):
        load_jola(random_model("olmo2", "tiny", seed=0, num_hidden_layers=3), tmp_path)


def test_other_weights_warn_or_refuse(tmp_path):
    from olmokit.inject import BaseWeightsWarning

    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model)
    save_jola(model, tmp_path)
    with pytest.warns(BaseWeightsWarning, match="same architecture but different weights"):
        load_jola(random_model("olmo2", "tiny", seed=1), tmp_path)
    with pytest.raises(CheckpointError, match="different weights"):
        load_jola(random_model("olmo2", "tiny", seed=1), tmp_path, strict_weights=True)
