"""Hook names: the TransformerLens-compatible vocabulary, per OLMo generation, with shapes.

Every hook point has a full name (``blocks.3.attn.hook_q``), a shape written in symbols
(``batch pos n_heads d_head``) that :mod:`olmokit.lens.planner` turns into bytes, and a one-line
description of *where* it sits in the HF computation. The set depends on the generation because the
norms do: OLMo v1 is pre-norm (``ln1``/``ln2`` feed attention/MLP), OLMo-2/3 are post-norm
(``ln1_post``/``ln2_post`` normalise the sublayer outputs before they are added).

Shorthands follow TransformerLens: ``get_act_name("k", 6)`` → ``blocks.6.attn.hook_k``, and
``"k6"``, ``("k", 6)`` or ``("k", -1)`` are accepted wherever a name is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..family import FamilyAdapter

__all__ = ["HookSpec", "hook_specs", "get_act_name", "resolve_name"]


@dataclass(frozen=True)
class HookSpec:
    """One hook point: name, layer (``None`` for global hooks), shape symbols and meaning."""

    name: str
    layer: int | None
    shape: tuple[str, ...]
    doc: str
    fp32: bool = (
        False  #: norm scales are computed in fp32 (as HF's norms do) whatever the model dtype
    )


_RESID = ("batch", "pos", "d_model")
_SCALE = ("batch", "pos", "one")

# (short name, shape, doc, generations) — ``{ln1}``/``{ln2}`` are expanded per generation below.
_BLOCK_HOOKS: list[tuple[str, tuple[str, ...], str, tuple[int, ...]]] = [
    (
        "hook_resid_pre",
        _RESID,
        "residual stream entering the block (= HF hidden_states[i])",
        (1, 2, 3),
    ),
    (
        "ln1.hook_scale",
        _SCALE,
        "std of resid_pre (divisor) in input_layernorm (non-parametric LayerNorm)",
        (1,),
    ),
    ("ln1.hook_normalized", _RESID, "input_layernorm output = attention input", (1,)),
    (
        "attn.hook_q",
        ("batch", "pos", "n_heads", "d_head"),
        "queries per head after clip_qkv (v1) / q_norm (v2/3) and RoPE",
        (1, 2, 3),
    ),
    (
        "attn.hook_k",
        ("batch", "pos", "n_kv_heads", "d_head"),
        "keys per KV head after clip_qkv / k_norm and RoPE (before GQA repeat)",
        (1, 2, 3),
    ),
    (
        "attn.hook_v",
        ("batch", "pos", "n_kv_heads", "d_head"),
        "values per KV head after clip_qkv (no norm, no RoPE)",
        (1, 2, 3),
    ),
    (
        "attn.hook_attn_scores",
        ("batch", "n_heads", "pos", "key_pos"),
        "scaled q·k plus additive mask (finfo.min where masked), pre-softmax; forces eager math in this layer",
        (1, 2, 3),
    ),
    (
        "attn.hook_pattern",
        ("batch", "n_heads", "pos", "key_pos"),
        "softmax attention weights (sliding-window layers: exactly 0 outside the window); forces eager math in this layer",
        (1, 2, 3),
    ),
    (
        "attn.hook_z",
        ("batch", "pos", "n_heads", "d_head"),
        "per-head attention output = o_proj input",
        (1, 2, 3),
    ),
    (
        "attn.hook_raw_out",
        _RESID,
        "o_proj output before post_attention_layernorm (NOT added to the residual)",
        (2, 3),
    ),
    (
        "ln1_post.hook_scale",
        _SCALE,
        "rms of attn raw_out (divisor) in post_attention_layernorm",
        (2, 3),
    ),
    (
        "hook_attn_out",
        _RESID,
        "what attention adds to the residual (v1: o_proj output; v2/3: post-norm output)",
        (1, 2, 3),
    ),
    ("hook_resid_mid", _RESID, "resid_pre + attn_out (exactly)", (1, 2, 3)),
    (
        "ln2.hook_scale",
        _SCALE,
        "std of resid_mid (divisor) in the pre-MLP norm (HF's post_attention_layernorm in v1!)",
        (1,),
    ),
    ("ln2.hook_normalized", _RESID, "pre-MLP norm output = MLP input", (1,)),
    ("mlp.hook_pre", ("batch", "pos", "d_mlp"), "gate_proj output (before SiLU)", (1, 2, 3)),
    ("mlp.hook_pre_linear", ("batch", "pos", "d_mlp"), "up_proj output", (1, 2, 3)),
    ("mlp.hook_post", ("batch", "pos", "d_mlp"), "silu(gate) * up = down_proj input", (1, 2, 3)),
    (
        "mlp.hook_raw_out",
        _RESID,
        "down_proj output before post_feedforward_layernorm (NOT added to the residual)",
        (2, 3),
    ),
    (
        "ln2_post.hook_scale",
        _SCALE,
        "rms of mlp raw_out (divisor) in post_feedforward_layernorm",
        (2, 3),
    ),
    (
        "hook_mlp_out",
        _RESID,
        "what the MLP adds to the residual (v1: down_proj output; v2/3: post-norm output)",
        (1, 2, 3),
    ),
    (
        "hook_resid_post",
        _RESID,
        "resid_mid + mlp_out (exactly) = HF hidden_states[i+1] (HF's last entry is after the final norm)",
        (1, 2, 3),
    ),
]

_GLOBAL_PRE = [("hook_embed", _RESID, "token embeddings (= resid_pre of block 0)")]
_GLOBAL_POST = [
    (
        "ln_final.hook_scale",
        _SCALE,
        "rms (v1: std) of the last resid_post, the final norm's divisor",
    ),
    ("ln_final.hook_normalized", _RESID, "final norm output = lm_head input"),
]


def hook_specs(adapter: FamilyAdapter) -> dict[str, HookSpec]:
    """All hook points of a model, in forward order."""
    gen = adapter.generation
    specs: dict[str, HookSpec] = {}
    for name, shape, doc in _GLOBAL_PRE:
        specs[name] = HookSpec(name, None, shape, doc)
    for i in range(adapter.num_layers):
        for short, shape, doc, gens in _BLOCK_HOOKS:
            if gen not in gens:
                continue
            name = f"blocks.{i}.{short}"
            specs[name] = HookSpec(name, i, shape, doc, fp32=short.endswith("hook_scale"))
    for name, shape, doc in _GLOBAL_POST:
        specs[name] = HookSpec(name, None, shape, doc, fp32=name.endswith("hook_scale"))
    return specs


#: shorthand → template (TransformerLens's ``get_act_name`` vocabulary, plus OLMo's raw outputs).
_SHORT: dict[str, str] = {
    "embed": "hook_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "z": "blocks.{l}.attn.hook_z",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "attn": "blocks.{l}.attn.hook_pattern",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "scores": "blocks.{l}.attn.hook_attn_scores",
    "attn_raw_out": "blocks.{l}.attn.hook_raw_out",
    "pre": "blocks.{l}.mlp.hook_pre",
    "pre_linear": "blocks.{l}.mlp.hook_pre_linear",
    "post": "blocks.{l}.mlp.hook_post",
    "mlp_raw_out": "blocks.{l}.mlp.hook_raw_out",
    "scale": "blocks.{l}.{t}.hook_scale",
    "normalized": "blocks.{l}.{t}.hook_normalized",
}

_SHORTHAND_RE = re.compile(r"^([a-z_]+?)(-?\d+)([a-z0-9_]*)$")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Expand a shorthand to a full hook name: ``get_act_name("q", 2)`` → ``blocks.2.attn.hook_q``.

    Also accepts ``"q2"`` and ``"scale2ln1"`` (TransformerLens's compact form). Full names pass through.
    ``scale``/``normalized`` need ``layer_type`` ("ln1", "ln2", "ln1_post", "ln2_post"); with no layer
    they refer to ``ln_final``.
    """
    if layer is None and name not in _SHORT:
        m = _SHORTHAND_RE.match(name)
        if m and m.group(1) in _SHORT:
            name, layer, layer_type = m.group(1), int(m.group(2)), (m.group(3) or layer_type)
    if name not in _SHORT:
        return name
    if name in ("scale", "normalized") and layer is None:
        return f"ln_final.hook_{name}"
    template = _SHORT[name]
    if "{l}" in template and layer is None:
        raise ValueError(f"hook {name!r} needs a layer index")
    if "{t}" in template and not layer_type:
        raise ValueError(f"hook {name!r} needs layer_type (ln1, ln2, ln1_post or ln2_post)")
    return template.format(l=layer, t=layer_type)


def resolve_name(key: str | tuple, n_layers: int) -> str:
    """A full name from a full name, a shorthand or a ``(name, layer[, layer_type])`` tuple.

    Negative layers count from the end, as in Python indexing.
    """
    if isinstance(key, tuple):
        name, layer, *rest = key
        if layer is not None and layer < 0:
            layer += n_layers
        return get_act_name(name, layer, rest[0] if rest else None)
    if key.startswith("blocks.") or key.startswith("hook_") or key.startswith("ln_final"):
        return key
    return get_act_name(key)
