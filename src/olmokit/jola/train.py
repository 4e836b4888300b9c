"""Training JoLA with Hugging Face ``Trainer`` (so ``accelerate launch`` gives DDP/FSDP for free).

:class:`JoLATrainer` is a small ``Trainer`` subclass that only

* adds the gate penalty to the task cross-entropy (training only; ``eval_loss`` stays pure CE),
  scaled consistently with gradient accumulation and DDP loss averaging;
* steps the gate scheduler on optimizer steps (callback ``on_step_end``), never on evaluation;
* keeps the best adapter by eval loss in memory, stops early (patience/threshold), and restores it at
  the end — without writing full-model checkpoints (``save_model`` writes the adapter only);
* stops on a NaN/inf loss (all ranks agree), restores the last good adapter, saves it to
  ``<output_dir>/last_good`` and raises :class:`TrainingDivergedError` naming the step.

:func:`train_jola` runs a whole config: load, attach, data, train, save, report, evaluate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..data.collate import PaddingCollator
from ..data.formatting import encode_records
from ..data.readers import Record, read_records
from ..errors import OlmokitError
from .checkpoint import save_jola
from .config import JoLASettings, TrainingSection
from .layer import expected_gate, prob_open
from .model import get_jola_state, jola_edits, jola_state_dict, load_jola_state_dict
from .schedulers import GateScheduler, make_scheduler

__all__ = ["JoLATrainer", "TrainingDivergedError", "gate_penalty", "training_arguments"]


class TrainingDivergedError(OlmokitError, RuntimeError):
    """The loss (or a JoLA tensor) became NaN/inf; the last good adapter was restored."""


class _NonFinite(Exception):
    def __init__(self, what: str, step: int):
        super().__init__(f"{what} at optimizer step {step}")
        self.what, self.step = what, step


def gate_penalty(model: nn.Module, settings: JoLASettings, s_t: float) -> torch.Tensor:
    """The penalty for scheduler value ``s_t`` (see :mod:`olmokit.jola.schedulers` for the formulas)."""
    edits = list(jola_edits(model).values())
    hc = edits[0].hc
    # one sigmoid over all [2, L, H] log-alphas (this runs on every training step)
    p = prob_open(torch.stack([torch.stack((e.log_g1, e.log_g2)) for e in edits], 1), hc)
    p1, p2 = p[0], p[1]  # [L, H] each
    if settings.penalty == "mixing":
        n = p1.numel()  # L*H; the reference divides per-layer head means by L*H again
        return s_t * p1.mean(-1).sum() / n + (1.0 - s_t) * p2.mean(-1).sum() / n
    return settings.gate_lambda * s_t * (p1.sum() + p2.sum())


def _prepare_dataset(data: Any, tokenizer: Any, max_length: int | None) -> Any:
    """Accept a path, Records, Examples or tokenised dicts; return something Trainer can index."""
    if data is None:
        return None
    if isinstance(data, (str, Path)):
        data = read_records(data)
    if isinstance(data, Sequence) and data and isinstance(data[0], Record):
        if tokenizer is None:
            raise OlmokitError("records need a tokenizer to be encoded; pass tokenizer=")
        return encode_records(data, tokenizer, max_length)
    return data


class _JoLACallback(TrainerCallback):
    """Scheduler stepping, finite checks and snapshots, best-adapter tracking and early stopping."""

    def __init__(self, trainer: JoLATrainer):
        self.t = trainer

    def _model(self) -> nn.Module:
        return self.t.accelerator.unwrap_model(self.t.model)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in jola_state_dict(self._model()).items()}

    def on_train_begin(self, args, state, control, **kwargs):
        self.t.gate_scheduler.total_steps = state.max_steps
        self.t.gate_scheduler.set_step(state.global_step)
        self.t._last_good = (state.global_step, self._snapshot())

    def on_step_end(self, args, state, control, **kwargs):
        self.t.gate_scheduler.set_step(state.global_step)
        snap = self._snapshot()
        if not all(bool(torch.isfinite(v).all()) for v in snap.values()):
            raise _NonFinite("non-finite JoLA parameter", state.global_step)
        self.t._last_good = (state.global_step, snap)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(loss):
            return
        self.t.gate_scheduler.on_evaluate(loss)
        t = self.t
        if t._best is None or loss < t._best[0] - t.early_stopping_threshold:
            t._best = (loss, state.global_step, self._snapshot())
            t._bad_evals = 0
        else:
            t._bad_evals += 1
            if t.early_stopping_patience is not None and t._bad_evals >= t.early_stopping_patience:
                control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.t.restore_best and self.t._best is not None:
            load_jola_state_dict(self._model(), self.t._best[2])


class JoLATrainer(Trainer):
    """``Trainer`` for a model with JoLA attached (seed-compatible: ``gate_scheduler="expon"``).

    Extra keyword arguments: ``gate_scheduler`` (name or :class:`GateScheduler`; default from the
    model's JoLA settings), ``jola_settings`` (penalty form and strength; default: the model's),
    ``tokenizer`` (alias of ``processing_class``), ``max_seq_length`` (for datasets given as records or
    paths), ``early_stopping_patience`` / ``early_stopping_threshold`` (on eval loss; None = off),
    ``restore_best`` (load the best adapter at the end, default True).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *,
        gate_scheduler: str | GateScheduler | None = "default",
        jola_settings: JoLASettings | None = None,
        tokenizer: Any = None,
        max_seq_length: int | None = 400,
        early_stopping_patience: int | None = None,
        early_stopping_threshold: float = 0.0,
        restore_best: bool = True,
        **kwargs: Any,
    ):
        state = get_jola_state(model)
        self.jola_settings = jola_settings or state.settings
        if isinstance(gate_scheduler, str) and gate_scheduler == "default":
            gate_scheduler = self.jola_settings.gate_scheduler
        self.gate_scheduler = make_scheduler(gate_scheduler)
        processing_class = kwargs.pop("processing_class", None) or tokenizer
        for key in ("train_dataset", "eval_dataset"):
            kwargs[key] = _prepare_dataset(kwargs.get(key), processing_class, max_seq_length)
        if kwargs.get("data_collator") is None and processing_class is not None:
            kwargs["data_collator"] = PaddingCollator(processing_class.pad_token_id)
        if args is None:
            args = TrainingArguments(output_dir="runs/jola", save_strategy="no", report_to=[])
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.restore_best = restore_best
        self._best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self._bad_evals = 0
        self._last_good: tuple[int, dict[str, torch.Tensor]] | None = None
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        self.add_callback(_JoLACallback(self))

    # ------------------------------------------------------------------ loss
    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).all().float().reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)  # every rank stops
        return bool(flag.item() > 0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ce, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        loss = ce
        if model.training:
            if not self._all_finite(ce):
                raise _NonFinite(f"non-finite loss ({ce.item()})", self.state.global_step + 1)
            penalty = gate_penalty(self.accelerator.unwrap_model(model), self.jola_settings, self.gate_scheduler.value)
            if self._loss_scaled_for_ga(num_items_in_batch):
                # CE is already a share of the accumulated batch; the penalty must be counted once per
                # optimizer step too. (DDP averages gradients, so adding it unscaled on every rank is right.)
                penalty = penalty / self.current_gradient_accumulation_steps
            loss = ce + penalty.to(ce.device, ce.dtype)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs only: a few scalars, no per-step host syncs
            edits = list(jola_edits(self.accelerator.unwrap_model(self.model)).values())
            with torch.no_grad():
                hc = edits[0].hc
                logs["gate_s"] = round(self.gate_scheduler.value, 6)
                logs["open_add"] = int(sum(int((expected_gate(e.log_g1, hc) > 0).sum()) for e in edits))
                logs["open_mult"] = int(sum(int((expected_gate(e.log_g2, hc) > 0).sum()) for e in edits))
        super().log(logs, start_time)

    # ------------------------------------------------------------------ train / save
    def train(self, *args: Any, **kwargs: Any):
        try:
            return super().train(*args, **kwargs)
        except _NonFinite as exc:
            model = self.accelerator.unwrap_model(self.model)
            good_step, good = self._last_good or (0, None)
            if good is not None:
                load_jola_state_dict(model, good)
            where = ""
            if self.args.should_save:
                where = f" and saved it to {save_jola(model, Path(self.args.output_dir) / 'last_good')}"
            raise TrainingDivergedError(
                f"{exc}; training stopped, restored the adapter from optimizer step {good_step}{where}"
            ) from None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints and ``save_model`` write the JoLA adapter only, never the base weights."""
        if self.args.should_save:
            save_jola(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    @property
    def best(self) -> dict[str, Any] | None:
        """``{"eval_loss", "step"}`` of the best evaluation so far (the adapter restored at the end)."""
        return None if self._best is None else {"eval_loss": self._best[0], "step": self._best[1]}


def training_arguments(section: TrainingSection, output_dir: str | None = None, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` from the ``training_config`` section (no full-model checkpoints)."""
    kw: dict[str, Any] = dict(
        output_dir=output_dir or section.output_dir,
        learning_rate=section.learning_rate,
        per_device_train_batch_size=section.per_device_train_batch_size,
        per_device_eval_batch_size=section.per_device_eval_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        num_train_epochs=section.num_train_epochs,
        max_steps=section.max_steps,
        warmup_steps=section.warmup_steps,
        lr_scheduler_type=section.lr_scheduler_type,
        weight_decay=section.weight_decay,
        max_grad_norm=section.max_grad_norm,
        bf16=section.bf16,
        seed=section.seed,
        eval_strategy=section.eval_strategy,
        eval_steps=section.eval_steps,
        logging_steps=section.logging_steps,
        save_strategy="no",
        dataloader_num_workers=section.dataloader_num_workers,
        disable_tqdm=section.disable_tqdm,
        report_to=section.report_to or "none",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
    )
    if section.gradient_checkpointing:
        # non-reentrant: with a frozen base, reentrant checkpointing would cut the edit's gradients
        kw.update(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    kw.update(section.extra_args)
    kw.update(overrides)
    return TrainingArguments(**kw)
