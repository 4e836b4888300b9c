"""Neural-memory speed and memory: olmokit's chunked engine vs titans-pytorch and vs a per-token loop.

Run: ``python benchmarks/memory_speed.py`` (about 10 minutes on one idle core; ``--smoke`` checks the
harness in seconds). Needs the ``bench`` extra for titans-pytorch (``pip install --no-deps
titans-pytorch tensordict assoc-scan einx x-transformers hyper-connections axial-positional-embedding
rotary-embedding-torch pyvers frozendict loguru torch-einops-utils`` keeps the installed torch).

What is timed: one forward + backward (loss = mean of y²) of a memory module on x ``[1, T, 512]``
(8 heads × 64, memory MLP 64 → 256 → 64 per head, depth 2, no residual norm), at T ∈ {1K, 2K, 4K, 8K} and
chunk ∈ {16, 64}. Each (implementation, T, chunk) runs in a *fresh child process* with one torch
thread: it warms up at a small T, resets its RSS high-water mark (``/proc/self/clear_refs`` ← 5),
runs once (peak RSS growth = ``VmHWM`` − RSS before), then times ``--repeats`` more runs and keeps the
fastest. Time is the process's CPU time (``time.process_time``), not wall time: on a shared machine
the wall clock of a single-threaded run mostly measures the neighbours; on an idle core the two agree.

Implementations and how they are matched:

* ``olmokit`` — :class:`olmokit.memory.neural.NeuralMemory` with its defaults (per-token gates and
  updates inside a chunk, gradients at the chunk-start weights, soft-clipped inner gradients,
  input RMSNorm, ℓ2-normalised q/k).
* ``titans`` — titans-pytorch ``NeuralMemory(dim=512, heads=8, dim_head=64, chunk_size=c,
  model=MemoryMLP(64, depth=2, expansion_factor=4), mem_model_norm_add_residual=False)`` with its
  default ``batch_size=None``. Its ``chunk_size`` *sums* the c gradients of a chunk into one update with
  per-chunk gates, and with ``batch_size=None`` every gradient of the call is taken at the call's
  initial weights (research notes §1.2): fewer updates and no sequential dependency, so this is its
  *fastest* setting at equal chunk and a conservative baseline. (The semantically equal setting,
  ``chunk_size=1, batch_size=c``, loops in Python per token and is orders of magnitude slower.)
* ``loop`` — :func:`olmokit.memory.reference.reference_forward` (per-token autograd loop with
  ``create_graph``, same semantics as olmokit's engine) in fp32. It is run at T = ``--loop-t``
  (default 512) only; its tokens/s is *extrapolated per token* to the larger T (its cost per token does
  not fall with T, so this flatters the loop, if anything).

Output: a markdown table (tokens/s, peak RSS growth, ratios) and a last line ``RESULT {json}`` with
``min_ratio_vs_titans`` (over T and chunk), ``min_ratio_vs_loop``, ``tokens_per_s_max_over_min``
(olmokit, across T at a fixed chunk; the worse chunk), ``rss_by_T`` (olmokit peak RSS growth in MB per
T and chunk) and ``rss_per_token_kb`` (RSS/T, to read linearity).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DIM, HEADS, HEAD_DIM, HIDDEN = 512, 8, 64, 256
T_VALUES = (1024, 2048, 4096, 8192)
CHUNKS = (16, 64)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _build(impl: str, chunk: int, dim: int, heads: int, head_dim: int, hidden: int):
    """(module, step(x) -> y) for one implementation."""
    import torch

    torch.manual_seed(0)
    if impl in ("olmokit", "loop"):
        from olmokit.memory.neural import NeuralMemory, NeuralMemoryConfig

        cfg = NeuralMemoryConfig(dim=dim, heads=heads, head_dim=head_dim, hidden=hidden, depth=2)
        mem = NeuralMemory(cfg)
        if impl == "olmokit":
            return lambda x: mem(x, chunk_size=chunk)[0]
        from olmokit.memory.reference import reference_forward

        return lambda x: reference_forward(mem, x, chunk)[0]
    import warnings

    warnings.filterwarnings("ignore")
    from titans_pytorch import MemoryMLP
    from titans_pytorch import NeuralMemory as TitansMemory

    mem = TitansMemory(
        dim=dim,
        heads=heads,
        dim_head=head_dim,
        chunk_size=chunk,
        model=MemoryMLP(head_dim, depth=2, expansion_factor=hidden / head_dim),
        mem_model_norm_add_residual=False,
    )
    return lambda x: mem(x)[0]


def child(impl: str, tokens: int, chunk: int, repeats: int, smoke: bool) -> dict:
    """Runs in a fresh process: peak RSS growth of one fwd+bwd, then the best CPU time of ``repeats``."""
    import torch

    torch.set_num_threads(1)
    dims = (64, 2, 16, 32) if smoke else (DIM, HEADS, HEAD_DIM, HIDDEN)
    step = _build(impl, chunk, *dims)

    def run(n: int) -> None:
        x = torch.randn(1, n, dims[0])
        y = step(x)
        y.square().mean().backward()

    run(max(chunk * 2, 64))  # warm-up: lazy imports, allocator and thread-pool start-up
    gc.collect()
    base = _status("VmRSS")
    _reset_peak()
    start = time.process_time()
    run(tokens)
    first = time.process_time() - start
    peak = _status("VmHWM") - base
    times = [first]
    for _ in range(repeats):
        start = time.process_time()
        run(tokens)
        times.append(time.process_time() - start)
    return {"seconds": min(times), "tokens_per_s": tokens / min(times), "rss_mb": peak / 2**20}


def _run_child(impl: str, tokens: int, chunk: int, repeats: int, smoke: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        str(tokens),
        str(chunk),
        "--repeats",
        str(repeats),
    ]
    cmd += ["--smoke"] if smoke else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(
            f"child {impl} T={tokens} chunk={chunk} failed with exit code {proc.returncode}"
        )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {impl:8s} T={tokens:5d} chunk={chunk:3d}: {out['tokens_per_s']:8.0f} tok/s, "
        f"peak RSS +{out['rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "T", "CHUNK"), help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after the first (best kept)")
    ap.add_argument(
        "--loop-t", type=int, default=512, help="T of the per-token loop (extrapolated)"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and T: check the harness only")
    args = ap.parse_args()
    if args.child:
        impl, tokens, chunk = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps(child(impl, tokens, chunk, args.repeats, args.smoke)))
        return

    t_values = (64, 128) if args.smoke else T_VALUES
    loop_t = 32 if args.smoke else args.loop_t
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    res: dict[tuple[str, int, int], dict] = {}
    for chunk in CHUNKS:
        res[("loop", loop_t, chunk)] = _run_child("loop", loop_t, chunk, 0, args.smoke)
        for tokens in t_values:
            for impl in ("olmokit", "titans"):
                res[(impl, tokens, chunk)] = _run_child(
                    impl, tokens, chunk, args.repeats, args.smoke
                )
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)

    lines = [
        "| T | chunk | olmokit tok/s | titans tok/s | loop tok/s | × titans | × loop "
        "| olmokit RSS MB | titans RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    vs_titans, vs_loop, rss_by_t, rss_per_token = [], [], {}, {}
    spread = []
    for chunk in CHUNKS:
        loop = res[("loop", loop_t, chunk)]["tokens_per_s"]
        tps = []
        for tokens in t_values:
            ours, tit = res[("olmokit", tokens, chunk)], res[("titans", tokens, chunk)]
            r_t = ours["tokens_per_s"] / tit["tokens_per_s"]
            r_l = ours["tokens_per_s"] / loop
            vs_titans.append(r_t)
            vs_loop.append(r_l)
            tps.append(ours["tokens_per_s"])
            rss_by_t.setdefault(str(tokens), {})[str(chunk)] = round(ours["rss_mb"], 1)
            rss_per_token.setdefault(str(tokens), {})[str(chunk)] = round(
                ours["rss_mb"] * 1024 / tokens, 1
            )
            lines.append(
                f"| {tokens} | {chunk} | {ours['tokens_per_s']:.0f} | {tit['tokens_per_s']:.0f} "
                f"| {loop:.0f}{'*' if tokens != loop_t else ''} | {r_t:.2f} | {r_l:.1f} "
                f"| {ours['rss_mb']:.0f} | {tit['rss_mb']:.0f} |"
            )
        spread.append(max(tps) / min(tps))
    lines.append("")
    lines.append(
        f"\\* loop measured at T={loop_t} (peak RSS "
        + ", ".join(f"{res[('loop', loop_t, c)]['rss_mb']:.0f} MB at chunk {c}" for c in CHUNKS)
        + "), tokens/s extrapolated per token."
    )
    print("\n".join(lines))
    result = {
        "min_ratio_vs_titans": round(min(vs_titans), 3),
        "min_ratio_vs_loop": round(min(vs_loop), 2),
        "tokens_per_s_max_over_min": round(max(spread), 3),
        "rss_by_T": rss_by_t,
        "rss_per_token_kb": rss_per_token,
        "loop_T": loop_t,
        "timing": "CPU time, 1 thread, best of runs",
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
