"""One lens run from a config: load the model once, run every job, write JSON + PNG per job.

Outputs in ``config.output_dir`` (an :class:`olmokit.runs.RunDir`)::

    config.yaml, environment.json      the resolved config and what it ran on
    <job>.json                         the job's numbers (scores, logit differences, top tokens, ...)
    <job>*.png                         its figures
    summary.json                       one entry per job: kind, files and headline numbers

A job's JSON is written after its PNGs, so a job whose JSON exists is complete. ``resume=True``
continues a killed run of the same config: complete jobs are skipped (their JSON is read back into
the summary), the rest run. Numbers are batch element 0 unless a job averages over a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import plots
from ..errors import ConfigError
from ..runs import CONFIG_FILE, ENVIRONMENT_FILE, RunDir
from .attribution import direct_logit_attribution
from .config import (
    AttentionPatternJob,
    AttributionJob,
    HeadScoresJob,
    LensConfig,
    LogitLensJob,
    ModelSection,
    PatchingJob,
)
from .heads import induction_score, repeated_tokens
from .hooked import HookedOlmo
from .logit_lens import logit_lens
from .patching import (
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_out,
    get_act_patch_mlp_out,
    get_act_patch_resid_mid,
    get_act_patch_resid_pre,
    logit_diff_metric,
    normalize_patching,
)

__all__ = ["load_hooked", "run_lens", "run_job", "SUMMARY_FILE"]

SUMMARY_FILE = "summary.json"

#: patch kind -> (patching function, hook whose clean activation it needs, plot axes, plot title)
_PATCHERS: dict[str, tuple[Callable, str, str, str]] = {
    "resid_pre": (get_act_patch_resid_pre, "hook_resid_pre", "position", "resid_pre patching"),
    "attn_out": (get_act_patch_attn_out, "hook_attn_out", "position", "attn_out patching"),
    "mlp_out": (get_act_patch_mlp_out, "hook_mlp_out", "position", "mlp_out patching"),
    "resid_mid": (get_act_patch_resid_mid, "hook_resid_mid", "position", "resid_mid patching"),
    "heads": (
        get_act_patch_attn_head_out_all_pos,
        "attn.hook_z",
        "head",
        "head output (z) patching, all positions",
    ),
}


def load_hooked(model: ModelSection) -> HookedOlmo:
    """The config's model, wrapped with hook points (tokenizer included when it has one)."""
    return HookedOlmo.from_pretrained(
        model.name, dtype=model.dtype, device=model.device, revision=model.revision
    )


def run_lens(
    config: LensConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    model: HookedOlmo | None = None,
    log: Callable[[str], None] | None = None,
) -> RunDir:
    """Run every job of ``config`` into its run directory and return it.

    ``model`` skips loading when the caller already holds ``config.model`` wrapped (notebooks,
    tests). ``log`` receives one line per written file. The run directory refuses to overwrite an
    earlier run unless ``overwrite``; ``resume`` continues one made from the same config (the device
    may differ: it does not change the numbers' meaning).
    """
    run = RunDir.create(
        config.output_dir,
        config,
        tool="lens",
        resume=resume,
        overwrite=overwrite,
        ignore_on_resume=("model.device",),
    )
    try:
        hooked = model if model is not None else load_hooked(config.model)
    except BaseException:
        if not run.resumed:
            _remove_unstarted(run)
        raise
    entries = []
    for name, job in zip(config.job_names(), config.jobs):
        json_name = f"{name}.json"
        if run.resumed and run.exists(json_name):
            result = run.read_json(json_name)  # completed before the run was interrupted
        else:
            result = run_job(hooked, job, run, name)
            run.write_json(json_name, result)
            if log is not None:
                for f in [*result["files"], json_name]:
                    log(f"wrote {run.path / f}")
        entries.append(
            {
                "name": name,
                "kind": job.kind,
                "json": json_name,
                "files": result["files"],
                "headline": result["headline"],
            }
        )
    summary = {"model": config.model.name, "cfg": hooked.cfg.to_dict(), "jobs": entries}
    run.write_json(SUMMARY_FILE, summary)
    return run


def _remove_unstarted(run: RunDir) -> None:
    """Undo a fresh run directory whose model never loaded (a typo in ``model.name``, say), so the
    corrected config can use the same directory without ``--overwrite``. Only the two files
    :meth:`RunDir.create` wrote are removed, and the directory only when that leaves it empty."""
    for name in (CONFIG_FILE, ENVIRONMENT_FILE):
        (run.path / name).unlink(missing_ok=True)
    if run.path.is_dir() and not any(run.path.iterdir()):
        run.path.rmdir()


def run_job(model: HookedOlmo, job: Any, run: RunDir, name: str) -> dict[str, Any]:
    """Run one job; write its PNGs into ``run`` and return its JSON-ready result.

    Every result has ``kind``, ``files`` (PNG names relative to the run directory) and ``headline``
    (the few numbers worth printing).
    """
    runner = _RUNNERS[job.kind]
    with torch.no_grad():
        result = runner(model, job, run, name)
    return {"kind": job.kind, **result}


# ------------------------------------------------------------------------------------------ helpers
def _tokens(model: HookedOlmo, text: str, what: str) -> torch.Tensor:
    if model.tokenizer is None:
        raise ConfigError(f"{what}: this model has no tokenizer, so text prompts cannot be used")
    # YAML prompts are read as written, no BOS (the job's positions and default answer tokens refer
    # to the prompt's own tokens); Python callers get TransformerLens's BOS default
    tokens = model.to_tokens(text, prepend_bos=False)
    if tokens.shape[-1] == 0:
        raise ConfigError(f"{what} {text!r} tokenizes to zero tokens")
    return tokens


def _single_token(model: HookedOlmo, text: str | None, fallback: int, what: str) -> int:
    """The id of ``text`` (which must be exactly one token), or ``fallback`` when not given."""
    if text is None:
        return fallback
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"{what} {text!r} is {len(ids)} tokens; it must be a single token")
    return ids[0]


def _token_record(model: HookedOlmo, token: int) -> dict[str, Any]:
    text = model.tokenizer.decode([token]) if model.tokenizer is not None else None
    return {"id": int(token), "text": text}


# ------------------------------------------------------------------------------------------ jobs
def _logit_lens(model: HookedOlmo, job: LogitLensJob, run: RunDir, name: str) -> dict[str, Any]:
    tokens = _tokens(model, job.prompt, "logit_lens prompt")
    result = logit_lens(model, tokens, k=job.top_k)
    decode = model.tokenizer.decode
    top_tokens = [[[decode([int(t)]) for t in pos] for pos in row] for row in result.top_ids]
    str_tokens = model.to_str_tokens(tokens)
    png = f"{name}.png"
    plots.plot_logit_lens(
        result.top_probs[..., 0],
        [[pos[0] for pos in row] for row in top_tokens],
        result.labels,
        str_tokens,
        run.file(png),
    )
    return {
        "prompt": job.prompt,
        "tokens": str_tokens,
        "labels": result.labels,
        "top_ids": result.top_ids,
        "top_tokens": top_tokens,
        "top_probs": result.top_probs,
        "target_probs": result.target_probs,  # last position: no next token (null)
        "files": [png],
        "headline": {"final_top_token": top_tokens[-1][-1][0]},
    }


def _patching(model: HookedOlmo, job: PatchingJob, run: RunDir, name: str) -> dict[str, Any]:
    clean = _tokens(model, job.clean, "patching clean prompt")
    corrupted = _tokens(model, job.corrupted, "patching corrupted prompt")
    if clean.shape != corrupted.shape:
        raise ConfigError(
            "patching: prompts must have the same token length: "
            f"{clean.shape[1]} vs {corrupted.shape[1]}"
        )
    needed = tuple(_PATCHERS[kind][1] for kind in job.patches)
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(needed))
    corrupted_logits = model(corrupted)
    answer = _single_token(model, job.answer, int(clean_logits[0, -1].argmax()), "patching answer")
    wrong = _single_token(model, job.wrong, int(corrupted_logits[0, -1].argmax()), "patching wrong")
    if answer == wrong:
        raise ConfigError(
            "patching: answer and wrong token are the same; give answer and wrong explicitly"
        )
    metric = logit_diff_metric(answer, wrong)
    clean_diff, corrupted_diff = float(metric(clean_logits)), float(metric(corrupted_logits))
    str_tokens = model.to_str_tokens(clean)
    results, files = {}, []
    for kind in job.patches:
        fn, _, col_label, title = _PATCHERS[kind]
        values = normalize_patching(fn(model, corrupted, cache, metric), clean_diff, corrupted_diff)
        png = f"{name}_{kind}.png"
        plots.plot_patching_heatmap(
            values,
            run.file(png),
            col_labels=str_tokens if col_label == "position" else None,
            col_label=col_label,
            title=f"{title} (1 = clean)",
        )
        results[kind] = values
        files.append(png)
    return {
        "clean": job.clean,
        "corrupted": job.corrupted,
        "tokens": str_tokens,
        "answer": _token_record(model, answer),
        "wrong": _token_record(model, wrong),
        "logit_diff": {"clean": clean_diff, "corrupted": corrupted_diff},
        "normalized": "0 = corrupted run, 1 = clean run",
        "results": results,
        "files": files,
        "headline": {"logit_diff_clean": clean_diff, "logit_diff_corrupted": corrupted_diff},
    }


def _attribution(model: HookedOlmo, job: AttributionJob, run: RunDir, name: str) -> dict[str, Any]:
    tokens = _tokens(model, job.prompt, "attribution prompt")
    logits = model(tokens)
    answer = _single_token(model, job.answer, int(logits[0, -1].argmax()), "attribution answer")
    wrong = None if job.wrong is None else _single_token(model, job.wrong, -1, "attribution wrong")
    if wrong == answer:
        raise ConfigError("attribution: answer and wrong are the same token; their difference is 0")
    result = direct_logit_attribution(model, tokens, answer, wrong)
    values = result.values[:, 0]
    a = model.adapter
    heads = torch.stack(
        [
            values[result.labels.index(f"L{i}H{h}")]
            for i in range(a.num_layers)
            for h in range(a.num_heads)
        ]
    ).reshape(a.num_layers, a.num_heads)
    png = f"{name}_heads.png"
    target = "logit" if wrong is None else "logit difference"
    plots.plot_head_scores(
        heads, run.file(png), title=f"direct {target} attribution per head", symmetric=True
    )
    return {
        "prompt": job.prompt,
        "tokens": model.to_str_tokens(tokens),
        "answer": _token_record(model, answer),
        "wrong": None if wrong is None else _token_record(model, wrong),
        "labels": result.labels,
        "values": values,
        "total": float(result.total[0]),
        "sum_of_components": float(values.sum()),
        "top": [{"component": c, "value": v} for c, v in result.top(job.top)],
        "files": [png],
        "headline": {"total": float(result.total[0]), "top": result.top(1)[0][0]},
    }


def _head_scores(model: HookedOlmo, job: HeadScoresJob, run: RunDir, name: str) -> dict[str, Any]:
    result = induction_score(model, seq_len=job.seq_len, batch=job.batch, seed=job.seed)
    n = job.seq_len
    # a head attending uniformly to every earlier token scores this on the second copy
    uniform = sum(1 / (q + 1) for q in range(n, 2 * n)) / n
    files = [f"{name}.png", f"{name}_previous_token.png"]
    plots.plot_head_scores(
        result.scores, run.file(files[0]), title=f"induction scores (repeat of {n} tokens)"
    )
    plots.plot_head_scores(result.previous_token, run.file(files[1]), title="previous-token scores")
    prev = result.previous_token
    top = [
        {"layer": layer, "head": h, "induction": s, "previous_token": float(prev[layer, h])}
        for layer, h, s in result.top(job.top)
    ]
    return {
        "seq_len": n,
        "batch": job.batch,
        "seed": job.seed,
        "induction": result.scores,
        "previous_token": prev,
        "uniform_baseline": uniform,
        "copy_gain": result.copy_gain,
        "top": top,
        "files": files,
        "headline": {
            "top_head": f"L{top[0]['layer']}H{top[0]['head']}",
            "induction": top[0]["induction"],
            "previous_token": top[0]["previous_token"],
        },
    }


def _attention_pattern(
    model: HookedOlmo, job: AttentionPatternJob, run: RunDir, name: str
) -> dict[str, Any]:
    if job.prompt is not None:
        tokens = _tokens(model, job.prompt, "attention_pattern prompt")
        mark_offset, str_tokens = None, model.to_str_tokens(tokens)
    else:
        vocab = model.adapter.vocab_size
        tokens = repeated_tokens(vocab, job.seq_len, 1, job.seed, low=4).to(model._device())
        mark_offset, str_tokens = 1 - job.seq_len, None
    if job.layer is None:
        result = induction_score(model, seq_len=job.seq_len, batch=job.batch, seed=job.seed)
        layer, head, _ = result.top(1)[0]
        chosen_by = "top induction score"
    else:
        layer, head = job.layer, job.head
        if not -model.adapter.num_layers <= layer < model.adapter.num_layers:
            raise ConfigError(
                f"attention_pattern: layer {layer} out of range (model has {model.adapter.num_layers})"
            )
        if head >= model.adapter.num_heads:
            raise ConfigError(
                f"attention_pattern: head {head} out of range (model has {model.adapter.num_heads})"
            )
        layer %= model.adapter.num_layers
        chosen_by = "config"
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache[("pattern", layer)][0, head]
    png = f"{name}_L{layer}H{head}.png"
    source = "a repeated random sequence" if job.prompt is None else "the prompt"
    plots.plot_attention_pattern(
        pattern,
        str_tokens,
        run.file(png),
        title=f"L{layer}H{head} ({chosen_by}) on {source}",
        mark_offset=mark_offset,
    )
    return {
        "layer": layer,
        "head": head,
        "chosen_by": chosen_by,
        "prompt": job.prompt,
        "token_ids": tokens[0],
        "tokens": str_tokens,
        "pattern": pattern,
        "files": [png],
        "headline": {"head": f"L{layer}H{head}", "chosen_by": chosen_by},
    }


_RUNNERS: dict[str, Callable[[HookedOlmo, Any, RunDir, str], dict[str, Any]]] = {
    "logit_lens": _logit_lens,
    "patching": _patching,
    "attribution": _attribution,
    "head_scores": _head_scores,
    "attention_pattern": _attention_pattern,
}
