"""MemoryConfig: strict keys, and every check against a base names the key to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Olmo2Config, Olmo3Config

from olmokit.errors import ConfigError
from olmokit.memory import MemoryConfig, MemorySettings
from olmokit.zoo.presets import random_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "memory"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="memory_layers"):
        MemoryConfig.from_dict({"memory": {"layer": [1]}})


def test_duplicate_and_empty_layers_refused():
    with pytest.raises(ConfigError, match="duplicates"):
        MemorySettings.from_dict({"memory_layers": [1, 1]})
    with pytest.raises(ConfigError, match="empty"):
        MemoryConfig.from_dict({"memory": {"memory_layers": []}})


def test_attention_output_source_is_mac_only():
    with pytest.raises(ConfigError, match="only for mode mac"):
        MemoryConfig.from_dict({"memory": {"mode": "mag", "write_source": "attention_output"}})
    assert MemorySettings(mode="mac").source == "attention_output"
    assert MemorySettings(mode="mal").source == "layer_input"


@pytest.mark.parametrize("family", ["olmo", "olmo2", "olmo3"])
def test_layer_out_of_range(family):
    model = random_model(family, "tiny", seed=0)
    n = model.config.num_hidden_layers
    seg = {"segment_len": 8, "chunk_train": 4, "chunk_prefill": 4}
    with pytest.raises(ConfigError, match=rf"\[{n}\] out of range for a {n}-layer .* 0\.\.{n - 1}"):
        MemorySettings(memory_layers=[n], **seg).resolve(model)
    # negative indices count from the end
    assert MemorySettings(memory_layers=[-1], **seg).resolve(model).layer_indices == (n - 1,)
    with pytest.raises(ConfigError, match="same layer twice"):
        MemorySettings(memory_layers=[1, 1 - n], **seg).resolve(model)


def test_segment_len_defaults_to_sliding_window_on_olmo3_and_is_required_otherwise():
    olmo3 = random_model("olmo3", "tiny", seed=0)
    assert MemorySettings(chunk_train=4, chunk_prefill=4).resolve(olmo3).segment_len == 8
    with pytest.raises(ConfigError, match="exceeds the base's sliding window 8"):
        MemorySettings(segment_len=16, chunk_train=4, chunk_prefill=4).resolve(olmo3)
    for family, name in (("olmo2", "OLMo-2"), ("olmo", "OLMo v1")):
        model = random_model(family, "tiny", seed=0)
        with pytest.raises(ConfigError, match=f"segment_len is required for {name}"):
            MemorySettings().resolve(model)
        assert MemorySettings(segment_len=32).resolve(model).segment_len == 32
    too_long = MemorySettings(segment_len=2 * olmo3.config.max_position_embeddings)
    with pytest.raises(ConfigError):
        too_long.resolve(random_model("olmo2", "tiny", seed=0))


@pytest.mark.parametrize("key", ["chunk_train", "chunk_prefill", "chunk_decode"])
def test_chunk_must_divide_segment(key):
    model = random_model("olmo2", "tiny", seed=0)
    with pytest.raises(ConfigError, match=rf"memory.{key} = 12 does not fit .* divisors of 32"):
        MemorySettings(segment_len=32, **{key: 12}).resolve(model)
    with pytest.raises(ConfigError, match=rf"memory.{key} = 64"):
        MemorySettings(segment_len=32, **{key: 64}).resolve(model)


def test_embedding_writes_refused_at_layer_0():
    model = random_model("olmo2", "tiny", seed=0)
    with pytest.raises(ConfigError, match="token embeddings"):
        MemorySettings(memory_layers=[0], segment_len=16).resolve(model)
    # MAC storing its attention output reads contextual states even at layer 0
    r = MemorySettings(memory_layers=[0], mode="mac", segment_len=16).resolve(model)
    assert r.layer_indices == (0,)


def test_head_dim_default_and_engine_kwargs():
    model = random_model("olmo2", "tiny", seed=0)  # hidden 64
    r = MemorySettings(segment_len=8, heads=4, chunk_train=4, chunk_prefill=4).resolve(model)
    assert (r.hidden_size, r.head_dim) == (64, 16)
    kw = MemorySettings(heads=2, hidden=7).engine_kwargs()
    assert kw["heads"] == 2 and kw["hidden"] == 7 and "init_seed" not in kw
    assert kw["granularity"] == "token"


def test_granularity_reaches_the_engine_and_is_validated():
    from olmokit.memory.layers import neural_config

    model = random_model("olmo2", "tiny", seed=0)
    s = MemorySettings(segment_len=8, chunk_train=4, chunk_prefill=4, granularity="chunk")
    assert neural_config(s.resolve(model)).granularity == "chunk"
    with pytest.raises(
        ConfigError, match=r"memory\.granularity: Input should be 'token' or 'chunk'"
    ):
        MemoryConfig.from_dict({"memory": {"granularity": "per_token"}})


def test_training_section_maps_onto_training_arguments(tmp_path):
    from olmokit.memory.train import training_arguments

    cfg = MemoryConfig.from_dict(
        {"training": {"learning_rate": 0.01, "save_steps": 7, "bf16": True, "max_steps": 3}}
    )
    args = training_arguments(cfg.training, tmp_path, use_cpu=True)
    assert args.learning_rate == 0.01 and args.max_steps == 3
    assert args.save_strategy == "steps" and args.save_steps == 7
    assert args.bf16 is False  # bf16 means a bfloat16 base, not autocast over the fp32 memory
    assert cfg.base_dtype() == "bfloat16"
    none = MemoryConfig.from_dict({"training": {"save_steps": None}})
    assert training_arguments(none.training, tmp_path, use_cpu=True).save_strategy == "no"


def test_example_configs_fit_their_bases():
    """The OLMo-2-1B and OLMo-3-7B examples pass every check against their real architectures."""
    olmo2_1b = Olmo2Config(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=16,
        intermediate_size=8192,
        max_position_embeddings=4096,
    )
    olmo3_7b = Olmo3Config(max_position_embeddings=65536)  # 32 layers, width 4096, window 4096
    r2 = MemoryConfig.from_yaml(CONFIGS / "olmo2-1b.yaml").memory.resolve(olmo2_1b)
    assert (r2.segment_len, r2.layer_indices, r2.head_dim) == (2048, (4, 8, 12), 128)
    r3 = MemoryConfig.from_yaml(CONFIGS / "olmo3-7b.yaml").memory.resolve(olmo3_7b)
    assert (r3.segment_len, r3.layer_indices, r3.head_dim) == (4096, (8, 16, 24), 256)
    tiny = MemoryConfig.from_yaml(CONFIGS / "tiny.yaml")
    assert tiny.model.name == "olmo2-stdlib" and tiny.data.seq_len == 4 * tiny.memory.segment_len


def test_gate_biases_are_settings_checked_and_reach_the_engine():
    """alpha/eta/theta biases are MemorySettings keys (the demo sets alpha's through them), checked
    (finite, within [-30, 30]) and given to every memory layer's gate projections."""
    from olmokit.memory import attach_memory
    from olmokit.memory.model import iter_memory_layers

    for key in ("alpha_bias", "eta_bias", "theta_bias"):
        for bad in (float("inf"), float("nan"), 31.0, -31.0):
            with pytest.raises(ConfigError, match=key):
                MemorySettings.from_dict({key: bad})
    defaults = MemorySettings()
    assert (defaults.alpha_bias, defaults.eta_bias, defaults.theta_bias) == (-5.0, 2.0, 0.0)
    model = random_model("olmo2", "tiny", seed=0)
    s = MemorySettings(
        segment_len=8, chunk_train=4, chunk_prefill=4, alpha_bias=-8.0, eta_bias=1.5,
        theta_bias=-0.5,
    )  # fmt: skip
    mm = attach_memory(model, s)
    for _, layer in iter_memory_layers(mm):
        for name, want in (("to_alpha", -8.0), ("to_eta", 1.5), ("to_theta", -0.5)):
            bias = getattr(layer.memory, name).bias
            assert torch.equal(bias, torch.full_like(bias, want)), name


def test_carry_context_is_checked_and_auto_resolves_to_the_window():
    with pytest.raises(ConfigError, match="carry_context must be >= 0"):
        MemorySettings.from_dict({"carry_context": -1})
    with pytest.raises(ConfigError, match=r"MAC attends per segment over \[persistent"):
        MemoryConfig.from_dict({"memory": {"mode": "mac", "carry_context": "auto"}})
    with pytest.raises(ConfigError, match="persistent_tokens is not supported"):
        MemorySettings.from_dict({"mode": "mal", "carry_context": 4, "persistent_tokens": 2})
    chunks = {"chunk_train": 4, "chunk_prefill": 4}
    olmo3 = random_model("olmo3", "tiny", seed=0)
    olmo2 = random_model("olmo2", "tiny", seed=0)
    assert MemorySettings(**chunks).resolve(olmo3).carry_context == 0  # off by default
    assert MemorySettings(carry_context="auto", **chunks).resolve(olmo3).carry_context == 8
    auto2 = MemorySettings(carry_context="auto", segment_len=12, chunk_train=4, chunk_prefill=4)
    assert auto2.resolve(olmo2).carry_context == 12  # no sliding window: one segment
    # more than the window is allowed (OLMo-3's full-attention layers see it all)
    assert MemorySettings(carry_context=40, **chunks).resolve(olmo3).carry_context == 40


def test_qk_and_key_conv_inits_reach_the_engine_and_are_validated():
    from olmokit.memory.layers import neural_config

    model = random_model("olmo2", "tiny", seed=0)
    s = MemorySettings(
        segment_len=8, chunk_train=4, chunk_prefill=4, conv_kernel=2, qk_init="tied",
        key_conv_init="previous_token",
    )  # fmt: skip
    cfg = neural_config(s.resolve(model))
    assert (cfg.qk_init, cfg.key_conv_init) == ("tied", "previous_token")
    with pytest.raises(ConfigError, match="previous_token' needs conv_kernel >= 2"):
        MemoryConfig.from_dict({"memory": {"key_conv_init": "previous_token"}})
    with pytest.raises(ConfigError, match=r"memory\.qk_init: Input should be 'independent' or"):
        MemoryConfig.from_dict({"memory": {"qk_init": "shared"}})
