"""Hook names per generation and TransformerLens shorthands."""

from __future__ import annotations

import pytest

from olmokit.family import get_adapter
from olmokit.lens.names import get_act_name, hook_specs, resolve_name


def test_shorthands():
    assert get_act_name("k", 6) == "blocks.6.attn.hook_k"
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert get_act_name("scale", 2, "ln1_post") == "blocks.2.ln1_post.hook_scale"
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("embed") == "hook_embed"
    assert resolve_name(("pattern", -1), 4) == "blocks.3.attn.hook_pattern"
    assert resolve_name("blocks.1.hook_mlp_out", 4) == "blocks.1.hook_mlp_out"
    with pytest.raises(ValueError):
        get_act_name("q")


def test_hook_sets_per_generation(tiny_model):
    adapter = get_adapter(tiny_model)
    specs = hook_specs(adapter)
    common = ["hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
    per_block = [
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_z",
        "attn.hook_pattern",
        "attn.hook_attn_scores",
        "mlp.hook_pre",
        "mlp.hook_pre_linear",
        "mlp.hook_post",
    ]
    for name in common:
        assert name in specs
    for i in range(adapter.num_layers):
        for short in per_block:
            assert f"blocks.{i}.{short}" in specs
    pre = ["ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale", "ln2.hook_normalized"]
    post = ["ln1_post.hook_scale", "ln2_post.hook_scale", "attn.hook_raw_out", "mlp.hook_raw_out"]
    expect, absent = (pre, post) if adapter.norm_placement == "pre" else (post, pre)
    assert all(f"blocks.0.{s}" in specs for s in expect)
    assert not any(f"blocks.0.{s}" in specs for s in absent)
    assert specs["blocks.0.attn.hook_k"].shape == ("batch", "pos", "n_kv_heads", "d_head")
    assert list(specs)[0] == "hook_embed" and list(specs)[-1] == "ln_final.hook_normalized"
