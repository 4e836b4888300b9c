"""Training a few added parameters with HF ``Trainer``: ``TrainingArguments`` from a config section
(``model_dump``, never field by field) and the finite-loss guard that stops a diverging run and
keeps its last good state."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from ..errors import ConfigError, OlmokitError

__all__ = [
    "training_arguments",
    "TrainingDivergedError",
    "NonFiniteStop",
    "all_ranks_finite",
    "FiniteLossGuard",
]


_TRAINING_ARGUMENT_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def training_arguments(
    section: Any, output_dir: str | os.PathLike[str] | None = None, **overrides: Any
) -> TrainingArguments:
    """``TrainingArguments`` from a pydantic config section, via ``section.model_dump()``.

    Fields named in the section class's ``OLMOKIT_ONLY`` set are left out; ``extra_args`` (a dict of
    any other ``TrainingArguments``) is merged in, then whatever the section's
    ``derived_training_arguments()`` returns (settings computed from olmokit-only keys), then
    ``overrides``. Defaults suited to a frozen base with a few added parameters:
    ``remove_unused_columns=False`` (collated batches carry exactly the model's inputs) and
    ``ddp_find_unused_parameters=False``. Unknown names are a :class:`ConfigError`.
    """
    exclude = set(getattr(type(section), "OLMOKIT_ONLY", ())) | {"extra_args"}
    kw: dict[str, Any] = {"remove_unused_columns": False, "ddp_find_unused_parameters": False}
    kw.update(section.model_dump(exclude=exclude))
    kw.update(getattr(section, "extra_args", None) or {})
    derived = getattr(section, "derived_training_arguments", None)
    if callable(derived):
        kw.update(derived())
    kw.update(overrides)
    if output_dir is not None:
        kw["output_dir"] = str(output_dir)
    unknown = sorted(set(kw) - _TRAINING_ARGUMENT_FIELDS)
    if unknown:
        raise ConfigError(
            f"{type(section).__name__}: {unknown} are not transformers.TrainingArguments fields "
            "(check extra_args)"
        )
    try:
        return TrainingArguments(**kw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid training arguments: {exc}") from None


class TrainingDivergedError(OlmokitError, RuntimeError):
    """The loss (or an added tensor) became NaN/inf; the last good added parameters were restored."""


class NonFiniteStop(Exception):
    """Raised inside a training step to stop on a non-finite value (turned into the public error)."""

    def __init__(self, what: str, step: int):
        super().__init__(f"{what} at optimizer step {step}")
        self.what, self.step = what, step


def all_ranks_finite(value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every process (all ranks must stop together, or DDP hangs)."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


class _GuardCallback(TrainerCallback):
    """Snapshots the trainable tensors after every finite optimizer step."""

    def __init__(self, trainer: FiniteLossGuard):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._last_good = (state.global_step, self.trainer._guarded_snapshot())

    def on_step_end(self, args, state, control, **kwargs):
        snap = self.trainer._guarded_snapshot()
        bad = [k for k, v in snap.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteStop(f"non-finite parameter {bad[0]}", state.global_step)
        self.trainer._last_good = (state.global_step, snap)


class FiniteLossGuard:
    """``Trainer`` mixin (list it before ``Trainer``): stop on a non-finite loss, keep the last good state.

    The guarded tensors are the model's trainable parameters (the added ones, with a frozen base), so
    a snapshot per optimizer step costs a copy of the adapter only. On a NaN/inf training loss or
    parameter: the snapshot of the last finite step is restored, written with ``self._save`` (a
    subclass writes its adapter there) to ``<output_dir>/last_good`` on the main process, and
    :class:`TrainingDivergedError` names the optimizer step. Checkpoints written before stay.
    """

    #: where the last good state is saved (default ``<output_dir>/last_good``)
    last_good_dir: str | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        self._last_good: tuple[int, dict[str, torch.Tensor]] | None = None
        super().__init__(*args, **kwargs)
        self.add_callback(_GuardCallback(self))  # type: ignore[attr-defined]

    def _guarded_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)  # type: ignore[attr-defined]

    def _guarded_snapshot(self) -> dict[str, torch.Tensor]:
        return {
            k: p.detach().clone()
            for k, p in self._guarded_model().named_parameters()
            if p.requires_grad
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and not all_ranks_finite(loss):
            step = self.state.global_step + 1  # type: ignore[attr-defined]
            raise NonFiniteStop(f"non-finite loss ({loss.detach().float().mean().item()})", step)
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any):
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        except NonFiniteStop as exc:
            model = self._guarded_model()
            good_step, good = self._last_good or (0, None)
            if good is not None:
                with torch.no_grad():
                    params = dict(model.named_parameters())
                    for k, v in good.items():
                        params[k].copy_(v)
            where = ""
            args_ = self.args  # type: ignore[attr-defined]
            if args_.should_save:
                path = Path(self.last_good_dir or Path(args_.output_dir) / "last_good")
                self._save(str(path))  # type: ignore[attr-defined]
                where = f" and saved it to {path}"
            raise TrainingDivergedError(
                f"{exc}; training stopped, restored the trained parameters from optimizer step "
                f"{good_step}{where}"
            ) from None
