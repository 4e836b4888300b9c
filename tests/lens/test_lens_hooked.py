"""HookedOlmo: exactness against HF, zero cost when idle, residual identities, GQA shapes, cleanup."""

from __future__ import annotations

import pytest
import torch
from lens_helpers import no_pattern, torch_hook_count
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from olmokit.family import get_adapter
from olmokit.lens import HookedOlmo
from olmokit.zoo.presets import random_model


def test_no_hooks_is_hf_forward(hooked, tokens):
    model = hooked.model
    ref = model(input_ids=tokens, use_cache=False).logits
    assert torch.equal(hooked(tokens), ref)
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_logits_and_hidden_states_exact_with_cache(model_type, impl, tokens):
    model = random_model(model_type, "tiny", seed=0, attn_implementation=impl)
    hooked = HookedOlmo(model)
    # Under eager every hook (patterns included) is exact; under SDPA everything except patterns.
    names = None if impl == "eager" else no_pattern
    with torch.no_grad():
        ref = model(input_ids=tokens, use_cache=False, output_hidden_states=True)
        logits, cache = hooked.run_with_cache(tokens, names_filter=names)
    assert torch.equal(logits, ref.logits)
    n = hooked.adapter.num_layers
    for i in range(n):
        assert torch.equal(cache["resid_pre", i], ref.hidden_states[i])
    assert torch.equal(cache["ln_final.hook_normalized"], ref.hidden_states[n])
    assert torch.equal(hooked.adapter.final_norm()(cache["resid_post", -1]), ref.hidden_states[n])


def test_residual_identities_exact(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    for i in range(hooked.adapter.num_layers):
        assert torch.equal(cache["resid_pre", i] + cache["attn_out", i], cache["resid_mid", i])
        assert torch.equal(cache["resid_mid", i] + cache["mlp_out", i], cache["resid_post", i])
        if i + 1 < hooked.adapter.num_layers:
            assert torch.equal(cache["resid_post", i], cache["resid_pre", i + 1])
    assert torch.equal(cache["hook_embed"], cache["resid_pre", 0])


def test_post_norm_attn_out_is_normed_raw_out(hooked, tokens):
    """OLMo-2/3: attn_out = post_attention_layernorm(raw_out) != raw_out; v1 has no raw_out hooks."""
    names = hooked.hook_names()
    if hooked.adapter.norm_placement == "pre":
        assert "blocks.0.attn.hook_raw_out" not in names and "blocks.0.ln1.hook_normalized" in names
        return
    _, cache = hooked.run_with_cache(tokens)
    from olmokit.family import NormSite

    norm = hooked.adapter.norm(0, NormSite.ATTN_OUTPUT)
    raw = cache["blocks.0.attn.hook_raw_out"]
    assert torch.equal(norm(raw), cache["attn_out", 0])
    assert not torch.allclose(raw, cache["attn_out", 0])


def test_qkv_shapes_under_gqa(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    a = hooked.adapter
    b, s = tokens.shape
    assert a.num_heads == 4 and a.num_kv_heads == 2
    assert cache["q", 0].shape == (b, s, 4, a.head_dim)
    assert cache["k", 0].shape == (b, s, 2, a.head_dim)
    assert cache["v", 0].shape == (b, s, 2, a.head_dim)
    assert cache["z", 0].shape == (b, s, 4, a.head_dim)
    assert cache["pattern", 0].shape == (b, 4, s, s)
    assert cache["pre", 0].shape == (b, s, a.intermediate_size)


def test_q_is_after_norm_and_rope(hooked, tokens):
    """hook_q = RoPE(q_norm(q_proj(x))) per head; checked by recomputing from the attention input."""
    _, cache = hooked.run_with_cache(tokens)
    a = hooked.adapter
    x = (
        cache["blocks.0.ln1.hook_normalized"]
        if a.norm_placement == "pre"
        else cache["resid_pre", 0]
    )
    q = a.q_proj(0)(x)
    if a.q_norm(0) is not None:
        q = a.q_norm(0)(q)
    q = q.view(*q.shape[:-1], a.num_heads, a.head_dim).transpose(1, 2)
    pos = torch.arange(tokens.shape[1])[None]
    rope = a.rotary_emb()
    cos, sin = rope(x, pos, a.layer_types[0]) if a.generation == 3 else rope(x, pos)
    rot = torch.cat((-q[..., a.head_dim // 2 :], q[..., : a.head_dim // 2]), dim=-1)
    expected = (q * cos[:, None] + rot * sin[:, None]).transpose(1, 2)
    torch.testing.assert_close(cache["q", 0], expected)


def test_pattern_forces_eager_only_in_requested_layer(hooked, tokens, monkeypatch):
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def spy(module, *args, **kwargs):
        calls.append(module.layer_idx)
        return sdpa(module, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa", spy)
    n = hooked.adapter.num_layers
    hooked(tokens)
    assert calls == list(range(n))
    calls.clear()
    _, cache = hooked.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    assert calls == [i for i in range(n) if i != 1]
    assert list(cache.keys()) == ["blocks.1.attn.hook_pattern"]
    # q/k/v hooks alone keep SDPA in their layer too.
    calls.clear()
    hooked.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"])
    assert calls == list(range(n))
    assert all(hooked.adapter.attention(i).config is hooked.model.config for i in range(n))


def test_pattern_matches_hf_eager_and_respects_sliding_window(model_type, tokens):
    eager = random_model(model_type, "tiny", seed=0, attn_implementation="eager")
    sdpa = HookedOlmo(random_model(model_type, "tiny", seed=0))
    with torch.no_grad():
        ref = eager(input_ids=tokens, use_cache=False, output_attentions=True).attentions
        _, cache = sdpa.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    a = sdpa.adapter
    s = tokens.shape[1]
    q, k = torch.arange(s)[:, None], torch.arange(s)[None]
    for i in range(a.num_layers):
        pattern = cache["pattern", i]
        torch.testing.assert_close(pattern, ref[i], rtol=0, atol=1e-6)
        allowed = k <= q
        if a.layer_types[i] == "sliding_attention":
            allowed &= k > q - a.sliding_window
        assert torch.all(pattern[..., ~allowed] == 0)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    if model_type == "olmo3":
        assert a.sliding_window < s  # the window really cut something


def test_padding_mask_respected(hooked):
    tokens = torch.randint(4, 4096, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding in the first row
    with torch.no_grad():
        _, cache = hooked.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_pattern"), attention_mask=mask
        )
    assert torch.all(cache["pattern", 0][0, :, 3:, :3] == 0)
    # the unpadded row still attends to its first token (within OLMo-3's window of 8)
    assert torch.all(cache["pattern", 0][1, :, 1:8, 0] > 0)


def test_hooks_removed_after_exception(hooked, tokens):
    model = hooked.model

    def boom(x, hook):
        raise RuntimeError("boom")

    for name in [
        "blocks.0.hook_resid_pre",
        "blocks.1.attn.hook_pattern",
        "blocks.0.hook_resid_mid",
        "blocks.1.mlp.hook_post",
    ]:
        with pytest.raises(RuntimeError, match="boom"):
            hooked.run_with_hooks(tokens, fwd_hooks=[(name, boom)])
        with pytest.raises(RuntimeError, match="boom"):
            hooked.run_with_cache(tokens, fwd_hooks=[(name, boom)])
        with pytest.raises(RuntimeError, match="boom"):
            with hooked.hooks(fwd_hooks=[(name, lambda x, hook: None)]):
                raise RuntimeError("boom")
    assert torch_hook_count(model) == 0
    assert not any(hp.has_hooks for hp in hooked.hook_dict.values())
    assert all(
        hooked.adapter.attention(i).config is model.config for i in range(hooked.adapter.num_layers)
    )
    assert hooked.wiring.active_names == []
    assert torch.equal(hooked(tokens), model(input_ids=tokens, use_cache=False).logits)


def test_edit_hooks_change_the_run(hooked, tokens):
    """Zeroing attn_out in every layer equals a run whose attention contributes nothing."""
    zero = [(lambda n: n.endswith("hook_attn_out"), lambda x, hook: torch.zeros_like(x))]
    _, cache = hooked.run_with_cache(tokens, fwd_hooks=zero, names_filter=no_pattern)
    for i in range(hooked.adapter.num_layers):
        assert torch.equal(cache["resid_mid", i], cache["resid_pre", i])
    # editing resid_mid propagates exactly: resid_post = edited resid_mid + mlp_out
    bump = [("blocks.0.hook_resid_mid", lambda x, hook: x * 2)]
    _, c2 = hooked.run_with_cache(tokens, fwd_hooks=bump, names_filter=no_pattern)
    torch.testing.assert_close(c2["resid_mid", 0], 2 * (c2["resid_pre", 0] + c2["attn_out", 0]))
    assert torch.equal(c2["resid_post", 0], c2["resid_mid", 0] + c2["mlp_out", 0])


def test_scale_hook_edit_recomputes_norm(hooked, tokens):
    name = "ln_final.hook_scale"
    base = hooked(tokens)
    same = hooked.run_with_hooks(tokens, fwd_hooks=[(name, lambda s, hook: s.clone())])
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    if hooked.adapter.norm_placement == "post":  # RMSNorm: doubling the divisor halves the logits
        half = hooked.run_with_hooks(tokens, fwd_hooks=[(name, lambda s, hook: 2 * s)])
        torch.testing.assert_close(half, base / 2, rtol=1e-5, atol=1e-5)


def test_permanent_hooks_and_reset(hooked, tokens):
    seen = []
    hooked.add_hook(
        "blocks.0.hook_resid_post", lambda x, hook: seen.append(hook.name), is_permanent=True
    )
    with hooked.hooks(fwd_hooks=[("embed", lambda x, hook: seen.append(hook.name))]):
        hooked(tokens)
    hooked(tokens)
    hooked.reset_hooks()
    hooked(tokens)
    assert seen == [
        "hook_embed",
        "blocks.0.hook_resid_post",
        "blocks.0.hook_resid_post",
        "blocks.0.hook_resid_post",
    ]
    hooked.reset_hooks(including_permanent=True)
    assert torch_hook_count(hooked.model) == 0


def test_backward_hooks(hooked, tokens):
    grads = {}

    def save(g, hook):
        grads[hook.name] = g

    names = [
        "blocks.0.hook_resid_pre",
        "blocks.1.attn.hook_z",
        "blocks.0.attn.hook_q",
        "blocks.1.attn.hook_pattern",
    ]
    with hooked.hooks(bwd_hooks=[(n, save) for n in names]):
        hooked(tokens, return_type="loss").backward()
    assert set(grads) == set(names)
    assert grads["blocks.1.attn.hook_z"].shape == (2, 20, 4, hooked.adapter.head_dim)
    # reference: d loss / d embeddings from plain HF autograd (inputs_embeds), no hooks
    model = hooked.model
    embeds = get_adapter(model).embed_tokens()(tokens).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )
    (ref_grad,) = torch.autograd.grad(loss, embeds)
    torch.testing.assert_close(grads["blocks.0.hook_resid_pre"], ref_grad, rtol=1e-4, atol=1e-7)
    _, cache = hooked.run_with_cache(tokens, names_filter=names[:2], incl_bwd=True)
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_pre_grad"], grads["blocks.0.hook_resid_pre"]
    )
    assert torch_hook_count(hooked.model) == 0


def test_names_filter_validation(hooked, tokens):
    with pytest.raises(ValueError, match="unknown hook"):
        hooked.run_with_cache(tokens, names_filter=["blocks.0.hook_nope"])
    with pytest.raises(ValueError):
        hooked.run_with_cache(tokens, names_filter=3)
    with pytest.raises(ValueError, match="unknown hook"):
        hooked.run_with_hooks(tokens, fwd_hooks=[("blocks.9.hook_resid_pre", lambda x, hook: None)])


@pytest.mark.parametrize("text", ["", ["a", ""], []])
def test_empty_prompt_is_a_config_error(text, zoo_tokenizer):
    from olmokit.errors import ConfigError
    from olmokit.lens.logit_lens import logit_lens

    hooked = HookedOlmo(random_model("olmo2", "tiny"), zoo_tokenizer)
    with pytest.raises(ConfigError, match="empty prompt"):
        hooked.to_tokens(text)
    with pytest.raises(ConfigError, match="empty prompt"):
        logit_lens(hooked, text)
    assert hooked.to_tokens(" ", prepend_bos=False).shape == (1, 1)  # whitespace is a prompt
    # TL's default: a BOS in front (OLMo's tokenizer has none, so EOS stands in for it)
    with_bos = hooked.to_tokens(" ")
    assert with_bos.shape == (1, 2) and int(with_bos[0, 0]) == zoo_tokenizer.eos_token_id


def test_w_u_is_the_unembedding(hooked):
    assert torch.equal(hooked.W_U, get_adapter(hooked.model).lm_head().weight.T)
    assert hooked.W_U.shape == (hooked.adapter.hidden_size, hooked.adapter.vocab_size)
