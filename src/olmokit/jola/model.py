"""Attaching JoLA to a loaded OLMo model (any generation) without forking Hugging Face modeling code.

:func:`attach_jola` finds each edited layer's ``o_proj`` through the family adapter, registers a
:class:`~olmokit.jola.layer.JoLAEdit` as a submodule of that layer's attention module (so DDP/FSDP,
``.to()`` and optimizers see its parameters) and a forward-pre-hook on ``o_proj`` that rewrites the
concatenated head outputs. Because the hook sits on ``o_proj``'s *input*, it is independent of the
attention backend (eager, SDPA, flash), GQA, OLMo-3's sliding-window layers, the KV cache and gradient
checkpointing, and it keeps OLMo-2/3's q/k norms and post-norms exactly as HF computes them.

The model stays an instance of its HF class; :class:`JoLAModel` and the seed-style aliases
(``JoLAOlmo2Model``) only add methods (``unfreeze_jola_params``, ``save_jola``, ``merge_and_unload``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FamilyError
from ..family import FamilyAdapter, get_adapter
from .config import JoLASettings
from .layer import HardConcrete, JoLAEdit

__all__ = [
    "EDIT_ATTR",
    "JoLAState",
    "JoLAModel",
    "JoLAOlmoModel",
    "JoLAOlmo2Model",
    "JoLAOlmo3Model",
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

#: Attribute under which each edited attention module holds its JoLAEdit (state-dict prefix too).
EDIT_ATTR = "jola"
_STATE_ATTR = "_olmokit_jola"


@dataclass
class JoLAState:
    """Book-keeping of an attached JoLA: settings, the edits by layer, hook handles."""

    settings: JoLASettings
    edits: dict[int, JoLAEdit]
    handles: list[Any] = field(default_factory=list)
    enabled: bool = True
    base_class: type | None = None  #: the HF class before a JoLA class swap, if any

    @property
    def layers(self) -> list[int]:
        return sorted(self.edits)


def get_jola_state(model: nn.Module) -> JoLAState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ConfigError("this model has no JoLA attached; call attach_jola(model) or load_jola(model, dir)")
    return state


def has_jola(model: nn.Module) -> bool:
    return getattr(model, _STATE_ATTR, None) is not None


def _hard_concrete(settings: JoLASettings) -> HardConcrete:
    return HardConcrete(settings.temperature, settings.stretch_limits, settings.eps)


def _resolve_layers(adapter: FamilyAdapter, layers: list[int] | None) -> list[int]:
    n = adapter.num_layers
    if layers is None:
        return list(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"applied_layers {bad} out of range for a {n}-layer model (valid: 0..{n - 1})")
    return sorted({i % n for i in layers})


def _make_hook(state: JoLAState, edit: JoLAEdit):
    def hook(module: nn.Module, args: tuple[Any, ...]):
        if not state.enabled:
            return None  # untouched input: logits identical to the unmodified model
        return (edit(args[0]), *args[1:])

    return hook


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
    hc = _hard_concrete(settings)
    state = JoLAState(settings=settings, edits={})
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
        edit = JoLAEdit(adapter.num_heads, adapter.head_dim, hc, device=o_proj.weight.device)
        if init:
            edit.reset_parameters(settings.edit_init_std, settings.log_alpha_init, generator=gen)
        attn = adapter.attention(i)
        edit.train(attn.training)  # a new module defaults to training mode; follow the model's
        attn.add_module(EDIT_ATTR, edit)
        state.edits[i] = edit
        state.handles.append(o_proj.register_forward_pre_hook(_make_hook(state, edit)))
    edit_params = {id(p) for e in state.edits.values() for p in e.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in edit_params)
    setattr(model, _STATE_ATTR, state)
    set_gate_mode(model, settings.eval_gate_mode, settings.topk, settings.hard_threshold)
    return state


def detach_jola(model: nn.Module) -> nn.Module:
    """Remove hooks and edit modules; the model is the plain HF model again (base stays frozen)."""
    state = get_jola_state(model)
    for h in state.handles:
        h.remove()
    adapter = get_adapter(model)
    for i in state.edits:
        attn = adapter.attention(i)
        if EDIT_ATTR in attn._modules:
            del attn._modules[EDIT_ATTR]
    if state.base_class is not None:
        model.__class__ = state.base_class
    delattr(model, _STATE_ATTR)
    return model


@contextlib.contextmanager
def disable_jola(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily run the base model (hooks pass inputs through untouched)."""
    state = get_jola_state(model)
    before, state.enabled = state.enabled, False
    try:
        yield model
    finally:
        state.enabled = before


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
    edit_params = {id(p) for p in jola_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in edit_params)
    return model


@torch.no_grad()
def set_gate_mode(
    model: nn.Module, mode: str, topk: int | None = None, hard_threshold: float | None = None
) -> None:
    """Choose the deterministic evaluation gate: "expected", "hard" or "topk" (k most open heads,
    chosen across all edited layers separately for additive and multiplicative gates)."""
    state = get_jola_state(model)
    if mode not in ("expected", "hard", "topk"):
        raise ConfigError(f"gate mode {mode!r} not in expected, hard, topk")
    edits = jola_edits(model)
    masks: dict[int, list[torch.Tensor]] = {i: [] for i in edits}
    if mode == "topk":
        if not topk or topk < 1:
            raise ConfigError("gate mode 'topk' needs topk >= 1")
        for name in ("log_g1", "log_g2"):
            flat = torch.cat([getattr(e, name).detach().float().cpu() for e in edits.values()])
            keep = torch.zeros_like(flat)
            keep[torch.topk(flat, min(topk, flat.numel())).indices] = 1.0
            for j, i in enumerate(edits):
                h = edits[i].num_heads
                masks[i].append(keep[j * h : (j + 1) * h])
    for i, e in edits.items():
        e.gate_mode = mode
        if hard_threshold is not None:
            e.hard_threshold = hard_threshold
        e.topk_masks = tuple(masks[i]) if mode == "topk" else None
    updates = {"eval_gate_mode": mode}
    if topk is not None:
        updates["topk"] = topk
    if hard_threshold is not None:
        updates["hard_threshold"] = hard_threshold
    state.settings = state.settings.model_copy(update=updates)


def jola_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The JoLA tensors keyed ``layers.{i}.{attn_A|attn_v|log_g1|log_g2}`` (family-independent)."""
    return {
        f"layers.{i}.{name}": p.detach()
        for i, e in jola_edits(model).items()
        for name, p in e.named_parameters()
    }


@torch.no_grad()
def load_jola_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the attached edits exactly; every key must match (no partial loads)."""
    own = {
        f"layers.{i}.{name}": p for i, e in jola_edits(model).items() for name, p in e.named_parameters()
    }
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        from ..errors import CheckpointError

        raise CheckpointError(f"JoLA tensors do not match: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for key, p in own.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(p.shape):
            from ..errors import CheckpointError

            raise CheckpointError(f"{key}: saved shape {tuple(t.shape)} != model shape {tuple(p.shape)}")
        p.copy_(t.to(device=p.device, dtype=p.dtype))
    state = get_jola_state(model)
    if state.settings.eval_gate_mode == "topk":  # masks depend on the new log-alphas
        set_gate_mode(model, "topk", state.settings.topk)


# --------------------------------------------------------------------------- seed-style classes
class JoLAModel:
    """Methods added to an HF OLMo model with JoLA attached (via a class swap that keeps
    ``isinstance(model, Olmo2ForCausalLM)`` true). Use :meth:`jola_from_pretrained`."""

    _jola_family: str | None = None  #: restricts jola_from_pretrained to one family (None: any)

    @classmethod
    def jola_from_pretrained(
        cls,
        pretrained_model_name_or_path: str | None = None,
        applied_module: str = "attention",
        applied_layers: list[int] | None = None,
        device: str | None = "auto",
        dtype: str | torch.dtype | None = "float32",
        jola_config: JoLASettings | dict[str, Any] | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
        torch_dtype: str | torch.dtype | None = None,
        init: bool = True,
    ) -> Any:
        """Load a base model (zoo default when no name is given) and attach JoLA to it."""
        from ..loading import load_model

        if applied_module != "attention":
            raise ConfigError(f"applied_module {applied_module!r} not supported; valid: attention")
        kwargs: dict[str, Any] = {}
        if cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        model = load_model(
            pretrained_model_name_or_path,
            dtype=torch_dtype if torch_dtype is not None else dtype,
            device=resolve_device(device),
            revision=revision,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
        if cls._jola_family is not None and get_adapter(model).model_type != cls._jola_family:
            raise FamilyError(
                f"{cls.__name__} is for model_type {cls._jola_family!r}, got "
                f"{get_adapter(model).model_type!r}; use JoLAModel.jola_from_pretrained for any OLMo"
            )
        attach_jola(model, jola_config, applied_layers, init=init)
        return as_jola_model(model, cls)

    def unfreeze_jola_params(self) -> Any:
        return unfreeze_jola_params(self)  # type: ignore[arg-type]

    def jola_parameters(self) -> list[nn.Parameter]:
        return jola_parameters(self)  # type: ignore[arg-type]

    def save_jola(self, out_dir: str) -> Any:
        from .checkpoint import save_jola

        return save_jola(self, out_dir)  # type: ignore[arg-type]

    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> None:
        """Writes the adapter only (like PEFT); use merge_and_unload() for a full HF model."""
        self.save_jola(save_directory)

    def merge_and_unload(self) -> nn.Module:
        from .checkpoint import merge_jola

        return merge_jola(self)  # type: ignore[arg-type]

    def unload(self) -> nn.Module:
        return detach_jola(self)  # type: ignore[arg-type]


_CLASS_CACHE: dict[tuple[type, type], type] = {}


def as_jola_model(model: nn.Module, mixin: type | None = None) -> Any:
    """Swap the instance's class to ``JoLA<HFClass>`` (adds :class:`JoLAModel` methods); the model
    stays an instance of its HF class, and :func:`detach_jola` swaps it back."""
    state = get_jola_state(model)
    mixin = mixin or JoLAModel
    if isinstance(model, JoLAModel):
        return model
    base = type(model)
    cls = _CLASS_CACHE.get((mixin, base))
    if cls is None:
        cls = type(f"JoLA{base.__name__}", (mixin, base), {"__module__": __name__})
        _CLASS_CACHE[(mixin, base)] = cls
    state.base_class = base
    model.__class__ = cls
    return model


class JoLAOlmoModel(JoLAModel):
    _jola_family = "olmo"


class JoLAOlmo2Model(JoLAModel):
    """The seed's entry point: ``JoLAOlmo2Model.jola_from_pretrained(**config["model_config"])``."""

    _jola_family = "olmo2"


class JoLAOlmo3Model(JoLAModel):
    _jola_family = "olmo3"


def resolve_device(device: str | torch.device | None) -> str | torch.device | None:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device: cpu or auto")
    return device
