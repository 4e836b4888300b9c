"""The family adapter on tiny random models of all three OLMo generations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from olmokit.errors import FamilyError
from olmokit.family import (
    FAMILIES,
    FamilyAdapter,
    NormSite,
    check_transformers_version,
    get_adapter,
    get_family,
)
from olmokit.zoo.presets import make_config, random_model


def test_every_listed_module_exists(tiny_model, model_type):
    a = get_adapter(tiny_model)
    assert a.model_type == model_type
    assert len(a.layers()) == a.num_layers
    for i in range(a.num_layers):
        for get in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, a.gate_proj, a.up_proj, a.down_proj):
            assert isinstance(get(i), nn.Linear)
        assert a.attention(i) is a.layer(i).get_submodule(
            a.module_path(i, "attn").rsplit(".", 1)[-1]
        )
        assert set(a.norms(i)) == set(FAMILIES[model_type].layer_norms)
        if model_type == "olmo":
            assert a.q_norm(i) is None and a.k_norm(i) is None
        else:
            assert a.q_norm(i).weight.shape == (a.num_heads * a.head_dim,)
            assert a.k_norm(i).weight.shape == (a.num_kv_heads * a.head_dim,)
    assert isinstance(a.embed_tokens(), nn.Embedding)
    assert isinstance(a.lm_head(), nn.Linear)
    assert a.final_norm() is tiny_model.get_submodule("model.norm")
    assert a.rotary_emb() is tiny_model.get_submodule("model.rotary_emb")


def test_head_layout_under_gqa(tiny_model):
    a = get_adapter(tiny_model)
    assert (a.num_heads, a.num_kv_heads, a.kv_group_size) == (4, 2, 2)
    assert a.head_dim == a.hidden_size // a.num_heads
    assert a.q_proj(0).out_features == a.num_heads * a.head_dim
    assert a.k_proj(0).out_features == a.v_proj(0).out_features == a.num_kv_heads * a.head_dim
    assert a.o_proj(0).in_features == a.num_heads * a.head_dim


def test_units_cover_every_state_dict_key_exactly_once(tiny_model, model_type):
    a = get_adapter(tiny_model)
    units = a.units()
    keys = [k for u in units for k in u.keys]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(tiny_model.state_dict())
    per_layer = {len(a.layer_units(i)) for i in range(a.num_layers)}
    # v1: q,k,v,o,gate,up,down (its LayerNorms have no parameters); v2/3 add q/k norm and two post-norms.
    assert per_layer == ({7} if model_type == "olmo" else {11})
    boundary = [u.role for u in units if u.layer is None]
    # OLMo v1's final LayerNorm has no parameters, so it owns no unit.
    assert boundary == (
        ["embed_tokens", "lm_head"]
        if model_type == "olmo"
        else ["embed_tokens", "final_norm", "lm_head"]
    )
    assert not [u for u in units if u.role == "other"]


def test_units_are_derived_from_the_state_dict_not_a_template(tiny_model):
    a = get_adapter(tiny_model)
    sd = dict(tiny_model.state_dict())
    sd["model.layers.0.self_attn.surprise.weight"] = torch.zeros(1)
    names = {u.name: u for u in a.units(sd)}
    assert names["layers.0.self_attn.surprise"].role == "other"


def test_tied_embeddings_are_detected():
    model = random_model("olmo2", "tiny", tie_word_embeddings=True)
    a = get_adapter(model)
    assert a.tied_embeddings
    (head,) = [u for u in a.units() if u.role == "lm_head"]
    assert head.tied_to == "embed_tokens"
    assert not get_adapter(random_model("olmo2", "tiny")).tied_embeddings


def test_olmo3_sliding_window_layers():
    a = get_adapter(random_model("olmo3", "tiny"))
    assert a.layer_types == ["sliding_attention"] * 3 + ["full_attention"]
    assert a.sliding_layers() == [0, 1, 2]
    assert a.sliding_window == 8
    for i in range(4):
        expected = 8 if i < 3 else None
        assert a.attention(i).sliding_window == expected
        assert a.layer_sliding_window(i) == expected
    for mt in ("olmo", "olmo2"):
        b = get_adapter(random_model(mt, "tiny"))
        assert b.sliding_window is None and b.sliding_layers() == []
        assert [b.layer_sliding_window(i) for i in range(b.num_layers)] == [None] * b.num_layers


def _capture(module, store, key, use_input):
    def hook(mod, args, out):
        store[key] = (
            (args[0] if use_input else (out[0] if isinstance(out, tuple) else out)).detach().clone()
        )

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("model_type", ["olmo", "olmo2"])
def test_norm_sites_mean_what_they_say(model_type):
    """v1's post_attention_layernorm normalises the residual before the MLP; v2's the attention output."""
    model = random_model(model_type, "tiny")
    a = get_adapter(model)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        _capture(a.attention(0), seen, "attn_out", False),
        _capture(a.layer(0), seen, "layer_in", True),
        _capture(a.mlp(0), seen, "mlp_in", True),
    ]
    site = NormSite.MLP_INPUT if model_type == "olmo" else NormSite.ATTN_OUTPUT
    handles.append(_capture(a.norm(0, site), seen, "norm_in", True))
    handles.append(_capture(a.norm(0, site), seen, "norm_out", False))
    model(input_ids=torch.arange(6).unsqueeze(0))
    for h in handles:
        h.remove()
    if model_type == "olmo":
        # pre-norm: norm input is the residual after attention; its output feeds the MLP
        torch.testing.assert_close(seen["norm_out"], seen["mlp_in"])
        torch.testing.assert_close(seen["norm_in"], seen["layer_in"] + seen["attn_out"])
    else:
        # post-norm: norm input is the raw attention output; residual + norm output feeds the MLP
        torch.testing.assert_close(seen["norm_in"], seen["attn_out"])
        torch.testing.assert_close(seen["mlp_in"], seen["layer_in"] + seen["norm_out"])


def test_unsupported_model_is_rejected_with_the_supported_list():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=64,
        )
    )
    with pytest.raises(FamilyError, match="Olmo2ForCausalLM.*Olmo3ForCausalLM"):
        get_adapter(llama)
    with pytest.raises(FamilyError, match="llama"):
        get_family(llama.config)
    with pytest.raises(FamilyError):
        get_family("gpt2")


def test_family_from_config_and_names():
    assert get_family(make_config("olmo3", "tiny")).generation == 3
    assert get_family("Olmo2ForCausalLM").model_type == "olmo2"
    a = get_adapter(make_config("olmo", "tiny", clip_qkv=8.0))
    assert a.clip_qkv == 8.0 and a.model is None
    with pytest.raises(FamilyError, match="config only"):
        a.o_proj(0)


@pytest.mark.parametrize(
    "version,ok",
    [
        ("5.13.0", True),
        ("5.23.0", True),
        ("4.57.6", True),
        ("5.12.1", False),
        ("5.0.0", False),
        ("4.57.0", False),
        ("4.50.0", False),
    ],
)
def test_olmo3_transformers_version_gate(version, ok):
    spec = FAMILIES["olmo3"]
    if ok:
        check_transformers_version(spec, version)
    else:
        with pytest.raises(FamilyError, match="transformers>=5.13"):
            check_transformers_version(spec, version)
    check_transformers_version(FAMILIES["olmo2"], "5.5.0")  # the YaRN bug concerns OLMo-3 only


def test_describe_is_json_safe(tiny_model):
    import json

    info = get_adapter(tiny_model).describe()
    json.dumps(info)
    assert info["parameters"] == sum(p.numel() for p in tiny_model.parameters())
    assert info["heads"] == 4 and info["kv_heads"] == 2


# ------------------------------------------------------------------ HF runtime conventions (lens)
def test_norm_eps_v1_is_fixed_v2_reads_the_module():
    """HF's OlmoLayerNorm ignores the config's eps (hard-coded 1e-5); RMSNorm keeps its own."""
    v1 = get_adapter(random_model("olmo", "tiny"))
    assert v1.norm_eps(v1.final_norm()) == 1e-5
    assert {v1.norm_eps(m) for m in v1.norms(0).values()} == {1e-5}
    model = random_model("olmo2", "tiny")
    model.config.rms_norm_eps = 0.5  # the modules were built with the config's value ...
    a = get_adapter(model)
    expected = make_config("olmo2", "tiny").rms_norm_eps  # ... so they keep it
    assert a.norm_eps(a.final_norm()) == expected
    assert {a.norm_eps(m) for m in [*a.norms(1).values(), a.q_norm(1), a.k_norm(1)]} == {expected}


def test_module_input_and_output_conventions():
    a = FamilyAdapter
    x, y = torch.zeros(1), torch.ones(1)
    assert a.module_input((x, 3), {}) is x
    assert a.module_input((), {"hidden_states": x}) is x
    args, kwargs = a.replace_module_input((x, 3), {"k": 1}, y)
    assert args[0] is y and args[1] == 3 and kwargs == {"k": 1}
    args, kwargs = a.replace_module_input((), {"hidden_states": x, "k": 1}, y)
    assert args == () and kwargs["hidden_states"] is y and kwargs["k"] == 1
    with pytest.raises(FamilyError, match="tensor input"):
        a.module_input((), {"other": x})
    assert a.module_output(x) is x and a.module_output((x, None)) is x
    assert a.replace_module_output(x, y) is y
    out = a.replace_module_output((x, "weights"), y)
    assert out[0] is y and out[1] == "weights"


def test_attention_config_copy_leaves_the_original_alone():
    model = random_model("olmo", "tiny", clip_qkv=2.0)
    a = get_adapter(model)
    attn = a.attention(0)
    orig = a.attention_config(attn)
    base = a.attn_implementation(orig)
    assert base == model.config._attn_implementation and base in ("sdpa", "eager")
    cfg = a.attention_config_copy(orig, attn_implementation="eager_copy", disable_clip_qkv=True)
    assert cfg is not orig and cfg._attn_implementation == "eager_copy" and cfg.clip_qkv is None
    assert orig._attn_implementation == base and orig.clip_qkv == 2.0
    a.set_attention_config(attn, cfg)
    assert attn.config is cfg
    a.set_attention_config(attn, orig)
    assert a.attn_implementation(None) == base


def test_attention_function_helpers_match_hf():
    import sys

    model = random_model("olmo2", "tiny")
    a = get_adapter(model)
    attn = a.attention(0)
    modeling = sys.modules[type(attn).__module__]
    assert a.eager_attention_function(attn) is modeling.eager_attention_forward
    assert a.attention_function(attn, "eager") is modeling.eager_attention_forward
    assert a.attention_scaling(attn) == a.head_dim**-0.5
    kv = torch.randn(1, a.num_kv_heads, 5, a.head_dim)
    full = a.repeat_kv(attn, kv)
    assert full.shape == (1, a.num_heads, 5, a.head_dim)
    torch.testing.assert_close(
        full[:, 1], kv[:, 0], rtol=0, atol=0
    )  # group size 2: heads 0, 1 share
    torch.testing.assert_close(full[:, 2], kv[:, 1], rtol=0, atol=0)


def test_call_attention_reproduces_the_hooked_call(tiny_model):
    """A hook reads an attention call's input and rotary tables; calling the module again on them
    with an explicit causal mask (and a private KV cache) gives the same output."""
    import inspect

    from transformers import DynamicCache

    a = get_adapter(tiny_model)
    attn = a.attention(a.num_layers - 1)  # OLMo-3 tiny: a full-attention layer
    seen = {}

    def hook(_mod, args, kwargs, output):
        seen["x"] = a.module_input(args, kwargs)
        seen["pe"] = a.attention_position_embeddings(args, kwargs)
        seen["out"] = a.module_output(output)

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    ids = torch.randint(4, a.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiny_model(input_ids=ids)
    handle.remove()
    cos, sin = seen["pe"]
    assert cos.shape[-2] == sin.shape[-2] == 6
    mask = torch.full((6, 6), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, 6, 6)
    cache = DynamicCache()
    with torch.no_grad():
        again = a.call_attention(attn, seen["x"], seen["pe"], mask, cache)
    torch.testing.assert_close(again, seen["out"], rtol=1e-5, atol=1e-6)
    assert cache.get_seq_length(attn.layer_idx) == 6
    assert a.cache_keyword(tiny_model) in inspect.signature(type(tiny_model).forward).parameters
    with pytest.raises(FamilyError, match="position_embeddings"):
        a.attention_position_embeddings((seen["x"],), {})
