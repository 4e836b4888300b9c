"""Settings of ``olmokit zoo build`` (the YAML files under ``configs/zoo/`` validate against it)."""

from __future__ import annotations

from pydantic import Field

from ...config import OlmokitConfig

__all__ = ["ZooBuildConfig"]


class ZooBuildConfig(OlmokitConfig):
    """Settings of ``olmokit zoo build`` (defaults reproduce the shipped ``olmo2-stdlib``)."""

    name: str = Field("olmo2-stdlib", description="model name written into the card")
    model_type: str = Field("olmo2", description="olmo, olmo2 or olmo3")
    size: str = Field("small", description="architecture preset (see olmokit.zoo.presets.SIZES)")
    steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(16, gt=0, description="sequences per step")
    seq_len: int = Field(256, gt=8, description="tokens per sequence")
    learning_rate: float = Field(3e-3, gt=0, description="peak AdamW learning rate (cosine decay)")
    warmup_steps: int = Field(60, ge=0, description="linear warm-up steps")
    seed: int = Field(0, description="seed for init, data order and sampling")
    repeat_prose: int = Field(2, ge=1, description="times each prose document appears in training")
    save_dtype: str = Field(
        "float16", description="dtype of the written weights (keeps the package small)"
    )
    max_corpus_docs: int | None = Field(None, description="cap on documents (for quick tests)")
