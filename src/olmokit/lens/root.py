"""``HookedRootModule``: TransformerLens's base for *your own* hooked modules.

TL's Main Demo builds a toy model from ``HookPoint``s and ``HookedRootModule`` to show how hooks work;
this is the same contract for any ``nn.Module`` that calls its hook points in ``forward``: after
``setup()`` every :class:`HookPoint` is named by its module path, and ``run_with_hooks``,
``run_with_cache``, ``hooks()``, ``add_hook`` and ``reset_hooks`` work as on :class:`HookedOlmo`
(which wires its hook points into an HF model instead of being called by its own forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .hook_points import HookFn, HookPoint, LensHandle, NamesFilter, make_names_filter

__all__ = ["HookedRootModule"]


class HookedRootModule(nn.Module):
    """Call ``super().setup()`` at the end of ``__init__`` to name the hook points."""

    def setup(self) -> None:
        self.mod_dict: dict[str, nn.Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if not name:
                continue
            module.name = name
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def _matching(self, name: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name):
            return [hp for n, hp in self.hook_dict.items() if name(n)]
        if name not in self.hook_dict:
            raise ValueError(f"unknown hook name {name!r}; valid: {sorted(self.hook_dict)}")
        return [self.hook_dict[name]]

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: str = "fwd",
        is_permanent: bool = False,
    ) -> list[LensHandle]:
        return [
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent) for hp in self._matching(name)
        ]

    def reset_hooks(self, including_permanent: bool = False) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks("both", including_permanent=including_permanent)

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        bwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        reset_hooks_end: bool = True,
    ) -> Iterator[HookedRootModule]:
        handles: list[LensHandle] = []
        try:
            for name, fn in fwd_hooks:
                handles += self.add_hook(name, fn, "fwd")
            for name, fn in bwd_hooks:
                handles += self.add_hook(name, fn, "bwd")
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        bwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        reset_hooks_end: bool = True,
        **model_kwargs: Any,
    ) -> Any:
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            return self(*model_args, **model_kwargs)

    def run_with_cache(
        self, *model_args: Any, names_filter: NamesFilter = None, **model_kwargs: Any
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """``(output, {hook name: value})`` for the hook points the filter selects."""
        keep = make_names_filter(names_filter, self.hook_dict)
        store: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name] = x.detach()

        hooks = [(n, save) for n in self.hook_dict if keep(n)]
        with self.hooks(hooks):
            out = self(*model_args, **model_kwargs)
        return out, store
