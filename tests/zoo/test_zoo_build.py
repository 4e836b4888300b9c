"""The zoo recipe end to end at toy scale: builds, loads in stock transformers, resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from olmokit.zoo.build import ZooBuildConfig, build_zoo_model
from olmokit.zoo.build.pretrain import unigram_cross_entropy

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
    assert json.loads((out / "build_report.json").read_text())["heldout_loss"] > 0

    # A longer run in the same work dir resumes from the saved checkpoint instead of starting over.
    report2 = build_zoo_model(cfg.merge(["steps=6"]), out, work, log=lambda *a: None)
    assert report2["resumed_from"] is not None and report2["tokens_seen"] == 6 * 2 * 32
