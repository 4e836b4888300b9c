"""One merge run from a config, in a run directory: pool → base → datasets → search → model.

:func:`run_merge` writes into ``config.output_dir`` (an :class:`olmokit.runs.RunDir`):
``config.yaml`` and ``environment.json``; ``pool_cache/`` (random-init zoo pool models, written once);
``merge_report.json`` (rewritten atomically after every decision, see :mod:`olmokit.merge.report`);
and at the end ``model/``, a plain Hugging Face model directory (safetensors, the base's tokenizer).

``resume=True`` continues a killed run: the report is checked (schema, tool, config hash, the pool's
file fingerprints; any mismatch is a :class:`~olmokit.errors.ReportError`), the working model is
rebuilt from the base plus every recorded decision and ES step (replayed bit for bit), and the search
continues with the first undecided step. Nothing already written is overwritten unless
``overwrite=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, DataError, OlmokitError, ReportError
from ..loading import load_tokenizer, save_model
from ..runs import RunDir
from .config import MergeConfig
from .datasets import load_datasets
from .evaluate import Evaluator, StateCache, init_distributed
from .pool import Pool, check_pool_names, load_working_model
from .report import (
    REPORT_FILE,
    SCHEMA_VERSION,
    TOOL,
    check_resumable,
    config_hash,
    decisions,
    load_report,
)
from .search import MergeSearch, replay_decisions
from .state import WorkingModel

__all__ = ["run_merge", "IGNORE_ON_RESUME", "MODEL_DIR"]

#: Config keys that may change between a run and its resume (where it runs, not what it computes).
#: ``candidate_batch`` is not one of them: grouped scores can differ from one-by-one scores in the
#: last float32 bit (measured on a 162M model with 2 BLAS threads), which could flip a near-tie.
IGNORE_ON_RESUME = ("output_dir", "device")
MODEL_DIR = "model"
POOL_CACHE = "pool_cache"


def _tokenizer(config: MergeConfig, base_path: Any) -> Any:
    """The base's tokenizer: from its directory, else by its configured name (zoo models)."""

    try:
        return load_tokenizer(str(base_path))
    except CheckpointError:
        return load_tokenizer(config.base_model)


def _new_report(config: MergeConfig, pool: Any, working: WorkingModel) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL,
        "status": "running",
        "config_hash": config_hash(config),
        "seed": config.seed,
        "selection": config.selection,
        "epsilon": config.epsilon,
        "improve_against": config.improve_against,
        "dtype": config.dtype,
        "datasets": [
            {"name": d.name, "mode": d.mode, "samples": d.samples} for d in config.datasets
        ],
        "pool": _pool_entries(pool),
        "num_layers": working.num_layers,
        "unit_layers": {u.name: u.layer for u in working.units.values() if u.tied_to is None},
        "initial_base": working.base,
        "base": working.base,
        "base_metrics": None,
        "base_selection": None,
        "preselection": None,
        "boundary": None,
        "layers": {},
        "units": {},
        "sequence": 0,
        "cache": {"hits": 0, "misses": 0},
    }


def _pool_entries(pool: Any) -> list[dict[str, str]]:
    return [{"name": m.name, "path": str(m.path), "fingerprint": m.fingerprint()} for m in pool]


def run_merge(
    config: MergeConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunDir:
    """Run (or, with ``resume``, continue) the merge ``config`` describes; returns its run directory
    (the merged model is ``run.path / "model"``, the report ``run.path / "merge_report.json"``)."""

    missing = [d.path for d in config.datasets if not Path(d.path).is_file()]
    if missing:  # before the run directory exists: a typo must not leave a run to --overwrite
        raise DataError(
            f"dataset file{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)} "
            f"(relative paths are read from {Path.cwd()})"
        )
    rank, size = init_distributed(config.device)
    main = rank == 0
    run, pool = _open(config, resume, overwrite, rank, size)
    report: dict[str, Any] | None = None
    if run.resumed and run.exists(REPORT_FILE):
        report = load_report(run.path / REPORT_FILE)
        check_resumable(
            report,
            config_digest=config_hash(config),
            pool=_pool_entries(pool),
            where=str(run.path / REPORT_FILE),
        )
        if report.get("status") == "complete" and run.exists(MODEL_DIR, "config.json"):
            return run

    initial = pool.member(config.base_model or config.models[0])
    # filled tensor by tensor from the lazy reader: from_pretrained would hold the base's file
    # mapped next to the model (1.5x one model for a bf16 base loaded as fp32)
    model = load_working_model(
        initial.path, dtype=config.dtype, device=config.device, index=initial.index
    )
    working = WorkingModel(model, pool, base=initial.name)
    pool.check_architecture(working.adapter)
    if report is not None and report.get("initial_base") != initial.name:
        raise ReportError(f"{run.path / REPORT_FILE}: its initial base is not {initial.name!r}")
    tokenizer = _tokenizer(config, initial.path)
    # the first `samples` records of each file, as the original (no seeded subset)
    evalsets = load_datasets(list(config.datasets), tokenizer)
    evaluator = Evaluator(
        model, evalsets, batch_size=config.batch_size, candidate_batch=config.candidate_batch
    )
    cache = StateCache()

    members = list(pool.names)
    if report is None:
        report = _new_report(config, pool, working)
    else:
        kept, _ = replay_decisions(working, report)
        if kept is not None:
            members = [m for m in members if m in kept]
        hits = report.get("cache") or {}
        cache.hits, cache.misses = int(hits.get("hits", 0)), int(hits.get("misses", 0))

    def save() -> None:
        if main:  # every rank makes the same decisions; only the main process writes them
            run.write_json(REPORT_FILE, report)

    search = MergeSearch(
        working,
        config,
        evaluator.evaluate,
        cache,
        report,
        save=save,
        members=members,
        progress=progress and main,
        focus=evaluator.set_focus,
        evaluate_group=evaluator.evaluate_group,
    )
    if not report.get("base_metrics"):
        report["base_metrics"] = search.base_metrics()
        search.current = dict(report["base_metrics"])
        search.save()
    else:
        search.current = dict(_last_metrics(report))
    search.run()
    pool.close()

    if main:
        save_model(model, run.path / MODEL_DIR, tokenizer)
    report["status"] = "complete"
    report["model"] = MODEL_DIR
    search.save()
    if size > 1:
        torch.distributed.barrier()  # no rank leaves before the model is written
    return run


def _open(
    config: MergeConfig, resume: bool, overwrite: bool, rank: int, size: int
) -> tuple[RunDir, Any]:
    """The run directory and the pool. Under a multi-process launch the main process creates (or
    checks) the directory first and the others only read it; an error on the main process is
    raised on every rank (nobody waits forever)."""

    path = config.output_dir
    run = None
    error: OlmokitError | None = None
    if rank == 0:
        try:
            check_pool_names(config.models)  # a typo must not leave an empty run directory

            run = RunDir.create(
                path,
                config,
                tool="merge",
                resume=resume,
                overwrite=overwrite,
                seed=config.seed,
                ignore_on_resume=IGNORE_ON_RESUME,
            )
        except OlmokitError as exc:
            error = exc
    if size > 1:
        message = [None if error is None else str(error)]
        torch.distributed.broadcast_object_list(message, src=0)
        if message[0] is not None and error is None:
            raise OlmokitError(f"the main process failed: {message[0]}")
    if error is not None:
        raise error
    if rank != 0:
        run = RunDir(path, tool="merge", resumed=resume)
    # every rank builds the pool (the main one materialises random zoo models, the others wait)
    return run, Pool(config.models, cache_dir=run.path / POOL_CACHE)


def _last_metrics(report: dict[str, Any]) -> dict[str, Any]:

    metrics = report.get("base_metrics") or {}
    for d in decisions(report):
        metrics = d.get("metrics") or metrics
    return metrics
