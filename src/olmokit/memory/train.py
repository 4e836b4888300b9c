"""Training the memory with Hugging Face ``Trainer`` (so ``accelerate launch`` gives DDP/FSDP).

:class:`MemoryTrainer` is a small ``Trainer`` subclass on the injection base's
:class:`~olmokit.inject.FiniteLossGuard` that only

* trains a :class:`~olmokit.memory.model.MemoryModel` (base frozen; the loss is the model's
  segmented LM loss; truncated BPTT is the model's ``bptt_segments``);
* writes the memory adapter only (``save_model`` and every ``checkpoint-<step>/``; never base
  weights) and reads it back when resuming, checked against the base fingerprint;
* stops on a NaN/inf loss (all ranks agree), restores the last good memory parameters, saves them
  to ``<output_dir>/last_good`` and raises :class:`TrainingDivergedError` naming the step.

Data: any indexable dataset of ``{"input_ids": [length], "labels": [length] (optional)}`` rows of one
length (token ids; labels -100 where not scored; default: every token). :func:`train_memory` is the
one-call entry point for a caller with its own dataset (the long-context tasks of
:mod:`olmokit.data.longctx` are such datasets).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..errors import DataError
from ..inject import FiniteLossGuard, TrainingDivergedError, check_base, read_adapter
from ..inject import training_arguments as _training_arguments
from .config import TrainingSection
from .model import ADAPTER_FORMAT, MemoryModel

__all__ = [
    "MemoryTrainer",
    "SequenceCollator",
    "TrainingDivergedError",
    "train_memory",
    "training_arguments",
]


class SequenceCollator:
    """Stack ``{"input_ids", "labels"}`` rows of one length into ``[batch, length]`` tensors
    (labels default to the input ids: plain language modelling). No padding: the memory runs whole
    segments, so rows of different lengths are a data error, not something to pad."""

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows]
        lengths = {len(t) for t in ids}
        if len(lengths) != 1:
            raise DataError(
                f"memory training rows must have one length; this batch has {sorted(lengths)} "
                "(cut sequences to data.seq_len)"
            )
        labels = [
            torch.as_tensor(r["labels"], dtype=torch.long) if r.get("labels") is not None else i
            for r, i in zip(rows, ids)
        ]
        return {"input_ids": torch.stack(ids), "labels": torch.stack(labels)}


class MemoryTrainer(FiniteLossGuard, Trainer):
    """``Trainer`` for a :class:`MemoryModel` (memory-adapter-only checkpoints, finite-loss guard)."""

    def __init__(
        self, model: MemoryModel | None = None, args: TrainingArguments | None = None, **kw
    ):
        if not isinstance(model, MemoryModel):
            raise TypeError("MemoryTrainer trains a MemoryModel (see olmokit.memory.attach_memory)")
        if args is None:
            args = TrainingArguments(output_dir="runs/memory", save_strategy="no", report_to=[])
        # eval needs only the loss: MemoryOutput carries a state object, not a tensor of logits
        args.prediction_loss_only = True
        kw.setdefault("data_collator", SequenceCollator())
        super().__init__(model=model, args=args, **kw)

    def _memory_model(self) -> MemoryModel:
        return self.accelerator.unwrap_model(self.model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints and ``save_model`` write the memory adapter only, never the base weights."""
        if self.args.should_save:
            self._memory_model().save_pretrained(output_dir or self.args.output_dir)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        """Resume: the memory parameters from the checkpoint (checked against this base)."""
        mm = self._memory_model()
        meta, tensors = read_adapter(resume_from_checkpoint, ADAPTER_FORMAT)
        where = f"checkpoint {resume_from_checkpoint}"
        check_base(meta.get("base_model", {}), mm.model, where)
        mm.injection.load_state_dict(tensors, where=where)


def training_arguments(
    section: TrainingSection, output_dir: str | os.PathLike[str] | None = None, **overrides: Any
) -> TrainingArguments:
    """``TrainingArguments`` from the ``training`` section (via the injection base). ``bf16`` means
    a bfloat16 *base* (loaded so by the run), not autocast: the memory math stays float32."""
    return _training_arguments(section, output_dir, **overrides)


def train_memory(
    model: MemoryModel,
    train_dataset: Any,
    eval_dataset: Any = None,
    *,
    args: TrainingArguments | TrainingSection | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    resume_from_checkpoint: str | os.PathLike[str] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model``'s memory on ``train_dataset`` (rows ``{"input_ids", "labels"?}`` of one length).

    ``args``: ``TrainingArguments`` or a :class:`TrainingSection` (default: its defaults with
    ``save_steps`` null); ``output_dir`` overrides its output directory (checkpoints go there).
    Returns ``{"train_loss", "global_step", "world_size"}``; ``model`` is trained in place.
    """
    if args is None:
        args = TrainingSection(save_steps=None)
    if isinstance(args, TrainingSection):
        out = output_dir or args.output_dir
        overrides: dict[str, Any] = {"disable_tqdm": args.disable_tqdm or not progress}
        if next(model.parameters()).device.type == "cpu":
            overrides["use_cpu"] = True
        if eval_dataset is None:
            overrides["eval_strategy"] = "no"
        args = training_arguments(args, out, **overrides)
    elif output_dir is not None:
        args.output_dir = str(output_dir)
    trainer = MemoryTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )
    trainer.last_good_dir = str(Path(args.output_dir) / "last_good")
    result = trainer.train(
        resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None
    )
    return {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "world_size": args.world_size,
    }
