"""``olmokit quickstart --fast`` end to end: every artifact exists, every reported number is finite,
is what its source file says, and agrees with an independent recomputation from the artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from olmokit.cli.main import main
from olmokit.cli.quickstart_steps import STEPS, load_step_config, lookup


def _numbers(step: dict) -> dict[str, dict]:
    return {n["name"]: n for n in step["numbers"]}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "out"
    with torch.random.fork_rng(devices=[]):
        assert main(["quickstart", "--out", str(out), "--fast", "--no-progress"]) == 0
    return out, json.loads((out / "quickstart.json").read_text(encoding="utf-8"))


def test_every_step_ran_and_every_artifact_exists(quickstart):
    out, results = quickstart
    assert results["fast"] is True
    assert set(results["steps"]) == set(STEPS) - {"summary"}
    summary = (out / "SUMMARY.md").read_text(encoding="utf-8")
    for name, step in results["steps"].items():
        assert step["seconds"] > 0
        assert step["artifacts"], name
        for artifact in step["artifacts"]:
            assert (out / artifact).exists(), f"{name}: {artifact} missing"
            assert f"`{artifact}`" in summary
        if name != "info":  # each tool step leaves the tool's own run directory
            run = out / step["run_dir"]
            assert (run / "config.yaml").is_file() and (run / "environment.json").is_file()
        for n in step["numbers"]:
            assert math.isfinite(n["value"]), (name, n)
            assert n["name"] in summary


def test_numbers_are_what_their_source_files_say(quickstart):
    out, results = quickstart
    checked = 0
    for step in results["steps"].values():
        for n in step["numbers"]:
            assert (out / n["source"]).is_file(), n
            if n["key"] is not None:
                data = json.loads((out / n["source"]).read_text(encoding="utf-8"))
                assert float(lookup(data, n["key"])) == n["value"], n
                checked += 1
    assert checked >= 15


def test_info_parameters_recounted(quickstart):
    from olmokit.loading import load_model

    _, results = quickstart
    numbers = _numbers(results["steps"]["info"])
    for name in ("olmo2-stdlib", "olmo2-induction"):
        model = load_model(name)
        assert numbers[f"{name} parameters"]["value"] == sum(p.numel() for p in model.parameters())


def test_jola_fold_is_exact_and_rescored(quickstart):
    """The folded directory loads in stock transformers and scores what the adapter scored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from olmokit.eval import evaluate_examples
    from olmokit.jola.config import JoLAConfig
    from olmokit.jola.run import load_run_data

    out, results = quickstart
    numbers = _numbers(results["steps"]["jola"])
    folded = AutoModelForCausalLM.from_pretrained(out / "jola-folded").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "jola-folded")
    cfg = load_step_config(JoLAConfig, "jola", out, fast=True)
    test = load_run_data(cfg.data).test
    acc = evaluate_examples(folded, tokenizer, test, 16, generate=False, loss_on=cfg.data.loss_on)
    acc = acc["acc"]
    assert acc == numbers["JoLA task: folded accuracy"]["value"]
    assert acc == numbers["JoLA task: JoLA accuracy"]["value"]
    assert (out / "jola" / "report" / "gates.png").stat().st_size > 0


def test_merge_numbers_recomputed_on_the_merged_model(quickstart):
    from olmokit.loading import load_model, load_tokenizer
    from olmokit.merge.config import MergeConfig
    from olmokit.merge.datasets import load_datasets
    from olmokit.merge.evaluate import Evaluator

    out, results = quickstart
    numbers = _numbers(results["steps"]["merge"])
    cfg = load_step_config(MergeConfig, "merge", out, fast=True)
    tokenizer = load_tokenizer(cfg.models[0])
    sets = load_datasets(list(cfg.datasets), tokenizer)
    for which, path in (("merged", out / "merge" / "model"), ("base", Path(cfg.models[0]))):
        metrics = Evaluator(load_model(path), sets, batch_size=cfg.batch_size).evaluate()
        for d in cfg.datasets:
            reported = numbers[f"merge {d.name}: {which}"]["value"]
            assert metrics[d.name] == pytest.approx(reported, rel=1e-5, abs=1e-6), (which, d.name)
    assert (out / "merge" / "merge_map.png").stat().st_size > 0


def test_memory_passkey_recomputed(quickstart):
    from olmokit.eval.longctx import span_accuracy
    from olmokit.loading import load_model
    from olmokit.memory.config import MemoryConfig
    from olmokit.memory.model import load_memory

    out, results = quickstart
    numbers = _numbers(results["steps"]["memory"])
    cfg = load_step_config(MemoryConfig, "memory", out, fast=True)
    mm = load_memory(load_model(cfg.model.name), out / "memory" / "adapter")
    rows = [json.loads(line) for line in Path(cfg.data.eval_file).read_text().splitlines()]
    rows = [{k: torch.tensor(v) for k, v in r.items()} for r in rows]

    def forward(ids):
        return mm(ids, return_logits=True).logits

    on = span_accuracy(forward, rows, 16, mm).accuracy
    with mm.disabled():
        off = span_accuracy(forward, rows, 16, mm).accuracy
    assert on == numbers["memory: passkey accuracy, memory on"]["value"]
    assert off == numbers["memory: passkey accuracy, memory off"]["value"]


def test_lens_scores_recomputed(quickstart):
    from olmokit.lens import HookedOlmo
    from olmokit.lens.heads import induction_score

    out, results = quickstart
    numbers = _numbers(results["steps"]["lens"])
    job = json.loads((out / "lens" / "induction.json").read_text())
    model = HookedOlmo.from_pretrained("olmo2-induction")
    result = induction_score(model, seq_len=job["seq_len"], batch=job["batch"], seed=job["seed"])
    layer, head, score = result.top(1)[0]
    assert score == pytest.approx(numbers["lens: top induction score"]["value"], abs=1e-6)
    assert score >= 0.5  # the zoo model has a real induction head
    assert any(p.name.startswith(f"pattern_top_L{layer}H{head}") for p in (out / "lens").iterdir())


def test_only_runs_the_named_steps_and_keeps_the_others(quickstart, tmp_path):
    """``--only info`` reruns one step; the summary still lists the earlier steps' results."""
    import shutil

    out, before = quickstart
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    assert (
        main(["quickstart", "--out", str(copy), "--only", "info", "--fast", "--no-progress"]) == 0
    )
    results = json.loads((copy / "quickstart.json").read_text(encoding="utf-8"))
    assert set(results["steps"]) == set(STEPS) - {"summary"}
    assert results["steps"]["info"]["seconds"] != before["steps"]["info"]["seconds"]  # it reran
    assert results["steps"]["lens"] == before["steps"]["lens"]  # the others were kept


def test_unknown_step_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--only", "nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
