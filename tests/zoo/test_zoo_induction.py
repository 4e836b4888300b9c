"""``olmo2-induction``: the zoo model with a circuit to find, and the recipe pieces that grow it."""

from __future__ import annotations

import json

import pytest
import torch

from olmokit.zoo.build import ZooBuildConfig
from olmokit.zoo.build.circuits import MixedBlocks, RepeatedSequences, induction_probe
from olmokit.zoo.registry import list_models, shipped_path

NAME = "olmo2-induction"


def test_registry_lists_it_as_shipped():
    entry = {e.name: e for e in list_models()}[NAME]
    assert entry.kind == "shipped" and entry.available and entry.model_type == "olmo2"
    assert (shipped_path(NAME) / "model.safetensors").stat().st_size < 2_000_000


@pytest.fixture(scope="module")
def hooked():
    from olmokit.lens import HookedOlmo

    return HookedOlmo.from_pretrained(NAME)


def test_top_head_is_an_induction_head(hooked):
    """Computed here with the lens (``olmokit lens induction``'s defaults), not read from the card."""
    from olmokit.lens.heads import induction_score

    result = induction_score(hooked, seq_len=32, batch=8, seed=0)
    layer, head, score = result.top(1)[0]
    assert score >= 0.5
    # an induction head sits above previous-token heads (the circuit's first half): in layer 0 the
    # best head puts >= 0.3 of its attention on the previous token (uniform attention: ~0.03)
    assert layer >= 1
    assert float(result.previous_token[:layer].max()) >= 0.3
    assert result.copy_gain > 1.0  # the second copy is predicted far better than the first
    # on another draw of tokens (a seed the build never probed) it is the same head
    other = induction_score(hooked, seq_len=24, batch=8, seed=123)
    assert other.top(1)[0][:2] == (layer, head) and other.top(1)[0][2] >= 0.5


def test_card_and_report_record_the_scores_the_probe_measures(hooked):
    """The build's probe (HF ``output_attentions``) and the lens (hooks) agree, and the shipped
    report and card hold those numbers."""
    from olmokit.lens.heads import induction_score

    path = shipped_path(NAME)
    report = json.loads((path / "build_report.json").read_text(encoding="utf-8"))
    probe = report["induction_probe"]
    lens = induction_score(
        hooked, seq_len=probe["seq_len"], batch=probe["batch"], seed=probe["seed"]
    )
    # the report rounds to 4 decimals; the lens and the build's eager probe sum in other orders
    assert torch.allclose(lens.scores, torch.tensor(probe["induction"]), atol=1e-3)
    top = probe["top"][0]
    assert (top["layer"], top["head"]) == lens.top(1)[0][:2]
    card = (path / "README.md").read_text(encoding="utf-8")
    assert f"| L{top['layer']}H{top['head']} | {top['induction']:.3f} |" in card
    assert report["build_config"]["repeat_share"] > 0


def test_probe_matches_lens_on_a_random_model():
    """Independent of the shipped weights: the two ways of reading attention agree exactly."""
    from olmokit.lens import HookedOlmo
    from olmokit.lens.heads import induction_score
    from olmokit.zoo.presets import random_model

    model = random_model("olmo2", "tiny", seed=3).train()
    before = model.config._attn_implementation
    probe = induction_probe(model, seq_len=8, batch=2, seed=5)
    assert model.config._attn_implementation == before and model.training  # both restored
    lens = induction_score(HookedOlmo(random_model("olmo2", "tiny", seed=3)), 8, 2, 5)
    assert torch.allclose(probe.induction, lens.scores, atol=1e-6)
    assert torch.allclose(probe.previous_token, lens.previous_token, atol=1e-6)
    assert probe.copy_gain == pytest.approx(lens.copy_gain, abs=1e-5)


def test_repeated_sequences_are_deterministic_and_scored_on_repeats_only():
    ds = RepeatedSequences(10, seq_len=32, vocab_size=100, min_len=4, max_len=16, seed=7)
    for i in range(len(ds)):
        item, again = ds[i], ds[i]
        ids, labels = item["input_ids"], item["labels"]
        assert torch.equal(ids, again["input_ids"])
        period = int((labels == -100).sum())
        assert 4 <= period <= 16 and bool((labels[:period] == -100).all())
        assert torch.equal(ids[period:], ids[: 32 - period])  # the string repeats
        assert torch.equal(labels[period:], ids[period:])
        assert int(ids.min()) >= 4 and int(ids.max()) < 100
    assert not torch.equal(ds[0]["input_ids"], ds[1]["input_ids"])
    mixed = MixedBlocks([{"input_ids": torch.zeros(32, dtype=torch.long)}] * 3, ds)
    assert len(mixed) == 13 and torch.equal(mixed[3]["input_ids"], ds[0]["input_ids"])


def test_repeat_lengths_must_fit_twice():
    with pytest.raises(Exception, match="fit twice"):
        ZooBuildConfig.from_dict({"seq_len": 64, "repeat_max_len": 40})
    assert ZooBuildConfig.from_dict({"seq_len": 64, "repeat_max_len": 32}).repeat_max_len == 32


def test_zoo_build_by_name_reruns_the_shipped_recipe(monkeypatch, tmp_path, capsys):
    """``olmokit zoo build olmo2-induction`` builds from the recipe recorded next to the weights."""
    import olmokit.zoo.build as build
    from olmokit.cli.main import main

    seen = {}
    monkeypatch.setattr(
        build, "build_zoo_model", lambda cfg, out, work: seen.update(cfg=cfg, out=out)
    )
    out = tmp_path / "m"
    assert main(["zoo", "build", NAME, "steps=7", "--out", str(out)]) == 0
    shipped = ZooBuildConfig.from_yaml(shipped_path(NAME) / "build_config.yaml")
    assert seen["cfg"] == shipped.merge(["steps=7"]) and seen["out"] == out
    assert main(["zoo", "build", "olmo2-tiny-random"]) == 2
    assert "no build recipe" in capsys.readouterr().err
    assert main(["zoo", "build", NAME, "olmo2-stdlib"]) == 2
    assert "not several" in capsys.readouterr().err
