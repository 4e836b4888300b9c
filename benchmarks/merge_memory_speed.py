"""Merge memory and speed: peak RSS vs pool size, and candidate evaluations/s vs a naive reload.

Run: ``python benchmarks/merge_memory_speed.py`` (a few minutes on 2 CPU cores; about 2.7 GB of disk
in a temporary directory, deleted afterwards; ``--keep DIR`` reuses/keeps the donors there).

Donors: 8 random-init OLMo-2 models of ~162M parameters (hidden 1024, 12 layers, MLP 2816, the zoo
vocabulary), seeds 0..7, saved as bf16 safetensors (half the disk of fp32; the working model is fp32,
so a donor tensor is also cast on the way in, as with a real bf16 pool). Pool size N uses donors 0..N-1;
donor 0 is the base.

Memory (``peak_rss_ratio``): for each N in 2, 4, 8 a *fresh child process* imports everything, resets
its RSS high-water mark (``/proc/self/clear_refs`` ← 5) and reads its RSS as the baseline (after a
warm-up forward of a tiny model of the same family, so lazy imports of the model classes and
first-call allocations do not count as the pool's), then does
what a merge's layer step does with olmokit: load the base as the one working model (as
``run_merge`` does: :func:`olmokit.merge.pool.load_working_model`, tensor by tensor), and for every
decoder layer and the boundary units run one step over the other donors as ``MergeSearch.step``
does (:func:`_layer_step`: one snapshot of the unit(s), each donor's tensors copied in lazily over
the previous one's with ``olmokit.merge.pool.Pool`` + ``olmokit.merge.state.WorkingModel``, the
donors evaluated together by ``Evaluator.evaluate_group``, the units restored once). Reported:
``(VmHWM − baseline) / bytes of one fp32 model``, and the same ratio right after loading the base
(before any swap: what loading alone costs). Target ≤ 1.5 at every N, flat.

Speed (``evals_per_s_ratio_vs_naive``): in one child, the same candidates — *every* decoder layer
0..11 in forward order (a layer step's order), × the 3 other donors of the 4-donor pool, so 36
candidates spread evenly over the whole depth — and the same tiny evaluation set, scored two ways:

* ``naive`` — the original olm.py's way, written here: per candidate ``from_pretrained`` the whole
  donor, copy the layer's parameters into the working model, evaluate with
  :func:`olmokit.eval.response_nll` (a full forward), copy the base's back;
* ``olmokit`` — what a merge's layer step does (:func:`_layer_step`, ``run_merge``'s defaults:
  prefix cache on, ``candidate_batch`` 8), clocked per step and divided by its 3 candidates: one
  snapshot of the layer, each donor's layer copied in over the previous one's, and
  :class:`olmokit.merge.evaluate.Evaluator` ``evaluate_group`` (the same ``nll`` metric) with its
  focus on the layer: per donor only layer ``i`` runs, on the hidden states entering it (cached
  per batch by :mod:`olmokit.merge.prefix`; at layer ``i > 0`` the first donor also runs layer
  ``i - 1`` to advance the cache, at layer 0 the embedding), then layers ``i+1..11``, the final
  norm and lm_head run once for the 3 donors stacked along the batch; the layer restored once.
  "swap" is the time of the snapshot, the copy-ins and the restore (each clocked inside the
  step); "eval" is the rest of the step. Scores are checked equal to the naive ones.

Also (``es_offspring``): one norm-ES generation of 8 offspring on a middle layer's MLP weight, as
``MergeSearch.refine`` runs it, evaluated one by one and then grouped, in the same process: seconds
per offspring each way, and whether the offspring scored the same.

The evaluation set: 2 fixed random samples (12-token context, 4-token response): a tiny set, so
moving weights weighs more here than with a real evaluation set. The two sides are interleaved layer by layer (the naive
candidates of a layer, then olmokit's step over the same donors), with swap/load and evaluation
clocked apart. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = dict(
    hidden_size=1024,
    num_hidden_layers=12,
    num_attention_heads=16,
    num_key_value_heads=16,
    intermediate_size=2816,
    max_position_embeddings=512,
)
#: ``--smoke``: a 2-layer model of ~1M parameters, to check the harness in seconds
SMOKE_SIZES = dict(
    SIZES,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=128,
)
POOL_SIZES = (2, 4, 8)
SPEED_POOL = 4
SPEED_LAYERS = tuple(range(SIZES["num_hidden_layers"]))  # every layer: an honest average
SMOKE_SPEED_LAYERS = (0, 1)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_donors(root: Path, n: int, sizes: dict) -> list[Path]:
    """``n`` seeded random ~162M-parameter OLMo-2 donors as bf16 HF dirs (reused if present)."""
    import torch

    from olmokit.loading import load_tokenizer, save_model
    from olmokit.zoo.presets import random_model

    tok = load_tokenizer("olmo2-stdlib")
    dirs = []
    for seed in range(n):
        out = root / f"donor{seed}"
        if not (out / "config.json").is_file():
            model = random_model("olmo2", "small", seed=seed, dtype=torch.float32, **sizes)
            save_model(model.to(torch.bfloat16), out, tok)
            del model
        dirs.append(out)
    return dirs


def _eval_samples():
    import torch

    from olmokit.eval import ContextResponse

    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(4, 4096, (2, 16), generator=g).tolist()
    return [ContextResponse(row[:12], row[12:]) for row in ids]


def _evaluate(model, samples) -> float:
    from olmokit.eval import response_nll

    scores = response_nll(model, samples, batch_size=2, pad_token_id=1)
    return sum(scores) / len(scores)


def _evaluator(model, samples, candidate_batch: int = 8):
    """The merge's evaluator on the same samples and metric as :func:`_evaluate` (pad id 1), with
    ``run_merge``'s defaults (prefix cache on, ``candidate_batch`` 8)."""
    from types import SimpleNamespace

    from olmokit.merge.datasets import EvalSet
    from olmokit.merge.evaluate import Evaluator

    tok = SimpleNamespace(pad_token_id=1)
    sets = [EvalSet("bench", "nll", list(samples), tokenizer=tok)]
    return Evaluator(model, sets, batch_size=2, candidate_batch=candidate_batch)


def _layer_step(wm, evaluator, units, members, swap_clock=None):
    """What ``MergeSearch.step`` does with a step's non-cached donors (``MergeSearch._trials``):
    one snapshot of the units (into the previous step's buffers), every donor applied over the
    previous one (its file mapped for that copy only) and evaluated together
    (``Evaluator.evaluate_group``), the units restored once, the snapshot released.
    ``swap_clock`` (a one-item list) accumulates the seconds spent moving weights: the snapshot,
    each donor's copy-in and the restore. Returns the metrics, in donor order."""
    import functools

    def clocked(fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if swap_clock is not None:
                swap_clock[0] += time.perf_counter() - t

    snap = clocked(wm.snapshot, units)
    appliers = [functools.partial(clocked, wm.apply_all, units, m) for m in members]
    try:
        return evaluator.evaluate_group(appliers, functools.partial(clocked, wm.restore, snap))
    finally:
        wm.release(snap)


def _load_working(base: Path):
    """The working model as ``run_merge`` loads it (filled tensor by tensor from the lazy reader)."""
    from olmokit.merge.pool import load_working_model

    return load_working_model(base, dtype="float32")


def _layer_candidates(wm, layers, members):
    for layer in layers:
        for member in members:
            yield wm.layer_units(layer), member


def child_memory(dirs: list[Path], cache: Path) -> dict:
    """One pool size's memory run (in a fresh process): see the module docstring."""
    import torch

    from olmokit.merge.pool import Pool
    from olmokit.merge.state import WorkingModel

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    samples = _eval_samples()
    # one-time costs (lazy imports of the model classes, first-forward allocations) are not the
    # pool's: pay them on a tiny model of the same family before the baseline
    from olmokit.zoo.presets import random_model

    warm = random_model("olmo2", "tiny")
    _evaluate(warm, samples)
    del warm
    gc.collect()
    reset = _reset_peak()
    baseline = _status("VmRSS")
    t0 = time.perf_counter()
    pool = Pool([str(d) for d in dirs], cache)
    model = _load_working(dirs[0])
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak_after_load = _status("VmHWM")  # loading the base alone, before any swap
    wm = WorkingModel(model, pool, pool.members[0].name)
    evaluator = _evaluator(model, samples)  # with its prefix cache, as in a merge
    # the boundary step changes the embedding: no focus (None), as MergeSearch.first_layer says
    groups = [(None, wm.boundary_units())] + [(i, wm.layer_units(i)) for i in range(wm.num_layers)]
    evals = 0
    for focus, units in groups:
        evaluator.set_focus(focus)
        evals += len(_layer_step(wm, evaluator, units, pool.members[1:]))
    peak = _status("VmHWM")
    return {
        "pool": len(dirs),
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "model_bytes": model_bytes,
        "peak_above_baseline_ratio": (peak - baseline) / model_bytes,
        "load_only_ratio": (peak_after_load - baseline) / model_bytes,
        "rss_anon_end_bytes": _status("RssAnon"),
        "rss_file_end_bytes": _status("RssFile"),
        "hwm_reset": reset,
        "evaluations": evals,
        "seconds": time.perf_counter() - t0,
    }


def child_speed(dirs: list[Path], cache: Path, layers: tuple[int, ...]) -> dict:
    """Naive reload vs lazy swap on the same candidates and evaluation set (one process)."""
    import torch
    from transformers import AutoModelForCausalLM

    from olmokit.family import get_adapter
    from olmokit.merge.pool import Pool
    from olmokit.merge.state import WorkingModel

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    samples = _eval_samples()
    model = _load_working(dirs[0])
    _evaluate(model, samples)  # warm-up (first-call allocations)
    params = dict(model.named_parameters())

    # the same candidates both ways, interleaved (naive, then olmokit, per layer) so drift of a
    # shared CPU hits both alike; swap/load time and evaluation time are clocked apart
    layer_keys = {
        layer: [k for u in get_adapter(model).units() if u.layer == layer for k in u.keys]
        for layer in layers
    }
    pool = Pool([str(d) for d in dirs], cache)
    wm = WorkingModel(model, pool, pool.members[0].name)
    evaluator = _evaluator(model, samples)
    clock = {"naive_load": 0.0, "naive_eval": 0.0, "olmokit_swap": 0.0, "olmokit_eval": 0.0}
    naive_scores, lazy_scores = [], []
    for layer in layers:
        for donor_dir in dirs[1:]:
            # naive: the original's way, the whole donor per candidate
            t = time.perf_counter()
            donor = AutoModelForCausalLM.from_pretrained(donor_dir, dtype=torch.float32)
            donor_params = dict(donor.named_parameters())
            saved = {k: params[k].detach().clone() for k in layer_keys[layer]}
            with torch.no_grad():
                for k in layer_keys[layer]:
                    params[k].copy_(donor_params[k])
            t1 = time.perf_counter()
            naive_scores.append(_evaluate(model, samples))
            t2 = time.perf_counter()
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v)
            del donor, donor_params, saved
            t3 = time.perf_counter()
            clock["naive_load"] += (t1 - t) + (t3 - t2)
            clock["naive_eval"] += t2 - t1

        # olmokit: the layer step over the same donors, clocked whole; the weight moves inside
        # it (snapshot, copy-ins, restore) are clocked apart and the rest is the evaluation
        t = time.perf_counter()
        evaluator.set_focus(layer)  # as a layer step does: candidates differ from layer on
        swap = [0.0]
        results = _layer_step(wm, evaluator, wm.layer_units(layer), pool.members[1:], swap)
        total = time.perf_counter() - t
        lazy_scores += [r["bench"] for r in results]
        clock["olmokit_swap"] += swap[0]
        clock["olmokit_eval"] += total - swap[0]
    es = _es_offspring(wm, evaluator, layers[len(layers) // 2])
    naive_s = clock["naive_load"] + clock["naive_eval"]
    lazy_s = clock["olmokit_swap"] + clock["olmokit_eval"]
    same = all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in zip(naive_scores, lazy_scores))
    n = len(lazy_scores)
    return {
        "candidates": n,
        "naive_seconds": naive_s,
        "olmokit_seconds": lazy_s,
        "naive_evals_per_s": n / naive_s,
        "olmokit_evals_per_s": n / lazy_s,
        "seconds_per_candidate": {k: v / n for k, v in clock.items()},
        "same_scores": same,
        "layers": list(layers),
        "prefix_layers_skipped": evaluator.prefix.layers_skipped,
        "max_score_difference": max(abs(a - b) for a, b in zip(naive_scores, lazy_scores)),
        "es_offspring": es,
    }


def _es_offspring(wm, evaluator, layer: int, lam: int = 8) -> dict:
    """One norm-ES generation of ``lam`` offspring on layer ``layer``'s MLP up-projection, as
    ``MergeSearch.refine`` runs it (:func:`olmokit.merge.es.run_es`), evaluated one by one and
    then in one group (``candidate_batch`` 8), in this process: seconds per offspring each way.
    The same offspring both ways; the scores are compared (exact equality, and the largest
    difference: stacked rows may round differently in the last float32 bit) and so are the
    accepted ops. The tensor is restored afterwards."""
    import torch

    from olmokit.merge.es import no_regression_accept, run_es
    from olmokit.merge.search import es_weight_key

    unit = next(u for u in wm.layer_units(layer) if u.name.endswith("up_proj"))
    key = es_weight_key(wm, unit)
    weight = wm.tensor(key)
    original = weight.detach().clone()
    evaluator.set_focus(layer)
    current = evaluator.evaluate()

    def write(t):
        with torch.no_grad():
            weight.copy_(t)

    out, histories = {}, []
    for label, size in (("one_by_one", 1), ("grouped", 8)):
        scores: list = []
        t = time.perf_counter()
        result = run_es(
            "norm", original.float().clone(), write, evaluator.evaluate, current,
            no_regression_accept(0.0, ["bench"]), seed=7, sigma0=0.005, generations=1, lam=lam,
            datasets=["bench"], on_evaluated=lambda g, i, m, ok, _s=scores: _s.append(m["bench"]),
            evaluate_group=evaluator.evaluate_group, group_size=size,
        )  # fmt: skip
        out[label] = (time.perf_counter() - t) / lam
        histories.append((scores, [op.to_json() for op in result.ops]))
        write(original)
    return {
        "layer": layer,
        "offspring": lam,
        "seconds_per_offspring": out,
        "speedup": out["one_by_one"] / out["grouped"],
        "same_scores": histories[0] == histories[1],
        # grouped rows may round differently in the last float32 bit (BLAS kernels by shape)
        "max_score_difference": max(abs(a - b) for a, b in zip(histories[0][0], histories[1][0])),
        "same_accepted_ops": histories[0][1] == histories[1][1],
    }


def _run_child(mode: str, dirs: list[Path], cache: Path, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--cache", str(cache)]
    cmd += ["--smoke"] if smoke else []
    cmd += [str(d) for d in dirs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {mode} (pool {len(dirs)}) failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="build/reuse the donors here and keep them")
    ap.add_argument("--smoke", action="store_true", help="tiny donors: check the harness only")
    ap.add_argument("--only", choices=["memory", "speed"], help="run one half (no RESULT line)")
    ap.add_argument("--child", choices=["memory", "speed"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("dirs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child == "memory":
            print(json.dumps(child_memory(args.dirs, args.cache)))
        else:
            layers = SMOKE_SPEED_LAYERS if args.smoke else SPEED_LAYERS
            print(json.dumps(child_speed(args.dirs, args.cache, layers)))
        return

    root = args.keep or Path(tempfile.mkdtemp(prefix="olmokit-merge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"disk: {shutil.disk_usage(root).free / 2**30:.1f} GiB free at {root}", file=sys.stderr)
    try:
        t0 = time.perf_counter()
        dirs = build_donors(root, max(POOL_SIZES), SMOKE_SIZES if args.smoke else SIZES)
        print(f"donors built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cache = root / "pool_cache"
        sizes = () if args.only == "speed" else POOL_SIZES
        memory = {n: _run_child("memory", dirs[:n], cache, args.smoke) for n in sizes}
        speed = (
            None
            if args.only == "memory"
            else _run_child("speed", dirs[:SPEED_POOL], cache, args.smoke)
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    if args.only:
        print(json.dumps(memory or speed, indent=1))
        return
    model_mb = memory[POOL_SIZES[0]]["model_bytes"] / 2**20
    print(f"\nOne working model: {model_mb:.0f} MiB (fp32); donors stored as bf16.\n")
    print(
        "| pool size | candidate evals | peak RSS above baseline (MiB) | × one model "
        "| × one model, loading the base only | RssFile at end (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, m in memory.items():
        print(
            f"| {n} | {m['evaluations']} | {(m['peak_bytes'] - m['baseline_bytes']) / 2**20:.0f} "
            f"| {m['peak_above_baseline_ratio']:.2f} | {m['load_only_ratio']:.2f} "
            f"| {m['rss_file_end_bytes'] / 2**20:.0f} |"
        )
    print(f"\n| method ({speed['candidates']} candidates, pool {SPEED_POOL}) | seconds | evals/s |")
    print("|---|---:|---:|")
    print(
        f"| naive from_pretrained per candidate | {speed['naive_seconds']:.1f} | {speed['naive_evals_per_s']:.2f} |"
    )
    print(
        f"| olmokit lazy unit swap + grouped evaluation | {speed['olmokit_seconds']:.1f} | {speed['olmokit_evals_per_s']:.2f} |"
    )
    per = speed["seconds_per_candidate"]
    print(
        f"\nPer candidate: naive load+copy+restore {per['naive_load']:.2f} s, eval "
        f"{per['naive_eval']:.2f} s; olmokit swap+restore {per['olmokit_swap']:.3f} s, eval "
        f"{per['olmokit_eval']:.2f} s."
    )
    es = speed["es_offspring"]
    print(
        f"\nES offspring (norm-ES, layer {es['layer']}, lambda {es['offspring']}): one by one "
        f"{es['seconds_per_offspring']['one_by_one']:.3f} s, grouped "
        f"{es['seconds_per_offspring']['grouped']:.3f} s per offspring ({es['speedup']:.2f}x)."
    )
    ratio = speed["olmokit_evals_per_s"] / speed["naive_evals_per_s"]
    ratios = {str(n): round(m["peak_above_baseline_ratio"], 3) for n, m in memory.items()}
    result = {
        "peak_rss_ratio": ratios,
        "evals_per_s_ratio_vs_naive": round(ratio, 2),
        "naive_evals_per_s": round(speed["naive_evals_per_s"], 3),
        "olmokit_evals_per_s": round(speed["olmokit_evals_per_s"], 3),
        "same_scores_as_naive": speed["same_scores"],
        "speed_candidates": speed["candidates"],
        "speed_layers": f"all {len(speed['layers'])} (0..{speed['layers'][-1]}) x {SPEED_POOL - 1} donors",
        "seconds_per_candidate": {k: round(v, 4) for k, v in per.items()},
        "es_offspring": {
            "seconds_per_offspring": {
                k: round(v, 4) for k, v in speed["es_offspring"]["seconds_per_offspring"].items()
            },
            "speedup_grouped_vs_one_by_one": round(speed["es_offspring"]["speedup"], 2),
            "same_scores": speed["es_offspring"]["same_scores"],
            "max_score_difference": speed["es_offspring"]["max_score_difference"],
            "same_accepted_ops": speed["es_offspring"]["same_accepted_ops"],
        },
        "model_parameters": memory[POOL_SIZES[0]]["model_bytes"] // 4,
        "load_only_ratio": {str(n): round(m["load_only_ratio"], 3) for n, m in memory.items()},
        "targets_met": {
            "peak_rss_le_1_5": all(v <= 1.5 for v in ratios.values()),
            "flat_2_to_8": ratios[str(POOL_SIZES[-1])] - ratios[str(POOL_SIZES[0])] <= 0.1,
            "evals_per_s_ge_5x": ratio >= 5.0,
        },
    }
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
