"""Attaching JoLA to every OLMo generation: parity with stock HF, counts, freezing, caches, checkpointing."""

import pytest
import torch

from olmokit.errors import ConfigError, FamilyError
from olmokit.family import get_adapter
from olmokit.jola import (
    JoLAModel,
    JoLAOlmo2Model,
    JoLASettings,
    attach_jola,
    detach_jola,
    disable_jola,
    jola_edits,
    jola_parameters,
    num_jola_parameters,
    set_gate_mode,
    unfreeze_jola_params,
)
from olmokit.zoo.presets import random_model

IDS = torch.tensor([[5, 17, 99, 3, 250, 1000, 7, 8, 9, 10, 11, 12, 13, 14], [42] * 14])


def _open_edit(model, seed=0):
    """Make every edit large and fully open so it visibly changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in jola_edits(model).values():
            e.attn_A.copy_(torch.randn(e.attn_A.shape, generator=g))
            e.attn_v.copy_(torch.randn(e.attn_v.shape, generator=g))
            e.log_g1.fill_(5.0)
            e.log_g2.fill_(5.0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hook_off_parity_exact(model_type, attn):
    model = random_model(model_type, "tiny", seed=0, attn_implementation=attn)
    stock = random_model(model_type, "tiny", seed=0, attn_implementation=attn)
    base = stock(IDS).logits
    attach_jola(model, JoLASettings(edit_init_std=0.0))  # A = v = 0: identity
    assert torch.equal(model(IDS).logits, base)
    _open_edit(model)
    edited = model(IDS).logits
    assert (edited - base).abs().max() > 1e-2  # the edit really acts
    with disable_jola(model):
        assert torch.equal(model(IDS).logits, base)
    detach_jola(model)
    assert torch.equal(model(IDS).logits, base)
    assert not any("jola" in k for k in model.state_dict())


def test_parameter_count_and_freezing(tiny_model):
    a = get_adapter(tiny_model)
    attach_jola(tiny_model)
    L, H, d = a.num_layers, a.num_heads, a.head_dim
    assert num_jola_parameters(tiny_model) == L * H * (2 * d + 2)
    trainable = [p for p in tiny_model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == L * H * (2 * d + 2)
    assert {id(p) for p in trainable} == {id(p) for p in jola_parameters(tiny_model)}
    assert all(p.dtype == torch.float32 for p in trainable)


def test_13b_count_from_config():
    """The seed's 1,040,000 is wrong: OLMo-2-13B has 40 layers x 40 heads x 128 -> 412,800."""
    from transformers import Olmo2Config

    from olmokit.jola import jola_parameter_count

    cfg = Olmo2Config(
        hidden_size=5120,
        num_attention_heads=40,
        num_key_value_heads=40,
        num_hidden_layers=40,
        intermediate_size=13824,
        vocab_size=100352,
        max_position_embeddings=32768,
    )
    assert jola_parameter_count(cfg) == 412_800
    assert jola_parameter_count(cfg, applied_layers=[0, 1]) == 2 * 40 * 258


def test_applied_layers_subset(tiny_model):
    a = get_adapter(tiny_model)
    attach_jola(tiny_model, applied_layers=[-1])
    assert list(jola_edits(tiny_model)) == [a.num_layers - 1]
    assert num_jola_parameters(tiny_model) == a.num_heads * (2 * a.head_dim + 2)
    detach_jola(tiny_model)
    with pytest.raises(ConfigError, match="out of range"):
        attach_jola(tiny_model, applied_layers=[99])


def test_attach_twice_refused(tiny_model):
    attach_jola(tiny_model)
    with pytest.raises(ConfigError, match="already attached"):
        attach_jola(tiny_model)


def test_unfreeze_never_reinitialises(tiny_model):
    attach_jola(tiny_model)
    _open_edit(tiny_model, seed=3)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items() if ".jola." in k}
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    unfreeze_jola_params(tiny_model)
    after = {k: v for k, v in tiny_model.state_dict().items() if ".jola." in k}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in jola_parameters(tiny_model))


def test_kv_cache_generation_matches_full_forward(model_type):
    model = random_model(model_type, "tiny", seed=0)
    attach_jola(model)
    _open_edit(model)
    model.eval()
    prompt = IDS[:1, :6]
    out = model.generate(
        prompt, max_new_tokens=12, do_sample=False, pad_token_id=1, eos_token_id=None
    )
    # greedy without a cache, one full forward per token
    seq = prompt
    for _ in range(12):
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], -1)
    assert torch.equal(out, seq)


def test_gradient_checkpointing_keeps_gradients():
    model = random_model("olmo2", "tiny", seed=0)
    attach_jola(model)
    model.train()
    torch.manual_seed(0)
    model(IDS, labels=IDS).loss.backward()
    want = [p.grad.clone() for p in jola_parameters(model)]
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)  # the recomputed forward replays the RNG, so it samples the same gates
    model(IDS, labels=IDS).loss.backward()
    grads = [p.grad for p in jola_parameters(model)]
    assert len(grads) == len(want) and sum(g.abs().sum() for g in grads) > 0
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_bf16_base_fp32_edit():
    model = random_model("olmo3", "tiny", seed=0, dtype=torch.bfloat16)
    base = model(IDS).logits
    attach_jola(model, JoLASettings(edit_init_std=0.0))
    assert all(p.dtype == torch.float32 for p in jola_parameters(model))
    assert torch.equal(model(IDS).logits, base)
    _open_edit(model)
    model.train()
    model(IDS, labels=IDS).loss.backward()
    grads = [p.grad for p in jola_parameters(model)]
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert all(g.abs().sum() > 0 for g in grads[:2])  # layer 0's A and v receive gradient


def test_topk_and_hard_modes(tiny_model):
    attach_jola(tiny_model)
    edits = jola_edits(tiny_model)
    with torch.no_grad():
        for i, e in edits.items():
            e.log_g1.copy_(torch.arange(e.num_heads, dtype=torch.float32) + 10 * i)
            e.log_g2.fill_(3.0)
    set_gate_mode(tiny_model, "topk", topk=3)
    tiny_model.eval()
    open_add = [int((e.gates()[0] > 0).sum()) for e in edits.values()]
    assert (
        sum(open_add) == 3 and open_add[-1] == 3
    )  # the 3 largest log-alphas are in the last layer
    set_gate_mode(tiny_model, "hard", hard_threshold=0.5)
    g1, _ = edits[0].gates()
    assert set(g1.tolist()) <= {0.0, 1.0}


def test_seed_style_class_and_family_check(monkeypatch):
    import olmokit.loading as loading

    monkeypatch.setattr(
        loading, "load_model", lambda *a, **k: random_model("olmo2", "tiny", seed=0)
    )
    model = JoLAOlmo2Model.jola_from_pretrained(
        pretrained_model_name_or_path="x", applied_module="attention", device="cpu"
    )
    from transformers import Olmo2ForCausalLM

    assert isinstance(model, Olmo2ForCausalLM) and isinstance(model, JoLAOlmo2Model)
    model.unfreeze_jola_params()
    assert num_jola_parameters(model) == 2 * 4 * 34
    plain = model.unload()
    assert type(plain) is Olmo2ForCausalLM
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: random_model("olmo", "tiny", seed=0))
    with pytest.raises(FamilyError, match="olmo2"):
        JoLAOlmo2Model.jola_from_pretrained("x", device="cpu")
    assert isinstance(JoLAModel.jola_from_pretrained("x", device="cpu"), JoLAModel)
    with pytest.raises(ConfigError, match="applied_module"):
        JoLAModel.jola_from_pretrained("x", applied_module="mlp", device="cpu")


def test_unsupported_model_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
        )
    )
    with pytest.raises(FamilyError, match="Olmo2ForCausalLM"):
        attach_jola(llama)
