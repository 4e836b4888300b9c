"""The one resident working model of a merge, and how its units are swapped in place.

The original olm.py loaded a whole donor model with ``from_pretrained`` for every candidate and every
rebuilt decision. Here exactly one model is resident (the base, loaded once); a candidate is tried by
copying *one unit's* tensors, read lazily from the donor's safetensors files
(:class:`olmokit.merge.pool.Pool`), into the working model's parameters in place, and undone from a
copy of just that unit. So memory does not grow with the pool and no donor is ever materialised.

Tied embeddings: when ``lm_head`` shares its tensor with ``embed_tokens`` the family adapter marks the
lm_head unit ``tied_to="embed_tokens"``; writing ``embed_tokens`` in place changes both (they are the
same tensor), and the tied lm_head is never written or searched on its own.

:attr:`WorkingModel.overrides` names, for every unit that differs from the base, where its weights
came from (``donor`` or ``donor+svd:...`` after evolution-strategy steps). Its canonical form
(:meth:`WorkingModel.state_key`) identifies the working state exactly, which is what the evaluation
cache is keyed on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..family import FamilyAdapter, ParameterUnit, get_adapter
from .evaluate import StateCache

__all__ = ["WorkingModel", "state_key", "unit_source"]


def state_key(overrides: Mapping[str, str]) -> str:
    """The evaluation-cache key of the ``{unit: source}`` overrides (units that differ from the
    base): :meth:`olmokit.merge.evaluate.StateCache.state_key`, order-independent."""
    return StateCache.state_key(overrides)


def unit_source(member: str, es_ops: Iterable[Mapping[str, Any]] = ()) -> str:
    """The source label of a unit: the donor's name, plus one ``+kind:seed:generation:offspring``
    per accepted evolution-strategy step (so a refined unit never collides with its plain donor)."""
    label = member
    for op in es_ops:
        label += f"+{op['kind']}:{op['seed']}:{op['generation']}:{op['offspring']}"
    return label


class WorkingModel:
    """The resident model plus the bookkeeping of which donor each unit came from.

    ``pool`` is a :class:`olmokit.merge.pool.Pool` (anything with ``unit_tensors(member, unit)``);
    ``base`` is the pool member the model was loaded from (the reference of :attr:`overrides`).
    """

    def __init__(
        self,
        model: nn.Module,
        pool: Any,
        base: str,
        adapter: FamilyAdapter | None = None,
    ):
        self.model = model
        self.pool = pool
        self.base = base
        self.adapter = adapter or get_adapter(model)
        self.units: dict[str, ParameterUnit] = {u.name: u for u in self.adapter.units()}
        # the live tensors, by state_dict key (a tied lm_head maps to the embedding's tensor)
        self._tensors: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
        #: unit name -> source label, for units that differ from the base
        self.overrides: dict[str, str] = {}
        self._spare: dict[tuple, list[torch.Tensor]] = {}  # buffers of a released snapshot

    # ------------------------------------------------------------------ units
    def unit(self, unit: ParameterUnit | str) -> ParameterUnit:
        return self.units[unit] if isinstance(unit, str) else unit

    def searchable_units(self, skip_norm: bool = False) -> list[ParameterUnit]:
        """Every unit a tensor-wise search visits, in the adapter's order (embed, layers, final norm,
        lm_head): a tied lm_head is skipped (it *is* the embedding), norms too with ``skip_norm``."""
        return [
            u for u in self.units.values() if u.tied_to is None and not (skip_norm and u.is_norm)
        ]

    def layer_units(self, layer: int) -> list[ParameterUnit]:
        return [u for u in self.units.values() if u.layer == layer and u.tied_to is None]

    def boundary_units(self) -> list[ParameterUnit]:
        """embed_tokens, the final norm and lm_head (lm_head only when it is not tied)."""
        roles = ("embed_tokens", "final_norm", "lm_head")
        return [u for u in self.units.values() if u.role in roles and u.tied_to is None]

    def tensor(self, key: str) -> torch.Tensor:
        """The live tensor of a state_dict key (writing into it changes the model)."""
        return self._tensors[key]

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    # ------------------------------------------------------------------ swapping
    def source(self, unit: ParameterUnit | str) -> str:
        """Where a unit's current weights came from (the base's name when untouched)."""
        return self.overrides.get(self.unit(unit).name, self.base)

    def set_source(self, unit: ParameterUnit | str, source: str) -> None:
        name = self.unit(unit).name
        if source == self.base:
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = source

    def apply(self, unit: ParameterUnit | str, member: Any) -> None:
        """Copy ``member``'s tensors of ``unit`` into the model in place (cast to the model's dtype
        and device). ``member`` is a pool member (or its name)."""
        self.apply_all([unit], member)

    @torch.no_grad()
    def apply_all(self, units: Iterable[ParameterUnit | str], member: Any) -> None:
        """:meth:`apply` for several units of one member, reading them in one go: the donor's file
        is opened once for all of them and each tensor is cast by ``copy_`` straight from the
        mapping (:meth:`olmokit.merge.pool.Pool.copy_units`). Every tensor of the units is
        overwritten, so applying one candidate over another needs no restore in between."""
        us = [u for u in (self.unit(u) for u in units) if u.tied_to is None]  # tied: same tensor
        copy_units = getattr(self.pool, "copy_units", None)
        if copy_units is not None:
            copy_units(member, us, self._tensors)
        else:  # a pool with only unit_tensors (the minimal interface)
            for u in us:
                tensors = self.pool.unit_tensors(member, u)
                missing = [k for k in u.keys if k not in tensors]
                if missing:
                    raise CheckpointError(
                        f"{_name(member)}: no tensor {missing[0]!r} for unit {u.name}"
                    )
                for key in u.keys:
                    self._tensors[key].copy_(tensors[key])
        for u in us:
            self.set_source(u, _name(member))

    @torch.no_grad()
    def snapshot(self, units: Iterable[ParameterUnit | str]) -> dict[str, Any]:
        """A copy of just these units' tensors and sources, for :meth:`restore`.

        The copies go into the buffers of the snapshot last passed to :meth:`release` where the shapes
        match (every layer step copies a layer of the same shapes: a fresh allocation of a
        layer's worth costs more in page faults than the copy itself); buffers that do not match
        are freed first, so a snapshot never holds more than it did without them."""
        us = [self.unit(u) for u in units]
        keys = [k for u in us for k in u.keys]
        spare, self._spare = self._spare, {}
        reused = {}
        for key in keys:
            live = self._tensors[key]
            stack = spare.get((tuple(live.shape), live.dtype, live.device))
            if stack:
                reused[key] = stack.pop()
        spare.clear()  # unmatched buffers go before anything new is allocated
        tensors = {}
        for key in keys:
            live = self._tensors[key]
            buf = reused.get(key)
            tensors[key] = live.detach().clone() if buf is None else buf.copy_(live)
        return {"tensors": tensors, "sources": {u.name: self.overrides.get(u.name) for u in us}}

    def release(self, snap: dict[str, Any]) -> None:
        """Done with ``snap``: its buffers serve the next :meth:`snapshot` (the previous spare
        buffers are dropped). ``snap`` cannot be restored afterwards."""
        spare: dict[tuple, list[torch.Tensor]] = {}
        for t in snap["tensors"].values():
            spare.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)
        self._spare = spare
        snap["tensors"] = None

    @torch.no_grad()
    def restore(self, snap: Mapping[str, Any]) -> None:
        if snap["tensors"] is None:
            raise RuntimeError("this snapshot was released; it can no longer be restored")
        for key, value in snap["tensors"].items():
            self._tensors[key].copy_(value)
        for name, source in snap["sources"].items():
            if source is None:
                self.overrides.pop(name, None)
            else:
                self.overrides[name] = source

    @contextmanager
    def trial(self, units: Iterable[ParameterUnit | str]) -> Iterator[None]:
        """Whatever happens to ``units`` inside the block is undone on exit (exceptions included)."""
        snap = self.snapshot(units)
        try:
            yield
        finally:
            self.restore(snap)
            self.release(snap)

    def state_key(self, extra: Mapping[str, str] | None = None) -> str:
        """The evaluation-cache key of the current state (``extra`` overrides it, for a state not
        applied yet)."""
        overrides = dict(self.overrides)
        for name, source in (extra or {}).items():
            if source == self.base:
                overrides.pop(name, None)
            else:
                overrides[name] = source
        return state_key(overrides)

    def rebase(self, base: str) -> None:
        """Make ``base`` the reference of :attr:`overrides`; every unit must hold ``base``'s weights
        (base selection copies the chosen model's every unit in, then rebases)."""
        wrong = [
            u.name for u in self.units.values() if u.tied_to is None and self.source(u) != base
        ]
        if wrong:
            raise ValueError(f"cannot rebase on {base!r}: units {wrong[:4]} hold other weights")
        self.base = base
        self.overrides.clear()


def _name(member: Any) -> str:
    return member if isinstance(member, str) else member.name
