"""``olmokit memory train|eval|generate``: every verb has --help; they run end to end on a tiny base."""

from __future__ import annotations

import json

import pytest
import torch
from common import random_tokens

from olmokit.cli.main import main
from olmokit.memory import MemorySettings, attach_memory
from olmokit.zoo.presets import random_model

SEG = 8


@pytest.mark.parametrize("verb", [[], ["train"], ["eval"], ["generate"], ["make-demo-base"]])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["memory", *verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: olmokit memory")
    if verb == ["train"]:
        assert "--resume" in out and "--overwrite" in out and "accelerate launch" in out


@pytest.fixture
def adapter(tmp_path):
    model = random_model("olmo2", "tiny", seed=0)
    model.name_or_path = "olmo2-tiny-random"  # what a zoo load records
    s = MemorySettings(memory_layers=[1], segment_len=SEG, chunk_train=4, chunk_prefill=4,
                       chunk_decode=4, heads=2, hidden=16)  # fmt: skip
    mm = attach_memory(model, s)
    with torch.no_grad():
        mm.memory_layers[1].mem_gate.fill_(0.5)
    return mm.save_pretrained(tmp_path / "adapter")


def test_eval_reports_base_memory_and_reset(adapter, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    rows = random_tokens(4, 3 * SEG, 4096, seed=5)
    data.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
    out_json = tmp_path / "eval.json"
    code = main(["memory", "eval", str(adapter), "--data", str(data), "--seq-len", str(3 * SEG),
                 "--limit", "4", "--json", str(out_json)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| base" in printed and "| memory" in printed and "| reset" in printed
    res = json.loads(out_json.read_text())
    assert res["n"] == 4 and res["start"] == SEG
    assert res["memory"]["loss"] != res["base"]["loss"]  # the opened gate changes the model


def test_generate_prints_a_continuation(adapter, capsys):
    code = main(["memory", "generate", str(adapter), "--prompt", "def f(x):",
                 "--max-new-tokens", "12"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip() != ""
    # the cached and recomputed paths agree
    main(["memory", "generate", str(adapter), "--prompt", "def f(x):", "--max-new-tokens", "12",
          "--no-cache"])  # fmt: skip
    a = capsys.readouterr().out
    main(["memory", "generate", str(adapter), "--prompt", "def f(x):", "--max-new-tokens", "12"])
    assert capsys.readouterr().out == a


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["memory", "eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("olmokit: error:") and "not a memory adapter" in err
    assert main(["memory", "train", "memory.mode=mac", "memory.segment_len=7",
                 f"training.output_dir={tmp_path / 'x'}"]) == 2  # fmt: skip
    assert "chunk_train = 16 does not fit memory.segment_len = 7" in capsys.readouterr().err
