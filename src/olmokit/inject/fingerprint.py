"""The base fingerprint an adapter records, and the check that refuses an adapter on another base.

Why a fingerprint and not the base's name: a name says nothing about a local copy, a renamed
directory or a fine-tuned sibling. Family and sizes catch a wrong architecture, tensor names and
shapes catch a wrong variant, and a hash of a few weight slices tells apart two bases of the same
architecture without reading every weight."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..family import get_adapter
from .sites import added_module_paths

__all__ = [
    "BaseWeightsWarning",
    "base_fingerprint",
    "check_base",
]

#: how many values are hashed from the start and from the end of each fingerprinted tensor
_HASH_SLICE = 256
#: the size facts of a base that an adapter depends on (from the family adapter)
_SIZE_KEYS = (
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
)


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict without any injected module's tensors."""
    prefixes = tuple(f"{p}." for p in added_module_paths(model))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def _hash_keys(keys: list[str]) -> list[str]:
    """A few tensors to hash, chosen from the sorted names alone: first, middle and last."""
    if not keys:
        return []
    ordered = sorted(keys)
    picks = {ordered[0], ordered[len(ordered) // 2], ordered[-1]}
    return sorted(picks)


def _weights_hash(state: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over the first and last values of a few tensors.

    Values are rounded to bfloat16 first, so the same weights loaded in fp32 or bf16 hash alike (an
    adapter trained on a bf16 base still matches its base loaded in fp32 for merging).
    """
    h = hashlib.sha256()
    for key in _hash_keys(list(state)):
        t = state[key].detach()
        if t.is_meta:
            continue
        flat = t.reshape(-1)
        n = flat.numel()
        part = (
            flat if n <= 2 * _HASH_SLICE else torch.cat((flat[:_HASH_SLICE], flat[-_HASH_SLICE:]))
        )
        vals = part.to(device="cpu", dtype=torch.bfloat16).to(torch.float32).contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(vals.numpy().tobytes())
    return h.hexdigest()[:16]


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What an adapter records about its base: identity, family, sizes, tensor shapes, a weights hash."""
    adapter = get_adapter(model)
    cfg = model.config
    state = _base_state(model)
    return {
        "name_or_path": str(
            getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", "")
        ),
        "revision": getattr(cfg, "_commit_hash", None),
        "model_type": adapter.model_type,
        "family": adapter.spec.display_name,
        "sizes": {k: getattr(adapter, k) for k in _SIZE_KEYS},
        "tensors": {k: list(v.shape) for k, v in sorted(state.items())},
        "weights_hash": _weights_hash(state),
    }


class BaseWeightsWarning(UserWarning):
    """An adapter is loaded onto a base of the same architecture whose weights hash differently."""


def check_base(
    saved: Mapping[str, Any], model: nn.Module, where: str, *, strict_weights: bool = False
) -> None:
    """Refuse ``model`` as the base for an adapter recorded with fingerprint ``saved``.

    Checks, in order: family, sizes, missing/extra base tensors, tensor shapes, then the weights hash
    (a :class:`BaseWeightsWarning`, or :class:`CheckpointError` with ``strict_weights``). Keys the
    saved fingerprint lacks (adapters from older olmokit versions) are not checked.
    """
    here = base_fingerprint(model)
    trained_on = saved.get("name_or_path") or "an unnamed base"
    if saved.get("model_type") != here["model_type"]:
        raise CheckpointError(
            f"{where} was trained on {saved.get('family')} (model_type {saved.get('model_type')!r}, "
            f"{trained_on}), but this model is {here['family']} (model_type {here['model_type']!r}, "
            f"{here['name_or_path']}); load it onto its own base"
        )
    sizes = saved.get("sizes", {})
    diffs = [
        f"{k}: adapter {sizes[k]} vs model {here['sizes'][k]}"
        for k in _SIZE_KEYS
        if k in sizes and sizes[k] != here["sizes"][k]
    ]
    if diffs:
        raise CheckpointError(
            f"{where} does not fit this model ({'; '.join(diffs)}); it was trained on {trained_on}"
        )
    if "tensors" in saved:
        want, have = saved["tensors"], here["tensors"]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            parts = []
            if missing:
                parts.append(
                    f"missing base tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}"
                )
            if extra:
                parts.append(f"extra base tensors {extra[:4]}{' ...' if len(extra) > 4 else ''}")
            raise CheckpointError(
                f"{where} does not fit this model: {'; '.join(parts)} (trained on {trained_on})"
            )
        shapes = [f"{k}: adapter {want[k]} vs model {have[k]}" for k in want if want[k] != have[k]]
        if shapes:
            raise CheckpointError(
                f"{where} does not fit this model: base tensor shapes differ "
                f"({'; '.join(shapes[:4])}); it was trained on {trained_on}"
            )
    if "weights_hash" in saved and saved["weights_hash"] != here["weights_hash"]:
        msg = (
            f"{where} was trained on {trained_on!r}; this model ({here['name_or_path']!r}) has the same "
            f"architecture but different weights (hash {saved['weights_hash']} vs "
            f"{here['weights_hash']})"
        )
        if strict_weights:
            raise CheckpointError(msg)
        warnings.warn(msg, BaseWeightsWarning, stacklevel=3)
    elif "weights_hash" not in saved:
        # older adapters record only the base's name: a different name may mean different weights
        name, here_name = saved.get("name_or_path"), here["name_or_path"]
        if name and here_name and name != here_name:
            warnings.warn(
                f"{where} was trained on {name!r}; loading it onto {here_name!r} "
                "(same architecture, possibly different weights)",
                BaseWeightsWarning,
                stacklevel=3,
            )
