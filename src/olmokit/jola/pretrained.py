"""Seed-style entry points: ``JoLAOlmo2Model.jola_from_pretrained(**config["model_config"])``.

The model stays an instance of its HF class; a class swap to ``JoLA<HFClass>`` adds the
:class:`JoLAModel` methods (``unfreeze_jola_params``, ``save_jola``, ``merge_and_unload``), and
:func:`~olmokit.jola.model.detach_jola` swaps it back. This module sits above both
:mod:`~olmokit.jola.model` (attach) and :mod:`~olmokit.jola.checkpoint` (save/merge), so neither
imports the other's caller.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import loading
from ..errors import ConfigError, FamilyError
from ..family import get_adapter
from .checkpoint import merge_jola, save_jola
from .config import JoLASettings
from .model import attach_jola, detach_jola, get_jola_state, jola_parameters, unfreeze_jola_params

__all__ = ["JoLAModel", "JoLAOlmoModel", "JoLAOlmo2Model", "JoLAOlmo3Model", "as_jola_model"]


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
        if applied_module != "attention":
            raise ConfigError(f"applied_module {applied_module!r} not supported; valid: attention")
        kwargs: dict[str, Any] = {}
        if cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        model = loading.load_model(
            pretrained_model_name_or_path,
            dtype=torch_dtype if torch_dtype is not None else dtype,
            device=loading.resolve_device(device),
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
        return save_jola(self, out_dir)  # type: ignore[arg-type]

    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> None:
        """Writes the adapter only (like PEFT); use merge_and_unload() for a full HF model."""
        self.save_jola(save_directory)

    def merge_and_unload(self) -> nn.Module:
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
