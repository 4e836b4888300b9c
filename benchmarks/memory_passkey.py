"""Does the memory recall beyond the attention window? Passkey, multi-query associative recall (MQAR)
and real text, each under four conditions.

Run: ``python benchmarks/memory_passkey.py [--out runs/memory-passkey] [--smoke]``.

* **Base** (:func:`olmokit.memory.demo.make_demo_base`): a tiny OLMo-3 whose every layer is
  ``sliding_attention`` with window ``W`` (default 32), trained with HF ``Trainer`` on in-window
  passkey and MQAR over the synthetic :class:`~olmokit.data.longctx.TaskVocab` (32 values: chance
  is 1/32). Reused from ``OUT/base`` when built with the same settings. The passkey uses a 2-layer
  base (600 steps); MQAR a 3-layer one (2000 steps, ``OUT/base-mqar``), since the 2-layer base
  barely solves MQAR even inside its window, built with embeddings at std 1.0 and post-norms at
  0.1 (``--mqar-base-embedding-std``, ``--mqar-base-post-norm-init``) so that a token's identity
  survives OLMo-3's unit-scale sublayer outputs and a memory can tell one key from another.
* **Memory** (:mod:`olmokit.memory`): MAG (written and read from the frozen base's contextual
  hidden states; the read RMS-normalised before its gate, ``retrieval_norm``), segments of one
  window, each also attending to the window before it through the base's carried KV cache
  (``--carry-context``, default ``auto``: Titans' sliding-window MAG; ``0``: isolated segments, as
  before, when needles on a segment's last tokens were lost); only the memory trains, on the task. Passkey: layer 1 of 2, 4 heads, the evidence 1-8
  windows away, ``--steps`` (1200). MQAR: layer 1 of 3, 2 heads (head width 32), MLP hidden 128,
  started as a key→value store (``memory.qk_init: tied``, ``memory.key_conv_init:
  previous_token``), lr 1e-2, 4-8 pairs per example 8-9 windows away, ``--mqar-steps`` (600).
  docs/memory.md explains each of these (with the plain base and init 8 pairs stayed at ~0.1).
* **Conditions**: ``base`` — the windowed base alone (the memory disabled; segments of ``W``
  with the same carried context, so with carry it is the plain sliding-window model, whose stacked
  layers reach back up to ``layers x (W - 1)`` tokens);
  ``memory`` — the memory carried across segments; ``reset`` — the memory reset at every segment
  (it can only see the current window, like the base); ``shuffled`` — at the start of the segment
  holding the first question, each example is handed another example's accumulated memory once (a
  derangement of the batch: ``mm(ids, shuffle_state=True, shuffle_at=...)``). A memory that recalls the needle beats the
  three controls, which stay at chance.
* **Passkey**: the needle 32-33 windows before the question (a one-window range, so the needle
  falls at every offset inside a segment); accuracy vs distance over 1-64 windows for the curve.
* **MQAR**: 8 key→value pairs written over two windows, each queried 8-9 windows later; accuracy
  per query; the capacity curve over 1-32 pairs.
* **Real text**: the *shipped* ``olmo2-stdlib`` as frozen base with segments of 32 tokens and a
  memory (MAG, layer 2) trained on blocks of the zoo corpus's training split; mean NLL of tokens
  beyond the first window of held-out code files (8 windows long, never seen by the zoo model),
  base vs memory, with the standard error of the paired per-block difference.

Plots: ``OUT/recall_vs_distance.png``, ``OUT/recall_vs_pairs.png``; each stage's numbers in
``OUT/<stage>.json``, all of them in ``OUT/results.json``. Stages may run in parallel processes
(``--only passkey``, ``--only mqar``, ``--only text`` once the base exists), then ``--summarize``
prints the combined line. The last line is ``RESULT {json}``. ``--smoke`` runs every stage with a few
steps and examples (seconds, numbers meaningless) to check the harness.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from olmokit.data.longctx import long_documents
from olmokit.eval.longctx import mean_stderr, paired_stderr, position_loss, span_accuracy
from olmokit.files import atomic_write_json
from olmokit.loading import load_model, load_tokenizer
from olmokit.memory import MemorySettings, attach_memory
from olmokit.memory.demo import (
    DemoBaseSettings,
    DemoMemorySettings,
    attach_demo_memory,
    load_demo_base,
    make_demo_base,
    mqar_set,
    passkey_set,
    train_demo_memory,
)
from olmokit.plots import plot_recall_vs_distance, plot_recall_vs_pairs

TEXT_BASE = "olmo2-stdlib"
#: seed of every test set (one test set whatever the memory's --seed; training data follows --seed)
EVAL_SEED = 0


def log(*args: Any) -> None:
    print(*args, flush=True)


def conditions(mm, items, batch_size: int) -> dict[str, float]:
    """Accuracy of the four conditions on one list of examples (batches of >= 2 for shuffling)."""

    def acc(forward) -> float:
        return span_accuracy(forward, items, batch_size, mm).accuracy

    first_query = min(
        int((it["labels"] != -100).nonzero().min()) - 2 for it in items
    )  # at or before the QUERY token of the first answer
    cut = first_query // mm.segment_len * mm.segment_len  # the segment holding it starts here
    out = {
        "memory": acc(lambda ids: mm(ids).logits),
        "reset": acc(lambda ids: mm(ids, reset_every_segment=True).logits),
        "shuffled": acc(lambda ids: mm(ids, shuffle_state=True, shuffle_at=cut).logits),
    }
    with mm.disabled():
        out["base"] = acc(lambda ids: mm(ids).logits)
    return out


def rows(ds) -> list[dict[str, torch.Tensor]]:
    return [ds[i] for i in range(len(ds))]


def passkey_stage(base, mem: DemoMemorySettings, args, out: Path) -> dict[str, Any]:
    w, vocab, seed = base.window, base.vocab, mem.seed
    mm = attach_demo_memory(load_demo_base(base), w, mem)
    lo, hi = args.pk_train_windows
    n = mem.steps * mem.batch_size
    train = passkey_set(vocab, w, (lo * w, hi * w), n, seed, "pk-train", args.pk_boundary)
    t = time.time()
    summary = train_demo_memory(mm, train, mem, out / "work-passkey")
    log(f"passkey: memory trained in {time.time() - t:.0f}s, loss {summary['train_loss']:.3f}")
    mm.save_pretrained(out / "passkey-memory")  # the adapter, to re-evaluate without retraining
    mm.eval()
    d = args.distance
    test = rows(passkey_set(vocab, w, (d * w, (d + 1) * w), args.n_eval, EVAL_SEED, "pk-test"))
    result = {"distance_windows": d, **conditions(mm, test, args.batch_size)}
    curve: dict[str, list[float]] = {"memory": [], "base": []}
    for k in args.curve_distances:
        items = rows(
            passkey_set(vocab, w, (k * w, (k + 1) * w), args.n_curve, EVAL_SEED, f"pk-{k}")
        )
        curve["memory"].append(span_accuracy(lambda ids: mm(ids).logits, items, 32, mm).accuracy)
        with mm.disabled():
            curve["base"].append(span_accuracy(lambda ids: mm(ids).logits, items, 32, mm).accuracy)
    result["curve"] = {"windows": list(args.curve_distances), **curve}
    result["train_loss"] = summary["train_loss"]
    result["train_windows"] = list(args.pk_train_windows)
    result["train_boundary_fraction"] = args.pk_boundary
    result["carry_context"] = mm.carry_context
    result["memory_settings"] = asdict(mem)
    plot_recall_vs_distance(
        args.curve_distances, curve, out / "recall_vs_distance.png", chance=vocab.chance()
    )
    log(f"passkey at {d}-{d + 1} windows: {json.dumps(result)}")
    return result


def mqar_stage(base, mem: DemoMemorySettings, args, out: Path) -> dict[str, Any]:
    w, vocab, seed = base.window, base.vocab, mem.seed
    mm = attach_demo_memory(load_demo_base(base), w, mem)
    dist = (8 * w, 9 * w)
    lo, hi = args.mqar_train_pairs
    train = mqar_set(vocab, w, (lo, hi), dist, mem.steps * mem.batch_size, seed, "mq-train")
    t = time.time()
    summary = train_demo_memory(mm, train, mem, out / "work-mqar")
    log(f"mqar: memory trained in {time.time() - t:.0f}s, loss {summary['train_loss']:.3f}")
    mm.eval()
    test = rows(mqar_set(vocab, w, args.pairs, dist, args.n_eval, EVAL_SEED, "mq-test"))
    result = {"pairs": args.pairs, **conditions(mm, test, args.batch_size)}
    curve: dict[str, list[float]] = {"memory": [], "base": []}
    for n in args.curve_pairs:
        items = rows(mqar_set(vocab, w, n, dist, args.n_curve, EVAL_SEED, f"mq-{n}"))
        curve["memory"].append(span_accuracy(lambda ids: mm(ids).logits, items, 32, mm).accuracy)
        with mm.disabled():
            curve["base"].append(span_accuracy(lambda ids: mm(ids).logits, items, 32, mm).accuracy)
    result["curve"] = {"pairs": list(args.curve_pairs), **curve}
    result["train_loss"] = summary["train_loss"]
    result["train_pairs"] = list(args.mqar_train_pairs)
    result["carry_context"] = mm.carry_context
    result["memory_settings"] = asdict(mem)
    plot_recall_vs_pairs(args.curve_pairs, curve, out / "recall_vs_pairs.png", vocab.chance())
    log(f"mqar, {args.pairs} pairs 8-9 windows later: {json.dumps(result)}")
    return result


def text_stage(mem: DemoMemorySettings, args, out: Path) -> dict[str, Any]:
    """The shipped zoo model as frozen base: loss beyond the first window, with and without memory."""
    w = args.text_window
    length = 8 * w
    tokenizer = load_tokenizer(TEXT_BASE)
    model = load_model(TEXT_BASE, dtype="float32").eval()
    settings = MemorySettings(
        memory_layers=[2],
        mode="mag",
        segment_len=w,
        heads=4,
        hidden=128,
        conv_kernel=mem.conv_kernel,
        chunk_train=w // 2,
        chunk_prefill=w // 2,
        carry_context=mem.carry_context,
        init_seed=mem.seed,
    )
    mm = attach_memory(model, settings)
    train_docs = long_documents(
        tokenizer,
        length,
        held_out=False,
        blocks_per_document=4,
        max_documents=args.text_train_docs,
        seed=mem.seed,
    )
    need = mem.steps * mem.batch_size
    train = [train_docs[i % len(train_docs)].features() for i in range(need)]
    t = time.time()
    summary = train_demo_memory(mm, train, mem, out / "work-text")
    log(f"text: memory trained in {time.time() - t:.0f}s on {len(train_docs)} blocks")
    mm.eval()
    test = long_documents(
        tokenizer, length, held_out=True, blocks_per_document=2, max_documents=args.text_docs
    )
    items = [d.features() for d in test]
    mem_loss = position_loss(lambda ids: mm(ids).logits, items, w, args.batch_size, mm)
    reset = position_loss(
        lambda ids: mm(ids, reset_every_segment=True).logits, items, w, args.batch_size, mm
    )
    with mm.disabled():
        base_loss = position_loss(lambda ids: mm(ids).logits, items, w, args.batch_size, mm)
    result = {
        "base_model": TEXT_BASE,
        "window": w,
        "blocks": len(items),
        "block_tokens": length,
        "loss_base": base_loss.mean,
        "loss_memory": mem_loss.mean,
        "loss_reset": reset.mean,
        "stderr_paired": paired_stderr(base_loss.per_example, mem_loss.per_example),
        "stderr_base": mean_stderr(base_loss.per_example)[1],
        "carry_context": mm.carry_context,
        "train_loss": summary["train_loss"],
        "train_blocks": len(train_docs),
        "memory_settings": settings.model_dump(),
        "training": {k: asdict(mem)[k] for k in ("steps", "batch_size", "learning_rate", "seed")},
    }
    log(f"text: {json.dumps(result)}")
    return result


STAGES = {"passkey": passkey_stage, "mqar": mqar_stage, "text": text_stage}


def _carry(value: str) -> int | str:
    return value if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/memory-passkey")
    p.add_argument("--smoke", action="store_true", help="seconds-long harness check")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--distance", type=int, default=32, help="passkey distance in windows")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=1200, help="passkey memory training steps")
    p.add_argument("--mqar-steps", type=int, default=600, help="MQAR memory training steps")
    p.add_argument("--mqar-lr", type=float, default=1e-2, help="MQAR memory learning rate")
    p.add_argument(
        "--mqar-qk-init",
        choices=["independent", "tied"],
        default="tied",
        help="memory.qk_init of the MQAR memory (tied: queries start as the key projection)",
    )
    p.add_argument(
        "--mqar-key-conv-init",
        choices=["identity", "previous_token"],
        default="previous_token",
        help="memory.key_conv_init of the MQAR memory (previous_token: the key of t is token t-1)",
    )
    p.add_argument(
        "--mqar-base-embedding-std",
        type=float,
        default=1.0,
        help="embedding_init_std of the MQAR base (keeps token identity in the middle layers)",
    )
    p.add_argument(
        "--mqar-base-post-norm-init",
        type=float,
        default=0.1,
        help="post_norm_init of the MQAR base",
    )
    p.add_argument("--mqar-batch-size", type=int, default=16)
    p.add_argument(
        "--mqar-train-pairs", type=int, nargs=2, default=[4, 8], help="pairs per training example"
    )
    p.add_argument(
        "--mqar-base-layers",
        type=int,
        default=3,
        help="layers of the MQAR task base (built in OUT/base-mqar when it differs from --base-layers)",
    )
    p.add_argument("--mqar-base-steps", type=int, default=2000)
    p.add_argument("--mqar-mem-layer", type=int, default=1, help="decoder layer of the MQAR memory")
    p.add_argument("--mqar-mem-heads", type=int, default=2)
    p.add_argument("--mqar-mem-hidden", type=int, default=128)
    p.add_argument(
        "--pk-train-windows",
        type=int,
        nargs=2,
        default=[1, 8],
        help="passkey training distances, in windows (lo hi)",
    )
    p.add_argument(
        "--pk-boundary",
        type=float,
        default=0.0,
        help="fraction of passkey training needles on a segment's first/last token",
    )
    p.add_argument("--seed", type=int, default=DemoMemorySettings.seed, help="memory seed")
    p.add_argument(
        "--mem-layer",
        type=int,
        default=DemoMemorySettings.layer,
        help="decoder layer of the passkey memory",
    )
    p.add_argument("--mem-hidden", type=int, default=DemoMemorySettings.hidden)
    p.add_argument("--mem-heads", type=int, default=DemoMemorySettings.heads)
    p.add_argument("--lr", type=float, default=DemoMemorySettings.learning_rate)
    p.add_argument(
        "--conv-kernel",
        type=int,
        default=DemoMemorySettings.conv_kernel,
        help="q/k/v short convolution of the task memories (0 = off)",
    )
    p.add_argument(
        "--carry-context",
        type=_carry,
        default=DemoMemorySettings.carry_context,
        help="memory.carry_context of every stage: tokens before a segment its attention also "
        "sees (0 = isolated segments; 'auto' = the base's sliding window, the segment without one)",
    )
    p.add_argument("--text-steps", type=int, default=200)
    p.add_argument("--base-steps", type=int, default=DemoBaseSettings.steps)
    p.add_argument("--base-layers", type=int, default=DemoBaseSettings.num_layers)
    p.add_argument(
        "--base-max-pairs",
        type=int,
        default=DemoBaseSettings.max_pairs,
        help="in-window MQAR pairs the base is trained on (1..this)",
    )
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--n-curve", type=int, default=64)
    p.add_argument("--text-window", type=int, default=32)
    p.add_argument("--text-docs", type=int, default=64, help="held-out files scored")
    p.add_argument("--text-train-docs", type=int, default=256, help="training files read")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--only", choices=list(STAGES), nargs="+", help="run these stages only")
    p.add_argument(
        "--summarize", action="store_true", help="run nothing; summarise the stages in OUT"
    )
    args = p.parse_args(argv)
    args.curve_distances = [1, 2, 4, 8, 16, 32, 64]
    args.curve_pairs = [1, 2, 4, 8, 16, 32]
    mem = DemoMemorySettings(
        steps=args.steps,
        learning_rate=args.lr,
        conv_kernel=args.conv_kernel,
        seed=args.seed,
        layer=args.mem_layer,
        hidden=args.mem_hidden,
        heads=args.mem_heads,
        carry_context=args.carry_context,
    )
    base_settings = DemoBaseSettings(
        window=args.window,
        steps=args.base_steps,
        num_layers=args.base_layers,
        max_pairs=args.base_max_pairs,
    )
    if args.smoke:
        args.out = str(Path(args.out).with_name(Path(args.out).name + "-smoke"))
        args.distance, args.n_eval, args.n_curve, args.text_docs = 4, 8, 4, 2
        args.text_steps, args.text_train_docs = 2, 2
        args.curve_distances, args.curve_pairs = [1, 4], [1, 8]
        base_settings = replace(base_settings, window=16, steps=3, batch_size=4, max_pairs=2)
        args.mqar_base_steps, args.mqar_mem_layer = 3, 1
        mem = replace(mem, steps=2, batch_size=2)
        args.mqar_steps, args.mqar_batch_size = 2, 2
        args.text_window = 16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    base = make_demo_base(out / "base", base_settings, log=log)
    results: dict[str, Any] = {"base": base.info}
    mqar_base_settings = replace(
        base_settings,
        num_layers=args.mqar_base_layers,
        steps=args.mqar_base_steps,
        embedding_init_std=args.mqar_base_embedding_std,
        post_norm_init=args.mqar_base_post_norm_init,
    )
    mqar_base = base
    if mqar_base_settings != base_settings and (not args.only or "mqar" in args.only):
        # MQAR needs a deeper base than the passkey (the 2-layer base barely solves it in-window)
        mqar_base = make_demo_base(out / "base-mqar", mqar_base_settings, log=log)
        results["base_mqar"] = mqar_base.info
    stages = [] if args.summarize else (args.only or list(STAGES))
    for name in stages:
        if name == "text":
            stage_mem = replace(mem, steps=args.text_steps, batch_size=8)
            stage = text_stage(stage_mem, args, out)
        elif name == "mqar":
            steps = args.mqar_steps or mem.steps
            stage_mem = replace(
                mem,
                steps=steps,
                batch_size=args.mqar_batch_size,
                layer=args.mqar_mem_layer,
                heads=args.mqar_mem_heads,
                hidden=args.mqar_mem_hidden,
                learning_rate=args.mqar_lr,
                qk_init=args.mqar_qk_init,
                key_conv_init=args.mqar_key_conv_init,
            )
            stage = mqar_stage(mqar_base, stage_mem, args, out)
        else:
            stage = passkey_stage(base, mem, args, out)
        shutil.rmtree(out / f"work-{name}", ignore_errors=True)
        atomic_write_json(out / f"{name}.json", stage)
    # stages run by earlier (or parallel, --only) invocations into the same OUT count too
    for name in STAGES:
        if (out / f"{name}.json").is_file():
            results[name] = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    results["seconds"] = time.time() - started
    atomic_write_json(out / "results.json", results)
    pk, mq, tx = results.get("passkey", {}), results.get("mqar", {}), results.get("text", {})
    nan = None  # a stage not run: null in the JSON
    summary = {
        "window": base.window,
        "distance": args.distance * base.window,
        "chance": base.vocab.chance(),
        "base_acc": pk.get("base", nan),
        "memory_acc": pk.get("memory", nan),
        "reset_acc": pk.get("reset", nan),
        "shuffled_acc": pk.get("shuffled", nan),
        "mqar_pairs": args.pairs,
        "mqar_memory_acc": mq.get("memory", nan),
        "mqar_base_acc": mq.get("base", nan),
        "mqar_reset_acc": mq.get("reset", nan),
        "mqar_shuffled_acc": mq.get("shuffled", nan),
        "text_loss_base": tx.get("loss_base", nan),
        "text_loss_memory": tx.get("loss_memory", nan),
        "text_loss_stderr": tx.get("stderr_paired", nan),
        "seconds": round(results["seconds"], 1),
    }
    print("RESULT " + json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
