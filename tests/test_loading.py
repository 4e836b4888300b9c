"""Loading and saving through transformers: round trips, zoo names, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from olmokit.config import read_yaml
from olmokit.data.formatting import CHATML_TEMPLATE
from olmokit.errors import CheckpointError, FamilyError
from olmokit.loading import load_model, load_tokenizer, resolve_dtype, save_model
from olmokit.zoo.registry import list_models, shipped_path, zoo_entry


def _logits(model, seed=0):
    ids = torch.randint(
        0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_save_load_round_trip_gives_identical_logits(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = save_model(tiny_model, tmp_path / "m")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    again = load_model(out)
    torch.testing.assert_close(_logits(again), _logits(tiny_model), rtol=0, atol=0)
    stock = AutoModelForCausalLM.from_pretrained(out)  # plain HF loads it too
    torch.testing.assert_close(_logits(stock.eval()), _logits(tiny_model), rtol=0, atol=0)


def test_save_overwrites_atomically(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m")
    save_model(tiny_model, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_missing_tensors_are_refused(tiny_model, tmp_path):
    out = save_model(tiny_model, tmp_path / "m")
    tensors = load_file(out / "model.safetensors")
    tensors.pop("model.layers.0.mlp.up_proj.weight")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="up_proj"):
        load_model(out)
    partial = load_model(out, allow_missing=True)  # the one missing tensor is freshly initialised
    fresh = partial.state_dict()
    for key, value in tensors.items():
        torch.testing.assert_close(fresh[key], value, rtol=0, atol=0)
    up = "model.layers.0.mlp.up_proj.weight"
    assert fresh[up].shape == tiny_model.state_dict()[up].shape
    assert not torch.equal(fresh[up], tiny_model.state_dict()[up])


def test_unsupported_family_is_refused_before_loading_weights(tmp_path):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
    )
    cfg.save_pretrained(tmp_path)  # no weights at all: the family check must fire first
    with pytest.raises(FamilyError, match="olmokit supports"):
        load_model(tmp_path)


def test_unresolvable_name_points_to_local_paths_and_zoo():
    with pytest.raises(CheckpointError, match="zoo models: olmo2-stdlib"):
        load_model("no/such/model/anywhere")


def test_zoo_names_and_dtypes():
    m = load_model("zoo:olmo3-tiny-random", dtype="bf16")
    assert next(m.parameters()).dtype == torch.bfloat16
    a, b = load_model("olmo2-tiny-random"), load_model("olmo2-tiny-random")
    torch.testing.assert_close(_logits(a), _logits(b), rtol=0, atol=0)  # seeded
    with pytest.raises(Exception, match="unknown dtype"):
        resolve_dtype("float8")


SHIPPED = [e.name for e in list_models() if e.kind == "shipped"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_zoo_models_load_from_the_package_with_finite_logits(name):
    path = shipped_path(name)
    assert "held-out loss" in (path / "README.md").read_text()
    report = json.loads((path / "build_report.json").read_text())
    assert report["heldout_loss"] < 0.75 * report["unigram_heldout_loss"]
    model = load_model(name)
    tok = load_tokenizer(name)
    assert model.config.model_type == zoo_entry(name).model_type
    assert len(tok) == model.config.vocab_size
    ids = tok("def parse(self, text):\n    return", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    # A trained model: ordinary stdlib-style text is far more likely than under a uniform guess.
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert loss < 0.6 * torch.log(torch.tensor(float(len(tok))))


def test_random_zoo_models_share_the_zoo_tokenizer():
    tok = load_tokenizer("olmo3-tiny-random")
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token) == ("<|pad|>", 1, "<|endoftext|>")
    assert tok.chat_template == CHATML_TEMPLATE


def test_shipped_models_share_one_reproducible_tokenizer():
    """Three independent `zoo build` runs trained byte-identical tokenizers (the recipe is deterministic)."""
    # olmo2-induction trains its own smaller BPE (build_config vocab_size); the others share one
    default = [
        n
        for n in SHIPPED
        if not (read_yaml(shipped_path(n) / "build_config.yaml") or {}).get("vocab_size")
    ]
    texts = {(shipped_path(n) / "tokenizer.json").read_bytes() for n in default}
    assert len(default) >= 3 and len(texts) == 1
