"""JoLA quality on the built-in tasks: base, JoLA, dense/ungated JoLA, LoFiT, PEFT LoRA and IA3.

One harness, so every method sees the same data (``train`` examples of a task's training split),
the same optimizer-step budget and batch size, the same validation split (carved from the task's
*training* split, used for early stopping / best-step restore and nothing else) and the same scorers
(:mod:`olmokit.eval`: log-likelihood multiple-choice accuracy, or greedy exact match of the first
line for generation tasks) on the task's held-out split, which the zoo model never saw.

Methods
* ``base``: the untouched zoo model.
* ``jola``: the defaults of :class:`olmokit.jola.JoLASettings` (gated, penalised).
* ``dense``: JoLA with ``gate_lambda`` 0 (gates free, no sparsity pressure).
* ``ungated``: JoLA with every gate fixed open (= IA3 on ``o_proj``'s input plus an ``o_proj`` bias).
* ``lofit``: LoFiT's two stages on the same budget: half the steps train A on every head (ungated,
  L1 5e-4 as in LoFiT), the top-k heads by ‖A‖ are kept (k = 25% of heads), then half the steps train
  A and v on those heads only (the others stay identity).
* ``refit``: JoLA's gates localize (the defaults, half the steps), then every open gate is fixed
  at 1 and every closed one at 0 and A and v of the open heads train the other half without gate
  noise (a diagnostic of what the stochastic gates cost; not a method of the library).
* ``lora`` (r 8 on q, v; lr 1e-3) and ``ia3`` (k, v, down_proj; lr 5e-3) from PEFT; LoRA grid
  points ``lora:r=1/targets=o`` (``+``-joined targets among q, k, v, o, gate, up, down; ``lr=``)
  give a LoRA with JoLA's parameter budget.

Every trained method stops early on the validation loss (patience 3, evaluated every ``eval_every``
steps) and restores its best evaluation. Run: ``nice python benchmarks/jola_quality.py`` (3 seeds, 4
tasks, 200 train / 300 validation examples, every held-out example; about 75 minutes in one process
on one CPU thread, or split ``--tasks`` over two processes). Prints the markdown table; ``--plot`` writes the
accuracy–sparsity figure; the last line is ``RESULT {json}``. ``--model DIR`` runs the same protocol
on another OLMo model (e.g. a larger one from ``olmokit zoo build``, tokenizer read from DIR); every
``--json`` file records the model it was run on and ``--report-from`` refuses to mix models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from olmokit.data.tasks import get_task
from olmokit.eval import choice_logprobs, exact_match, mc_accuracy
from olmokit.family import get_adapter
from olmokit.files import atomic_write_text
from olmokit.jola import (
    JoLASettings,
    JoLATrainer,
    attach_jola,
    jola_edits,
    num_jola_parameters,
    training_arguments,
)
from olmokit.jola.config import TrainingSection
from olmokit.jola.data import encode_all
from olmokit.jola.sparsity import CLOSED_LOG_ALPHA, open_heads
from olmokit.loading import load_model, load_tokenizer

METHODS = ("base", "jola", "dense", "ungated", "lofit", "lora", "ia3")
#: methods run only when named (``--methods refit``): diagnostics, not baselines of the targets
DIAGNOSTICS = ("refit",)
TRAINED = METHODS[1:]
#: the methods every seed runs (the targets compare JoLA with LoRA and IA3)
CORE = ("jola", "lora", "ia3")
LR = {"lora": 1e-3, "ia3": 5e-3}
TASKS = ("stdlib_module", "stdlib_kind", "stdlib_defname", "stdlib_module_say")
#: version of the tasks' held-out splits a ``--json`` file was run on. 2: each split has its own
#: generator and stdlib_module's held-out distractors come from the held-out answers (files without
#: the key are version 1), so ``--report-from`` never puts figures of two held-out draws in one table
TASK_SPLITS = 2
GENERATIVE = ("stdlib_defname", "stdlib_module_say")


@dataclass
class TaskData:
    name: str
    generative: bool
    train: list  # encoded examples
    valid: list  # encoded examples (validation loss)
    valid_ex: list  # MultipleChoiceExample (validation score)
    test: list  # MultipleChoiceExample (held-out score)


def task_data(
    name: str,
    tok: Any,
    n_train: int,
    n_valid: int,
    loss_on: str = "answer",
    test_limit: int | None = None,
    heldout_distractors: str = "answers",
) -> TaskData:
    kw = {"heldout_distractors": heldout_distractors} if name == "stdlib_module" else {}
    task = get_task(name, n_train=n_train + n_valid, seed=0, **kw)
    train_ex, valid_ex = task.train[:n_train], task.train[n_train : n_train + n_valid]
    gen = len(task.heldout[0].choices) == 1
    return TaskData(
        name,
        gen,
        encode_all([e.record() for e in train_ex], tok, 256, loss_on),
        encode_all([e.record() for e in valid_ex], tok, 256, loss_on),
        list(valid_ex),
        list(task.heldout[:test_limit]),
    )


def answer_nll(model: Any, tok: Any, examples: list) -> float:
    """Mean negative log-likelihood (nats, summed over the answer's tokens) of the reference answer:
    a continuous view of a generation task, where exact match can sit at 0 for every method."""
    lp = choice_logprobs(model, tok, examples, batch_size=32, loss_on="answer")
    return -sum(x[ex.answer] for x, ex in zip(lp, examples)) / max(1, len(examples))


def score(model: Any, tok: Any, examples: list, generative: bool, loss_on: str = "answer") -> float:
    """Exact match of the first line, or multiple-choice accuracy with choices scored on the tokens
    every method was trained on (``loss_on``; "turn" adds the untrained end-of-turn marker)."""
    model.eval()
    if generative:
        return exact_match(model, tok, examples, batch_size=32, first_line=True)["em"]
    return mc_accuracy(model, tok, examples, batch_size=32, loss_on=loss_on)["acc"]


class _HeadMask(TrainerCallback):
    """LoFiT stage 2: after every optimizer step, heads outside the selection go back to identity."""

    def __init__(self, model: Any, keep: dict[int, torch.Tensor]):
        self.model, self.keep = model, keep

    def on_step_end(self, args, state, control, **kw):
        with torch.no_grad():
            for i, e in jola_edits(self.model).items():
                m = self.keep[i].to(e.attn_A.device)[:, None]
                e.attn_A.mul_(m)
                e.attn_v.mul_(m)


def _args(out: str, seed: int, steps: int, bs: int, lr: float, eval_every: int) -> Any:
    section = TrainingSection(
        max_steps=steps,
        per_device_train_batch_size=bs,
        per_device_eval_batch_size=32,
        learning_rate=lr,
        warmup_steps=max(1, steps // 10),
        lr_scheduler_type="cosine",
        seed=seed,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_steps=None,
        logging_steps=10_000,
        disable_tqdm=True,
    )
    return training_arguments(section, out, use_cpu=not torch.cuda.is_available())


def _jola_trainer(model, args, data, tok, settings, patience, **kw) -> JoLATrainer:
    return JoLATrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.valid,
        tokenizer=tok,
        jola_settings=settings,
        early_stopping_patience=patience,
        **kw,
    )


def _freeze_gates_open(model: Any) -> None:
    with torch.no_grad():
        for e in jola_edits(model).values():
            for p in (e.log_g1, e.log_g2):
                # eval gate exactly 1; a sampled gate falls below 1 only for noise u < ~1e-4
                # (log-alpha 10); kept so the documented ungated figures stay reproducible
                p.fill_(10.0)
                p.requires_grad_(False)


def _best_of(tr: JoLATrainer, steps_before: int = 0) -> dict[str, Any]:
    """A JoLA run's restored step, its eval loss, and the optimizer steps run (``steps_before``: a
    first stage's steps, for two-stage methods)."""
    best = tr.best or {}
    return {
        "best_step": best.get("step"),
        "valid_loss": best.get("eval_loss"),
        "steps_run": steps_before + tr.state.global_step,
    }


def _fix_gates(model: Any) -> None:
    """``refit``'s switch: every gate open at evaluation (expected gate > 0) becomes exactly 1,
    every other exactly 0 (log-alpha ±20, prune_jola's closed value: with the noise clipped to
    (1e-6, 1 - 1e-6) every HardConcrete sample saturates), and the log-alphas stop training, so
    stage 2 fits A and v of the localized heads without gate noise."""
    with torch.no_grad():
        for e in jola_edits(model).values():
            for p, g in zip((e.log_g1, e.log_g2), e.gates(training=False), strict=True):
                p.copy_(torch.where(g > 0, -CLOSED_LOG_ALPHA, CLOSED_LOG_ALPHA))
                p.requires_grad_(False)


def train_method(
    method: str,
    data: TaskData,
    tok: Any,
    seed: int,
    steps: int,
    bs: int = 8,
    eval_every: int = 20,
    patience: int | None = 3,
    settings: JoLASettings | None = None,
    lr: float = 5e-3,
    lofit_k: int | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Train one method; return its held-out and validation scores, parameters and open heads.

    ``model_name``: a zoo name or model directory (default: the shipped zoo model), so the same
    protocol runs on a larger model built with ``olmokit zoo build``."""
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_name, device=device)
    tag = _model_tag(model_name)
    out = f"/tmp/jola_quality/{tag}/{data.name}-{method}-{seed}"
    res: dict[str, Any] = {}
    if method.startswith("jola:"):  # a grid point: jola:<gate_lambda> or jola:key=value/...
        upd, lr, steps = parse_variant(method, lr, steps)
        settings = (settings or JoLASettings()).model_copy(update=upd)
        method = "jola"
    if method in ("jola", "dense", "ungated", "lofit", "refit"):
        base = settings or JoLASettings()
        upd: dict[str, Any] = {"init_seed": seed}
        if method in ("dense", "ungated", "lofit"):
            upd["gate_lambda"] = 0.0
        if method in ("ungated", "lofit"):
            # their gates are overwritten (fixed open), so the init only decides the RNG stream of
            # A and v (drawn layer by layer between the log-alphas): xavier keeps the stream, and the
            # documented figures, of the runs before log_alpha_init's default became 3
            upd["log_alpha_init"] = "xavier"
        s = base.model_copy(update=upd)
        attach_jola(model, s)
        la0 = _log_alphas(model)
        if method == "ungated":
            _freeze_gates_open(model)
        if method == "refit":  # localize with the gates, then refit the open heads gate-free
            half = steps // 2
            tr = _jola_trainer(
                model, _args(out, seed, half, bs, lr, eval_every), data, tok, s, patience
            )
            tr.train()
            _fix_gates(model)
            tr = _jola_trainer(
                model, _args(out + "-2", seed, steps - half, bs, lr, eval_every), data, tok, s,
                patience,
            )  # fmt: skip
            tr.train()
            res.update(_best_of(tr, steps_before=half))
        elif method != "lofit":
            tr = _jola_trainer(
                model, _args(out, seed, steps, bs, lr, eval_every), data, tok, s, patience
            )
            tr.train()
            res.update(_best_of(tr))
        else:
            _freeze_gates_open(model)
            half = steps // 2
            for e in jola_edits(model).values():
                e.attn_v.requires_grad_(False)  # stage 1 learns A only
            tr = _jola_trainer(
                model, _args(out, seed, half, bs, lr, eval_every), data, tok, s, patience
            )
            _add_l1(tr, 5e-4)
            tr.train()
            adapter = get_adapter(model)
            k = lofit_k or max(1, round(0.25 * adapter.num_layers * adapter.num_heads))
            edits = jola_edits(model)
            norms = torch.stack([e.attn_A.detach().norm(dim=-1).cpu() for e in edits.values()])
            flat = torch.zeros(norms.numel())
            flat[torch.topk(norms.flatten(), k).indices] = 1.0
            mask = flat.reshape(norms.shape)
            keep = {i: mask[j] for j, i in enumerate(edits)}
            with torch.no_grad():
                for e in edits.values():
                    e.attn_A.zero_()
                    e.attn_v.zero_()
                    e.attn_v.requires_grad_(True)
            tr = _jola_trainer(
                model,
                _args(out + "-2", seed, steps - half, bs, lr * 2, eval_every),
                data,
                tok,
                s,
                patience,
            )
            tr.add_callback(_HeadMask(model, keep))
            tr.train()
            res["valid_loss"] = (tr.best or {}).get("eval_loss")
            res["open_heads"] = int(mask.sum())
            res["heads"] = int(mask.numel())
            res["selected_per_layer"] = [int(x) for x in mask.sum(-1)]
            res["params"] = k * 2 * adapter.head_dim  # stage 2 trains A and v of k heads
        if method != "lofit":
            oh = open_heads(model)
            res["open_heads"], res["open_heads_05"], res["heads"] = (
                oh["open"],
                oh["open_05"],
                oh["heads"],
            )
        res.setdefault("params", num_jola_parameters(model))
        res["max_log_alpha_move"] = round(float((_log_alphas(model) - la0).abs().max()), 4)
    else:
        from peft import IA3Config, LoraConfig, get_peft_model

        spec = get_adapter(model).spec
        if method.startswith("lora"):
            rank, targets, peft_lr = parse_lora_variant(method)
            modules = [{**spec.attn_projections, **spec.mlp_projections}[t] for t in targets]
            cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=modules)
        else:
            peft_lr = LR["ia3"]
            k_, v = (spec.attn_projections[x] for x in "kv")
            down = spec.mlp_projections["down"]
            cfg = IA3Config(target_modules=[k_, v, down], feedforward_modules=[down])
        cfg.task_type = "CAUSAL_LM"
        model = get_peft_model(model, cfg)
        res["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        from olmokit.data.collate import PaddingCollator

        tr = Trainer(
            model=model,
            args=_args(out, seed, steps, bs, peft_lr, eval_every),
            train_dataset=data.train,
            eval_dataset=data.valid,
            data_collator=PaddingCollator(tok.pad_token_id),
        )
        best = _BestPeft(model, patience)
        tr.add_callback(best)
        tr.train()
        best.restore()
        res["best_step"] = best.best_step
        res["valid_loss"] = best.best[0] if best.best else None
        res["steps_run"] = tr.state.global_step
    if method in ("jola", "dense", "ungated", "lofit", "refit"):
        # heads whose edit is not the identity at evaluation (LoFiT: must equal the selection)
        res["edited_heads"] = int(
            sum(
                int(((e.attn_A != 0).any(-1) | (e.attn_v != 0).any(-1)).sum())
                for e in jola_edits(model).values()
            )
        )
    res["valid"] = score(model, tok, data.valid_ex, data.generative)
    res["test"] = score(model, tok, data.test, data.generative)
    if not data.generative:  # the standard whole-turn scoring too, to show what the tail does
        res["test_turn"] = score(model, tok, data.test, False, "turn")
    else:
        res["test_nll"] = answer_nll(model, tok, data.test)
    return res


#: short keys of a ``jola:key=value/...`` grid point -> JoLASettings fields
VARIANT_KEYS = {
    "lam": "gate_lambda",
    "glr": "gate_learning_rate",
    "temp": "temperature",
    "init": "log_alpha_init",
}


def parse_variant(method: str, lr: float, steps: int) -> tuple[dict[str, Any], float, int]:
    """``jola:3e-2`` (a gate_lambda) or ``jola:lam=3e-2/lr=1e-2/glr=0.1/temp=0.5/init=-1/steps=300``
    -> (JoLASettings update, A/v learning rate, max steps)."""
    spec = method.split(":", 1)[1]
    if "=" not in spec:
        return {"gate_lambda": float(spec)}, lr, steps
    upd: dict[str, Any] = {}
    for item in spec.split("/"):
        key, val = item.split("=", 1)
        if key == "lr":
            lr = float(val)
        elif key == "steps":
            steps = int(val)
        elif key == "init" and val == "xavier":
            upd["log_alpha_init"] = val
        elif key in VARIANT_KEYS:
            upd[VARIANT_KEYS[key]] = float(val)
        else:
            raise SystemExit(f"unknown grid key {key!r} in {method!r}; valid: lr, steps, "
                             + ", ".join(VARIANT_KEYS))  # fmt: skip
    return upd, lr, steps


#: projections a ``lora:`` grid point may target (the family adapter's role names)
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def parse_lora_variant(method: str) -> tuple[int, list[str], float]:
    """``lora`` (r 8 on q, v; lr 1e-3, alpha = 2r) or ``lora:r=1/targets=o/lr=1e-3`` (targets
    joined by ``+``) -> (rank, target roles, learning rate). Small ranks give a LoRA with JoLA's
    parameter budget (r 1 on ``o_proj``: L * (d_model + H*d_head) = 2,048 on the zoo model against
    JoLA's 2,112), separating "LoRA has more parameters" from "LoRA edits a better place"."""
    rank, targets, lr = 8, ["q", "v"], LR["lora"]
    if ":" in method:
        for item in method.split(":", 1)[1].split("/"):
            key, _, val = item.partition("=")
            if key == "r":
                rank = int(val)
            elif key == "targets":
                targets = val.split("+")
                bad = [t for t in targets if t not in LORA_TARGETS]
                if bad:
                    raise SystemExit(f"unknown LoRA target(s) {bad} in {method!r}; valid: "
                                     + ", ".join(LORA_TARGETS))  # fmt: skip
            elif key == "lr":
                lr = float(val)
            else:
                raise SystemExit(
                    f"unknown LoRA grid key {key!r} in {method!r}; valid: r, targets, lr"
                )
    return rank, targets, lr


def _log_alphas(model: Any) -> torch.Tensor:
    return torch.stack(
        [torch.cat([e.log_g1, e.log_g2]).detach().cpu().clone() for e in jola_edits(model).values()]
    )


class _BestPeft(TrainerCallback):
    """The same early stopping and best-step restore as JoLATrainer, for the PEFT baselines."""

    def __init__(self, model: Any, patience: int | None):
        self.model, self.patience = model, patience
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.best_step: int | None = None
        self.bad = 0

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if self.best is None or loss < self.best[0]:
            self.best, self.bad = (loss, self._trainable()), 0
            self.best_step = state.global_step
        else:
            self.bad += 1
            if self.patience is not None and self.bad >= self.patience:
                control.should_training_stop = True

    def restore(self) -> None:
        if self.best is None:
            return
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for n, t in self.best[1].items():
                params[n].copy_(t)


def _add_l1(trainer: JoLATrainer, weight: float) -> None:
    """LoFiT stage 1's L1 penalty on A, added to the training loss."""
    inner = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        out = inner(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not model.training:
            return out
        l1 = weight * sum(e.attn_A.abs().sum() for e in jola_edits(trainer._jola_model()).values())
        if return_outputs:
            return out[0] + l1, out[1]
        return out + l1

    trainer.compute_loss = compute_loss


def _model_tag(model_name: str | None) -> str:
    """The name a run records for its model: the zoo name, or a directory's last component."""
    return "olmo2-stdlib" if model_name is None else Path(str(model_name)).name


def _write_record(a: Any, base: dict[str, float], **results: Any) -> None:
    """Write the ``--json`` file (the model and held-out split it was run on, then the numbers)
    atomically: it is rewritten after every run, and a kill mid-write must not lose the runs before.
    Key order is kept (the table lists methods in the order they ran)."""
    record = {"model": a.model_tag, "task_splits": TASK_SPLITS, "base": base, **results}
    atomic_write_text(a.json, json.dumps(record))


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default=None,
        help="zoo name or model directory (default: the shipped olmo2-stdlib); the tokenizer is "
        "read from the same place",
    )
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="to split seeds across processes")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument(
        "--valid",
        type=int,
        default=300,
        help="validation examples carved from the training split (100 left every method's "
        "validation accuracy within one seed's binomial noise; 300 separate them, and their loss more)",
    )
    ap.add_argument(
        "--full-seeds",
        type=int,
        default=3,
        help="seeds for the methods outside jola/lora/ia3 (fewer on a busy machine)",
    )
    ap.add_argument("--eval-every", type=int, default=20, help="validation every N steps")
    ap.add_argument(
        "--test-limit", type=int, default=300, help="held-out examples scored (300: all of them)"
    )
    ap.add_argument("--json", help="also write every run's numbers here")
    ap.add_argument(
        "--sweep",
        help="comma-separated gate_lambda grid: run only JoLA at each value (validation-based "
        "selection of the default) and write the accuracy-sparsity plot to --plot",
    )
    ap.add_argument(
        "--plot",
        help="write the accuracy-sparsity plot here (e.g. docs/jola_accuracy_sparsity.png); no "
        "default, so a partial run never overwrites the documented figure",
    )
    ap.add_argument("--report-from", help="print the table and plot from a --json file; no runs")
    ap.add_argument(
        "--heldout-distractors",
        dest="distractors",
        choices=("all", "answers"),
        default="answers",
        help="stdlib_module's held-out wrong choices: only from the held-out answers' names (the "
        "default) or from all labels (the task as first shipped; olmokit.data.tasks."
        "stdlib_module_task)",
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer(a.model)
    a.model_tag = _model_tag(a.model)
    # another held-out split: its tables must not mix with the shipped split's
    if a.distractors != "answers":
        a.model_tag += f" (stdlib_module held-out distractors: {a.distractors})"
    if a.sweep:
        sweep(a, tok)
        return
    if a.report_from:
        runs, base, tags = {}, {}, set()
        for path in a.report_from.split(","):
            with open(path) as f:
                d = json.load(f)
            # files written before --model: the zoo model; before task_splits: version 1
            tags.add((d.get("model", "olmo2-stdlib"), d.get("task_splits", 1)))
            for task, by_method in d["runs"].items():  # files may split seeds and methods
                for m, rs in by_method.items():
                    runs.setdefault(task, {}).setdefault(m, []).extend(rs)
            base.update(d["base"])
        if len(tags) > 1:
            sys.exit(
                f"--report-from mixes models or task splits {sorted(tags)} ((model, task_splits) "
                "per file): one table per model and held-out split"
            )
        a.model_tag = tags.pop()[0] if tags else a.model_tag
        print(report(base, runs, a))
        if a.plot:
            plot_runs(base, runs, a.plot)
        return
    methods = a.methods.split(",")
    unknown = [
        m
        for m in methods
        if m not in METHODS + DIAGNOSTICS and not m.startswith(("jola:", "lora:"))
    ]
    if unknown:  # a typo must not fall through to a PEFT baseline
        sys.exit(f"unknown method(s) {unknown}; valid: {', '.join(METHODS + DIAGNOSTICS)}, "
                 "jola:<grid point>, lora:<grid point>")  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    base: dict[str, float] = {}
    t0 = time.time()
    for name in a.tasks.split(","):
        data = task_data(
            name, tok, a.train, a.valid, test_limit=a.test_limit, heldout_distractors=a.distractors
        )
        runs[name] = {m: [] for m in methods if m != "base"}
        if "base" in methods:
            bm = load_model(a.model)
            base[name] = score(bm, tok, data.test, data.generative)
            base[name + ":valid"] = score(bm, tok, data.valid_ex, data.generative)
            if not data.generative:
                base[name + ":turn"] = score(bm, tok, data.test, False, "turn")
            else:
                base[name + ":nll"] = answer_nll(bm, tok, data.test)
            print(f"# {name} base {base[name]:.3f}", file=sys.stderr, flush=True)
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for m in methods:
                if m == "base" or (seed >= a.full_seeds and m not in CORE):
                    continue
                r = train_method(
                    m, data, tok, seed, a.steps, eval_every=a.eval_every, model_name=a.model
                )
                runs[name][m].append(r)
                if a.json:  # after every run, so a long benchmark's partial results survive
                    _write_record(a, base, runs=runs)
                print(
                    f"# {name} seed {seed} {m}: test {r['test']:.3f} valid {r['valid']:.3f} "
                    f"open {r.get('open_heads')} best step {r.get('best_step')}/"
                    f"{r.get('steps_run')} ({time.time() - t0:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    if a.json:
        _write_record(a, base, runs=runs)
    print(report(base, runs, a))
    if a.plot:
        plot_runs(base, runs, a.plot)


def plot_runs(base: dict[str, float], runs: dict[str, Any], path: str) -> None:
    """Held-out score against open heads for the gated points (dense = gate_lambda 0, the default,
    other jola:<lambda> points) and LoFiT, one line per task, the base as reference lines."""
    from olmokit.plots import plot_accuracy_sparsity

    default = JoLASettings().gate_lambda
    series, refs = {}, {}
    for name, by_method in runs.items():
        pts = []
        for m, rs in by_method.items():
            lam = {"dense": 0.0, "jola": default}.get(m)
            if m.startswith("jola:"):
                upd, lr, steps = parse_variant(m, 0.0, 0)
                if set(upd) != {"gate_lambda"} or lr or steps:
                    continue  # other settings changed: not a point of the default's lambda curve
                lam = upd["gate_lambda"]
            if lam is None or not rs:
                continue
            pts.append((statistics.mean(r["open_heads"] for r in rs),
                        statistics.mean(r["test"] for r in rs), f"{lam:g}"))  # fmt: skip
        if pts:
            series[f"{name}: JoLA (gate_lambda)"] = pts
        if by_method.get("lofit"):
            lo = by_method["lofit"]
            series[f"{name}: LoFiT"] = [(statistics.mean(r["open_heads"] for r in lo),
                                         statistics.mean(r["test"] for r in lo), "top-k")]  # fmt: skip
        if name in base:
            refs[f"{name}: base"] = base[name]
    if series:
        plot_accuracy_sparsity(series, path, xlabel="open heads (eval gate > 0)", references=refs)


def sweep(a: Any, tok: Any) -> None:
    """JoLA over a gate_lambda grid: validation score (to choose by), test score, open heads."""
    from olmokit.plots import plot_accuracy_sparsity

    lams = [float(x) for x in a.sweep.split(",")]
    points: dict[str, list[dict[str, Any]]] = {}
    base: dict[str, float] = {}
    for name in a.tasks.split(","):
        data = task_data(
            name, tok, a.train, a.valid, test_limit=a.test_limit, heldout_distractors=a.distractors
        )
        model = load_model(a.model)
        base[name] = score(model, tok, data.test, data.generative)
        base[name + ":valid"] = score(model, tok, data.valid_ex, data.generative)
        points[name] = []
        for lam in lams:
            for seed in range(a.seeds):
                s = JoLASettings(gate_lambda=lam)
                r = train_method("jola", data, tok, seed, a.steps, settings=s, model_name=a.model)
                r.update(gate_lambda=lam, seed=seed)
                points[name].append(r)
                print(f"# {name} lambda {lam:g} seed {seed}: {r}", file=sys.stderr, flush=True)
    if a.json:
        _write_record(a, base, points=points)
    series = {}
    for name, pts in points.items():
        for key in ("valid", "test"):
            agg = []
            for lam in lams:
                rs = [p for p in pts if p["gate_lambda"] == lam]
                agg.append((statistics.mean(p["open_heads"] for p in rs),
                            statistics.mean(p[key] for p in rs), f"{lam:g}"))  # fmt: skip
            series[f"{name} {key}"] = agg
    if a.plot:
        refs = {f"base {k}": v for k, v in base.items()}
        plot_accuracy_sparsity(series, a.plot, references=refs)
    print("| task | gate_lambda | valid | test | open heads (g>0) | open (g>0.5) |")
    print("|---|---|---|---|---|---|")
    for name, pts in points.items():
        for lam in lams:
            rs = [p for p in pts if p["gate_lambda"] == lam]
            v, t = _ms([p["valid"] for p in rs]), _ms([p["test"] for p in rs])
            o = statistics.mean(p["open_heads"] for p in rs)
            o5 = statistics.mean(p["open_heads_05"] for p in rs)
            print(f"| {name} | {lam:g} | {v[0]:.3f} ± {v[1]:.3f} | {t[0]:.3f} ± {t[1]:.3f} | "
                  f"{o:.1f} | {o5:.1f} |")  # fmt: skip
    print(f"base: {base}")


def report(base: dict[str, float], runs: dict[str, Any], a: Any) -> str:
    lines = [
        f"model {a.model_tag}; {a.train} train / {a.valid} validation (from the training split) "
        f"examples; held-out test split; {a.steps} steps max x batch 8; {a.seeds} seeds; "
        f"early stopping on the validation objective (patience 3, every {a.eval_every} steps; "
        "JoLA: loss + gate_lambda x expected open gates, others: loss), best step restored; choices "
        "scored on their answer tokens\n",
        "| task | metric | method | seeds | held-out (mean ± std) | validation | trainable params "
        "| open heads (g>0) | open (g>0.5) | validation loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    result: dict[str, Any] = {}
    for name, by_method in runs.items():
        gen = name in GENERATIVE
        metric = "exact match" if gen else "accuracy"
        b = base.get(name, float("nan"))
        bv = base.get(name + ":valid")  # files written before it was recorded have none
        bvs = "-" if bv is None else f"{bv:.3f}"
        lines.append(f"| {name} | {metric} | base | - | {b:.3f} | {bvs} | 0 | - | - | - |")
        # null, not NaN, when the base was not run: the RESULT line must stay strict JSON
        entry: dict[str, Any] = {"base": round(base[name], 4) if name in base else None}
        for m, rs in by_method.items():
            if not rs:  # a method the run did not reach (partial results)
                continue
            mu, sd = _ms([r["test"] for r in rs])
            oh = [r["open_heads"] for r in rs if "open_heads" in r]
            heads = rs[0].get("heads")
            ohs = f"{statistics.mean(oh):.1f} / {heads}" if oh else "-"
            o5 = [r["open_heads_05"] for r in rs if "open_heads_05" in r]
            o5s = f"{statistics.mean(o5):.1f}" if o5 else "-"
            va = statistics.mean(r["valid"] for r in rs)
            # the eval loss at the restored step (per answer token): continuous where 300
            # questions' accuracy barely separates methods
            vl = [r["valid_loss"] for r in rs if r.get("valid_loss") is not None]
            vls = "{:.3f} ± {:.3f}".format(*_ms(vl)) if vl else "-"
            lines.append(
                f"| {name} | {metric} | {m} | {len(rs)} | {mu:.3f} ± {sd:.3f} | {va:.3f} | "
                f"{rs[0]['params']:,} | {ohs} | {o5s} | {vls} |"
            )
            entry[m] = round(mu, 4)
            if m == "jola":
                entry["jola_std"] = round(sd, 4) if len(rs) > 1 else None
                entry["open_head_fraction"] = round(statistics.mean(oh) / heads, 4)
        result[name] = entry
    nll_rows = []
    for name, by_method in runs.items():
        if name + ":nll" not in base:
            continue
        nll_rows.append(f"| {name} | base | - | {base[name + ':nll']:.2f} |")
        for m, rs in by_method.items():
            xs = [r["test_nll"] for r in rs if "test_nll" in r]
            if xs:
                mu, sd = _ms(xs)
                nll_rows.append(f"| {name} | {m} | {len(xs)} | {mu:.2f} ± {sd:.2f} |")
    if nll_rows:
        lines += [
            "",
            "Generation tasks, teacher-forced: the reference answer's negative log-likelihood on the "
            "held-out split (nats per answer, lower is better; runs that recorded it)\n",
            "| task | method | seeds | answer NLL |",
            "|---|---|---|---|",
            *nll_rows,
        ]
    lines.append("")
    lines.append("RESULT " + json.dumps(result))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
