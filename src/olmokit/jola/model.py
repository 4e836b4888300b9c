"""Attaching JoLA to a loaded OLMo model (any generation) without forking Hugging Face modeling code.

:func:`attach_jola` builds on the injection base (:mod:`olmokit.inject`): for each edited layer it
registers a :class:`~olmokit.jola.layer.JoLAEdit` under the layer's attention module (the family
adapter names both) and a forward-pre-hook on ``o_proj`` that rewrites the concatenated head outputs.
Because the hook sits on ``o_proj``'s *input*, it is independent of the attention backend (eager,
SDPA, flash), GQA, OLMo-3's sliding-window layers, the KV cache and gradient checkpointing, and it
keeps OLMo-2/3's q/k norms and post-norms exactly as HF computes them.

The model's JoLA state (:class:`JoLAState`) holds what the edit owns: the settings it was attached
with (saved with the adapter), the HardConcrete gates and the evaluation gate mode. Training settings
(penalty, gate scheduler) are passed to the trainer explicitly; the trainer never reads them from the
model. The seed-style classes (``JoLAOlmo2Model``) live in :mod:`olmokit.jola.pretrained`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FamilyError
from ..family import FamilyAdapter, get_adapter
from ..inject import Injection, freeze_base, layer_site
from .config import JoLASettings
from .layer import EVAL_GATE_MODES, HardConcrete, JoLAEdit, topk_mask

__all__ = [
    "EDIT_ATTR",
    "JoLAState",
    "attach_jola",
    "detach_jola",
    "disable_jola",
    "get_jola_state",
    "has_jola",
    "jola_edits",
    "jola_parameter_count",
    "jola_parameters",
    "jola_state_dict",
    "load_jola_state_dict",
    "num_jola_parameters",
    "set_gate_mode",
    "unfreeze_jola_params",
]

#: Name of the injection, and the attribute under which each edited attention module holds its
#: JoLAEdit (so the state-dict keys read ``...self_attn.jola.attn_A``).
EDIT_ATTR = "jola"
_STATE_ATTR = "_olmokit_jola"


@dataclass
class JoLAState:
    """What an attached JoLA owns: its settings, the injection (edits by site), the pre-swap class."""

    settings: JoLASettings
    injection: Injection
    base_class: type | None = None  #: the HF class before a JoLA class swap, if any

    @property
    def edits(self) -> dict[int, JoLAEdit]:
        return {int(key.split(".")[1]): e for key, e in self.injection.modules.items()}

    @property
    def applied_layers(self) -> list[int]:
        return sorted(self.edits)


def get_jola_state(model: nn.Module) -> JoLAState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ConfigError(
            "this model has no JoLA attached; call attach_jola(model) or load_jola(model, dir)"
        )
    return state


def has_jola(model: nn.Module) -> bool:
    return getattr(model, _STATE_ATTR, None) is not None


def _resolve_layers(adapter: FamilyAdapter, layers: list[int] | None) -> list[int]:
    n = adapter.num_layers
    if layers is None:
        return list(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(
            f"applied_layers {bad} out of range for a {n}-layer model (valid: 0..{n - 1})"
        )
    return sorted({i % n for i in layers})


def attach_jola(
    model: nn.Module,
    settings: JoLASettings | dict[str, Any] | None = None,
    applied_layers: list[int] | None = None,
    init: bool = True,
) -> JoLAState:
    """Add JoLA edits to ``model`` (in place) on ``applied_layers`` (default: all) and freeze the base.

    ``init=False`` leaves A = v = log-alpha = 0 (used before loading saved tensors).
    Attaching twice is an error: detach first, or use :func:`load_jola` to restore saved edits.
    """
    if has_jola(model):
        raise ConfigError("JoLA is already attached to this model; detach_jola(model) first")
    if settings is None:
        settings = JoLASettings()
    elif isinstance(settings, dict):
        settings = JoLASettings.from_dict(settings)
    adapter = get_adapter(model)
    layers = _resolve_layers(adapter, applied_layers)
    hc = HardConcrete.from_settings(settings)
    gen = None
    if settings.init_seed is not None:
        gen = torch.Generator().manual_seed(settings.init_seed)
    for i in layers:
        o_proj = adapter.o_proj(i)
        if o_proj.in_features != adapter.num_heads * adapter.head_dim:
            raise FamilyError(
                f"layer {i}: o_proj takes {o_proj.in_features} features, expected "
                f"{adapter.num_heads} heads x {adapter.head_dim}"
            )
    injection = Injection(model, EDIT_ATTR)
    for i in layers:
        o_proj = adapter.o_proj(i)
        edit = JoLAEdit(adapter.num_heads, adapter.head_dim, hc, device=o_proj.weight.device)
        if init:
            edit.reset_parameters(settings.edit_init_std, settings.log_alpha_init, generator=gen)
        injection.add(layer_site(model, i, "o_proj", owner="attn"), edit)
    freeze_base(model, injection.parameters())
    state = JoLAState(settings=settings, injection=injection)
    setattr(model, _STATE_ATTR, state)
    set_gate_mode(model, settings.eval_gate_mode, settings.topk, settings.hard_threshold)
    return state


def detach_jola(model: nn.Module) -> nn.Module:
    """Remove hooks and edit modules; the model is the plain HF model again (base stays frozen)."""
    state = get_jola_state(model)
    state.injection.remove()
    if state.base_class is not None:
        model.__class__ = state.base_class
    delattr(model, _STATE_ATTR)
    return model


@contextlib.contextmanager
def disable_jola(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily run the base model (hooks pass inputs through untouched)."""
    with get_jola_state(model).injection.disabled():
        yield model


def jola_edits(model: nn.Module) -> dict[int, JoLAEdit]:
    return dict(sorted(get_jola_state(model).edits.items()))


def jola_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for e in jola_edits(model).values() for p in e.parameters()]


def num_jola_parameters(model: nn.Module) -> int:
    """Always L·H·(2·head_dim + 2) for L edited layers."""
    return sum(p.numel() for p in jola_parameters(model))


def jola_parameter_count(model_or_config: Any, applied_layers: list[int] | None = None) -> int:
    """L·H·(2·head_dim + 2) from a model *or just its config* (no weights needed), e.g. 412,800 for
    OLMo-2-13B (40 layers × 40 heads × 128)."""
    adapter = get_adapter(model_or_config, check_version=False)
    layers = _resolve_layers(adapter, applied_layers)
    return len(layers) * adapter.num_heads * (2 * adapter.head_dim + 2)


def unfreeze_jola_params(model: nn.Module) -> nn.Module:
    """Freeze the base, make the JoLA tensors trainable. Never re-initialises existing edits (the
    reference did); attaches fresh default edits only when none are attached yet."""
    if not has_jola(model):
        attach_jola(model)
    return freeze_base(model, jola_parameters(model))


@torch.no_grad()
def set_gate_mode(
    model: nn.Module, mode: str, topk: int | None = None, hard_threshold: float | None = None
) -> None:
    """Choose the deterministic evaluation gate: "expected", "hard" or "topk" (k most open heads,
    chosen across all edited layers separately for additive and multiplicative gates)."""
    state = get_jola_state(model)
    if mode not in EVAL_GATE_MODES:
        raise ConfigError(f"gate mode {mode!r} not in {', '.join(EVAL_GATE_MODES)}")
    edits = jola_edits(model)
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if mode == "topk":
        if not topk or topk < 1:
            raise ConfigError("gate mode 'topk' needs topk >= 1")
        m1, m2 = (
            topk_mask(torch.stack([getattr(e, name).detach().cpu() for e in edits.values()]), topk)
            for name in ("log_g1", "log_g2")
        )
        masks = {i: (m1[j], m2[j]) for j, i in enumerate(edits)}
    for i, e in edits.items():
        e.gate_mode = mode
        if hard_threshold is not None:
            e.hard_threshold = hard_threshold
        e.topk_masks = masks.get(i)
    updates: dict[str, Any] = {"eval_gate_mode": mode}
    if topk is not None:
        updates["topk"] = topk
    if hard_threshold is not None:
        updates["hard_threshold"] = hard_threshold
    state.settings = state.settings.model_copy(update=updates)


def jola_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The JoLA tensors keyed ``layers.{i}.{attn_A|attn_v|log_g1|log_g2}`` (family-independent)."""
    return get_jola_state(model).injection.state_dict()


@torch.no_grad()
def load_jola_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the attached edits exactly; every key must match (no partial loads)."""
    state = get_jola_state(model)
    state.injection.load_state_dict(tensors)
    if state.settings.eval_gate_mode == "topk":  # masks depend on the new log-alphas
        set_gate_mode(model, "topk", state.settings.topk)
