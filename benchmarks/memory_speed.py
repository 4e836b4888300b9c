"""Neural-memory speed and memory: olmokit's chunked engine vs titans-pytorch and vs a per-token loop.

Run: ``nice python benchmarks/memory_speed.py`` (34 minutes at load 6–10 on a shared 2-core machine,
less idle; its table is in docs/memory.md; the titans ``chunk_size=1`` children peak at ~13 GB RSS;
``--smoke`` checks the harness in a minute; ``--check`` runs only the fp64 semantics check below). Needs the ``bench`` extra for
titans-pytorch (``pip install --no-deps titans-pytorch tensordict assoc-scan einx x-transformers
hyper-connections axial-positional-embedding rotary-embedding-torch pyvers frozendict loguru
torch-einops-utils`` keeps the installed torch).

What is timed: one forward + backward (loss = mean of y²) of a memory module on x ``[1, T, 512]``
(8 heads × 64, memory MLP 64 → 256 → 64 per head, depth 2, no residual norm), at T ∈ {1K, 2K, 4K, 8K} and
chunk b ∈ {16, 64}. Each (implementation, T, b) runs in a *fresh child process* with one torch
thread: it warms up at a small T, resets its RSS high-water mark (``/proc/self/clear_refs`` ← 5),
runs once (peak RSS growth = ``VmHWM`` − RSS before), then times ``--repeats`` more runs and keeps the
fastest. Time is the process's CPU time (``time.process_time``), not wall time: on a shared machine
the wall clock of a single-threaded run mostly measures the neighbours; on an idle core the two agree.

olmokit (:class:`olmokit.memory.neural.NeuralMemory`, defaults otherwise) at its two update
granularities; both take every inner gradient of a chunk at the weights at the chunk's start:

* ``olmokit token`` (``granularity="token"``, the default): gates (α, η, θ), momentum and decay per
  token; each token's gradient is soft-clipped and applied on its own — b updates per chunk; y_t reads
  the weights after x_t was written.
* ``olmokit chunk`` (``granularity="chunk"``): one update per chunk — the θ-weighted (soft-clipped)
  gradients summed, α and η from the chunk's mean gate logits; a token reads the weights after the
  last chunk that ended at or before it.

titans-pytorch ``NeuralMemory(dim=512, heads=8, dim_head=64, chunk_size=·, batch_size=·,
model=MemoryMLP(64, depth=2, expansion_factor=4), mem_model_norm_add_residual=False)`` has two knobs
(research notes §1.2, titans-pytorch issue #36): ``chunk_size`` is the *gate/update granularity* (the
gradients of a chunk are summed into one update with per-chunk η and α, θ stays a per-token loss
weight) and ``batch_size`` is the *TTT mini-batch* (``forward`` splits the call at multiples of it in a
Python loop; all gradients of one piece are taken at the piece's start weights; ``None`` = one piece,
the whole call). Three settings are timed:

* ``titans mb=b`` — ``chunk_size=b, batch_size=b``: *exactly* olmokit chunk's semantics
  (fp64-checked). Timed at every T and b.
* ``titans c=1 mb=b`` — ``chunk_size=1, batch_size=b``: *exactly* olmokit token's semantics
  (fp64-checked). Its per-token updates materialise one weight set per token, so it is slow and
  memory-hungry; it is timed at T ∈ ``--tok-t`` (default 1K) only, under a CPU-time cap
  (``--tok-cap`` seconds, ``RLIMIT_CPU``); a setting that exceeds the cap is reported as skipped.
* ``titans mb=call`` — ``chunk_size=b, batch_size=None`` (titans' default): *every* gradient of the call
  is taken at the call's initial weights, so nothing written earlier in the call changes later
  surprises; per-chunk summed updates, no sequential dependency at all. A different, cheaper function
  than either of ours; reported separately.

**Matched settings** (same chunk *and* same function): olmokit chunk vs titans ``mb=b`` (every T and
b), olmokit token vs titans ``c=1 mb=b`` (where it ran). ``min_ratio_vs_titans`` is the minimum over
these. The cross-semantics ratio olmokit token ÷ titans ``mb=b`` (more work on our side; it was run
2's ``min_ratio_vs_titans``) is kept as ``min_ratio_vs_titans_per_token_vs_per_chunk``, and the
whole-call mini-batch ratios as ``min_ratio_vs_titans_whole_call_minibatch`` (token) and
``min_ratio_vs_titans_whole_call_minibatch_chunk``.

The semantics claims are checked before timing (``--check``; fp64, dim 32, 2 heads × 8, hidden 16,
T = 40, b = 8, grad clip off, titans' store/retrieve RMSNorm weights and eps, q/k/v, gate, initial
memory and output weights copied from an olmokit module, titans' q/k RMSNorm replaced by olmokit's ℓ2
normalisation and its retrieve gate removed): the two matched pairs are equal to ≤ 1e-12 (olmokit
token = titans ``c=1 mb=b``, olmokit chunk = titans ``mb=b``); ``c=1 mb=call`` equals ``c=1 mb=b``
on the first mini-batch and differs after it; ``mb=b`` equals ``mb=call`` on the tokens that read
only the first chunk's weights and differs after them; olmokit token differs from titans ``mb=b``.
The run aborts if any of these fails. Not verified: equality *with* the inner-gradient clip (titans
soft-clamps the θ-weighted gradient per parameter tensor, olmokit the unweighted per-token gradient
over all layers — different functions; the timed olmokit modules keep their clip at 1.0, titans has
none, which only costs olmokit) and with titans' defaults that olmokit lacks (retrieve gate, q/k
RMSNorm with learned scale: a few elementwise ops, timed as they are). The timed modules are *not*
weight-matched: only speed and memory are compared.

* ``loop`` / ``loop chunk`` — :func:`olmokit.memory.reference.reference_forward` (autograd loop with
  ``create_graph``, same semantics as olmokit token / chunk: per-token gradients, applied per token /
  summed per chunk) in fp32. Run at T = ``--loop-t`` (default 512) only; tokens/s is *extrapolated
  per token* to the larger T (its cost per token does not fall with T, so this flatters the loop).

Output: a markdown table (tokens/s, ratios, peak RSS growth) and a last line ``RESULT {json}`` with
``min_ratio_vs_titans`` (matched settings, above), ``matched`` (every matched ratio),
``min_ratio_vs_titans_per_token_vs_per_chunk``, the whole-call ratios, ``min_ratio_vs_loop`` (each
granularity against its own loop; ``min_ratio_vs_loop_by_granularity``),
``tokens_per_s_max_over_min`` (across T at a fixed chunk; the worst chunk and granularity; per
granularity in ``tokens_per_s_max_over_min_by_granularity``), ``rss_by_T`` (olmokit peak RSS growth
in MB per T, chunk and granularity), ``rss_per_token_kb`` (RSS/T, to read linearity),
``titans_tok_skipped`` and ``semantics_check``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

DIM, HEADS, HEAD_DIM, HIDDEN = 512, 8, 64, 256
T_VALUES = (1024, 2048, 4096, 8192)
CHUNKS = (16, 64)

#: olmokit implementations -> granularity (the loops are the autograd references of each)
OLMOKIT = {"olmokit": "token", "olmokit-chunk": "chunk", "loop": "token", "loop-chunk": "chunk"}

#: titans-pytorch settings: name -> b -> (chunk_size, batch_size); see the module docstring
TITANS = {
    "titans-mb": lambda b: (b, b),
    "titans-tok": lambda b: (1, b),
    "titans-call": lambda b: (b, None),
}


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _titans(
    chunk_size: int, batch_size: int | None, dim: int, heads: int, head_dim: int, hidden: int, **kw
):
    import warnings

    warnings.filterwarnings("ignore")
    from titans_pytorch import MemoryMLP
    from titans_pytorch import NeuralMemory as TitansMemory

    return TitansMemory(
        dim=dim,
        heads=heads,
        dim_head=head_dim,
        chunk_size=chunk_size,
        batch_size=batch_size,
        model=MemoryMLP(head_dim, depth=2, expansion_factor=hidden / head_dim),
        mem_model_norm_add_residual=False,
        **kw,
    )


def _build(impl: str, chunk: int, dim: int, heads: int, head_dim: int, hidden: int):
    """step(x) -> y for one implementation at our chunk size ``chunk``."""
    import torch

    torch.manual_seed(0)
    if impl in OLMOKIT:
        from olmokit.memory.neural import NeuralMemory, NeuralMemoryConfig

        cfg = NeuralMemoryConfig(
            dim=dim,
            heads=heads,
            head_dim=head_dim,
            hidden=hidden,
            depth=2,
            granularity=OLMOKIT[impl],
        )
        mem = NeuralMemory(cfg)
        if impl.startswith("olmokit"):
            return lambda x: mem(x, chunk_size=chunk)[0]
        from olmokit.memory.reference import reference_forward

        return lambda x: reference_forward(mem, x, chunk)[0]
    mem = _titans(*TITANS[impl](chunk), dim, heads, head_dim, hidden)
    return lambda x: mem(x)[0]


def check_semantics() -> dict:
    """fp64: what each titans setting computes, against a weight-matched olmokit module.

    Returns max |Δ| of the outputs; raises ``SystemExit`` if a claim of the module docstring fails.
    """
    import torch
    from torch import nn

    from olmokit.memory.neural import NeuralMemory, NeuralMemoryConfig

    class UnitNorm(nn.Module):  # olmokit's q/k normalisation: x / sqrt(Σx² + 1e-6)
        def forward(self, t):
            return t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6)

    torch.manual_seed(0)
    cfg = NeuralMemoryConfig(
        dim=32, heads=2, head_dim=8, hidden=16, depth=2, grad_clip=None, alpha_bias=-2.0
    )
    ours = NeuralMemory(cfg).double()
    ours_chunk = NeuralMemory(replace(cfg, granularity="chunk")).double()
    ours_chunk.load_state_dict(ours.state_dict())
    b, n_tok = 8, 40
    x = torch.randn(1, n_tok, cfg.dim, dtype=torch.float64)

    def titans_matched(chunk_size: int, batch_size: int | None):
        t = _titans(
            chunk_size,
            batch_size,
            *(cfg.dim, cfg.heads, cfg.head_dim, cfg.hidden),
            default_step_transform_max_lr=cfg.max_lr,  # θ = sigmoid(·) · max_lr
        ).double()
        with torch.no_grad():
            for norm in (t.store_norm, t.retrieve_norm):
                norm.weight.copy_(ours.norm_weight)
                norm.eps = 1e-6
            t.to_queries.weight.copy_(ours.to_q.weight)
            t.to_keys.weight.copy_(ours.to_k.weight)
            t.to_values.weight.copy_(ours.to_v.weight)
            for dst, src in (
                (t.to_adaptive_step[0], ours.to_theta),
                (t.to_momentum[0], ours.to_eta),
                (t.to_decay_factor[0], ours.to_alpha),
            ):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            for dst, src in zip(t.memory_model_parameters, ours.init_weights, strict=True):
                dst.copy_(src)
            t.combine_heads.weight.copy_(ours.to_out.weight)
        t.q_norm, t.k_norm, t.retrieve_gate = UnitNorm(), UnitNorm(), None
        return t

    with torch.no_grad():
        y = ours(x, chunk_size=b)[0]
        y_chunk = ours_chunk(x, chunk_size=b)[0]
        out = {}
        for name, cs, bs in (("tok", 1, b), ("tok_call", 1, None), ("mb", b, b), ("call", b, None)):
            out[name] = titans_matched(cs, bs)(x)[0]

    def diff(a, c):
        return float((a - c).abs().max())

    first = 2 * b - 1  # tokens that read W0 or the first chunk's weights only (chunk = b)
    res = {
        "output_scale": diff(y, 0 * y),
        "olmokit_token_vs_titans_c1_mb_b": diff(y, out["tok"]),
        "olmokit_chunk_vs_titans_mb_b": diff(y_chunk, out["mb"]),
        "titans_c1_mb_b_vs_c1_mb_call_first_minibatch": diff(
            out["tok"][:, :b], out["tok_call"][:, :b]
        ),
        "titans_c1_mb_b_vs_c1_mb_call_after": diff(out["tok"][:, b:], out["tok_call"][:, b:]),
        "titans_mb_b_vs_mb_call_first_chunk_reads": diff(
            out["mb"][:, :first], out["call"][:, :first]
        ),
        "titans_mb_b_vs_mb_call_after": diff(out["mb"][:, first:], out["call"][:, first:]),
        "olmokit_token_vs_titans_mb_b": diff(y, out["mb"]),
    }
    claims = (
        res["olmokit_token_vs_titans_c1_mb_b"] <= 1e-12,
        res["olmokit_chunk_vs_titans_mb_b"] <= 1e-12,
        res["titans_c1_mb_b_vs_c1_mb_call_first_minibatch"] <= 1e-12,
        res["titans_c1_mb_b_vs_c1_mb_call_after"] >= 1e-6,
        res["titans_mb_b_vs_mb_call_first_chunk_reads"] <= 1e-12,
        res["titans_mb_b_vs_mb_call_after"] >= 1e-6,
        res["olmokit_token_vs_titans_mb_b"] >= 1e-6,
    )
    if not all(claims):
        raise SystemExit(f"titans semantics check failed: {res}")
    return {k: float(f"{v:.3g}") for k, v in res.items()}


def child(impl: str, tokens: int, chunk: int, repeats: int, smoke: bool, cpu_cap: int) -> dict:
    """Runs in a fresh process: peak RSS growth of one fwd+bwd, then the best CPU time of ``repeats``.

    ``cpu_cap`` > 0 sets ``RLIMIT_CPU`` (the kernel ends the process with SIGXCPU past it).
    """
    if cpu_cap > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_cap, cpu_cap + 30))
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


def _run_child(
    impl: str, tokens: int, chunk: int, repeats: int, smoke: bool, cpu_cap: int = 0
) -> dict | None:
    """One setting in a fresh process; ``None`` if it ran past ``cpu_cap`` CPU seconds."""
    cmd = [sys.executable, __file__, "--child", impl, str(tokens), str(chunk)]
    cmd += ["--repeats", str(repeats), "--cpu-cap", str(cpu_cap)]
    cmd += ["--smoke"] if smoke else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    label = f"{impl:11s} T={tokens:5d} chunk={chunk:3d}"
    if cpu_cap > 0 and proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        print(f"  {label}: skipped, over the {cpu_cap} s CPU cap", file=sys.stderr, flush=True)
        return None
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {label} failed with exit code {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {label}: {out['tokens_per_s']:8.0f} tok/s, peak RSS +{out['rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return out


def _run_check() -> dict:
    """:func:`check_semantics` in a fresh one-thread process (keeps torch out of the parent)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--check"], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"semantics check failed with exit code {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"semantics check: {out}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "T", "CHUNK"), help=argparse.SUPPRESS)
    ap.add_argument("--cpu-cap", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after the first (best kept)")
    ap.add_argument(
        "--loop-t", type=int, default=512, help="T of the per-token loop (extrapolated)"
    )
    ap.add_argument(
        "--tok-t",
        type=int,
        nargs="*",
        default=[1024],
        help="T values at which titans chunk_size=1, batch_size=b (olmokit's semantics) is timed",
    )
    ap.add_argument(
        "--tok-cap",
        type=int,
        default=600,
        help="CPU-seconds cap of one titans chunk_size=1 child (warm-up and all runs); skipped past it",
    )
    ap.add_argument("--check", action="store_true", help="run only the fp64 semantics check")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and T: check the harness only")
    args = ap.parse_args()
    if args.child:
        impl, tokens, chunk = args.child[0], int(args.child[1]), int(args.child[2])
        out = child(impl, tokens, chunk, args.repeats, args.smoke, args.cpu_cap)
        print(json.dumps(out))
        return
    if args.check:
        print(json.dumps(check_semantics()))
        return

    t_values = (64, 128) if args.smoke else T_VALUES
    tok_t = (64,) if args.smoke else tuple(args.tok_t)
    loop_t = 32 if args.smoke else args.loop_t
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    semantics = _run_check()
    res: dict[tuple[str, int, int], dict | None] = {}
    for chunk in CHUNKS:
        for loop in ("loop", "loop-chunk"):
            res[(loop, loop_t, chunk)] = _run_child(loop, loop_t, chunk, 0, args.smoke)
        for tokens in t_values:
            for impl in ("olmokit", "olmokit-chunk", "titans-mb", "titans-call"):
                res[(impl, tokens, chunk)] = _run_child(
                    impl, tokens, chunk, args.repeats, args.smoke
                )
            if tokens in tok_t:
                res[("titans-tok", tokens, chunk)] = _run_child(
                    "titans-tok", tokens, chunk, args.repeats, args.smoke, args.tok_cap
                )
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    result, lines = summarise(res, t_values, tok_t, loop_t, args.tok_cap, semantics)
    print("\n".join(lines))
    print("RESULT " + json.dumps(result))


def summarise(res, t_values, tok_t, loop_t, tok_cap, semantics) -> tuple[dict, list[str]]:
    """The markdown table and the RESULT object from the children's measurements."""
    fp64 = (
        f"fp64 max |Δ| token vs c=1 mb=b {semantics['olmokit_token_vs_titans_c1_mb_b']:.1e}, "
        f"chunk vs mb=b {semantics['olmokit_chunk_vs_titans_mb_b']:.1e}"
    )
    lines = [
        "| T | chunk | olmokit token tok/s | olmokit chunk tok/s | titans mb=b tok/s "
        "| titans c=1 mb=b tok/s | titans mb=call tok/s "
        "| **matched: chunk ÷ mb=b** | **matched: token ÷ c=1 mb=b** | token ÷ mb=b (cross) "
        "| token / chunk ÷ mb=call | token / chunk ÷ own loop "
        "| RSS MB token / chunk / mb=b / c=1 mb=b / mb=call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    matched: dict[str, float] = {}
    cross, call_tok, call_chk = [], [], []
    vs_loop = {"token": [], "chunk": []}
    spread = {"token": [], "chunk": []}
    rss_by_t: dict = {}
    rss_per_token: dict = {}
    skipped = []
    for chunk in CHUNKS:
        loops = {
            "token": res[("loop", loop_t, chunk)]["tokens_per_s"],
            "chunk": res[("loop-chunk", loop_t, chunk)]["tokens_per_s"],
        }
        tps = {"token": [], "chunk": []}
        for tokens in t_values:
            ours = {
                "token": res[("olmokit", tokens, chunk)],
                "chunk": res[("olmokit-chunk", tokens, chunk)],
            }
            mb, call = res[("titans-mb", tokens, chunk)], res[("titans-call", tokens, chunk)]
            tok = res.get(("titans-tok", tokens, chunk))
            t_tok, t_chk = ours["token"]["tokens_per_s"], ours["chunk"]["tokens_per_s"]
            r_chunk = t_chk / mb["tokens_per_s"]
            matched[f"chunk/mb=b T={tokens} b={chunk}"] = round(r_chunk, 3)
            r_cross = t_tok / mb["tokens_per_s"]
            cross.append(r_cross)
            call_tok.append(t_tok / call["tokens_per_s"])
            call_chk.append(t_chk / call["tokens_per_s"])
            r_loop = {g: ours[g]["tokens_per_s"] / loops[g] for g in ("token", "chunk")}
            for g in ("token", "chunk"):
                vs_loop[g].append(r_loop[g])
                tps[g].append(ours[g]["tokens_per_s"])
                rss_by_t.setdefault(str(tokens), {}).setdefault(str(chunk), {})[g] = round(
                    ours[g]["rss_mb"], 1
                )
                rss_per_token.setdefault(str(tokens), {}).setdefault(str(chunk), {})[g] = round(
                    ours[g]["rss_mb"] * 1024 / tokens, 1
                )
            if tok is not None:
                r_tok = t_tok / tok["tokens_per_s"]
                matched[f"token/c=1 mb=b T={tokens} b={chunk}"] = round(r_tok, 3)
                tok_cells = f"{tok['tokens_per_s']:.0f}", f"**{r_tok:.2f}**", f"{tok['rss_mb']:.0f}"
            elif ("titans-tok", tokens, chunk) in res:
                skipped.append(f"T={tokens} chunk={chunk}")
                tok_cells = f"skipped (> {tok_cap} s CPU)", "—", "—"
            else:
                tok_cells = "—", "—", "—"
            star = "*" if tokens != loop_t else ""
            lines.append(
                f"| {tokens} | {chunk} | {t_tok:.0f} | {t_chk:.0f} | {mb['tokens_per_s']:.0f} "
                f"| {tok_cells[0]} | {call['tokens_per_s']:.0f} | **{r_chunk:.2f}** | {tok_cells[1]} "
                f"| {r_cross:.2f} | {call_tok[-1]:.2f} / {call_chk[-1]:.2f} "
                f"| {r_loop['token']:.1f}{star} / {r_loop['chunk']:.1f}{star} "
                f"| {ours['token']['rss_mb']:.0f} / {ours['chunk']['rss_mb']:.0f} "
                f"/ {mb['rss_mb']:.0f} / {tok_cells[2]} / {call['rss_mb']:.0f} |"
            )
        for g in ("token", "chunk"):
            spread[g].append(max(tps[g]) / min(tps[g]))
    lines.append("")
    lines.append(
        "Bold: matched settings (same chunk and same function; "
        + fp64
        + "). \\* loops measured at T="
        + f"{loop_t} ("
        + ", ".join(
            f"{g} {res[(name, loop_t, c)]['tokens_per_s']:.0f} tok/s, "
            f"{res[(name, loop_t, c)]['rss_mb']:.0f} MB at chunk {c}"
            for c in CHUNKS
            for g, name in (("token", "loop"), ("chunk", "loop-chunk"))
        )
        + "), tokens/s extrapolated per token. titans mb=b: chunk_size=b, batch_size=b (= olmokit "
        "chunk); c=1 mb=b: chunk_size=1, batch_size=b (= olmokit token); mb=call: chunk_size=b, "
        "batch_size=None (every gradient at the call's initial weights)."
    )
    result = {
        "min_ratio_vs_titans": round(min(matched.values()), 3),
        "matched": matched,
        "min_ratio_vs_titans_per_token_vs_per_chunk": round(min(cross), 3),
        "min_ratio_vs_titans_whole_call_minibatch": round(min(call_tok), 3),
        "min_ratio_vs_titans_whole_call_minibatch_chunk": round(min(call_chk), 3),
        "min_ratio_vs_loop": round(min(min(v) for v in vs_loop.values()), 2),
        "min_ratio_vs_loop_by_granularity": {g: round(min(v), 2) for g, v in vs_loop.items()},
        "tokens_per_s_max_over_min": round(max(max(v) for v in spread.values()), 3),
        "tokens_per_s_max_over_min_by_granularity": {
            g: round(max(v), 3) for g, v in spread.items()
        },
        "rss_by_T": rss_by_t,
        "rss_per_token_kb": rss_per_token,
        "loop_T": loop_t,
        "titans_tok_T": list(tok_t),
        "titans_tok_skipped": skipped,
        "semantics_check": semantics,
        "timing": "CPU time, 1 thread, best of runs",
    }
    return result, lines


if __name__ == "__main__":
    main()
