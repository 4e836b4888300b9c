"""Model configs olmokit can build itself: the shipped default's architecture and tiny test presets.

``small`` is the architecture of the shipped, trained default (``olmo2-stdlib``); ``tiny`` presets are
seeded random-init models of every generation for tests (like OLMo-core's ``olmo2_1M`` or mergekit's
``make_picollama``): GQA everywhere, and OLMo-3 with sliding-window *and* full-attention layers.

Presets never branch on ``model_type``: what differs between generations (the config class, the norm
epsilon key, the sliding-window layout) is read from the family's :class:`~olmokit.family.FamilySpec`,
so a newly registered family gets presets without touching this module.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import PretrainedConfig

from ..errors import ConfigError
from ..family import FAMILIES

__all__ = ["ZOO_VOCAB_SIZE", "SPECIAL_TOKENS", "make_config", "random_model", "SIZES"]

#: Vocabulary of the zoo tokenizer (special tokens included).
ZOO_VOCAB_SIZE = 4096

#: Special tokens of the zoo tokenizer, in id order (ids 0..3). ChatML markers as in seed 000.
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
EOS_ID, PAD_ID = 0, 1

#: name -> architecture sizes. ``small`` ≈ 5.3M parameters (untied), ``tiny`` ≈ 0.6M.
SIZES: dict[str, dict[str, Any]] = {
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=688,
        max_position_embeddings=512,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
    ),
}

#: Sliding-window width of the presets' sliding layers, by size (tiny: 8, so short tests cross it).
SLIDING_WINDOW = {"small": 64, "tiny": 8}
#: Norm epsilon of the presets, for families whose config has one.
NORM_EPS = 1e-6


def make_config(
    model_type: str = "olmo2",
    size: str = "small",
    vocab_size: int = ZOO_VOCAB_SIZE,
    **overrides: Any,
) -> PretrainedConfig:
    """A config for ``model_type`` ("olmo", "olmo2", "olmo3") at a named size, with overrides.

    With sliding-window attention a ``tiny`` model gets at least ``full_attention_every`` layers, so
    it has both kinds of layer.
    """
    if model_type not in FAMILIES:
        raise ConfigError(f"unknown model_type {model_type!r}; valid: {sorted(FAMILIES)}")
    spec = FAMILIES[model_type]
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; valid: {sorted(SIZES)}")
    kwargs: dict[str, Any] = dict(SIZES[size])
    kwargs.update(
        vocab_size=vocab_size,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
        tie_word_embeddings=False,
        rope_theta=10_000.0,
    )
    if spec.has_sliding_window:
        every = spec.full_attention_every or 1
        layers = overrides.get("num_hidden_layers", kwargs["num_hidden_layers"])
        if size == "tiny":
            kwargs["num_hidden_layers"] = layers = max(layers, every)
        kwargs["sliding_window"] = SLIDING_WINDOW[size]
        kwargs["layer_types"] = [
            "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)
        ]
    if spec.norm_eps_key is not None:
        kwargs[spec.norm_eps_key] = NORM_EPS
    kwargs.update(overrides)
    config = getattr(transformers, spec.config_class)(**kwargs)
    config.architectures = [spec.causal_lm_class]
    return config


def random_model(
    model_type: str = "olmo2",
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    **overrides: Any,
):
    """A seeded random-init OLMo model (same seed → same weights on the same torch version)."""
    from transformers import AutoModelForCausalLM

    config = make_config(model_type, size, **overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
