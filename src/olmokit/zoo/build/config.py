"""Settings of ``olmokit zoo build`` (the YAML files under ``configs/zoo/`` validate against it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ...config import OlmokitConfig

__all__ = ["ZooBuildConfig"]


class ZooBuildConfig(OlmokitConfig):
    """Settings of ``olmokit zoo build`` (defaults reproduce the shipped ``olmo2-stdlib``)."""

    name: str = Field("olmo2-stdlib", description="model name written into the card")
    model_type: str = Field("olmo2", description="olmo, olmo2 or olmo3")
    size: str = Field("small", description="architecture preset (see olmokit.zoo.presets.SIZES)")
    architecture: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the preset's config keys, e.g. {num_hidden_layers: 2}",
    )
    steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(16, gt=0, description="sequences per step")
    seq_len: int = Field(256, gt=8, description="tokens per sequence")
    learning_rate: float = Field(3e-3, gt=0, description="peak AdamW learning rate (cosine decay)")
    warmup_steps: int = Field(60, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (norm weights exempt)")
    embedding_init_std: float | None = Field(
        None,
        gt=0,
        description="re-draw the input embeddings with this std (default: the config's 0.02); "
        "with post-norm OLMo-2 a token's identity must not drown under the unit-scale sublayer "
        "outputs for an induction circuit to form in minutes",
    )
    post_norm_init: float | None = Field(
        None,
        gt=0,
        description="initial weight of the post-sublayer norms (OLMo-2/3; default 1): small "
        "values start each layer near the identity, as LayerScale does",
    )
    seed: int = Field(0, description="seed for init, data order and sampling")
    repeat_prose: int = Field(2, ge=1, description="times each prose document appears in training")
    repeat_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of training sequences that are a random token sequence repeated "
        "(loss on the repeats only): the data that grows induction heads",
    )
    repeat_min_len: int = Field(4, ge=2, description="shortest repeated random sequence")
    repeat_max_len: int | None = Field(
        None, ge=2, description="longest repeated random sequence (default seq_len // 2)"
    )
    vocab_size: int | None = Field(
        None,
        ge=260,
        description="size of the trained BPE vocabulary (default 4096, the zoo's); a small "
        "vocabulary trains faster and makes random-token probes cover every token",
    )
    tokenizer: str | None = Field(
        None,
        description="reuse this shipped zoo model's tokenizer (same token ids, no tokenizer "
        "training) instead of training one",
    )
    save_dtype: str = Field(
        "float16", description="dtype of the written weights (keeps the package small)"
    )
    max_corpus_docs: int | None = Field(None, description="cap on documents (for quick tests)")

    @model_validator(mode="after")
    def _check_repeat_lengths(self) -> ZooBuildConfig:
        if self.tokenizer is not None and self.vocab_size is not None:
            raise ValueError("give tokenizer (reuse one) or vocab_size (train one), not both")
        longest = self.repeat_max_len or self.seq_len // 2
        if not self.repeat_min_len <= longest <= self.seq_len // 2:
            raise ValueError(
                f"repeat_min_len ({self.repeat_min_len}) <= repeat_max_len ({longest}) <= "
                f"seq_len // 2 ({self.seq_len // 2}) must hold (a sequence must fit twice)"
            )
        return self
