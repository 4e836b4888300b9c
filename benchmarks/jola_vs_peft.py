"""JoLA vs PEFT LoRA vs PEFT IA3 (vs the untouched base) on the shipped zoo model.

Same model (olmo2-stdlib), same data (the built-in ``stdlib_module`` task: 200 training examples,
its held-out split for testing), same number of optimizer steps and batch size for every method.

Reported per method:
* trainable parameters;
* step time (forward + loss + backward + optimizer step) as a ratio to IA3: medians over steps of the
  three models interleaved one step at a time in shuffled order, so load bursts on a shared machine
  hit every method alike;
* peak memory of training (CUDA: ``max_memory_allocated``; CPU: peak RSS growth of a fresh child
  process during training — includes allocator caching, so read it as a rough figure);
* held-out log-likelihood multiple-choice accuracy, mean ± std over 3 seeds.
Also: the vectorised JoLA edit vs the reference's per-head Python loop at 16+ heads.

Needs ``pip install peft`` (the ``[bench]`` extra). Run: ``python benchmarks/jola_vs_peft.py``
(about 9 minutes on 2 CPU cores). Prints a markdown table; the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from olmokit.data.collate import PaddingCollator
from olmokit.data.formatting import encode_records
from olmokit.data.tasks import get_task
from olmokit.eval import mc_accuracy
from olmokit.family import get_adapter
from olmokit.jola import JoLASettings, JoLATrainer, attach_jola, gate_penalty, num_jola_parameters
from olmokit.jola.layer import HardConcrete, JoLAEdit
from olmokit.loading import load_model, load_tokenizer

METHODS = ("jola", "lora", "ia3")
#: learning rates: JoLA's reference 5e-3; vector methods need ~lr 5e-3 too (PEFT's IA3 finding); LoRA 1e-3.
LR = {"jola": 5e-3, "lora": 1e-3, "ia3": 5e-3}


def build(method: str, seed: int, device: str):
    """The zoo model with one method attached; returns (model, trainable parameter count)."""
    torch.manual_seed(seed)
    model = load_model(None, device=device)
    if method == "jola":
        attach_jola(model, JoLASettings(init_seed=seed))
        return model, num_jola_parameters(model)
    from peft import IA3Config, LoraConfig, get_peft_model

    # PEFT has no OLMo-2 defaults; the module names come from the family adapter.
    spec = get_adapter(model).spec
    q, k, v = (spec.attn_projections[x] for x in "qkv")
    down = spec.mlp_projections["down"]
    if method == "lora":
        cfg = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[q, v], task_type="CAUSAL_LM"
        )
    elif method == "ia3":
        cfg = IA3Config(
            target_modules=[k, v, down], feedforward_modules=[down], task_type="CAUSAL_LM"
        )
    else:
        raise ValueError(method)
    model = get_peft_model(model, cfg)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def data(tok, n_train: int):
    task = get_task("stdlib_module", n_train=n_train, seed=0)
    return encode_records([e.record() for e in task.train[:n_train]], tok, 256), task.heldout


def train_and_eval(
    method: str, seed: int, steps: int, bs: int, tok, train, heldout, device: str
) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    model, n_params = build(method, seed, device)
    args = TrainingArguments(
        output_dir=f"/tmp/jola_bench/{method}-{seed}",
        max_steps=steps,
        per_device_train_batch_size=bs,
        learning_rate=LR[method],
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        seed=seed,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        remove_unused_columns=False,
        use_cpu=device == "cpu",
    )
    kw = dict(
        model=model, args=args, train_dataset=train, data_collator=PaddingCollator(tok.pad_token_id)
    )
    # JoLA's penalty settings go to its trainer explicitly (the defaults, as attached in build())
    trainer = (
        JoLATrainer(**kw, jola_settings=JoLASettings(init_seed=seed))
        if method == "jola"
        else Trainer(**kw)
    )
    trainer.train()
    model.eval()
    acc = mc_accuracy(model, tok, heldout, batch_size=32)["acc"]
    return {"params": n_params, "acc": acc}


def _batches(train, bs: int, n: int):
    collate = PaddingCollator(0)
    return [collate(train[(i * bs) % len(train) : (i * bs) % len(train) + bs]) for i in range(n)]


def time_steps(steps: int, bs: int, device: str) -> dict[str, float]:
    """Median seconds per optimizer step (forward, loss, backward, AdamW step) for each method.

    All three models live in this process and their steps are interleaved one by one in a shuffled
    order, so bursts of machine load (this runs on a shared 2-core box) hit every method alike;
    timing blocks of steps per method, or per child process, gave outliers of up to 2x.
    """
    import random

    setups = {}
    for m in METHODS:
        model, _ = build(m, 0, device)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR[m])
        setups[m] = (model, opt)
    tok = load_tokenizer()
    train, _ = data(tok, 200)
    batches = [{k: v.to(device) for k, v in b.items()} for b in _batches(train, bs, steps + 3)]
    settings = JoLASettings()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    rng = random.Random(0)
    for i, batch in enumerate(batches):
        order = list(METHODS)
        rng.shuffle(order)
        for m in order:
            model, opt = setups[m]
            _sync(device)
            t0 = time.perf_counter()
            loss = model(**batch).loss
            if m == "jola":
                loss = loss + gate_penalty(model, settings, 0.1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if i >= 3:  # warm-up
                times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def _child(flag: str, method: str, bs: int, device: str, steps: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            flag,
            method,
            "--bs",
            str(bs),
            "--device",
            device,
            "--timing-steps",
            str(steps),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def memory_child(method: str, steps: int, bs: int, device: str) -> float:
    """Peak training memory in MiB for one method (run in a fresh process on CPU)."""
    tok = load_tokenizer()
    train, _ = data(tok, 200)
    model, _ = build(method, 0, device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR[method])
    batches = [{k: v.to(device) for k, v in b.items()} for b in _batches(train, bs, steps)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM)
        before = _rss_kb("VmRSS:") * 1024
    for b in batches:
        loss = model(**b).loss
        if method == "jola":
            loss = loss + gate_penalty(model, JoLASettings(), 0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = (
        torch.cuda.max_memory_allocated() if device.startswith("cuda") else _rss_kb("VmHWM:") * 1024
    )
    return (peak - before) / 2**20


def peak_memory(method: str, steps: int, bs: int, device: str) -> float:
    if device.startswith("cuda"):
        return memory_child(method, steps, bs, device)
    return _child("--memory-child", method, bs, device, steps)


def loop_vs_vectorised(
    heads: int = 32,
    head_dim: int = 64,
    tokens: int = 8 * 64,
    reps: int = 10,
    rounds: int = 9,
    device: str = "cpu",
) -> dict[str, float]:
    """Forward+backward of the edit alone: reference per-head loop vs the single addcmul.

    The two are timed in alternating rounds of ``reps`` calls and compared by their median round, so
    a burst of load on a shared machine hits both alike (one long run of each gave 6x-21x for the
    same code).
    """
    edit = JoLAEdit(heads, head_dim, HardConcrete()).to(device)
    edit.reset_parameters(1e-3, "xavier")
    edit.train()
    z = torch.randn(tokens, heads * head_dim, device=device, requires_grad=True)

    def run(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(z).sum().backward()
        _sync(device)
        return (time.perf_counter() - t0) / reps

    for fn in (edit.forward_loop, edit.forward):  # warm-up
        run(fn)
    loops, vecs = [], []
    for _ in range(rounds):
        loops.append(run(edit.forward_loop))
        vecs.append(run(edit.forward))
    loop_t, vec_t = statistics.median(loops), statistics.median(vecs)
    return {
        "heads": heads,
        "head_dim": head_dim,
        "tokens": tokens,
        "loop_ms": loop_t * 1e3,
        "vectorised_ms": vec_t * 1e3,
        "speedup": loop_t / vec_t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80, help="optimizer steps per training run")
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--timing-steps", type=int, default=40, help="interleaved timed steps per method"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        print(memory_child(a.memory_child, 10, a.bs, a.device))
        return

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok = load_tokenizer()
    train, heldout = data(tok, 200)
    base_model = load_model(None, device=a.device)
    base_acc = mc_accuracy(base_model, tok, heldout, batch_size=32)["acc"]
    del base_model

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in range(a.seeds):
        for m in METHODS:
            r = train_and_eval(m, seed, a.steps, a.bs, tok, train, heldout, a.device)
            runs[m].append(r)
            print(f"# seed {seed} {m}: acc {r['acc']:.3f}", file=sys.stderr, flush=True)
    step = time_steps(a.timing_steps, a.bs, a.device)
    mem = {m: peak_memory(m, 10, a.bs, a.device) for m in METHODS}
    loops = [
        loop_vs_vectorised(16, 64, device=a.device),
        loop_vs_vectorised(32, 128, device=a.device),
    ]

    def acc(m: str) -> tuple[float, float]:
        xs = [r["acc"] for r in runs[m]]
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    print(
        f"zoo model olmo2-stdlib, task stdlib_module: {len(train)} train / {len(heldout)} held-out, "
        f"{a.steps} steps x batch {a.bs}, {a.seeds} seeds, device {a.device}, torch {torch.__version__}, "
        f"{platform.machine()}\n"
    )
    print(
        "| method | trainable params | step time (ms) | ratio vs IA3 | peak train mem (MiB) | held-out acc (mean ± std) |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| base | 0 | - | - | - | {base_acc:.3f} |")
    for m in METHODS:
        mu, sd = acc(m)
        print(
            f"| {m} | {runs[m][0]['params']:,} | {step[m] * 1e3:.1f} | {step[m] / step['ia3']:.2f} | "
            f"{mem[m]:.1f} | {mu:.3f} ± {sd:.3f} |"
        )
    print(
        "\n| edit (forward+backward) | heads x head_dim | tokens | per-head loop (ms) | vectorised (ms) | speedup |"
    )
    print("|---|---|---|---|---|---|")
    for lv in loops:
        print(
            f"| JoLA edit | {lv['heads']} x {lv['head_dim']} | {lv['tokens']} | {lv['loop_ms']:.2f} | "
            f"{lv['vectorised_ms']:.3f} | {lv['speedup']:.1f}x |"
        )
    result = {
        "jola_params": runs["jola"][0]["params"],
        "lora_params": runs["lora"][0]["params"],
        "ia3_params": runs["ia3"][0]["params"],
        "step_time_ratio_vs_ia3": round(step["jola"] / step["ia3"], 4),
        "vectorised_speedup_vs_loop": round(min(lv["speedup"] for lv in loops), 2),
        "base_acc": round(base_acc, 4),
        "jola_acc": round(acc("jola")[0], 4),
        "jola_acc_std": round(acc("jola")[1], 4),
        "lora_acc": round(acc("lora")[0], 4),
        "lora_acc_std": round(acc("lora")[1], 4),
        "ia3_acc": round(acc("ia3")[0], 4),
        "ia3_acc_std": round(acc("ia3")[1], 4),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
