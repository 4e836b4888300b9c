"""Adapter files (save/load, with base checks) and folding a JoLA edit into plain HF weights.

An adapter directory holds only the edit: ``jola_adapter.safetensors`` (fp32 tensors keyed
``layers.{i}.{attn_A,attn_v,log_g1,log_g2}``) and ``jola_config.json`` (base model id/revision,
family and sizes, applied layers, gate settings). Loading refuses a base of another family, size or
depth with a message that says what differs.

Folding (:func:`merge_jola`) is exact because the edit is affine in ``o_proj``'s input: with
deterministic gates, ``o_proj(s ⊙ z + c) = (W·diag(s)) z + (W c + b)``. The scale becomes a per-column
scaling of ``o_proj.weight`` and the shift an ``o_proj`` bias. Stock OLMo configs can only express
that bias with ``attention_bias=True``, which gives q/k/v/o a bias in *every* layer, so the others are
added as exact zeros; the written directory then loads in stock ``from_pretrained`` with no missing or
unexpected keys.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import CheckpointError
from ..family import get_adapter
from ..files import atomic_save_safetensors, atomic_write_json, load_safetensors
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
    "load_jola",
    "merge_jola",
    "read_adapter",
    "save_jola",
    "save_merged",
]

ADAPTER_CONFIG = "jola_config.json"
ADAPTER_WEIGHTS = "jola_adapter.safetensors"
FORMAT = "olmokit-jola"
FORMAT_VERSION = 1


def _base_info(model: nn.Module) -> dict[str, Any]:
    adapter = get_adapter(model)
    cfg = model.config
    return {
        "name_or_path": str(getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", "")),
        "revision": getattr(cfg, "_commit_hash", None),
        "model_type": adapter.model_type,
        "family": adapter.spec.display_name,
        "num_layers": adapter.num_layers,
        "num_heads": adapter.num_heads,
        "head_dim": adapter.head_dim,
        "hidden_size": adapter.hidden_size,
    }


def save_jola(model: nn.Module, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter (tensors + JSON config) to ``out_dir``; nothing of the base model."""
    state = get_jola_state(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.float() for k, v in jola_state_dict(model).items()}
    atomic_save_safetensors(out / ADAPTER_WEIGHTS, tensors, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "olmokit_version": __version__,
        "base_model": _base_info(model),
        "applied_layers": state.layers,
        "num_parameters": sum(t.numel() for t in tensors.values()),
        "settings": state.settings.as_dict(),
    }
    if extra:
        meta["extra"] = extra
    atomic_write_json(out / ADAPTER_CONFIG, meta)  # written last: its presence means "complete"
    return out


def read_adapter(adapter_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a saved adapter, without needing its base model."""
    d = Path(adapter_dir)
    cfg_path, w_path = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{d} is not a JoLA adapter (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: invalid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a {FORMAT} adapter (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format version {meta['format_version']} is newer than this olmokit supports "
            f"({FORMAT_VERSION}); upgrade olmokit"
        )
    return meta, load_safetensors(w_path)


def _check_base(meta: dict[str, Any], model: nn.Module, where: str) -> None:
    saved, here = meta["base_model"], _base_info(model)
    if saved["model_type"] != here["model_type"]:
        raise CheckpointError(
            f"{where} was trained on {saved['family']} (model_type {saved['model_type']!r}, "
            f"{saved['name_or_path']}), but this model is {here['family']} "
            f"(model_type {here['model_type']!r}, {here['name_or_path']}); load it onto its own base"
        )
    diffs = [
        f"{k}: adapter {saved[k]} vs model {here[k]}"
        for k in ("num_layers", "num_heads", "head_dim", "hidden_size")
        if saved[k] != here[k]
    ]
    if diffs:
        raise CheckpointError(
            f"{where} does not fit this model ({'; '.join(diffs)}); it was trained on "
            f"{saved['name_or_path']}"
        )
    if saved.get("name_or_path") and here["name_or_path"] and saved["name_or_path"] != here["name_or_path"]:
        warnings.warn(
            f"{where} was trained on {saved['name_or_path']!r}; loading it onto {here['name_or_path']!r} "
            "(same architecture, possibly different weights)",
            stacklevel=3,
        )


def load_jola(model: nn.Module, adapter_dir: str | os.PathLike[str]) -> Any:
    """Restore a saved adapter onto ``model`` exactly (attaching JoLA if needed, never re-initialising).

    Refuses a base of another family or size. If JoLA is already attached to the same layers, its
    tensors and gate settings are replaced; different layers are an error (detach first).
    """
    meta, tensors = read_adapter(adapter_dir)
    _check_base(meta, model, f"adapter {adapter_dir}")
    settings = JoLASettings.from_dict(meta.get("settings", {}), source=str(adapter_dir), strict=False)
    layers = list(meta["applied_layers"])
    if has_jola(model):
        state = get_jola_state(model)
        if state.layers != layers:
            raise CheckpointError(
                f"model has JoLA on layers {state.layers}, adapter {adapter_dir} on {layers}; detach first"
            )
        state.settings = settings
        for e in state.edits.values():
            e.hc = HardConcrete(settings.temperature, settings.stretch_limits, settings.eps)
    else:
        attach_jola(model, settings, layers, init=False)
    load_jola_state_dict(model, tensors)
    set_gate_mode(model, settings.eval_gate_mode, settings.topk, settings.hard_threshold)
    return model


def _add_zero_bias(linear: nn.Linear) -> None:
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)


@torch.no_grad()
def merge_jola(model: nn.Module, gate_mode: str | None = None, topk: int | None = None) -> nn.Module:
    """Fold the edit into ``o_proj`` (in place) and detach; returns the plain HF model.

    Gates are the deterministic evaluation gates (``gate_mode`` overrides the adapter's). The math is
    done in fp32 and cast to the weights' dtype (exact to rounding in fp32; bf16 rounds once more).
    """
    state = get_jola_state(model)
    if gate_mode is not None:
        set_gate_mode(model, gate_mode, topk if topk is not None else state.settings.topk)
    adapter = get_adapter(model)
    folded = []
    for i, edit in jola_edits(model).items():
        scale, shift = edit.scale_shift(training=False)
        folded.append((i, scale, shift))
    need_bias = any(bool(shift.ne(0).any()) for _, _, shift in folded)
    for i, scale, shift in folded:
        o = adapter.o_proj(i)
        w = o.weight.float()
        scale, shift = scale.to(w.device), shift.to(w.device)
        if need_bias:
            bias = (o.bias.float() if o.bias is not None else torch.zeros(w.shape[0], device=w.device)) + w @ shift
        o.weight.copy_((w * scale[None, :]).to(o.weight.dtype))
        if need_bias:
            _add_zero_bias(o)
            o.bias.copy_(bias.to(o.bias.dtype))
    if need_bias and not getattr(model.config, "attention_bias", False):
        for i in range(adapter.num_layers):
            for lin in (adapter.q_proj(i), adapter.k_proj(i), adapter.v_proj(i), adapter.o_proj(i)):
                _add_zero_bias(lin)
        model.config.attention_bias = True
    return detach_jola(model)


def save_merged(
    model: nn.Module, out_dir: str | os.PathLike[str], tokenizer: Any = None, gate_mode: str | None = None
) -> Path:
    """Fold JoLA into ``model`` and write a plain HF directory (loads in stock ``from_pretrained``)."""
    from ..loading import save_model

    merged = merge_jola(model, gate_mode)
    return save_model(merged, out_dir, tokenizer)
