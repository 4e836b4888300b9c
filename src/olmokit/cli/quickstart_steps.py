"""The steps of ``olmokit quickstart``: every tool, end to end, on the zoo models, offline.

Each step runs one tool through its own ``run_<tool>(config)`` with a config shipped under
``configs/quickstart/`` (``<tool>.yaml``; ``<tool>-fast.yaml`` for ``--fast``), so what the quickstart
leaves under ``--out`` are that tool's ordinary run directories, and a user reruns any step from the
tool's CLI with a bigger config. A step returns a :class:`StepResult`: the files it wrote and the
numbers it measured, each number with the file (and key) it was read from, so a reader (and the
quickstart's test) can recompute it. Nothing shown is a constant: every number is read from an
artifact the step just wrote, or computed from one.

This module sits with the CLI, above every tool (it imports all four); no tool imports it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import read_yaml
from ..errors import ConfigError
from ..files import atomic_write_json

__all__ = [
    "DEFAULT_OUT",
    "STEPS",
    "Number",
    "StepResult",
    "config_dir",
    "load_step_config",
    "run_step",
]

#: Where the quickstart writes by default; the shipped configs name their run directories under it.
DEFAULT_OUT = "runs/quickstart"
#: The steps, in the order they run.
STEPS = ("info", "jola", "merge", "memory", "lens", "summary")
#: Every step's results, merged into one file under ``--out`` (the summary step reads it).
RESULTS_FILE = "quickstart.json"


@dataclass
class Number:
    """A measured number and where it was read from (``source``: a file under ``--out``; ``key``:
    the path of keys and list indices inside that JSON file, or ``None`` when the step computed it
    itself from that file)."""

    name: str
    value: float
    source: str
    key: list[str | int] | None = None


@dataclass
class StepResult:
    step: str
    seconds: float = 0.0
    run_dir: str | None = None  #: the tool's run directory, relative to ``--out``
    artifacts: list[str] = field(default_factory=list)  #: files written, relative to ``--out``
    numbers: list[Number] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  #: markdown tables for the summary

    def add(self, name: str, value: Any, source: str, key: str | list | None = None) -> float:
        value = float(value)
        if isinstance(key, str):
            key = [int(k) if k.isdigit() else k for k in key.split(".")]
        if not math.isfinite(value):
            raise ConfigError(f"quickstart step {self.step}: {name} is not finite ({value})")
        self.numbers.append(Number(name, value, source, key))
        return value


@dataclass
class Context:
    out: Path
    fast: bool
    progress: bool
    log: Callable[[str], None] = print

    def rel(self, path: str | Path) -> str:
        return Path(path).resolve().relative_to(self.out.resolve()).as_posix()


# --- configs -------------------------------------------------------------------------------------


def config_dir() -> Path:
    """``configs/quickstart`` of the source tree olmokit runs from, else of the current directory."""
    candidates = [
        Path(__file__).resolve().parents[3] / "configs" / "quickstart",
        Path.cwd() / "configs" / "quickstart",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError(
        "configs/quickstart not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); run the quickstart from a clone of the olmokit repository"
    )


def _relocate(value: Any, out: Path) -> Any:
    """Every string under ``runs/quickstart/`` (run directories, the pool's paths) moved to ``out``."""
    if isinstance(value, dict):
        return {k: _relocate(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, out) for v in value]
    if isinstance(value, str) and value.startswith(DEFAULT_OUT + "/"):
        return str(out / value[len(DEFAULT_OUT) + 1 :])
    return value


def load_step_config(cls: Any, tool: str, out: str | Path, fast: bool = False) -> Any:
    """The quickstart config of ``tool`` (``cls`` validates it) with its paths moved under ``out``."""
    path = config_dir() / f"{tool}{'-fast' if fast else ''}.yaml"
    if not path.is_file():
        raise ConfigError(f"quickstart config missing: {path}")
    return cls.from_dict(_relocate(read_yaml(path), Path(out)), source=str(path))


def lookup(data: Any, key: list[str | int]) -> Any:
    """``data[key[0]][key[1]]...`` (how a :class:`Number` is found again in its source file)."""
    for part in key:
        data = data[part]
    return data


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- steps ---------------------------------------------------------------------------------------

#: The zoo models the quickstart shows (JoLA and merge on the default; the lens on the one with
#: induction heads).
INFO_MODELS = ("olmo2-stdlib", "olmo2-induction")


def step_info(ctx: Context, res: StepResult) -> None:
    """``olmokit info`` on the zoo models the other steps use."""
    from ..family import get_adapter
    from ..loading import load_model

    infos = {}
    for name in INFO_MODELS:
        adapter = get_adapter(load_model(name))
        infos[name] = {"model": name, **adapter.describe()}
    path = ctx.out / "info.json"
    atomic_write_json(path, infos)
    res.artifacts.append(ctx.rel(path))
    keys = ("family", "layers", "hidden_size", "heads", "kv_heads", "vocab_size", "parameters")
    rows = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, info in infos.items():
        rows.append(f"| {name} | " + " | ".join(str(info[k]) for k in keys) + " |")
        res.add(f"{name} parameters", info["parameters"], ctx.rel(path), f"{name}.parameters")
    res.tables.append("\n".join(rows))


def step_jola(ctx: Context, res: StepResult) -> None:
    """Train JoLA on the built-in low-resource task; base vs JoLA on the held-out test set; the gate
    heatmap; the adapter folded into plain weights, and the folded model's accuracy, which must equal
    the adapter's (the fold is exact)."""
    from ..eval import evaluate_examples
    from ..jola.checkpoint import merge_adapter
    from ..jola.config import JoLAConfig
    from ..jola.run import load_run_data, run_jola
    from ..loading import load_tokenizer

    cfg = load_step_config(JoLAConfig, "jola", ctx.out, ctx.fast)
    run = run_jola(cfg, overwrite=True, progress=ctx.progress)
    res.run_dir = ctx.rel(run.path)
    summary = run.read_json("eval.json")
    src = ctx.rel(run.file("eval.json"))
    res.artifacts += [src, ctx.rel(run.file("adapter"))]
    res.artifacts += [ctx.rel(p) for p in sorted(run.file("report").glob("*.png"))]
    base_acc = res.add(
        "JoLA task: base accuracy", summary["test"]["base"]["acc"], src, "test.base.acc"
    )
    jola_acc = res.add(
        "JoLA task: JoLA accuracy", summary["test"]["jola"]["acc"], src, "test.jola.acc"
    )

    folded_dir = ctx.out / "jola-folded"
    ctx.log(f"folding the adapter into plain weights: {folded_dir}")
    _, folded, base_name = merge_adapter(run.file("adapter"), folded_dir)
    test = load_run_data(cfg.data).test
    tokenizer = load_tokenizer(base_name)
    scores = evaluate_examples(
        folded,
        tokenizer,
        test,
        cfg.training.per_device_eval_batch_size,
        generate=False,
        loss_on=cfg.data.loss_on,  # choices scored as the run scored them
    )
    folded_json = ctx.out / "jola-folded" / "folded_eval.json"
    atomic_write_json(folded_json, {"test": scores, "adapter": str(run.file("adapter"))})
    res.artifacts.append(ctx.rel(folded_json))
    folded_acc = res.add(
        "JoLA task: folded accuracy", scores["acc"], ctx.rel(folded_json), "test.acc"
    )
    n = summary["test"]["jola"].get("n", len(test))
    open_heads = summary.get("open_heads", {})
    res.tables.append(
        "| model | test accuracy |\n|---|---|\n"
        f"| base olmo2-stdlib | {base_acc:.3f} |\n| + JoLA | {jola_acc:.3f} |\n"
        f"| JoLA folded into the weights | {folded_acc:.3f} |\n\n"
        f"{int(n)} held-out examples; {json.dumps(open_heads)}"
    )
    if folded_acc != jola_acc:
        raise ConfigError(
            f"quickstart jola: the folded model scores {folded_acc}, the adapter {jola_acc}: "
            "the fold is meant to be exact"
        )


#: make_demo_pool settings of the merge step (full, fast): fine-tuning steps per expert etc.
POOL_SETTINGS = {
    False: dict(steps=30, batch_size=8, seq_len=128, merge_samples=16, heldout_samples=16),
    True: dict(steps=2, batch_size=2, seq_len=64, merge_samples=4, heldout_samples=4),
}


def step_merge(ctx: Context, res: StepResult) -> None:
    """A small pool (the base + two short domain fine-tunes), OLM with layer and tensor swaps and a
    short SVD-ES; the before/after table and the merge map."""
    from ..merge.config import MergeConfig
    from ..merge.demo import make_demo_pool
    from ..merge.report import decisions, plot_report
    from ..merge.run import run_merge

    settings = POOL_SETTINGS[ctx.fast]
    cfg = load_step_config(MergeConfig, "merge", ctx.out, ctx.fast)
    pool_dir = Path(cfg.models[0]).parent  # the config names the pool the quickstart builds
    ctx.log(f"building the pool (base + prose and code fine-tunes, {settings['steps']} steps each)")
    make_demo_pool(pool_dir, log=ctx.log, **settings)
    res.artifacts.append(ctx.rel(pool_dir / "demo_pool.json"))
    run = run_merge(cfg, overwrite=True, progress=ctx.progress)
    res.run_dir = ctx.rel(run.path)
    report = run.read_json("merge_report.json")
    src = ctx.rel(run.file("merge_report.json"))
    png = plot_report(report, run.file("merge_map.png"))
    res.artifacts += [src, ctx.rel(run.file("model")), ctx.rel(png)]
    last = _last_metrics_key(report)
    rows = ["| dataset (metric: lower is better) | base | merged |", "|---|---|---|"]
    for d in report["datasets"]:
        name = d["name"]
        b = res.add(
            f"merge {name}: base", report["base_metrics"][name], src, ["base_metrics", name]
        )
        a = res.add(f"merge {name}: merged", lookup(report, [*last, name]), src, [*last, name])
        rows.append(f"| {name} ({d['mode']}) | {b:.4f} | {a:.4f} |")
    made = list(decisions(report))
    changed = sum(bool(d.get("changed")) for d in made)
    res.add("merge: decisions made", len(made), src)
    res.add("merge: decisions that changed the model", changed, src)
    res.tables.append("\n".join(rows))


def _last_metrics_key(report: dict[str, Any]) -> list[str]:
    """Key path of the metrics after the last decision (``base_metrics`` when none was made)."""
    sections = {"base": ["base_selection"], "boundary": ["boundary"]}
    from ..merge.report import decisions

    key = ["base_metrics"]
    for d in decisions(report):
        if d.get("metrics"):
            if d["step"] in sections:
                key = [*sections[d["step"]], "metrics"]
            else:
                key = [f"{d['step']}s", str(d["target"]), "metrics"]
    return key


#: memory step (full, fast): steps of the windowed task base, passkey sets and their distances in
#: windows (training from one window away, evaluation farther, always beyond the window).
MEMORY_SETTINGS = {
    False: dict(base_steps=300, train=(1, 3), evaluate=(2, 3), n_train=1024, n_eval=128),
    True: dict(base_steps=4, train=(1, 3), evaluate=(2, 3), n_train=32, n_eval=16),
}


def step_memory(ctx: Context, res: StepResult) -> None:
    """Passkey retrieval beyond the attention window: a tiny fully windowed base (the memory tool's
    demo base, trained on in-window recall), a memory trained by ``run_memory`` on passkeys 1-3
    windows away, then accuracy on held-out passkeys 2-3 windows away with the memory on and off."""
    from ..data.longctx import passkey_length
    from ..eval.longctx import span_accuracy
    from ..loading import load_model
    from ..memory.config import MemoryConfig
    from ..memory.demo import DemoBaseSettings, make_demo_base, padded_length, passkey_set
    from ..memory.model import load_memory
    from ..memory.run import run_memory

    s = MEMORY_SETTINGS[ctx.fast]
    cfg = load_step_config(MemoryConfig, "memory", ctx.out, ctx.fast)
    base = make_demo_base(
        Path(cfg.model.name).parent, DemoBaseSettings(steps=s["base_steps"]), log=ctx.log
    )
    w = base.window
    if cfg.memory.segment_len != w:
        raise ConfigError(
            f"configs/quickstart/memory.yaml: memory.segment_len is {cfg.memory.segment_len}, the "
            f"demo base's window is {w}"
        )
    res.artifacts.append(ctx.rel(Path(cfg.model.name).parent / "demo_base.json"))
    sets = {}
    for split, (lo, hi), n in (
        ("train", s["train"], s["n_train"]),
        ("eval", s["evaluate"], s["n_eval"]),
    ):
        distance = (lo * w, hi * w)
        ds = passkey_set(base.vocab, w, distance, n, seed=0, salt=f"quickstart-{split}")
        rows = [ds[i] for i in range(len(ds))]
        path = Path(getattr(cfg.data, f"{split}_file"))
        _write_rows(path, rows)
        res.artifacts.append(ctx.rel(path))
        sets[split] = rows
    length = padded_length(passkey_length((s["train"][0] * w, s["train"][1] * w)), w)
    if cfg.data.seq_len != length:
        raise ConfigError(
            f"quickstart memory config: data.seq_len is {cfg.data.seq_len}, the passkey rows "
            f"are {length} tokens"
        )
    run = run_memory(cfg, overwrite=True, progress=ctx.progress)
    res.run_dir = ctx.rel(run.path)
    res.artifacts += [ctx.rel(run.file("eval.json")), ctx.rel(run.file("adapter"))]

    mm = load_memory(load_model(base.path), run.file("adapter"))
    rows = sets["eval"]

    def forward(ids: Any) -> Any:
        return mm(ids, return_logits=True).logits

    on = span_accuracy(forward, rows, 16, mm).accuracy
    with mm.disabled():
        off = span_accuracy(forward, rows, 16, mm).accuracy
    result = {
        "n": len(rows),
        "window": w,
        "distance_windows": list(s["evaluate"]),
        "memory_on": on,
        "memory_off": off,
        "chance": base.vocab.chance(),
        "base_in_window_accuracy": base.info["in_window_accuracy"],
    }
    path = ctx.out / "memory" / "passkey.json"
    atomic_write_json(path, result)
    src = ctx.rel(path)
    res.artifacts.append(src)
    res.add("memory: passkey accuracy, memory on", on, src, "memory_on")
    res.add("memory: passkey accuracy, memory off", off, src, "memory_off")
    res.add("memory: chance", result["chance"], src, "chance")
    res.add(
        "memory: base accuracy in its window",
        result["base_in_window_accuracy"],
        src,
        "base_in_window_accuracy",
    )
    lo, hi = s["evaluate"]
    res.tables.append(
        f"Passkeys {lo}-{hi} windows ({lo * w}-{hi * w} tokens) before the question; the base "
        f"attends to {w} tokens.\n\n| | passkey accuracy |\n|---|---|\n"
        f"| memory off (the windowed base) | {off:.3f} |\n| memory on | {on:.3f} |\n"
        f"| chance | {result['chance']:.3f} |"
    )


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..files import atomic_write_text

    lines = [
        json.dumps({"input_ids": r["input_ids"].tolist(), "labels": r["labels"].tolist()})
        for r in rows
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def step_lens(ctx: Context, res: StepResult) -> None:
    """Induction-head scores of ``olmo2-induction`` and the attention pattern of its top head."""
    from ..lens.config import LensConfig
    from ..lens.run import run_lens

    cfg = load_step_config(LensConfig, "lens", ctx.out, ctx.fast)
    run = run_lens(cfg, overwrite=True, log=ctx.log)
    res.run_dir = ctx.rel(run.path)
    summary = run.read_json("summary.json")
    for job in summary["jobs"]:
        res.artifacts += [ctx.rel(run.file(f)) for f in job["files"]]
        res.artifacts.append(ctx.rel(run.file(job["json"])))
    scores = run.read_json("induction.json")
    src = ctx.rel(run.file("induction.json"))
    top = scores["top"][0]
    res.add("lens: top induction score", top["induction"], src, "top.0.induction")
    res.add("lens: its previous-token score", top["previous_token"], src, "top.0.previous_token")
    res.add("lens: uniform-attention baseline", scores["uniform_baseline"], src, "uniform_baseline")
    res.add("lens: copy gain (nats)", scores["copy_gain"], src, "copy_gain")
    rows = ["| head | induction score | previous-token score |", "|---|---|---|"]
    rows += [
        f"| L{t['layer']}H{t['head']} | {t['induction']:.3f} | {t['previous_token']:.3f} |"
        for t in scores["top"]
    ]
    res.tables.append("\n".join(rows))


STEP_FUNCTIONS: dict[str, Callable[[Context, StepResult], None]] = {
    "info": step_info,
    "jola": step_jola,
    "merge": step_merge,
    "memory": step_memory,
    "lens": step_lens,
}


def run_step(step: str, ctx: Context) -> StepResult:
    """Run one step, time it and record its result in ``--out/quickstart.json``."""
    res = StepResult(step)
    t0 = time.perf_counter()
    STEP_FUNCTIONS[step](ctx, res)
    res.seconds = time.perf_counter() - t0
    results_path = ctx.out / RESULTS_FILE
    results = _read(results_path) if results_path.is_file() else {"steps": {}}
    results["steps"][step] = asdict(res)
    results["fast"] = ctx.fast
    atomic_write_json(results_path, results)
    return res
