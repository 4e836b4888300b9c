"""One memory run from a config, in a run directory: load → attach → data → train → save → evaluate.

:func:`run_memory` writes into ``training.output_dir``, an :class:`olmokit.runs.RunDir`:
``config.yaml`` and ``environment.json``; ``checkpoints/checkpoint-<step>/`` every
``training.save_steps`` optimizer steps (memory adapter, optimizer, LR scheduler, RNG, data
position); then ``adapter/`` (the memory adapter) and ``eval.json`` (training summary and, on the
evaluation sequences, the mean loss beyond the first segment for the windowed base, the memory and
the memory reset every segment, with standard errors). ``resume=True`` continues a killed run from
its newest complete checkpoint and refuses a directory made with another config; an existing run is
never overwritten without ``overwrite=True``. Under ``accelerate launch`` only the main process
writes and evaluates.

Data (``data``): ``source: corpus`` cuts ``seq_len``-token blocks from the zoo corpus's long
documents (training split for training, held-out split for evaluation; :mod:`olmokit.data.longctx`);
``source: file`` reads JSONL rows ``{"input_ids": [...], "labels": [...]}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..data.longctx import long_documents
from ..errors import DataError
from ..eval.longctx import paired_stderr, position_loss
from ..loading import load_model, load_tokenizer, resolve_device
from ..runs import CHECKPOINTS_DIR, RunDir
from .config import DataSection, MemoryConfig
from .model import MemoryModel, attach_memory, load_memory, read_memory_settings
from .train import MemoryTrainer, training_arguments

__all__ = ["evaluate_memory", "load_sequences", "run_memory"]

#: keys of the saved config that may change between a run and its resume
IGNORE_ON_RESUME = ("training.output_dir", "training.disable_tqdm")


def _read_jsonl(path: str, seq_len: int, limit: int | None) -> list[dict[str, torch.Tensor]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {path} (relative paths are read from {Path.cwd()})")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ids = torch.tensor(rec["input_ids"], dtype=torch.long)
            labels = torch.tensor(rec.get("labels", rec["input_ids"]), dtype=torch.long)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{path}:{n}: expected {{'input_ids': [...], 'labels': [...]}} ({exc})"
            ) from None
        if ids.dim() != 1 or ids.shape != labels.shape:
            raise DataError(f"{path}:{n}: input_ids and labels must be equal-length lists")
        if len(ids) < seq_len:
            raise DataError(f"{path}:{n}: {len(ids)} tokens, data.seq_len is {seq_len}")
        rows.append({"input_ids": ids[:seq_len], "labels": labels[:seq_len]})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_sequences(data: DataSection, tokenizer: Any, split: str) -> list[dict[str, torch.Tensor]]:
    """Training (``split="train"``) or evaluation rows ``{"input_ids", "labels"}`` of ``seq_len``."""
    n = data.train_size if split == "train" else data.eval_size
    if data.source == "file":
        path = data.train_file if split == "train" else data.eval_file
        if path is None:
            return []
        return _read_jsonl(path, data.seq_len, n)
    docs = long_documents(
        tokenizer,
        data.seq_len,
        held_out=split != "train",
        kind=data.kind,
        max_documents=n,
        seed=data.seed,
    )
    return [d.features() for d in docs]


def evaluate_memory(
    mm: MemoryModel, rows: list[dict[str, torch.Tensor]], batch_size: int = 4
) -> dict[str, Any]:
    """Mean loss beyond the first segment (the tokens a windowed base cannot see all context of)
    for the base (memory off, same segments), the memory, and the memory reset every segment; per
    example means with standard errors, and the paired standard error of memory − base."""
    start = mm.segment_len
    runs = {
        "base": lambda ids: _logits(mm, ids, disabled=True),
        "memory": lambda ids: _logits(mm, ids),
        "reset": lambda ids: _logits(mm, ids, reset_every_segment=True),
    }
    results = {k: position_loss(f, rows, start, batch_size, module=mm) for k, f in runs.items()}
    out: dict[str, Any] = {"n": len(rows), "start": start}
    for k, r in results.items():
        out[k] = {"loss": r.mean, "stderr": r.stderr}
    out["memory_minus_base_stderr"] = paired_stderr(
        results["memory"].per_example, results["base"].per_example
    )
    out["memory_minus_base"] = results["memory"].mean - results["base"].mean
    return out


def _logits(mm: MemoryModel, ids: torch.Tensor, disabled: bool = False, **kw: Any) -> torch.Tensor:
    ids = ids.to(next(mm.parameters()).device)
    if disabled:
        with mm.disabled():
            return mm(ids, return_logits=True, **kw).logits
    return mm(ids, return_logits=True, **kw).logits


def _open_run(config: MemoryConfig, resume: bool, overwrite: bool) -> RunDir:
    return RunDir.create_on_main_process(
        config.training.output_dir,
        config,
        tool="memory",
        resume=resume,
        overwrite=overwrite,
        seed=config.training.seed,
        ignore_on_resume=IGNORE_ON_RESUME,
    )


def run_memory(
    config: MemoryConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
) -> RunDir:
    """Run a whole config into its run directory (see the module docstring); returns the
    :class:`~olmokit.runs.RunDir` (summary in its ``eval.json``)."""
    torch.manual_seed(config.training.seed)
    mc = config.model
    device = resolve_device(mc.device)
    model = load_model(
        mc.name,
        dtype=config.base_dtype(),
        device="cpu" if mc.device == "auto" else device,  # Trainer moves it to its device
        revision=mc.revision,
        attn_implementation=mc.attn_implementation,
    )
    # the memory settings are checked against the base before the (slower) data is prepared;
    # both fail before the run directory is created
    mm = attach_memory(model, config.memory)
    # token-id rows (source: file) need no tokenizer: task bases such as the demo's have none
    tokenizer = (
        load_tokenizer(mc.name, revision=mc.revision) if config.data.source == "corpus" else None
    )
    train_rows = load_sequences(config.data, tokenizer, "train")
    eval_rows = load_sequences(config.data, tokenizer, "eval") if evaluate else []
    run = _open_run(config, resume, overwrite)
    overrides: dict[str, Any] = {"disable_tqdm": config.training.disable_tqdm or not progress}
    if device == "cpu":
        overrides["use_cpu"] = (
            True  # also makes torchrun/accelerate CPU processes form a gloo group
        )
    overrides["eval_strategy"] = config.training.eval_strategy if eval_rows else "no"
    args = training_arguments(config.training, run.path / CHECKPOINTS_DIR, **overrides)
    trainer = MemoryTrainer(
        model=mm, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None
    )
    trainer.last_good_dir = str(run.path / "last_good")
    checkpoint = run.last_checkpoint() if run.resumed else None
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    summary: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "world_size": args.world_size,
        "memory_parameters": mm.num_memory_parameters(),
        "segment_len": mm.segment_len,
        "output_dir": str(run.path),
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if not args.should_save:  # non-main processes: the main one writes and evaluates
        return run
    mm.save_pretrained(run.path / "adapter", summary={"global_step": result.global_step})
    if evaluate and eval_rows:
        summary["eval"] = evaluate_memory(mm, eval_rows, config.training.per_device_eval_batch_size)
    run.write_json("eval.json", summary)
    return run


def load_run_model(
    adapter_dir: str | os.PathLike[str], model: str | None = None, device: str = "cpu"
) -> MemoryModel:
    """A base (``model``, else the adapter's recorded base) with the saved memory attached."""
    meta, _ = read_memory_settings(adapter_dir)
    name = model or meta.get("base_model", {}).get("name_or_path")
    if not name:
        raise DataError(f"{adapter_dir} records no base model name; pass --model")
    base = load_model(name, device=resolve_device(device))
    return load_memory(base, adapter_dir)
