"""One JoLA run from a config, in a run directory: load → attach → data → train → save → report → evaluate.

Data (``data_config``): with ``train_file`` the records are read from JSON/JSONL (``eval_file`` is the
held-out set; without it the rows after ``train_size`` are). Otherwise the built-in ``task`` is used:
``train_size`` training examples, the next ``eval_size`` training-split examples for validation (early
stopping), and the task's held-out split (files the zoo model never saw) as the test set.

:func:`run_jola` writes into ``training_config.output_dir``, an :class:`olmokit.runs.RunDir`:
``config.yaml`` (the resolved config) and ``environment.json``; ``checkpoints/checkpoint-<step>/``
every ``training_config.save_steps`` optimizer steps (adapter, optimizer, LR scheduler, RNG, data
position and the JoLA trainer state); then ``adapter/`` (the JoLA adapter), ``report/`` (gate table +
heatmap) and ``eval.json`` (summary; base vs JoLA on the test set). ``resume=True`` continues a killed
run from its newest complete checkpoint (bit-identical on CPU to an uninterrupted run) and refuses a
directory made with another config; an existing run is never overwritten without ``overwrite=True``.
Under ``accelerate launch`` only the main process writes and evaluates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.readers import Record, read_records
from ..data.tasks import MultipleChoiceExample, get_task, mc_examples_from_records
from ..errors import DataError
from ..eval import eval_mode, evaluate_examples
from ..files import atomic_write_json
from ..loading import load_model, load_tokenizer, resolve_device
from ..runs import CHECKPOINTS_DIR, RunDir
from ..zoo.registry import DEFAULT_MODEL
from .checkpoint import adapter_base_name, load_jola, save_jola
from .config import DataSection, JoLAConfig
from .model import attach_jola, detach_jola, disable_jola, has_jola, num_jola_parameters
from .report import write_report
from .sparsity import open_heads, prune_jola
from .train import JoLATrainer, training_arguments

__all__ = [
    "RunData",
    "RunOutcome",
    "compare_on",
    "evaluate_adapters",
    "heldout_examples",
    "load_run_data",
    "prune_adapter",
    "run_jola",
    "train_jola",
]

#: keys of the saved config that may change between a run and its resume
IGNORE_ON_RESUME = ("training_config.output_dir", "training_config.disable_tqdm")


@dataclass
class RunData:
    train: list[Record]
    valid: list[Record]
    test: list[MultipleChoiceExample]  #: for accuracy / exact match (single-choice when no choices)
    valid_examples: list[MultipleChoiceExample] | None = None  #: ``valid`` as scorable examples


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
            out.append(
                MultipleChoiceExample(
                    r.data["prompt"], (r.data["completion"],), 0, r.source, kind="prompt_completion"
                )
            )
        elif r.kind == "chat" and r.messages[-1]["role"] == "assistant":
            user = [m["content"] for m in r.messages if m["role"] == "user"]
            system = next((m["content"] for m in r.messages if m["role"] == "system"), None)
            if len(user) == 1:
                out.append(
                    MultipleChoiceExample(
                        user[0], (r.messages[-1]["content"],), 0, r.source, system
                    )
                )
    return out


def load_run_data(data: DataSection) -> RunData:
    """Train, validation and test data of a run.

    The validation set (early stopping, best-adapter selection) is always carved from the *training*
    data, never from the test set: ``valid_size`` (default ``eval_size``) examples that are not among
    the ``train_size`` training ones. The test set is ``eval_file`` (or the task's held-out split);
    without ``eval_file``, the ``eval_size`` rows of ``train_file`` after the validation ones.
    """
    n_valid = data.valid_size or data.eval_size
    if data.train_file:
        rows = read_records(data.train_file)
        train = _subsample(rows, data.train_size, data.seed)
        chosen = {id(r) for r in train}
        rest = [r for r in rows if id(r) not in chosen]
        valid = rest[:n_valid] if n_valid else rest
        if data.eval_file:
            test_rows = _subsample(read_records(data.eval_file), data.eval_size, data.seed)
        else:
            after = rest[len(valid) :]
            test_rows = after[: data.eval_size] if data.eval_size else after
        return RunData(train, valid, heldout_examples(test_rows), heldout_examples(valid))
    if not data.task:
        raise DataError("data_config needs train_file or task")
    n_train, n_valid = data.train_size or 200, n_valid or 200
    task = get_task(data.task, n_train=n_train + n_valid, seed=data.seed)
    if len(task.train) < n_train + 1:
        raise DataError(f"task {data.task!r} has only {len(task.train)} training examples")
    train = [e.record() for e in task.train[:n_train]]
    valid_ex = task.train[n_train : n_train + n_valid]
    test = task.heldout[: data.eval_size] if data.eval_size else task.heldout
    return RunData(train, [e.record() for e in valid_ex], list(test), list(valid_ex))


def compare_on(
    model: nn.Module,
    tokenizer: Any,
    examples: list[MultipleChoiceExample],
    batch_size: int = 16,
    progress: bool = True,
    first_line: bool = False,
    base: bool = True,
    loss_on: str = "turn",
) -> dict[str, dict[str, float]]:
    """Base (JoLA disabled; skipped with ``base=False``) vs JoLA on the same weights, both scored
    alike. For adapters trained with ``loss_on: answer`` (which never learnt to end the turn) pass
    ``first_line=True`` (exact match reads the output's first line) and ``loss_on="answer"`` (choices
    scored on their answer tokens: the untrained end-of-turn marker after each choice is noise the
    edit shifts, measured to pull a trained adapter below chance on ``stdlib_kind``)."""
    generate = True
    mc = len(examples[0].choices) > 1 if examples else False
    kw = dict(first_line=first_line, loss_on=loss_on)
    out = {}
    if base:
        with disable_jola(model):
            out["base"] = evaluate_examples(
                model, tokenizer, examples, batch_size, generate, progress, **kw
            )
    out["jola"] = evaluate_examples(
        model, tokenizer, examples, batch_size, generate, progress, **kw
    )
    if not mc:
        for res in out.values():
            res.pop("acc", None)
    return out


def evaluate_adapters(
    adapters: list[str],
    *,
    model: str | None = None,
    task: str = "stdlib_module",
    data_file: str | None = None,
    limit: int = 200,
    batch_size: int = 16,
    generate: bool = True,
    device: str = "cpu",
    progress: bool = True,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Held-out scores of the base and of each adapter on it (``olmokit jola eval``).

    The base is ``model``, else the first adapter's recorded base, else the zoo default; examples
    come from ``data_file`` (records with ``choices`` get MC accuracy) or the built-in ``task``.
    Returns ``{"model", "n", "mc", "results": {"base": ..., adapter: ...}}``; ``json_path`` also
    gets ``{"model", "results"}``.
    """
    base_name = model or (adapter_base_name(adapters[0]) if adapters else DEFAULT_MODEL)
    base = load_model(base_name, device=resolve_device(device))
    tokenizer = load_tokenizer(base_name)
    if data_file:
        examples = heldout_examples(read_records(data_file))[:limit]
    else:
        examples = get_task(task).heldout[:limit]
    results = {"base": evaluate_examples(base, tokenizer, examples, batch_size, generate, progress)}
    for adapter in adapters:
        if has_jola(base):
            detach_jola(base)
        load_jola(base, adapter)
        results[adapter] = evaluate_examples(
            base, tokenizer, examples, batch_size, generate, progress
        )
    if json_path:
        atomic_write_json(json_path, {"model": base_name, "results": results})
    mc = bool(examples) and len(examples[0].choices) > 1
    return {"model": base_name, "n": len(examples), "mc": mc, "results": results}


def prune_adapter(
    adapter: str,
    out: str,
    *,
    keep_top_k: int | None = None,
    threshold: float | None = None,
    model: str | None = None,
    task: str | None = None,
    data_file: str | None = None,
    limit: int = 200,
    batch_size: int = 16,
    device: str = "cpu",
    loss_on: str = "answer",
) -> dict[str, Any]:
    """Load ``adapter`` on its base, :func:`prune_jola` it, save it to ``out`` (``olmokit jola
    prune``); with ``task`` or ``data_file`` also score it before and after on held-out examples
    (choices scored per ``loss_on``, as the adapter was trained; exact match on the first line).
    Returns ``{"before", "after"}`` open-head counts (and scores) and ``"out"``."""
    base_name = model or adapter_base_name(adapter)
    base = load_model(base_name, device=resolve_device(device))
    load_jola(base, adapter)
    result: dict[str, Any] = {"before": open_heads(base)}
    examples: list[MultipleChoiceExample] = []
    tokenizer = None
    if task or data_file:
        tokenizer = load_tokenizer(base_name)
        rows = heldout_examples(read_records(data_file)) if data_file else get_task(task).heldout
        examples = rows[:limit]
        result["before"]["score"] = _first_score(
            compare_on(base, tokenizer, examples, batch_size, False, True, False, loss_on)["jola"]
        )
    result["after"] = prune_jola(base, keep_top_k=keep_top_k, threshold=threshold)
    if examples:
        result["after"]["score"] = _first_score(
            compare_on(base, tokenizer, examples, batch_size, False, True, False, loss_on)["jola"]
        )
    save_jola(base, out, extra={"pruned": {"keep_top_k": keep_top_k, "threshold": threshold}})
    result["out"] = str(out)
    return result


def _first_score(res: dict[str, Any]) -> float | None:
    return res.get("acc", res.get("em"))


def _open_run(config: JoLAConfig, resume: bool, overwrite: bool) -> RunDir:
    return RunDir.create_on_main_process(
        config.training.output_dir,
        config,
        tool="jola",
        resume=resume,
        overwrite=overwrite,
        seed=config.training.seed,
        ignore_on_resume=IGNORE_ON_RESUME,
    )


def run_jola(
    config: JoLAConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
) -> RunDir:
    """Run a whole config into its run directory (``training_config.output_dir``); see the module
    docstring for what it holds. Returns the :class:`~olmokit.runs.RunDir`; the summary is its
    ``eval.json``."""
    return _run(
        config, resume=resume, overwrite=overwrite, progress=progress, evaluate=evaluate
    ).run


def train_jola(
    config: JoLAConfig,
    progress: bool = True,
    evaluate: bool = True,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """:func:`run_jola`, returning the summary dict (also in ``<output_dir>/eval.json``)."""
    return _run(
        config, resume=resume, overwrite=overwrite, progress=progress, evaluate=evaluate
    ).summary


@dataclass
class RunOutcome:
    """What :func:`_run` leaves behind, for callers that go on with the trained model (the sweep)."""

    run: RunDir
    summary: dict[str, Any]
    model: nn.Module
    tokenizer: Any
    data: RunData


def _run(
    config: JoLAConfig, *, resume: bool, overwrite: bool, progress: bool, evaluate: bool
) -> RunOutcome:
    torch.manual_seed(config.training.seed)
    data = load_run_data(config.data)  # bad data fails before the model is loaded or a dir is made
    mc = config.model
    device = resolve_device(mc.device)
    model = load_model(
        mc.pretrained_model_name_or_path,
        dtype=config.base_dtype(),
        device="cpu" if mc.device == "auto" else device,  # Trainer moves it to its device
        revision=mc.revision,
        attn_implementation=mc.attn_implementation,
        trust_remote_code=mc.trust_remote_code,
        **({"cache_dir": mc.cache_dir} if mc.cache_dir else {}),
    )
    tokenizer = load_tokenizer(mc.pretrained_model_name_or_path, revision=mc.revision)
    attach_jola(model, config.jola, mc.applied_layers)
    run = _open_run(config, resume, overwrite)
    overrides: dict[str, Any] = {}
    if device == "cpu":
        # also what makes `accelerate launch` / torchrun processes on a CPU machine form a gloo group
        overrides["use_cpu"] = True
    if not data.valid:
        overrides["eval_strategy"] = "no"
    args = training_arguments(
        config.training,
        run.path / CHECKPOINTS_DIR,  # not run.checkpoints: other ranks must not create it early
        disable_tqdm=config.training.disable_tqdm or not progress,
        **overrides,
    )
    trainer = JoLATrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.valid or None,
        tokenizer=tokenizer,
        max_seq_length=config.data.max_seq_length,
        loss_on=config.data.loss_on,
        jola_settings=config.jola,
        early_stopping_patience=config.training.early_stopping_patience,
        early_stopping_threshold=config.training.early_stopping_threshold,
    )
    trainer.last_good_dir = str(run.path / "last_good")
    checkpoint = run.last_checkpoint() if run.resumed else None
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    summary: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "world_size": args.world_size,
        "best": trainer.best,
        "jola_parameters": num_jola_parameters(model),
        "output_dir": str(run.path),
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if not args.should_save:  # non-main processes: the main one writes and evaluates
        return RunOutcome(run, summary, model, tokenizer, data)
    save_jola(model, run.path / "adapter", extra={"best": trainer.best})
    summary["report"] = {k: str(v) for k, v in write_report(model, run.path / "report").items()}
    lo = config.data.loss_on
    kw: dict[str, Any] = {"first_line": lo == "answer", "loss_on": lo}
    bs = config.training.per_device_eval_batch_size
    if evaluate and data.valid_examples:
        with eval_mode(model):  # the validation score, for choosing settings without the test set
            summary["valid"] = compare_on(
                model, tokenizer, data.valid_examples, bs, progress, base=False, **kw
            )["jola"]
    if evaluate and data.test:
        with eval_mode(model):
            summary["test"] = compare_on(model, tokenizer, data.test, bs, progress, **kw)
    summary["open_heads"] = open_heads(model)
    run.write_json("eval.json", summary)
    return RunOutcome(run, summary, model, tokenizer, data)
