"""Adapter files (save/load, with base checks) and folding a JoLA edit into plain HF weights.

An adapter directory holds only the edit (written through :mod:`olmokit.inject`):
``jola_adapter.safetensors`` (fp32 tensors keyed ``layers.{i}.{attn_A,attn_v,log_g1,log_g2}``) and
``jola_config.json`` (format version, the base fingerprint — family, sizes, every base tensor's
shape, a weights hash —, applied layers, gate settings). Loading refuses a base of another family,
size, depth or tensor layout with a message that says what differs, and warns when only the weights
differ. Version 1 adapters (base recorded by name and sizes only) still load.

Folding (:func:`merge_jola`) is exact because the edit is affine in ``o_proj``'s input: with
deterministic gates, ``o_proj(s ⊙ z + c) = (W·diag(s)) z + (W c + b)``. The scale becomes a per-column
scaling of ``o_proj.weight`` and the shift an ``o_proj`` bias. Stock OLMo configs can only express
that bias for every attention projection of every layer (the family adapter's
``enable_attention_bias``), so the others get exact zeros; the written directory then loads in stock
``from_pretrained`` with no missing or unexpected keys. Non-finite JoLA tensors are refused before
anything is written into the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..family import get_adapter
from ..inject import AdapterFormat, check_base
from ..inject import read_adapter as _read_files
from ..inject import save_adapter as _save_files
from ..loading import load_model, load_tokenizer, save_model
from ..zoo.registry import DEFAULT_MODEL
from .config import JoLASettings
from .layer import HardConcrete
from .model import (
    attach_jola,
    detach_jola,
    get_jola_state,
    has_jola,
    jola_edits,
    jola_state_dict,
    load_jola_state_dict,
    set_gate_mode,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT",
    "adapter_base_name",
    "check_adapter_base",
    "FORMAT_VERSION",
    "load_jola",
    "merge_adapter",
    "merge_jola",
    "read_adapter",
    "save_jola",
    "save_merged",
]

ADAPTER_CONFIG = "jola_config.json"
ADAPTER_WEIGHTS = "jola_adapter.safetensors"
FORMAT = "olmokit-jola"
#: 2: ``base_model`` is the injection base's fingerprint (sizes, tensor shapes, weights hash);
#: 1: ``base_model`` held name, model_type and four sizes at its top level (still read).
FORMAT_VERSION = 2
ADAPTER_FORMAT = AdapterFormat(
    FORMAT, FORMAT_VERSION, ADAPTER_WEIGHTS, ADAPTER_CONFIG, min_version=1, label="JoLA"
)
_V1_SIZES = ("num_layers", "num_heads", "head_dim", "hidden_size")


def save_jola(
    model: nn.Module, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write the adapter (tensors + JSON config) to ``out_dir``; nothing of the base model."""
    state = get_jola_state(model)
    meta: dict[str, Any] = {
        "applied_layers": state.applied_layers,
        "settings": state.settings.as_dict(),
    }
    if extra:
        meta["extra"] = extra
    return _save_files(out_dir, ADAPTER_FORMAT, jola_state_dict(model), model, meta)


def read_adapter(
    adapter_dir: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a saved adapter, without needing its base model."""
    meta, tensors = _read_files(adapter_dir, ADAPTER_FORMAT)
    for key in ("applied_layers", "base_model"):
        if key not in meta:
            raise CheckpointError(f"{Path(adapter_dir) / ADAPTER_CONFIG}: missing key {key!r}")
    return meta, tensors


def check_adapter_base(
    meta: dict[str, Any], model: nn.Module, where: str, *, strict_weights: bool = False
) -> None:
    """Refuse ``model`` as the base of the adapter described by ``meta`` (any format version;
    version 1 kept four sizes at the top level of ``base_model`` and no tensor list or hash)."""
    base = dict(meta["base_model"])
    if meta.get("format_version", 1) < 2:
        base["sizes"] = {k: base[k] for k in _V1_SIZES if k in base}
    check_base(base, model, where, strict_weights=strict_weights)


def load_jola(
    model: nn.Module, adapter_dir: str | os.PathLike[str], *, strict_weights: bool = False
) -> Any:
    """Restore a saved adapter onto ``model`` exactly (attaching JoLA if needed, never re-initialising).

    Refuses a base of another family, size or tensor layout; a base with the same architecture but
    other weights gets a :class:`~olmokit.inject.BaseWeightsWarning` (an error with
    ``strict_weights=True``). If JoLA is already attached to the same layers, its tensors and gate
    settings are replaced; different layers are an error (detach first).
    """
    meta, tensors = read_adapter(adapter_dir)
    check_adapter_base(meta, model, f"adapter {adapter_dir}", strict_weights=strict_weights)
    settings = JoLASettings.from_dict(
        meta.get("settings", {}), source=str(adapter_dir), strict=False
    )
    layers = list(meta["applied_layers"])
    if has_jola(model):
        state = get_jola_state(model)
        if state.applied_layers != layers:
            raise CheckpointError(
                f"model has JoLA on layers {state.applied_layers}, adapter {adapter_dir} on {layers}; detach first"
            )
        state.settings = settings
        hc = HardConcrete.from_settings(settings)
        for e in state.edits.values():
            e.hc = hc
    else:
        attach_jola(model, settings, layers, init=False)
    load_jola_state_dict(model, tensors)
    set_gate_mode(model, settings.eval_gate_mode, settings.topk, settings.hard_threshold)
    return model


def _check_finite(i: int, edit: nn.Module) -> None:
    for name, p in edit.named_parameters():
        bad = ~torch.isfinite(p.detach())
        if bool(bad.any()):
            raise CheckpointError(
                f"refusing to fold JoLA into the weights: layer {i} tensor {name} has "
                f"{int(bad.sum())} non-finite value(s) of {p.numel()}; the model was left unchanged"
            )


@torch.no_grad()
def merge_jola(
    model: nn.Module, gate_mode: str | None = None, topk: int | None = None
) -> nn.Module:
    """Fold the edit into ``o_proj`` (in place) and detach; returns the plain HF model.

    Gates are the deterministic evaluation gates (``gate_mode`` overrides the adapter's). The math is
    done in fp32 and cast to the weights' dtype (exact to rounding in fp32; bf16 rounds once more).
    Non-finite JoLA tensors raise :class:`CheckpointError` naming the layer and tensor, before any
    weight is touched.
    """
    state = get_jola_state(model)
    edits = jola_edits(model)
    for i, edit in edits.items():
        _check_finite(i, edit)
    if gate_mode is not None:
        set_gate_mode(model, gate_mode, topk if topk is not None else state.settings.topk)
    adapter = get_adapter(model)
    folded = []
    for i, edit in edits.items():
        scale, shift = edit.scale_shift(training=False)
        folded.append((i, scale, shift))
    need_bias = any(bool(shift.ne(0).any()) for _, _, shift in folded)
    if need_bias and not adapter.attention_bias:
        adapter.enable_attention_bias()  # exact zero biases everywhere, then the folded shifts below
    for i, scale, shift in folded:
        o = adapter.o_proj(i)
        w = o.weight.float()
        scale, shift = scale.to(w.device), shift.to(w.device)
        if need_bias:
            bias = o.bias.float() + w @ shift
            o.bias.copy_(bias.to(o.bias.dtype))
        o.weight.copy_((w * scale[None, :]).to(o.weight.dtype))
    return detach_jola(model)


def adapter_base_name(adapter_dir: str | os.PathLike[str]) -> str:
    """The base an adapter was trained on, as recorded in it (the zoo default when unrecorded)."""
    meta, _ = read_adapter(adapter_dir)
    return meta["base_model"].get("name_or_path") or DEFAULT_MODEL


def merge_adapter(
    adapter_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    gate_mode: str | None = None,
    topk: int | None = None,
    dtype: str = "float32",
) -> tuple[Path, nn.Module, str]:
    """Load the base (``model``, default: the adapter's recorded base), fold the adapter into it and
    write a plain HF directory with the base's tokenizer. Returns ``(out_dir, merged, base name)``."""
    base_name = model or adapter_base_name(adapter_dir)
    base = load_model(base_name, dtype=dtype)
    load_jola(base, adapter_dir)
    merged = merge_jola(base, gate_mode, topk)
    try:
        tokenizer = load_tokenizer(base_name)
    except CheckpointError:  # a base without a tokenizer still merges
        tokenizer = None
    return save_model(merged, out_dir, tokenizer), merged, base_name


def save_merged(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    tokenizer: Any = None,
    gate_mode: str | None = None,
) -> Path:
    """Fold JoLA into ``model`` and write a plain HF directory (loads in stock ``from_pretrained``)."""
    merged = merge_jola(model, gate_mode)
    return save_model(merged, out_dir, tokenizer)
