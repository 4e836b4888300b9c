"""Hook points: identity modules that user hooks attach to (TransformerLens's ``HookPoint`` idea).

A :class:`HookPoint` does nothing on its own and, unlike TransformerLens's, is *not* called on every
forward: :class:`~olmokit.lens.hooked.HookedOlmo` wires a hook point into the HF model (through
``torch`` hooks on the HF module that computes the value) only while the hook point has at least one
hook. That is how an idle lens costs nothing: no hook point has hooks, so no ``torch`` hook exists.

Hook functions have TransformerLens's signature ``fn(tensor, hook=hook_point)`` and return a
replacement tensor or ``None``. Backward hooks get the gradient of the hook point's value
(``fn(grad, hook=hook_point)``) and may return a replacement gradient; they are attached as tensor
hooks (not ``register_full_backward_hook``, whose view wrapping is what breaks on in-place ops).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["HookPoint", "LensHandle", "HookFn", "NamesFilter", "make_names_filter"]

HookFn = Callable[..., Any]
NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


class LensHandle:
    """One hook attached to a hook point. ``remove()`` detaches it (idempotent)."""

    def __init__(
        self,
        hook_point: HookPoint,
        fn: HookFn,
        direction: str,
        is_permanent: bool,
        level: int | None,
    ):
        self.hook_point = hook_point
        self.fn = fn
        self.direction = direction
        self.is_permanent = is_permanent
        self.context_level = level
        self.active = True

    def remove(self) -> None:
        if self.active:
            self.active = False
            self.hook_point._detach(self)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"LensHandle({self.hook_point.name}, {self.direction}, permanent={self.is_permanent})"
        )


class HookPoint(nn.Module):
    """An identity module with a name; ``forward`` runs the attached hooks in order.

    ``on_change(hook_point)`` is called when the hook point gains its first hook or loses its last one,
    so the owner can wire or unwire the matching site in the HF model.
    """

    def __init__(
        self, name: str | None = None, on_change: Callable[[HookPoint], None] | None = None
    ):
        super().__init__()
        self.name = name
        self._on_change = on_change
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        #: scratch space hooks may share across calls (TL's ``hook.ctx``); ``clear_context`` empties it
        self.ctx: dict[Any, Any] = {}

    def layer(self) -> int:
        """The block index in the name (``blocks.3.attn.hook_z`` -> 3); an error for global hooks."""
        parts = (self.name or "").split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ValueError(f"hook point {self.name!r} is not inside a block")
        return int(parts[1])

    def clear_context(self) -> None:
        self.ctx = {}

    def add_perma_hook(self, fn: HookFn, dir: str = "fwd") -> LensHandle:
        """A hook that survives ``reset_hooks()`` (TL's permanent hooks)."""
        return self.add_hook(fn, dir=dir, is_permanent=True)

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(
        self,
        fn: HookFn,
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> LensHandle:
        """Attach ``fn(tensor, hook=self)``; ``prepend`` runs it before the hooks already attached."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        was_idle = not self.has_hooks
        handle = LensHandle(self, fn, dir, is_permanent, level)
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if prepend:
            hooks.insert(0, handle)
        else:
            hooks.append(handle)
        if was_idle and self._on_change is not None:
            self._on_change(self)
        return handle

    def _detach(self, handle: LensHandle) -> None:
        hooks = self.fwd_hooks if handle.direction == "fwd" else self.bwd_hooks
        if handle in hooks:
            hooks.remove(handle)
            if not self.has_hooks and self._on_change is not None:
                self._on_change(self)

    def remove_hooks(
        self, dir: str = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove hooks; permanent ones only with ``including_permanent``; with ``level`` only that context's."""
        for handle in list(self.fwd_hooks) + list(self.bwd_hooks):
            if dir != "both" and handle.direction != dir:
                continue
            if handle.is_permanent and not including_permanent:
                continue
            if level is not None and handle.context_level != level:
                continue
            handle.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for handle in list(self.fwd_hooks):
            out = handle.fn(x, hook=self)
            if out is not None:
                x = out
        if self.bwd_hooks and isinstance(x, torch.Tensor) and x.requires_grad:
            # A fresh autograd node that the wiring then passes downstream (a site forwards a value only
            # when it is a new object); a hook on the incoming tensor itself could sit on a reshaped
            # view that the model never uses, and would not fire.
            x = x.view_as(x)
            for handle in self.bwd_hooks:
                x.register_hook(_grad_hook(handle, self))
        return x

    def extra_repr(self) -> str:
        return f"{self.name!r}, fwd={len(self.fwd_hooks)}, bwd={len(self.bwd_hooks)}"


def _grad_hook(
    handle: LensHandle, hook_point: HookPoint
) -> Callable[[torch.Tensor], torch.Tensor | None]:
    def fn(grad: torch.Tensor) -> torch.Tensor | None:
        # A handle removed after the forward (context exited) must not fire on a late backward.
        return handle.fn(grad, hook=hook_point) if handle.active else None

    return fn


def make_names_filter(names_filter: NamesFilter, all_names: Iterable[str]) -> Callable[[str], bool]:
    """Turn ``None`` (everything), a name, a list of names or a predicate into a predicate.

    Unknown names are an error (a typo would otherwise cache nothing, silently).
    """
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    if isinstance(names_filter, Iterable):
        wanted = set(names_filter)
        unknown = wanted - set(all_names)
        if unknown:
            raise ValueError(
                f"unknown hook names {sorted(unknown)[:5]}; see HookedOlmo.hook_names()"
            )
        return lambda name: name in wanted
    raise ValueError(
        f"names_filter must be None, a str, a list of str or a callable, got {type(names_filter).__name__}"
    )
