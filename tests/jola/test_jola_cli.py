"""CLI: train (zoo model, built-in task) -> report -> eval -> merge, and one-line errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from olmokit.cli.main import main
from olmokit.eval import evaluate_examples
from olmokit.jola import JoLAConfig, disable_jola, load_jola, load_run_data
from olmokit.loading import load_model, load_tokenizer

CONFIG = JoLAConfig.from_yaml(
    "configs/jola/tiny.yaml", ["data_config.train_size=24", "data_config.eval_size=12"]
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("jola") / "run"
    rc = main(
        [
            "jola",
            "train",
            "configs/jola/tiny.yaml",
            f"training_config.output_dir={out}",
            "training_config.max_steps=6",
            "training_config.eval_steps=3",
            "training_config.disable_tqdm=true",
            "data_config.train_size=24",
            "data_config.eval_size=12",
        ]
    )
    assert rc == 0
    return out


def test_train_outputs(trained, capsys):
    assert (trained / "adapter" / "jola_adapter.safetensors").is_file()
    assert (trained / "report" / "gates.png").is_file() and (trained / "config.yaml").is_file()
    summary = json.loads((trained / "eval.json").read_text())
    assert summary["jola_parameters"] == 4 * 8 * (2 * 32 + 2)
    assert set(summary["test"]) == {"base", "jola"} and summary["test"]["base"]["n"] == 12
    # the scores are those of the saved adapter on the run's test split, recomputed independently
    data = load_run_data(CONFIG.data)
    model = load_jola(load_model(CONFIG.model.pretrained_model_name_or_path), trained / "adapter")
    tok = load_tokenizer(CONFIG.model.pretrained_model_name_or_path)
    with disable_jola(model):
        base = evaluate_examples(model, tok, data.test, 16, True, False)
    tuned = evaluate_examples(model, tok, data.test, 16, True, False)
    assert summary["test"] == json.loads(json.dumps({"base": base, "jola": tuned}))
    assert summary["test"]["jola"]["acc"] * 12 == round(summary["test"]["jola"]["acc"] * 12)


def test_report_eval_merge(trained, tmp_path, capsys):
    assert main(["jola", "report", str(trained / "adapter"), "--out", str(tmp_path / "rep")]) == 0
    assert "open heads" in capsys.readouterr().out
    assert main(["jola", "eval", str(trained / "adapter"), "--limit", "8", "--no-generate"]) == 0
    out = capsys.readouterr().out
    assert "| base" in out and str(trained / "adapter") in out
    assert main(["jola", "merge", str(trained / "adapter"), str(tmp_path / "merged")]) == 0
    model, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "merged", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # the merged model reproduces the adapter model
    from olmokit.jola import load_jola
    from olmokit.loading import load_model

    ref = load_jola(load_model(), trained / "adapter")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-5)


def test_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("jola_config:\n  gate_lamda: 1\n")
    assert main(["jola", "train", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gate_lambda" in err[0]
    assert main(["jola", "report", str(tmp_path)]) == 2
    assert "not a JoLA adapter" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert (
        main(["jola", "train", f"data_config.train_file={empty}", "training_config.max_steps=1"])
        == 2
    )
    assert "empty" in capsys.readouterr().err
