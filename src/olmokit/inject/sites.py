"""Attaching added modules at family-adapter-named sites, switching them off, removing them, and
freezing the base around them (the first job of the injection base; see :mod:`olmokit.inject`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..family import FamilyAdapter, get_adapter

__all__ = [
    "Site",
    "layer_site",
    "Rewrite",
    "Injection",
    "injections",
    "added_module_paths",
    "has_injection",
    "get_injection",
    "freeze_base",
]

_REGISTRY_ATTR = "_olmokit_injections"


@dataclass(frozen=True)
class Site:
    """Where one added module lives and runs.

    ``key`` names it in saved files independently of the family's module paths (``layers.3``);
    ``owner`` is the dotted path of the module it is registered under; ``target`` the dotted path of
    the module whose forward is hooked to run it.
    """

    key: str
    owner: str
    target: str


def layer_site(model: nn.Module, layer: int, target: str, owner: str = "attn") -> Site:
    """The :class:`Site` for decoder layer ``layer``: hook the module with role ``target`` (e.g.
    ``"o_proj"``, ``"attn"``, ``"layer"``) and register under role ``owner`` (roles as in
    :meth:`FamilyAdapter.module_path <olmokit.family.FamilyAdapter.module_path>`)."""
    adapter = get_adapter(model)
    n = adapter.num_layers
    if not -n <= layer < n:
        raise ConfigError(f"layer {layer} out of range for a {n}-layer model (valid: 0..{n - 1})")
    i = layer % n
    return Site(f"layers.{i}", adapter.module_path(i, owner), adapter.module_path(i, target))


#: ``rewrite(added, args, kwargs) -> (args, kwargs) or None`` for a pre-hook;
#: ``rewrite(added, args, kwargs, output) -> new output or None`` for a post-hook.
Rewrite = Callable[..., Any]


def _apply_to_input(added: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Replace the hooked module's hidden-state input ``x`` (positional or named) by ``added(x)``."""
    x = FamilyAdapter.module_input(args, kwargs)
    return FamilyAdapter.replace_module_input(args, kwargs, added(x))


def _apply_to_output(
    added: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> Any:
    """Replace the hooked module's hidden-state output ``y`` (bare or first of a tuple) by ``added(y)``."""
    return FamilyAdapter.replace_module_output(output, added(FamilyAdapter.module_output(output)))


class Injection:
    """A named set of modules added to one base model (``"jola"``, ``"memory"``).

    Each module is registered as ``<owner>.<name>`` (its state-dict prefix) and run from a hook on its
    site's target. While :attr:`enabled` is False every hook passes its input through untouched, so the
    model computes exactly the base model. A model may carry several injections under distinct names.
    """

    def __init__(self, model: nn.Module, name: str):
        if not name.isidentifier():
            raise ConfigError(f"injection name {name!r} must be a Python identifier")
        registry = _registry(model, create=True)
        if name in registry:
            raise ConfigError(f"{name!r} is already attached to this model; remove it first")
        self.model, self.name = model, name
        self.modules: dict[str, nn.Module] = {}
        self.sites: dict[str, Site] = {}
        self.enabled = True
        self._handles: list[Any] = []
        registry[name] = self

    def add(
        self,
        site: Site,
        module: nn.Module,
        *,
        hook: str = "pre",
        rewrite: Rewrite | None = None,
    ) -> nn.Module:
        """Register ``module`` at ``site`` and hook it in.

        ``hook="pre"`` runs before the target's forward (default ``rewrite``: replace its hidden-state
        input ``x``, positional or named, by ``module(x)``); ``hook="post"`` runs after it (default:
        replace the hidden-state output — the output, or its first element for a tuple — by
        ``module(output)``). Call conventions come from the family adapter. The new module takes the
        owner's train/eval mode.
        """
        if site.key in self.modules:
            raise ConfigError(f"{self.name}: site {site.key!r} already has a module")
        owner, target = self.model.get_submodule(site.owner), self.model.get_submodule(site.target)
        if self.name in owner._modules or hasattr(owner, self.name):
            raise ConfigError(f"{site.owner} already has an attribute {self.name!r}")
        module.train(owner.training)
        owner.add_module(self.name, module)
        if hook == "pre":
            fn = rewrite or _apply_to_input

            def pre(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return fn(module, args, kwargs) if self.enabled else None

            handle = target.register_forward_pre_hook(pre, with_kwargs=True)
        elif hook == "post":
            fn = rewrite or _apply_to_output

            def post(
                _mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
            ) -> Any:
                return fn(module, args, kwargs, output) if self.enabled else None

            handle = target.register_forward_hook(post, with_kwargs=True)
        else:
            raise ConfigError(f"hook {hook!r} not in pre, post")
        self.modules[site.key] = module
        self.sites[site.key] = site
        self._handles.append(handle)
        return module

    # ------------------------------------------------------------------ parameters
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(key.param, parameter)`` in site order — the names used in saved files."""
        for key, module in self.modules.items():
            for pname, p in module.named_parameters():
                yield f"{key}.{pname}", p

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The added tensors (detached, not copied) keyed ``<site key>.<parameter>``."""
        return {k: p.detach() for k, p in self.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], where: str = "") -> None:
        """Copy ``tensors`` into the added parameters exactly; every key and shape must match."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        prefix = f"{where}: " if where else ""
        if missing or unexpected:
            raise CheckpointError(
                f"{prefix}{self.name} tensors do not match: missing {missing[:6]}, "
                f"unexpected {unexpected[:6]}"
            )
        for key, p in own.items():
            t = tensors[key]
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{prefix}{key}: saved shape {tuple(t.shape)} != model shape {tuple(p.shape)}"
                )
        for key, p in own.items():
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))

    def module_paths(self) -> list[str]:
        """State-dict prefixes of the added modules (``<owner>.<name>``)."""
        return [f"{self.sites[k].owner}.{self.name}" for k in self.modules]

    # ------------------------------------------------------------------ switching
    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Run the base model for the block (hooks pass inputs through untouched)."""
        before, self.enabled = self.enabled, False
        try:
            yield self.model
        finally:
            self.enabled = before

    def remove(self) -> nn.Module:
        """Remove hooks and modules; the model is its plain HF self again (the base stays frozen)."""
        for h in self._handles:
            h.remove()
        for key in self.modules:
            owner = self.model.get_submodule(self.sites[key].owner)
            owner._modules.pop(self.name, None)
        registry = _registry(self.model)
        registry.pop(self.name, None)
        if not registry:
            delattr(self.model, _REGISTRY_ATTR)
        self._handles, self.modules, self.sites = [], {}, {}
        return self.model


def _registry(model: nn.Module, create: bool = False) -> dict[str, Injection]:
    reg = model.__dict__.get(_REGISTRY_ATTR)
    if reg is None:
        reg = {}
        if create:
            # plain attribute (not a submodule): nn.Module.__setattr__ stores a dict in __dict__
            object.__setattr__(model, _REGISTRY_ATTR, reg)
    return reg


def injections(model: nn.Module) -> dict[str, Injection]:
    """Every injection attached to ``model``, by name."""
    return dict(_registry(model))


def added_module_paths(model: nn.Module) -> list[str]:
    """State-dict prefixes of every module any injection added to ``model`` (what the base lacks)."""
    return [path for inj in _registry(model).values() for path in inj.module_paths()]


def has_injection(model: nn.Module, name: str) -> bool:
    return name in _registry(model)


def get_injection(model: nn.Module, name: str) -> Injection:
    reg = _registry(model)
    if name not in reg:
        attached = ", ".join(reg) or "none"
        raise ConfigError(f"this model has no {name!r} attached (attached: {attached})")
    return reg[name]


def freeze_base(model: nn.Module, trainable: Iterable[nn.Parameter]) -> nn.Module:
    """Make exactly ``trainable`` require gradients; every other parameter of ``model`` is frozen."""
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return model
