"""Merge quality on the zoo: OLM vs its parents and vs mergekit's linear, ties and model_stock.

Run: ``python benchmarks/merge_quality.py [--pool runs/merge-demo-pool]`` (needs the ``[bench]``
extra for mergekit; builds the demo pool first if ``--pool`` holds none: a few CPU minutes).

* Pool: :func:`olmokit.merge.demo.make_demo_pool` — the shipped ``olmo2-stdlib`` (base) and two
  experts fine-tuned from it on the prose and on the code half of the zoo corpus.
* OLM: :func:`olmokit.merge.run.run_merge` on the pool's ``merge.yaml`` (the same settings as
  ``configs/merge/demo.yaml``: boundary, layer and tensor swaps, Copeland over the two *merge* sets).
* mergekit (0.1.5, its ``mergekit-yaml`` CLI in a subprocess, float32) on the same pool:
  ``linear`` — the two experts, weight 0.5 each (a uniform soup of the experts); ``ties`` — base
  + both experts, density 0.5, weight 0.5, ``normalize: true`` (mergekit's documented example
  values); ``model_stock`` — base + both experts (no parameters: the method derives its own ratio).
* Scoring: the *held-out* prose and code sets (disjoint from fine-tuning and from the merge's own
  data; see ``olmokit.merge.demo``), tokenised exactly as the merge tokenises its datasets
  (:func:`olmokit.merge.datasets.load_dataset`), mean response NLL per set
  (:func:`olmokit.eval.response_nll`, nats/token, lower is better). The merge sets' NLL is shown
  too (what OLM optimised), but ranks use the held-out sets only.
* Ranks: per held-out set over *all* scored models (1 = lowest NLL; ties share the lower rank), then
  the mean over sets. ``merged_non_dominated``: no scored model is at least as good on every
  held-out set and better on one.

The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

SETS = ("prose", "code")
MERGEKIT_METHODS = ("linear", "ties", "model_stock")


def mergekit_config(method: str, pool) -> dict:
    """mergekit YAML for one method over the demo pool (see the module docstring for weights)."""
    base, prose, code = (str(p) for p in pool.models)
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [
                {"model": prose, "parameters": {"weight": 0.5}},
                {"model": code, "parameters": {"weight": 0.5}},
            ],
            "dtype": "float32",
        }
    if method == "ties":
        return {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": prose, "parameters": {"density": 0.5, "weight": 0.5}},
                {"model": code, "parameters": {"density": 0.5, "weight": 0.5}},
            ],
            "parameters": {"normalize": True},
            "dtype": "float32",
        }
    if method == "model_stock":
        return {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": prose}, {"model": code}],
            "dtype": "float32",
        }
    raise ValueError(method)


def run_mergekit(method: str, pool, work: Path) -> tuple[Path | None, str]:
    """Merge with mergekit's CLI in a subprocess; ``(out_dir, "")`` or ``(None, why not)``."""
    exe = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
    if not Path(exe).exists():
        return None, "mergekit is not installed (pip install -e .[bench])"
    cfg, out = work / f"mergekit_{method}.yaml", work / f"mergekit_{method}"
    cfg.write_text(yaml.safe_dump(mergekit_config(method, pool), sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [exe, str(cfg), str(out), "--copy-tokenizer"], capture_output=True, text=True
    )
    if proc.returncode != 0 or not (out / "config.json").is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, f"mergekit {method} failed (exit {proc.returncode}): {' | '.join(tail)}"
    return out, ""


def run_olm(pool, work: Path) -> Path:
    from olmokit.merge.config import MergeConfig
    from olmokit.merge.run import run_merge

    config = MergeConfig.from_yaml(pool.config)
    config = MergeConfig.from_dict({**config.as_dict(), "output_dir": str(work / "olm")})
    run = run_merge(config, overwrite=True, progress=False)
    return run.path / "model"


def score(models: dict[str, Path], pool, heldout_samples: int, merge_samples: int) -> dict:
    """``{model: {set: mean NLL}}`` for the held-out sets and (prefixed ``merge_``) the merge sets."""
    import torch

    from olmokit.eval import response_nll
    from olmokit.loading import load_model, load_tokenizer
    from olmokit.merge.config import DatasetSpec
    from olmokit.merge.datasets import load_dataset

    tok = load_tokenizer(pool.base)
    specs = {f"heldout_{k}": (p, heldout_samples) for k, p in pool.heldout.items()}
    specs.update({f"merge_{k}": (p, merge_samples) for k, p in pool.merge_data.items()})
    sets = {
        name: load_dataset(DatasetSpec(path=str(p), mode="nll", samples=n, name=name), tok)
        for name, (p, n) in specs.items()
    }
    out = {}
    for name, path in models.items():
        model = load_model(path, dtype="float32")
        with torch.no_grad():
            out[name] = {
                s: sum(v) / len(v)
                for s, e in sets.items()
                for v in [response_nll(model, e.samples, 16, tok.pad_token_id)]
            }
        del model
    return out


def ranks(metrics: dict[str, dict[str, float]], sets: list[str]) -> dict[str, dict[str, int]]:
    """Competition ranks per set (1 = lowest; equal values share the lower rank)."""
    out: dict[str, dict[str, int]] = {m: {} for m in metrics}
    for s in sets:
        for m in metrics:
            out[m][s] = 1 + sum(metrics[o][s] < metrics[m][s] for o in metrics)
    return out


def non_dominated(name: str, metrics: dict[str, dict[str, float]], sets: list[str]) -> bool:
    mine = metrics[name]
    for other, theirs in metrics.items():
        if other == name:
            continue
        if all(theirs[s] <= mine[s] for s in sets) and any(theirs[s] < mine[s] for s in sets):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=Path, default=Path("runs/merge-demo-pool"))
    ap.add_argument("--work", type=Path, default=Path("runs/merge-quality"))
    ap.add_argument("--steps", type=int, default=None, help="demo pool: steps per expert")
    args = ap.parse_args()

    from olmokit.merge.demo import make_demo_pool

    t0 = time.perf_counter()
    kwargs = {} if args.steps is None else {"steps": args.steps}
    pool = make_demo_pool(args.pool, **kwargs)  # reuses a complete pool built with these settings
    settings = pool.info["settings"]
    print(f"pool ready in {time.perf_counter() - t0:.0f} s: {settings}", file=sys.stderr)
    args.work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    models: dict[str, Path] = {"base": pool.base, **pool.experts}
    models["olm"] = run_olm(pool, args.work)
    olm_seconds = time.perf_counter() - t0
    skipped: dict[str, str] = {}
    for method in MERGEKIT_METHODS:
        out, why = run_mergekit(method, pool, args.work)
        if out is None:
            skipped[method] = why
            print(why, file=sys.stderr)
        else:
            models[f"mergekit_{method}"] = out

    metrics = score(models, pool, settings["heldout_samples"], settings["merge_samples"])
    held = [f"heldout_{s}" for s in SETS]
    rk = ranks(metrics, held)
    mean_rank = {m: sum(r.values()) / len(r) for m, r in rk.items()}

    pool_names = ", ".join(p.name for p in pool.models)
    print(f"\nPool: {pool_names} ({pool.root}); OLM merge took {olm_seconds:.0f} s.\n")
    cols = held + [f"merge_{s}" for s in SETS]
    print("| model | " + " | ".join(f"{c} NLL" for c in cols) + " | held-out ranks | mean rank |")
    print("|---|" + "---:|" * (len(cols) + 2))
    for m in models:
        vals = " | ".join(f"{metrics[m][c]:.4f}" for c in cols)
        r = ", ".join(str(rk[m][s]) for s in held)
        print(f"| {m} | {vals} | {r} | {mean_rank[m]:.2f} |")
    for method, why in skipped.items():
        print(f"| mergekit_{method} | not run: {why} |")

    parents = {p: mean_rank[p] for p in ("base", *pool.experts)}
    mk = {m: mean_rank[f"mergekit_{m}"] for m in MERGEKIT_METHODS if f"mergekit_{m}" in models}
    result = {
        "merged_mean_rank": mean_rank["olm"],
        "parent_mean_ranks": parents,
        "merged_non_dominated": non_dominated("olm", metrics, held),
        "mergekit_mean_ranks": mk,
        "merged_better_than_each_parent": all(mean_rank["olm"] < v for v in parents.values()),
        "merged_better_than_each_mergekit": all(mean_rank["olm"] < v for v in mk.values()),
        "metrics": {m: {k: round(v, 5) for k, v in metrics[m].items()} for m in models},
        "ranks": rk,
        "mergekit_skipped": skipped,
        "pool_settings": settings,
    }
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
