"""The zoo recipe end to end at toy scale: builds, loads in stock transformers, resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from olmokit.files import load_safetensors
from olmokit.zoo.build import ZooBuildConfig, build_zoo_model
from olmokit.zoo.build.pretrain import BlockDataset, heldout_loss, unigram_cross_entropy
from olmokit.zoo.presets import make_config
from olmokit.zoo.registry import list_models, shipped_path

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "zoo" / "smoke.yaml"


def test_unigram_baseline_matches_hand_computation():
    train = torch.tensor([0, 0, 1])
    held = torch.tensor([0, 2])
    # add-one smoothing over a vocab of 3: p(0) = 3/6, p(2) = 1/6
    expected = -(math.log(3 / 6) + math.log(1 / 6)) / 2
    assert abs(unigram_cross_entropy(train, held, 3) - expected) < 1e-12


def test_toy_build_loads_and_resumes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ZooBuildConfig.from_yaml(SMOKE)
    out, work = tmp_path / "smoke", tmp_path / "work"
    report = build_zoo_model(cfg, out, work, log=lambda *a: None)
    assert report["tokens_seen"] == 4 * 2 * 32
    assert report["resumed_from"] is None
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) and model.dtype == torch.float16
    assert "held-out loss" in (out / "README.md").read_text()
    assert json.loads((out / "build_report.json").read_text()) == report
    # The reported loss is that of the weights as shipped (fp16), recomputed independently here;
    # after 4 steps it is still near the uniform guess ln(vocab).
    held = BlockDataset(load_safetensors(work / "tokens.safetensors")["heldout"], cfg.seq_len)
    recomputed = heldout_loss(model.float(), held)
    assert recomputed == pytest.approx(report["heldout_loss"], rel=1e-6)
    assert abs(report["heldout_loss"] - math.log(len(tok))) < 0.5

    # A longer run in the same work dir resumes from the saved checkpoint instead of starting over.
    report2 = build_zoo_model(cfg.merge(["steps=6"]), out, work, log=lambda *a: None)
    assert report2["resumed_from"] == str(work / "checkpoints" / "checkpoint-4")
    assert report2["tokens_seen"] == 6 * 2 * 32


SHIPPED = [e.name for e in list_models() if e.kind == "shipped"]


@pytest.mark.parametrize("name", SHIPPED)
def test_presets_reproduce_the_shipped_configs(name):
    """`olmokit zoo build --config build_config.yaml` would build the shipped architecture exactly."""
    from transformers import AutoConfig

    path = shipped_path(name)
    cfg = ZooBuildConfig.from_yaml(path / "build_config.yaml")
    shipped = AutoConfig.from_pretrained(path).to_dict()
    rebuilt = make_config(
        cfg.model_type,
        cfg.size,
        vocab_size=shipped["vocab_size"],
        max_position_embeddings=max(512, cfg.seq_len),
        **cfg.architecture,
    ).to_dict()
    ignored = {"dtype", "_name_or_path"}  # stored as save_dtype; where it was loaded from
    assert {k: v for k, v in shipped.items() if k not in ignored} == {
        k: v for k, v in rebuilt.items() if k not in ignored
    }
    assert shipped["dtype"] == cfg.save_dtype
