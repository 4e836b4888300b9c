"""Training JoLA with Hugging Face ``Trainer`` (so ``accelerate launch`` gives DDP/FSDP for free).

:class:`JoLATrainer` is a small ``Trainer`` subclass (on the injection base's
:class:`~olmokit.inject.FiniteLossGuard`) that only

* adds the gate penalty to the task cross-entropy (training only; ``eval_loss`` stays pure CE),
  scaled consistently with gradient accumulation and DDP loss averaging;
* steps the gate scheduler on optimizer steps (callback ``on_step_end``), never on evaluation;
* keeps the best adapter in memory by the validation *objective* — eval loss plus ``gate_lambda``
  times the expected number of open gates (:func:`selection_penalty`: the training penalty at
  schedule value 1, so every evaluation is weighed alike) — stops early on it (patience/threshold),
  and restores it at the end. By eval loss alone, gates that start open would
  make the unlocalized early steps look best (measured: a ``stdlib_defname`` run restored step 40
  of 150 with all 32 heads open);
* writes the JoLA adapter only (``save_model`` and every ``checkpoint-<step>/``; never base weights),
  and stores in each checkpoint what a resumed run needs beyond Trainer's own optimizer, scheduler,
  RNG and data-position state: the gate scheduler, the early-stopping counters and the best adapter
  so far (``jola_trainer_state.json``, ``jola_best.safetensors``), so a resumed run is bit-identical
  to an uninterrupted one;
* stops on a NaN/inf loss (all ranks agree), restores the last good adapter, saves it to
  ``<output_dir>/last_good`` and raises :class:`TrainingDivergedError` naming the step (the guard).

The penalty settings and the gate scheduler come from the constructor (``jola_settings``,
``gate_scheduler``), never from the model. :func:`olmokit.jola.run.run_jola` runs a whole config.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.collate import PaddingCollator
from ..errors import CheckpointError
from ..files import atomic_save_safetensors, atomic_write_json, load_safetensors
from ..inject import FiniteLossGuard, TrainingDivergedError
from ..inject import training_arguments as _training_arguments
from .checkpoint import check_adapter_base, read_adapter, save_jola
from .config import JoLASettings, TrainingSection
from .data import prepare_dataset
from .layer import expected_gate, prob_open
from .model import get_jola_state, jola_edits, jola_state_dict, load_jola_state_dict
from .schedulers import GateScheduler, make_scheduler

__all__ = [
    "JoLATrainer",
    "TrainingDivergedError",
    "gate_penalty",
    "selection_penalty",
    "training_arguments",
]

#: files a JoLA checkpoint holds next to the adapter (besides Trainer's optimizer/scheduler/RNG state)
TRAINER_STATE_FILE = "jola_trainer_state.json"
BEST_FILE = "jola_best.safetensors"


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


def selection_penalty(model: nn.Module, settings: JoLASettings) -> float:
    """What the best-adapter choice adds to the eval loss: ``gate_lambda`` times the expected number
    of open gates (the 'strength' penalty at schedule value 1), the same at every step so that
    evaluations compare; 0 for the 'mixing' form, which has no strength to weigh against the loss.
    Deterministic (probabilities, no sampling)."""
    if settings.penalty == "mixing":
        return 0.0
    with torch.no_grad():
        return float(gate_penalty(model, settings, 1.0))


class _JoLACallback(TrainerCallback):
    """Scheduler stepping, best-adapter tracking and early stopping."""

    def __init__(self, trainer: JoLATrainer):
        self.t = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.t.gate_scheduler.total_steps = state.max_steps
        self.t.gate_scheduler.set_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.t.gate_scheduler.set_step(state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(loss):
            return
        self.t.gate_scheduler.on_evaluate(loss)
        t = self.t
        objective = loss + selection_penalty(t._jola_model(), t.jola_settings)
        metrics["eval_objective"] = objective  # later callbacks (and evaluate()'s caller) see it
        if t._best is None or objective < t._best[0] - t.early_stopping_threshold:
            t._best = (objective, state.global_step, t._jola_snapshot(), loss)
            t._bad_evals = 0
        else:
            t._bad_evals += 1
            if t.early_stopping_patience is not None and t._bad_evals >= t.early_stopping_patience:
                control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.t.restore_best and self.t._best is not None:
            load_jola_state_dict(self.t._jola_model(), self.t._best[2])


class JoLATrainer(FiniteLossGuard, Trainer):
    """``Trainer`` for a model with JoLA attached (seed-compatible: ``gate_scheduler="expon"``).

    Extra keyword arguments: ``jola_settings`` (penalty form and strength, and the default gate
    scheduler; default :class:`JoLASettings()` — pass the run's ``jola_config``),
    ``gate_scheduler`` (name or :class:`GateScheduler`; ``"default"``: ``jola_settings``'s),
    ``tokenizer`` (alias of ``processing_class``), ``max_seq_length`` (for datasets given as records,
    dicts, a ``datasets.Dataset`` or paths — see :mod:`olmokit.jola.data`), ``loss_on``
    (``"answer"``: loss on the answer only, default; ``"turn"``: also the chat template's end of
    turn), ``dataset_text_field`` (the plain-text column, reference name), ``early_stopping_patience``
    / ``early_stopping_threshold`` (on the validation objective, eval loss + gate penalty; None =
    off), ``restore_best`` (load the best adapter at the end, default True).

    The gates (``log_g1``, ``log_g2``) get their own optimizer group at
    ``jola_settings.gate_learning_rate`` (same schedule shape as the main group): with one shared lr of
    5e-3 a gate's log-alpha moves at most ~0.4 in 80 steps, while closing a gate from its init needs a
    move of ~2.4 (see ``docs/jola.md``).
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
        loss_on: str = "answer",
        dataset_text_field: str = "text",
        early_stopping_patience: int | None = None,
        early_stopping_threshold: float = 0.0,
        restore_best: bool = True,
        **kwargs: Any,
    ):
        get_jola_state(model)  # a model without JoLA is an error here, not at the first step
        self.jola_settings = jola_settings if jola_settings is not None else JoLASettings()
        if isinstance(gate_scheduler, str) and gate_scheduler == "default":
            gate_scheduler = self.jola_settings.gate_scheduler
        self.gate_scheduler = make_scheduler(gate_scheduler)
        processing_class = kwargs.pop("processing_class", None) or tokenizer
        for key in ("train_dataset", "eval_dataset"):
            kwargs[key] = prepare_dataset(
                kwargs.get(key), processing_class, max_seq_length, loss_on, dataset_text_field, key
            )
        if kwargs.get("data_collator") is None and processing_class is not None:
            kwargs["data_collator"] = PaddingCollator(processing_class.pad_token_id)
        if args is None:
            args = TrainingArguments(output_dir="runs/jola", save_strategy="no", report_to=[])
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.restore_best = restore_best
        #: (objective, step, adapter tensors, eval loss) of the best evaluation so far
        self._best: tuple[float, int, dict[str, torch.Tensor], float] | None = None
        self._bad_evals = 0
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        self.add_callback(_JoLACallback(self))

    def _jola_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _jola_snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in jola_state_dict(self._jola_model()).items()}

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with the gate log-alphas moved into their own group at
        ``gate_learning_rate`` (before the LR scheduler is built, so it scales both groups alike)."""
        opt = super().create_optimizer(model)
        gate_lr = self.jola_settings.gate_learning_rate
        if gate_lr is None or getattr(opt, "_jola_gate_group", False):
            return opt
        edits = jola_edits(self._jola_model())
        gate_ids = {id(p) for e in edits.values() for p in (e.log_g1, e.log_g2)}
        gate_groups = []
        for group in opt.param_groups:
            gates = [p for p in group["params"] if id(p) in gate_ids]
            if gates:
                group["params"] = [p for p in group["params"] if id(p) not in gate_ids]
                gate_groups.append({**group, "params": gates, "lr": gate_lr})
        opt.param_groups[:] = [g for g in opt.param_groups if g["params"]]
        for group in gate_groups:
            opt.add_param_group(group)
        opt._jola_gate_group = True
        return opt

    # ------------------------------------------------------------------ loss
    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # the guard (FiniteLossGuard.compute_loss) stops on a non-finite CE before the penalty is added
        ce, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        loss = ce
        if model.training:
            penalty = gate_penalty(
                self.accelerator.unwrap_model(model), self.jola_settings, self.gate_scheduler.value
            )
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
                logs["open_add"] = int(
                    sum(int((expected_gate(e.log_g1, hc) > 0).sum()) for e in edits)
                )
                logs["open_mult"] = int(
                    sum(int((expected_gate(e.log_g2, hc) > 0).sum()) for e in edits)
                )
        super().log(logs, start_time)

    # ------------------------------------------------------------------ save / resume
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints and ``save_model`` write the JoLA adapter only, never the base weights."""
        if self.args.should_save:
            save_jola(self._jola_model(), output_dir or self.args.output_dir)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The JoLA state goes in first: Trainer writes trainer_state.json last, and a checkpoint
        # counts as complete only once that file exists (olmokit.runs.RunDir.last_checkpoint).
        if self.args.should_save:
            folder = (
                Path(self._get_output_dir(trial=trial))
                / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._save_jola_trainer_state(folder)
        super()._save_checkpoint(model, trial)

    def _save_jola_trainer_state(self, folder: Path) -> None:
        best = None
        if self._best is not None:
            best = self.best
            atomic_save_safetensors(folder / BEST_FILE, self._best[2])
        state = {
            "scheduler": self.gate_scheduler.state_dict(),
            "best": best,
            "bad_evals": self._bad_evals,
        }
        atomic_write_json(folder / TRAINER_STATE_FILE, state)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        """Resume: the adapter from the checkpoint (checked against this base) and the JoLA state."""
        folder = Path(resume_from_checkpoint)
        meta, tensors = read_adapter(folder)
        check_adapter_base(meta, self._jola_model(), f"checkpoint {folder}")
        load_jola_state_dict(self._jola_model(), tensors)
        state_path = folder / TRAINER_STATE_FILE
        if not state_path.is_file():
            raise CheckpointError(
                f"{folder} has no {TRAINER_STATE_FILE}; it was not written by JoLATrainer"
            )
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{state_path}: invalid JSON ({exc})") from None
        self.gate_scheduler.load_state_dict(state["scheduler"])
        self._bad_evals = int(state["bad_evals"])
        self._best = None
        if state["best"] is not None:
            best = load_safetensors(folder / BEST_FILE)
            b = state["best"]
            loss = float(b["eval_loss"])
            # checkpoints from before the objective selected by eval loss alone
            self._best = (float(b.get("objective", loss)), int(b["step"]), best, loss)

    @property
    def best(self) -> dict[str, Any] | None:
        """``{"objective", "eval_loss", "step"}`` of the best evaluation so far (the adapter restored
        at the end): the lowest validation objective, eval loss plus the gate penalty."""
        if self._best is None:
            return None
        return {"objective": self._best[0], "eval_loss": self._best[3], "step": self._best[1]}


def training_arguments(
    section: TrainingSection, output_dir: str | os.PathLike[str] | None = None, **overrides: Any
) -> TrainingArguments:
    """``TrainingArguments`` from the ``training_config`` section (``model_dump`` through the injection
    base; adapter-only checkpoints every ``save_steps`` optimizer steps, none when it is null)."""
    return _training_arguments(section, output_dir, **overrides)
