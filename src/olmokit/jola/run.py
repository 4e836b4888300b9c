"""One JoLA run from a config: load → attach → data → train → save → report → evaluate.

Data (``data_config``): with ``train_file`` the records are read from JSON/JSONL (``eval_file`` is the
held-out set; without it the rows after ``train_size`` are). Otherwise the built-in ``task`` is used:
``train_size`` training examples, the next ``eval_size`` training-split examples for validation (early
stopping), and the task's held-out split (files the zoo model never saw) as the test set.

Outputs in ``training_config.output_dir``: ``adapter/`` (the JoLA adapter), ``config.yaml`` (the
resolved config), ``report/`` (gate table + heatmap) and ``eval.json`` (base vs JoLA on the test set).
Under ``accelerate launch`` only the main process writes and evaluates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.readers import Record, read_records
from ..data.tasks import MultipleChoiceExample, get_task, mc_examples_from_records
from ..errors import DataError
from ..eval import evaluate_examples
from ..files import atomic_write_json
from ..loading import load_model, load_tokenizer
from .checkpoint import save_jola
from .config import DataSection, JoLAConfig
from .model import attach_jola, disable_jola, num_jola_parameters, resolve_device
from .report import write_report
from .train import JoLATrainer, training_arguments

__all__ = ["RunData", "load_run_data", "heldout_examples", "train_jola", "compare_on"]


@dataclass
class RunData:
    train: list[Record]
    valid: list[Record]
    test: list[MultipleChoiceExample]  #: for accuracy / exact match (single-choice when no choices)


def _subsample(rows: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, n)


def heldout_examples(records: list[Record]) -> list[MultipleChoiceExample]:
    """Multiple-choice examples where records have ``choices``; otherwise single-answer examples
    (scored by exact match only)."""
    mc = mc_examples_from_records(records)
    if mc:
        return mc
    out = []
    for r in records:
        if r.kind == "prompt_completion":
            out.append(MultipleChoiceExample(r.data["prompt"], (r.data["completion"],), 0, r.source, kind="prompt_completion"))
        elif r.kind == "chat" and r.messages[-1]["role"] == "assistant":
            user = [m["content"] for m in r.messages if m["role"] == "user"]
            system = next((m["content"] for m in r.messages if m["role"] == "system"), None)
            if len(user) == 1:
                out.append(MultipleChoiceExample(user[0], (r.messages[-1]["content"],), 0, r.source, system))
    return out


def load_run_data(data: DataSection) -> RunData:
    if data.train_file:
        rows = read_records(data.train_file)
        train = _subsample(rows, data.train_size, data.seed)
        if data.eval_file:
            valid = _subsample(read_records(data.eval_file), data.eval_size, data.seed)
        else:
            rest = [r for r in rows if r not in train]
            valid = rest[: data.eval_size] if data.eval_size else rest
        return RunData(train, valid, heldout_examples(valid))
    if not data.task:
        raise DataError("data_config needs train_file or task")
    n_train, n_valid = data.train_size or 200, data.eval_size or 200
    task = get_task(data.task, n_train=n_train + n_valid, seed=data.seed)
    if len(task.train) < n_train + 1:
        raise DataError(f"task {data.task!r} has only {len(task.train)} training examples")
    train = [e.record() for e in task.train[:n_train]]
    valid = [e.record() for e in task.train[n_train : n_train + n_valid]]
    test = task.heldout[: data.eval_size] if data.eval_size else task.heldout
    return RunData(train, valid, list(test))


def compare_on(
    model: nn.Module, tokenizer: Any, examples: list[MultipleChoiceExample], batch_size: int = 16, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Base (JoLA disabled) vs JoLA on the same weights."""
    generate = True
    mc = len(examples[0].choices) > 1 if examples else False
    with disable_jola(model):
        base = evaluate_examples(model, tokenizer, examples, batch_size, generate, progress)
    tuned = evaluate_examples(model, tokenizer, examples, batch_size, generate, progress)
    if not mc:
        base.pop("acc", None)
        tuned.pop("acc", None)
    return {"base": base, "jola": tuned}


def train_jola(config: JoLAConfig, progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """Run a whole config; returns a summary (also written to ``<output_dir>/eval.json``)."""
    torch.manual_seed(config.training.seed)
    data = load_run_data(config.data)  # bad data fails before the model is loaded
    mc = config.model
    model = load_model(
        mc.pretrained_model_name_or_path,
        dtype=config.base_dtype(),
        device="cpu" if mc.device == "auto" else resolve_device(mc.device),
        revision=mc.revision,
        attn_implementation=mc.attn_implementation,
        trust_remote_code=mc.trust_remote_code,
        **({"cache_dir": mc.cache_dir} if mc.cache_dir else {}),
    )
    tokenizer = load_tokenizer(mc.pretrained_model_name_or_path, revision=mc.revision)
    attach_jola(model, config.jola, mc.applied_layers)
    out = Path(config.training.output_dir)
    overrides: dict[str, Any] = {}
    if mc.device == "cpu" or (mc.device == "auto" and not torch.cuda.is_available()):
        # also what makes `accelerate launch` / torchrun processes on a CPU machine form a gloo group
        overrides["use_cpu"] = True
    if not data.valid:
        overrides["eval_strategy"] = "no"
    args = training_arguments(config.training, str(out), disable_tqdm=config.training.disable_tqdm or not progress, **overrides)
    trainer = JoLATrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.valid or None,
        tokenizer=tokenizer,
        max_seq_length=config.data.max_seq_length,
        early_stopping_patience=config.training.early_stopping_patience,
        early_stopping_threshold=config.training.early_stopping_threshold,
    )
    result = trainer.train()
    summary: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "world_size": args.world_size,
        "best": trainer.best,
        "jola_parameters": num_jola_parameters(model),
        "output_dir": str(out),
    }
    if not args.should_save:  # non-main processes: the main one writes and evaluates
        return summary
    config.to_yaml(out / "config.yaml")
    save_jola(model, out / "adapter", extra={"best": trainer.best})
    summary["report"] = {k: str(v) for k, v in write_report(model, out / "report").items()}
    if evaluate and data.test:
        model.eval()
        summary["test"] = compare_on(model, tokenizer, data.test, config.training.per_device_eval_batch_size, progress)
    atomic_write_json(out / "eval.json", summary)
    return summary
