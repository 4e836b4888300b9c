"""Activation patching: run the corrupted prompt, splice in one clean activation, measure a metric.

One generic function does the work (:func:`generic_activation_patch`); the public entry points are
``functools.partial`` specialisations that fix the hook and the index axes, as in TransformerLens:

=====================================  ============================  ==================================
function                                hook                          result shape
=====================================  ============================  ==================================
``get_act_patch_resid_pre``             ``hook_resid_pre``            ``[n_layers, pos]``
``get_act_patch_resid_mid``             ``hook_resid_mid``            ``[n_layers, pos]``
``get_act_patch_attn_out``              ``hook_attn_out``             ``[n_layers, pos]``
``get_act_patch_mlp_out``               ``hook_mlp_out``              ``[n_layers, pos]``
``get_act_patch_mlp_out_all_pos``       ``hook_mlp_out``              ``[n_layers]``
``get_act_patch_attn_head_out_all_pos`` ``attn.hook_z`` (per head)    ``[n_layers, n_heads]``
``get_act_patch_attn_head_out_by_pos``  ``attn.hook_z``               ``[n_layers, pos, n_heads]``
``get_act_patch_block_every``           resid_pre, attn_out, mlp_out  ``[3, n_layers, pos]``
=====================================  ============================  ==================================

Head patching goes through ``hook_z`` (one query head's output), which is well defined under GQA and
upstream of OLMo-2/3's post-attention norm. Setters clone before writing: the tensor they receive may
be referenced by HF code or by a cache (TransformerLens issue #1187).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import torch

from .cache import ActivationCache
from .hooked import HookedOlmo

__all__ = [
    "generic_activation_patch",
    "layer_pos_patch_setter",
    "layer_head_patch_setter",
    "layer_pos_head_patch_setter",
    "layer_patch_setter",
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_mlp_out_all_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_block_every",
    "logit_diff_metric",
    "normalize_patching",
]

Metric = Callable[[torch.Tensor], torch.Tensor | float]


# ------------------------------------------------------------------------------------------ setters
def layer_pos_patch_setter(
    corrupted: torch.Tensor, index: Sequence[int], clean: torch.Tensor
) -> torch.Tensor:
    """Patch one position of a ``[batch, pos, ...]`` activation (index = (layer, pos))."""
    _, pos = index
    out = corrupted.clone()
    out[:, pos] = clean[:, pos]
    return out


def layer_patch_setter(
    corrupted: torch.Tensor, index: Sequence[int], clean: torch.Tensor
) -> torch.Tensor:
    """Patch the whole activation (index = (layer,))."""
    return clean.clone()


def layer_head_patch_setter(
    corrupted: torch.Tensor, index: Sequence[int], clean: torch.Tensor
) -> torch.Tensor:
    """Patch one head at every position of a ``[batch, pos, head, d_head]`` activation."""
    _, head = index
    out = corrupted.clone()
    out[:, :, head] = clean[:, :, head]
    return out


def layer_pos_head_patch_setter(
    corrupted: torch.Tensor, index: Sequence[int], clean: torch.Tensor
) -> torch.Tensor:
    _, pos, head = index
    out = corrupted.clone()
    out[:, pos, head] = clean[:, pos, head]
    return out


# ------------------------------------------------------------------------------------------ generic
def _axis_size(model: HookedOlmo, axis: str, tokens: torch.Tensor) -> int:
    sizes = {
        "layer": model.adapter.num_layers,
        "pos": tokens.shape[-1],
        "head": model.adapter.num_heads,
    }
    if axis not in sizes:
        raise ValueError(f"unknown index axis {axis!r}; valid: {sorted(sizes)}")
    return sizes[axis]


@torch.no_grad()
def generic_activation_patch(
    model: HookedOlmo,
    corrupted_tokens: torch.Tensor,
    clean_cache: ActivationCache,
    patching_metric: Metric,
    patch_setter: Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor],
    activation_name: str,
    index_axis_names: Sequence[str] = ("layer", "pos"),
    index_list: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Metric of the corrupted run with one clean activation patched in, for every index.

    ``activation_name`` is a shorthand (``"resid_pre"``, ``"z"``, ...); the first index axis must be
    ``layer``. Returns a tensor shaped by ``index_axis_names`` (or flat, in ``index_list`` order).
    """
    if index_axis_names[0] != "layer":
        raise ValueError("the first index axis must be 'layer'")
    if index_list is None:
        ranges = [range(_axis_size(model, axis, corrupted_tokens)) for axis in index_axis_names]
        index_list = list(itertools.product(*ranges))
        shape = tuple(len(r) for r in ranges)
    else:
        shape = (len(index_list),)
    results = torch.zeros(len(index_list))
    for k, index in enumerate(index_list):
        layer = index[0]
        clean = clean_cache[(activation_name, layer)]

        def hook(act: torch.Tensor, hook, index=index, clean=clean) -> torch.Tensor:
            return patch_setter(act, index, clean)

        logits = model.run_with_hooks(
            corrupted_tokens, fwd_hooks=[((activation_name, layer), hook)]
        )
        value = patching_metric(logits)
        results[k] = float(value.item() if isinstance(value, torch.Tensor) else value)
    return results.reshape(shape)


get_act_patch_resid_pre = partial(
    generic_activation_patch,
    patch_setter=layer_pos_patch_setter,
    activation_name="resid_pre",
    index_axis_names=("layer", "pos"),
)
get_act_patch_resid_mid = partial(
    generic_activation_patch,
    patch_setter=layer_pos_patch_setter,
    activation_name="resid_mid",
    index_axis_names=("layer", "pos"),
)
get_act_patch_attn_out = partial(
    generic_activation_patch,
    patch_setter=layer_pos_patch_setter,
    activation_name="attn_out",
    index_axis_names=("layer", "pos"),
)
get_act_patch_mlp_out = partial(
    generic_activation_patch,
    patch_setter=layer_pos_patch_setter,
    activation_name="mlp_out",
    index_axis_names=("layer", "pos"),
)
get_act_patch_mlp_out_all_pos = partial(
    generic_activation_patch,
    patch_setter=layer_patch_setter,
    activation_name="mlp_out",
    index_axis_names=("layer",),
)
get_act_patch_attn_head_out_all_pos = partial(
    generic_activation_patch,
    patch_setter=layer_head_patch_setter,
    activation_name="z",
    index_axis_names=("layer", "head"),
)
get_act_patch_attn_head_out_by_pos = partial(
    generic_activation_patch,
    patch_setter=layer_pos_head_patch_setter,
    activation_name="z",
    index_axis_names=("layer", "pos", "head"),
)


def get_act_patch_block_every(
    model: HookedOlmo,
    corrupted_tokens: torch.Tensor,
    clean_cache: ActivationCache,
    patching_metric: Metric,
) -> torch.Tensor:
    """``[3, n_layers, pos]``: resid_pre, attn_out and mlp_out patched per (layer, position)."""
    return torch.stack(
        [
            fn(model, corrupted_tokens, clean_cache, patching_metric)
            for fn in (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
        ]
    )


# ------------------------------------------------------------------------------------------ metrics
def logit_diff_metric(answer: int, wrong: int, pos: int = -1, batch_mean: bool = True) -> Metric:
    """``logits[:, pos, answer] - logits[:, pos, wrong]`` (batch mean): the usual patching metric."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        diff = logits[:, pos, answer] - logits[:, pos, wrong]
        return diff.mean() if batch_mean else diff

    return metric


def normalize_patching(
    results: torch.Tensor, clean_value: float, corrupted_value: float
) -> torch.Tensor:
    """Rescale so 0 = corrupted run, 1 = clean run (how much of the clean behaviour a patch restores)."""
    denom = clean_value - corrupted_value
    if abs(denom) < 1e-12:
        return torch.zeros_like(results)
    return (results - corrupted_value) / denom
