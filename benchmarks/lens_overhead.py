"""Lens overhead: forward time with no hooks and with full caching, vs raw HF, TransformerLens, nnsight.

Run: ``python benchmarks/lens_overhead.py`` (needs the ``[bench]`` extra: transformer-lens>=4.3, nnsight).

Models: the shipped zoo model (``olmo2-stdlib``; a random model of the same architecture if it is not
built) and a random OLMo-2 of ~100M parameters. Per model and round, every method runs once in the same
interleaved order; ratios are medians of *per-round* ratios, which cancels much of the drift of a shared
CPU. Methods:

* ``hf``: ``model(input_ids, use_cache=False)`` on the HF model as loaded (SDPA);
* ``lens_nohook``: ``HookedOlmo(model)(tokens)`` with no hooks;
* ``lens_cache``: ``HookedOlmo.run_with_cache`` of every hook point (patterns included, so eager math in
  every layer); ``lens_cache_nopattern``: every hook but scores/patterns (SDPA kept);
* ``tl_fwd`` / ``tl_cache``: TransformerLens 4.x ``TransformerBridge`` forward / ``run_with_cache`` (all
  hooks) on its own copy of the model (the bridge rewires the model it boots from; it forces eager);
* ``nnsight_cache``: ``NNsight(model).trace`` with ``tracer.cache()`` of every module output.

The planner is checked against the bytes the cache really holds (storages counted once). The last line
is ``RESULT {json}``; the top-level ratios are those of the larger model.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings

import torch

from olmokit.lens import HookedOlmo
from olmokit.zoo.presets import make_config

warnings.filterwarnings("ignore")


def _random_olmo2(seed: int = 0, **sizes):
    from transformers import AutoModelForCausalLM

    config = make_config("olmo2", "small", **sizes)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def build_models(include_zoo: bool, large_layers: int):
    """(name, factory) pairs; a factory returns a fresh copy with identical weights each call."""
    from olmokit.zoo.registry import DEFAULT_MODEL, ZOO

    models = []
    if include_zoo:
        if ZOO[DEFAULT_MODEL].available:
            from olmokit.loading import load_model

            models.append((DEFAULT_MODEL, lambda: load_model(DEFAULT_MODEL)))
        else:
            models.append((f"{DEFAULT_MODEL}-arch-random", lambda: _random_olmo2()))
    big = dict(
        hidden_size=768,
        num_hidden_layers=large_layers,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
        max_position_embeddings=1024,
    )
    models.append((f"olmo2-random-{large_layers}L-d768", lambda: _random_olmo2(**big)))
    return models


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(4096)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), eos_token="t0"
    )


def _no_pattern(name: str) -> bool:
    return not name.endswith(("hook_pattern", "hook_attn_scores"))


def make_methods(factory, tokens, tmp_dir):
    hf = factory()
    hooked = HookedOlmo(factory())
    methods = {
        "hf": lambda: hf(input_ids=tokens, use_cache=False).logits,
        "lens_nohook": lambda: hooked(tokens),
        "lens_cache": lambda: hooked.run_with_cache(tokens)[1],
        # every hook except scores/patterns: all layers keep SDPA (closest to nnsight's module cache)
        "lens_cache_nopattern": lambda: hooked.run_with_cache(tokens, names_filter=_no_pattern)[1],
    }
    peers = {}
    try:
        from transformer_lens.model_bridge import TransformerBridge

        tl_model = factory()
        tl_model.save_pretrained(tmp_dir)
        bridge = TransformerBridge.boot_transformers(
            tmp_dir, hf_model=tl_model, device="cpu", tokenizer=_tokenizer()
        )
        methods["tl_fwd"] = lambda: bridge(tokens)
        methods["tl_cache"] = lambda: bridge.run_with_cache(tokens)[1]
        peers["transformer_lens"] = _version("transformer-lens")
    except ImportError:
        print("transformer-lens not installed: skipping (pip install 'olmokit[bench]')")
    try:
        from nnsight import NNsight

        nn_model = NNsight(factory())

        def nnsight_cache():
            with nn_model.trace(tokens) as tracer:
                cache = tracer.cache()
            return cache

        methods["nnsight_cache"] = nnsight_cache
        peers["nnsight"] = _version("nnsight")
    except ImportError:
        print("nnsight not installed: skipping (pip install 'olmokit[bench]')")
    return hooked, methods, peers


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def time_methods(methods, rounds: int, warmup: int) -> dict[str, list[float]]:
    times = {k: [] for k in methods}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in methods.values():
                fn()
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                t0 = time.perf_counter()
                fn = methods[name]
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times, a: str, b: str) -> float | None:
    if a not in times or b not in times:
        return None
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds-small", type=int, default=30)
    p.add_argument("--rounds-large", type=int, default=9)
    p.add_argument(
        "--large-layers",
        type=int,
        default=14,
        help="layers of the ~100M random OLMo-2 (14 → ~105M)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadier on a shared CPU)"
    )
    p.add_argument("--no-zoo", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import tempfile

    results = {}
    rows = []
    for name, factory in build_models(not args.no_zoo, args.large_layers):
        torch.manual_seed(0)
        tokens = torch.randint(4, 4096, (args.batch, args.seq_len))
        with tempfile.TemporaryDirectory() as tmp:
            hooked, methods, peers = make_methods(factory, tokens, tmp)
            n_params = hooked.adapter.num_parameters()
            rounds = args.rounds_large if n_params > 20e6 else args.rounds_small
            # exactness and planner before timing
            with torch.no_grad():
                exact = torch.equal(methods["hf"](), methods["lens_nohook"]())
                plan = hooked.plan_cache(tokens)
                cache = methods["lens_cache"]()
            actual = cache.nbytes()
            planner_error = abs(plan.unique_bytes - actual) / actual
            del cache
            times = time_methods(methods, rounds, warmup=1)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        res = {
            "params": n_params,
            "rounds": rounds,
            "median_ms": {k: round(v, 2) for k, v in med.items()},
            "min_ms": {k: round(min(v) * 1e3, 2) for k, v in times.items()},
            "nohook_ratio_vs_hf": paired_ratio(times, "lens_nohook", "hf"),
            "cache_ratio_vs_hf": paired_ratio(times, "lens_cache", "hf"),
            "cache_ratio_vs_transformer_lens": paired_ratio(times, "lens_cache", "tl_cache"),
            "cache_ratio_vs_nnsight": paired_ratio(times, "lens_cache", "nnsight_cache"),
            "tl_fwd_ratio_vs_hf": paired_ratio(times, "tl_fwd", "hf"),
            "tl_cache_ratio_vs_hf": paired_ratio(times, "tl_cache", "hf"),
            "nnsight_cache_ratio_vs_hf": paired_ratio(times, "nnsight_cache", "hf"),
            "nohook_logits_identical_to_hf": exact,
            "planned_cache_bytes": plan.unique_bytes,
            "actual_cache_bytes": actual,
            "planner_error": planner_error,
            "cache_hooks": len(plan.entries),
            "peers": peers,
        }
        results[name] = res
        for k, v in med.items():
            rows.append(
                (
                    name,
                    k,
                    f"{v:.1f}",
                    f"{min(times[k]) * 1e3:.1f}",
                    _fmt(paired_ratio(times, k, "hf")),
                )
            )
        print(
            f"{name}: {n_params / 1e6:.1f}M params, {rounds} rounds, planner {plan.unique_bytes} B vs actual {actual} B"
        )

    print()
    print("| model | method | median ms | min ms | ×HF (paired median) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    primary = results[list(results)[-1]]
    summary = {
        key: primary[key]
        for key in (
            "nohook_ratio_vs_hf",
            "cache_ratio_vs_hf",
            "cache_ratio_vs_transformer_lens",
            "cache_ratio_vs_nnsight",
            "planner_error",
        )
    }
    summary.update(
        primary_model=list(results)[-1],
        models=results,
        seq_len=args.seq_len,
        batch=args.batch,
        dtype="float32",
        device="cpu",
        threads=args.threads,
        torch=torch.__version__,
        transformers=_version("transformers"),
        python=platform.python_version(),
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
    print()
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
