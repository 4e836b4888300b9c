"""``HookedOlmoConfig``: the model's sizes under TransformerLens's ``cfg`` field names.

TransformerLens code reads ``model.cfg.n_layers``, ``model.cfg.d_head``, ``model.cfg.device`` and so on;
a notebook that does so must run unchanged on OLMo, so ``HookedOlmo.cfg`` is an attribute object with
TL's names, derived from the HF config through the family adapter (never copied by hand). Dict-style
reads (``cfg["d_model"]``) keep working for the lens's own code and older scripts, and ``to_dict()``
gives a JSON-ready copy for run summaries.

Fields that say how OLMo differs from GPT-2 (``normalization_type``, ``positional_embedding_type``,
``final_rms``, ``attn_types``) carry TL's own vocabulary for OLMo (TL's OLMo/OLMo-2/OLMo-3 configs),
plus ``norm_placement``/``generation`` which TL lacks (post-norm changes what ``hook_attn_out`` means).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..family import FamilyAdapter

__all__ = ["HookedOlmoConfig", "config_from_adapter"]


@dataclass
class HookedOlmoConfig:
    """TransformerLens ``HookedTransformerConfig`` fields that describe an OLMo model."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_key_value_heads: int | None
    act_fn: str
    normalization_type: str  #: "LN" (v1: parameter-free LayerNorm) or "RMS" (v2/3)
    positional_embedding_type: str  #: always "rotary"
    rotary_base: float
    eps: float
    device: torch.device
    dtype: torch.dtype
    default_prepend_bos: bool  #: True, as TL's OLMo support (see docs/lens.md, "BOS")
    original_architecture: str
    tokenizer_name: str | None
    model_name: str
    gated_mlp: bool = True
    final_rms: bool = False
    attn_only: bool = False
    d_vocab_out: int = -1
    tokenizer_prepends_bos: bool = False
    tokenizer_appends_eos: bool = False
    attn_types: list[str] = field(default_factory=list)
    window_size: int | None = None
    clip_qkv: float | None = None
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    #: not in TL: OLMo generation (1, 2, 3) and where the per-block norms sit ("pre" or "post")
    generation: int = 1
    norm_placement: str = "pre"

    # ---------------------------------------------------------------- compatibility
    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (``n_key_value_heads`` or, for MHA, ``n_heads``); olmokit's older name."""
        return self.n_key_value_heads or self.n_heads

    def __getitem__(self, key: str) -> Any:
        """Dict-style read, kept for code written against the old dict ``cfg``."""
        if key == "n_kv_heads":
            return self.n_kv_heads
        if key in self._names():
            return getattr(self, key)
        raise KeyError(f"cfg has no field {key!r}; fields: {', '.join(self._names())}")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (device and dtype as strings)."""
        out = asdict(self)
        out["device"], out["dtype"] = str(self.device), str(self.dtype).replace("torch.", "")
        out["n_kv_heads"] = self.n_kv_heads
        return out


def config_from_adapter(
    adapter: FamilyAdapter,
    model: torch.nn.Module,
    tokenizer: Any = None,
    model_name: str | None = None,
    default_prepend_bos: bool = True,
) -> HookedOlmoConfig:
    """Build the TL-named config of ``model`` from what the adapter reads off the HF config."""
    hf = adapter.config
    param = next(model.parameters())
    rope = getattr(hf, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "full_attention" in rope:
        rope = rope["full_attention"]
    theta = (rope.get("rope_theta") if isinstance(rope, dict) else None) or getattr(
        hf, "rope_theta", 10000.0
    )
    rms = adapter.spec.norm_type == "rmsnorm"
    eps = adapter.norm_eps(adapter.final_norm())
    appends_eos = prepends_bos = False
    if tokenizer is not None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        prepends_bos = len(probe) > len(plain) and probe[0] != plain[0]
        appends_eos = len(probe) > len(plain) and probe[-1] == tokenizer.eos_token_id
    kv = adapter.num_kv_heads
    return HookedOlmoConfig(
        n_layers=adapter.num_layers,
        d_model=adapter.hidden_size,
        n_heads=adapter.num_heads,
        d_head=adapter.head_dim,
        d_mlp=adapter.intermediate_size,
        d_vocab=adapter.vocab_size,
        d_vocab_out=adapter.vocab_size,
        n_ctx=int(getattr(hf, "max_position_embeddings", 2048)),
        n_key_value_heads=kv if kv != adapter.num_heads else None,
        act_fn=str(getattr(hf, "hidden_act", "silu")),
        normalization_type="RMS" if rms else "LN",
        positional_embedding_type="rotary",
        rotary_base=float(theta),
        eps=float(eps),
        device=param.device,
        dtype=param.dtype,
        default_prepend_bos=default_prepend_bos,
        original_architecture=adapter.spec.causal_lm_class,
        tokenizer_name=getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
        model_name=model_name or str(getattr(hf, "_name_or_path", "") or adapter.model_type),
        final_rms=rms,
        tokenizer_prepends_bos=prepends_bos,
        tokenizer_appends_eos=appends_eos,
        attn_types=["local" if t == "sliding_attention" else "global" for t in adapter.layer_types],
        window_size=adapter.sliding_window,
        clip_qkv=adapter.clip_qkv,
        generation=adapter.generation,
        norm_placement=adapter.norm_placement,
    )
