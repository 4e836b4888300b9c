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

from ..errors import OlmokitError
from ..family import FamilyAdapter

__all__ = [
    "HookSpec",
    "hook_specs",
    "optional_specs",
    "get_act_name",
    "resolve_name",
    "UnknownHookError",
]


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


#: Hook points that exist only after a TL switch (``set_use_attn_result`` ...): group -> block hooks.
_OPTIONAL: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "attn_result": [
        (
            "attn.hook_result",
            ("batch", "pos", "n_heads", "d_model"),
            "each head's z_h @ W_O[h] (o_proj output split by head, before any post-norm)",
        )
    ],
    "split_qkv_input": [
        (
            "hook_q_input",
            ("batch", "pos", "n_heads", "d_model"),
            "per-head copy of the q_proj input",
        ),
        (
            "hook_k_input",
            ("batch", "pos", "n_kv_heads", "d_model"),
            "per-KV-head copy of the k_proj input",
        ),
        (
            "hook_v_input",
            ("batch", "pos", "n_kv_heads", "d_model"),
            "per-KV-head copy of the v_proj input",
        ),
    ],
    "mlp_in": [
        ("hook_mlp_in", _RESID, "the MLP sublayer's input (v1: before ln2), editable on its own"),
    ],
}


def optional_specs(adapter: FamilyAdapter, group: str) -> dict[str, HookSpec]:
    """The hook points one TL switch adds, for every block."""
    out: dict[str, HookSpec] = {}
    for i in range(adapter.num_layers):
        for short, shape, doc in _OPTIONAL[group]:
            name = f"blocks.{i}.{short}"
            out[name] = HookSpec(name, i, shape, doc)
    return out


class UnknownHookError(OlmokitError, KeyError, ValueError):
    """A hook name this model does not have; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


#: TransformerLens's act-name aliases (``utils.get_act_name``) and its layer-type aliases.
_ACT_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "scores": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores", "raw_out"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
#: olmokit shorthands with no TL equivalent
_EXTRA = {"attn_raw_out": "attn.hook_raw_out", "mlp_raw_out": "mlp.hook_raw_out"}
#: TL full names that are another name here (same value): suffix inside a block -> ours
_FULL_ALIASES = {
    "hook_in": "hook_resid_pre",  # TL 3.x/4.x bridge block input
    "hook_out": "hook_resid_post",
    "attn.hook_rot_q": "attn.hook_q",  # olmokit's hook_q is after RoPE (TL's rot_q)
    "attn.hook_rot_k": "attn.hook_k",
}

_SHORTHAND_RE = re.compile(r"^([a-z_]+?)(-?\d+)([a-z0-9_]*)$")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Expand a shorthand to a full hook name, as TransformerLens's ``utils.get_act_name``.

    ``get_act_name("q", 2)`` → ``blocks.2.attn.hook_q``; ``"q2"``, ``"scale2ln1"`` (compact form),
    TL's aliases (``"attn"`` → pattern, ``"value"`` → v, ...) and layer types (``"a"``, ``"m"``,
    ``"ln1"``, ``"ln2"``, ``"ln1_post"``, ``"ln2_post"``) work; full names pass through. Whether the
    model *has* the hook is checked where the name is used (``HookedOlmo``, ``ActivationCache``).
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    if layer is None:
        m = _SHORTHAND_RE.match(name)
        if m and (m.group(1) in _ACT_ALIASES or m.group(1) in _KNOWN or m.group(1) in _EXTRA):
            name, layer, layer_type = m.group(1), int(m.group(2)), (m.group(3) or layer_type)
    name = _ACT_ALIASES.get(name, name)
    if name == "embed":
        return "hook_embed"
    if name in ("scale", "normalized") and layer is None:
        return f"ln_final.hook_{name}"
    if name in _EXTRA:
        if layer is None:
            raise ValueError(f"hook {name!r} needs a layer index")
        return f"blocks.{layer}.{_EXTRA[name]}"
    if layer is None:
        if name in _KNOWN:
            raise ValueError(f"hook {name!r} needs a layer index")
        return f"hook_{name}"
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if name in ("scale", "normalized") and not layer_type:
        raise ValueError(f"hook {name!r} needs layer_type (ln1, ln2, ln1_post or ln2_post)")
    prefix = f"blocks.{layer}." + (f"{layer_type}." if layer_type else "")
    return f"{prefix}hook_{name}"


_KNOWN = (
    _ATTN_NAMES
    | _MLP_NAMES
    | {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "scale", "normalized"}
    | {"q_input", "k_input", "v_input", "mlp_in", "in", "out"}
)


def _canonical(name: str) -> str:
    """TL's other names for the same value mapped to this module's names."""
    if name.startswith("blocks."):
        _, layer, short = name.split(".", 2)
        if short in _FULL_ALIASES:
            return f"blocks.{layer}.{_FULL_ALIASES[short]}"
    return name


def _valid_names_text(valid) -> str:
    shorts = sorted({re.sub(r"^blocks\.\d+\.", "blocks.{i}.", n) for n in valid})
    return ", ".join(shorts)


def resolve_name(key: str | tuple, n_layers: int, valid=None) -> str:
    """A full name from a full name, a shorthand or a ``(name, layer[, layer_type])`` tuple.

    Negative layers count from the end, as in Python indexing. TL's alternative names for the same
    value (``blocks.i.hook_in``, ``attn.hook_rot_q`` ...) map to this model's names. With ``valid`` (the
    model's names), a name the model does not have raises :class:`UnknownHookError` listing them.
    """
    if isinstance(key, tuple):
        name, layer, *rest = key
        if layer is not None and layer < 0:
            layer += n_layers
        full = get_act_name(name, layer, rest[0] if rest else None)
    elif key.startswith("blocks.") or key.startswith("hook_") or key.startswith("ln_final"):
        full = key
    else:
        full = get_act_name(key)
    full = _canonical(full)
    if valid is not None and full not in valid:
        hint = ""
        if full.endswith(("attn.hook_result",)):
            hint = " (call model.set_use_attn_result(True) first)"
        elif full.endswith(("hook_q_input", "hook_k_input", "hook_v_input")):
            hint = " (call model.set_use_split_qkv_input(True) first)"
        elif full.endswith("hook_mlp_in"):
            hint = " (call model.set_use_hook_mlp_in(True) first)"
        elif ".ln1." in full or ".ln2." in full:
            hint = " (OLMo-2/3 are post-norm: their block norms are ln1_post/ln2_post)"
        raise UnknownHookError(
            f"unknown hook {full!r}: this model has no such hook{hint}; valid names: "
            f"{_valid_names_text(valid)}"
        )
    return full
