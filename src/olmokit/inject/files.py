"""Saving and loading only the added tensors: safetensors plus a JSON config that carries the
format, its version and the base fingerprint (written last, atomically: its presence means complete)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import CheckpointError
from ..files import atomic_save_safetensors, atomic_write_json, load_safetensors
from .fingerprint import base_fingerprint, check_base
from .sites import Injection

__all__ = [
    "AdapterFormat",
    "save_adapter",
    "read_adapter",
    "load_adapter",
]


@dataclass(frozen=True)
class AdapterFormat:
    """A tool's adapter file layout: file names, format name, the version written and the oldest read."""

    name: str  #: e.g. "olmokit-jola"
    version: int  #: written by this olmokit
    weights_file: str  #: safetensors file name
    config_file: str  #: JSON file name (written last: its presence means the adapter is complete)
    min_version: int = 1
    label: str = ""  #: how messages name it ("JoLA"); default: ``name``

    @property
    def title(self) -> str:
        return self.label or self.name


def save_adapter(
    out_dir: str | os.PathLike[str],
    fmt: AdapterFormat,
    tensors: Mapping[str, torch.Tensor],
    model: nn.Module,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` (fp32 safetensors) and a JSON config with ``meta``, the format and the base
    fingerprint to ``out_dir``; nothing of the base model. Non-finite tensors are refused."""
    bad = [
        k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise CheckpointError(
            f"refusing to save {fmt.name} adapter: non-finite values in {bad[:6]}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    atomic_save_safetensors(out / fmt.weights_file, clean, metadata={"format": fmt.name})
    record = {
        "format": fmt.name,
        "format_version": fmt.version,
        "olmokit_version": __version__,
        "base_model": base_fingerprint(model),
        "num_parameters": sum(t.numel() for t in clean.values()),
        **dict(meta or {}),
    }
    atomic_write_json(out / fmt.config_file, record)
    return out


def read_adapter(
    adapter_dir: str | os.PathLike[str], fmt: AdapterFormat
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, tensors)`` of a saved adapter, without needing its base model."""
    d = Path(adapter_dir)
    cfg_path, w_path = d / fmt.config_file, d / fmt.weights_file
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{d} is not a {fmt.title} adapter (needs {fmt.config_file} and {fmt.weights_file})"
        )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{cfg_path}: invalid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt.name:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{cfg_path}: not a {fmt.title} adapter (format {got!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or not fmt.min_version <= version:
        raise CheckpointError(f"{cfg_path}: unknown format version {version!r}")
    if version > fmt.version:
        raise CheckpointError(
            f"{cfg_path}: format version {version} is newer than this olmokit supports "
            f"({fmt.version}); upgrade olmokit"
        )
    try:
        tensors = load_safetensors(w_path)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{w_path}: unreadable safetensors file ({exc})") from None
    return meta, tensors


def load_adapter(
    injection: Injection,
    adapter_dir: str | os.PathLike[str],
    fmt: AdapterFormat,
    *,
    strict_weights: bool = False,
) -> dict[str, Any]:
    """Read an adapter, check its base fingerprint against ``injection.model`` and copy its tensors
    into ``injection`` exactly. Returns the adapter's JSON config."""
    meta, tensors = read_adapter(adapter_dir, fmt)
    where = f"{fmt.title} adapter {adapter_dir}"
    check_base(meta.get("base_model", {}), injection.model, where, strict_weights=strict_weights)
    injection.load_state_dict(tensors, where=where)
    return meta
