"""The TransformerLens API of HookedOlmo, piece by piece, on every generation (tiny random models).

Each test compares against a slow reference computed another way (the HF modules themselves, a
second forward, plain torch maths), so a wrong reshaping, offset or norm would fail.
"""

from __future__ import annotations

import json

import pytest
import torch
from lens_helpers import no_pattern

import olmokit.lens.utils as utils
from olmokit.lens import FactoredMatrix, HookedOlmo, HookedTransformer, UnknownHookError
from olmokit.lens.hooked import HookedOlmo as _HookedOlmo
from olmokit.zoo.presets import random_model


@pytest.fixture
def tl(tiny_model, zoo_tokenizer) -> HookedOlmo:
    return HookedOlmo(tiny_model, zoo_tokenizer)


def test_top_level_names():
    import olmokit.lens as lens

    assert HookedTransformer is _HookedOlmo
    for name in ("HookPoint", "ActivationCache", "FactoredMatrix", "utils", "HookedRootModule"):
        assert hasattr(lens, name)


def test_cfg_has_tl_fields(tl):
    a, cfg = tl.adapter, tl.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        a.num_layers,
        a.hidden_size,
        a.num_heads,
        a.head_dim,
        a.intermediate_size,
        a.vocab_size,
    )
    assert cfg.n_key_value_heads == a.num_kv_heads  # the tiny models are GQA 4/2
    assert cfg["n_kv_heads"] == a.num_kv_heads and cfg["d_model"] == a.hidden_size
    assert cfg.normalization_type == ("LN" if a.generation == 1 else "RMS")
    assert cfg.positional_embedding_type == "rotary" and cfg.act_fn == "silu"
    assert cfg.default_prepend_bos is True and cfg.original_architecture == a.spec.causal_lm_class
    assert cfg.device == torch.device("cpu") and cfg.dtype == torch.float32
    json.dumps(cfg.to_dict())
    with pytest.raises(KeyError, match="fields"):
        cfg["nope"]


# ---------------------------------------------------------------------------------------- weights
def test_attention_weights_are_views_with_tl_layout(tl):
    a = tl.adapter
    x = torch.randn(3, a.hidden_size)
    for i in range(a.num_layers):
        attn = tl.blocks[i].attn
        q = a.q_proj(i)(x).view(3, a.num_heads, a.head_dim)
        k = a.k_proj(i)(x).view(3, a.num_kv_heads, a.head_dim)
        torch.testing.assert_close(torch.einsum("pm,hmd->phd", x, attn.W_Q) + attn.b_Q, q)
        torch.testing.assert_close(torch.einsum("pm,hmd->phd", x, attn._W_K), k)
        assert attn.W_K.shape == (a.num_heads, a.hidden_size, a.head_dim)
        group = a.kv_group_size
        assert torch.equal(attn.W_K[group], attn._W_K[1]) and torch.equal(attn.W_V[1], attn._W_V[0])
        z = torch.randn(3, a.num_heads, a.head_dim)
        torch.testing.assert_close(
            torch.einsum("phd,hdm->pm", z, attn.W_O) + attn.b_O, a.o_proj(i)(z.flatten(1))
        )
        # a view: same storage as the HF weight, edits show through
        assert attn.W_Q.data_ptr() == a.q_proj(i).weight.data_ptr()
        assert attn.W_O.data_ptr() == a.o_proj(i).weight.data_ptr()
    with torch.no_grad():
        tl.blocks[0].attn.W_Q[0, 0, 0] += 1.0
    assert a.q_proj(0).weight[0, 0] == tl.blocks[0].attn.W_Q[0, 0, 0]
    assert tl.W_Q.shape == (a.num_layers, a.num_heads, a.hidden_size, a.head_dim)
    assert tl._W_K.shape == (a.num_layers, a.num_kv_heads, a.hidden_size, a.head_dim)
    assert tl.b_O.shape == (a.num_layers, a.hidden_size) and not tl.b_O.any()
    assert (tl.blocks[0].attn.q_norm_w is None) == (a.generation == 1)


def test_mlp_and_embedding_weights(tl):
    a = tl.adapter
    x = torch.randn(2, 3, a.hidden_size)
    m = tl.blocks[1].mlp
    ref = a.mlp(1)(x)
    ours = (torch.nn.functional.silu(x @ m.W_gate + 0) * (x @ m.W_in + m.b_in)) @ m.W_out + m.b_out
    torch.testing.assert_close(ours, ref)
    assert tl.W_in.shape == (a.num_layers, a.hidden_size, a.intermediate_size)
    assert tl.W_E.data_ptr() == a.embed_tokens().weight.data_ptr()
    assert torch.equal(tl.embed.W_E, a.embed_tokens().weight)
    torch.testing.assert_close(x @ tl.unembed.W_U + tl.unembed.b_U, a.lm_head()(x))
    assert not hasattr(tl, "W_pos")  # rotary: no positional embedding matrix, as in TL


def test_qk_ov_factored(tl):
    qk, ov = tl.QK, tl.OV
    torch.testing.assert_close(qk.AB, tl.W_Q @ tl.W_K.transpose(-2, -1))
    torch.testing.assert_close(ov[1, 2].AB, tl.W_V[1, 2] @ tl.W_O[1, 2])
    assert tl.blocks[0].attn.OV.shape == ov[0].shape


def test_factored_matrix_svd_and_products():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 6, 3, generator=g), torch.randn(2, 3, 5, generator=g)
    fm = FactoredMatrix(A, B)
    U, S, Vh = fm.svd()
    torch.testing.assert_close(
        U @ torch.diag_embed(S) @ Vh.transpose(-2, -1), A @ B, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(S, torch.linalg.svd(A @ B).S[..., :3], atol=1e-5, rtol=1e-5)
    C = torch.randn(5, 4, generator=g)
    torch.testing.assert_close((fm @ C).AB, A @ B @ C)
    D = torch.randn(7, 6, generator=g)
    torch.testing.assert_close((D @ fm).AB, D @ A @ B)
    torch.testing.assert_close(
        (fm @ FactoredMatrix(C, C.T)).AB, A @ B @ C @ C.T, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(fm.T.AB, (A @ B).transpose(-2, -1))
    torch.testing.assert_close(fm.norm(), (A @ B).norm(dim=(-2, -1)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not chain"):
        FactoredMatrix(A, C)


# ---------------------------------------------------------------------------------------- forward
def test_forward_return_types_and_loss(tl, tokens):
    logits, loss = tl(tokens, return_type="both")
    torch.testing.assert_close(loss, tl(tokens, return_type="loss"))
    per_token = tl(tokens, return_type="loss", loss_per_token=True)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none"
    ).view(tokens.shape[0], -1)
    torch.testing.assert_close(per_token, ref)
    torch.testing.assert_close(per_token.mean(), loss)
    torch.testing.assert_close(utils.lm_cross_entropy_loss(logits, tokens), loss)
    assert tl(tokens, return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        tl(tokens, return_type="probs")


def test_stop_and_start_at_layer(tl, tokens):
    logits, cache = tl.run_with_cache(tokens, names_filter=no_pattern)  # SDPA kept: bit-comparable
    n = tl.cfg.n_layers
    for k in range(n):
        resid = tl(tokens, stop_at_layer=k)
        assert torch.equal(resid, cache["resid_pre", k])
        torch.testing.assert_close(tl(resid, start_at_layer=k), logits, rtol=0, atol=1e-5)
    assert torch.equal(tl(tokens, stop_at_layer=-1), cache["resid_pre", n - 1])
    assert torch.equal(tl(tokens, stop_at_layer=n), cache["resid_post", n - 1])
    # hooks in skipped blocks do not fire; hooks after the start do
    fired = []
    tl.run_with_hooks(
        cache["resid_pre", 1],
        start_at_layer=1,
        fwd_hooks=[
            (
                lambda name: name.endswith("hook_resid_pre"),
                lambda x, hook: fired.append(hook.layer()),
            )
        ],
    )
    assert fired == list(range(1, n))
    loss = tl(cache["resid_pre", 1], start_at_layer=1, tokens=tokens, return_type="loss")
    torch.testing.assert_close(loss, tl(tokens, return_type="loss"), rtol=0, atol=1e-5)


def test_padding_and_attention_mask(tiny_model, zoo_tokenizer):
    tl = HookedOlmo(tiny_model, zoo_tokenizer)
    texts = ["def f(x):", "import os\nimport sys\nprint(sys.argv)"]
    right = tl.to_tokens(texts)
    short = tl.to_tokens(texts[0])
    assert right.shape[0] == 2 and torch.equal(right[0, : short.shape[1]], short[0])
    assert bool((right[0, short.shape[1] :] == zoo_tokenizer.pad_token_id).all())
    n = short.shape[1]
    alone = tl(texts[0])
    torch.testing.assert_close(tl(texts)[0, :n], alone[0], atol=1e-5, rtol=0)
    left = tl(texts, padding_side="left")
    torch.testing.assert_close(left[0, -1], alone[0, -1], atol=1e-5, rtol=0)
    left_tokens = tl.to_tokens(texts, padding_side="left")
    assert int(left_tokens[0, -1]) == int(short[0, -1])


def test_generate_with_hooks_and_kv_cache(tl, tokens):
    prompt = tokens[:1, :6]
    steer = torch.randn(tl.cfg.d_model, generator=torch.Generator().manual_seed(3)) * 2.0

    def add(resid, hook):
        return resid + steer

    kwargs = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    plain = tl.generate(prompt, **kwargs)
    with tl.hooks(fwd_hooks=[("blocks.0.hook_resid_post", add)]):
        cached = tl.generate(prompt, use_past_kv_cache=True, **kwargs)
        uncached = tl.generate(prompt, use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached, uncached) and cached.shape == (1, 14)
    assert torch.equal(cached[:, :6], prompt) and not torch.equal(cached, plain)
    # greedy = argmax of a full forward at every step (hooks active)
    with tl.hooks(fwd_hooks=[("blocks.0.hook_resid_post", add)]):
        for t in range(6, 14):
            assert int(tl(cached[:, :t])[0, -1].argmax()) == int(cached[0, t])
    text = tl.generate("def f(x):", max_new_tokens=3, do_sample=False, verbose=False)
    assert isinstance(text, str) and text.startswith("def f(x):")
    sampled = tl.generate(
        prompt, max_new_tokens=4, top_k=5, temperature=0.8, stop_at_eos=False, verbose=False
    )
    assert sampled.shape == (1, 10)


# ---------------------------------------------------------------------------------------- tokens
def test_token_helpers(tl, zoo_tokenizer):
    assert tl.to_single_token(" self") == 310
    with pytest.raises(ValueError, match="not a single token"):
        tl.to_single_token(" John")
    t = tl.to_tokens("def f(self):")
    assert int(t[0, 0]) == zoo_tokenizer.eos_token_id  # no BOS in the tokenizer: EOS stands in
    assert tl.to_tokens("def f(self):", prepend_bos=False).shape[1] == t.shape[1] - 1
    assert tl.to_string(t[0, 1:]) == "def f(self):"
    assert tl.to_string(t) == ["<|endoftext|>def f(self):"]
    assert tl.get_token_position("self", t) == 4
    assert tl.tokens_to_residual_directions(" self").shape == (tl.cfg.d_model,)
    dirs = tl.tokens_to_residual_directions(torch.tensor([[1, 2, 3]]))
    assert dirs.shape == (1, 3, tl.cfg.d_model) and torch.equal(dirs[0, 1], tl.W_U[:, 2])
    assert tl.to_str_tokens(["a b", "c"]) == [tl.to_str_tokens("a b"), tl.to_str_tokens("c")]


# ---------------------------------------------------------------------------------------- hooks
def test_hook_point_machinery(tl, tokens):
    hp = tl.blocks[1].attn.hook_z
    assert hp is tl.hook_dict["blocks.1.attn.hook_z"] and hp.layer() == 1
    assert tl.mod_dict["blocks.1.attn.hook_z"] is hp and hp in tl.hook_points()
    with pytest.raises(ValueError, match="not inside a block"):
        tl.hook_dict["hook_embed"].layer()
    calls = []

    def count(x, hook):
        hook.ctx["n"] = hook.ctx.get("n", 0) + 1
        calls.append(hook.name)

    tl.add_perma_hook("blocks.1.attn.hook_z", count)
    tl.add_hook("blocks.0.attn.hook_z", count)
    tl(tokens)
    tl.reset_hooks(clear_contexts=False)
    tl(tokens)
    assert calls == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.attn.hook_z"]
    assert hp.ctx["n"] == 2
    tl.reset_hooks(including_permanent=True)
    assert not hp.has_hooks and hp.ctx == {}
    assert torch.equal(tl(tokens), tl.model(input_ids=tokens, use_cache=False).logits)


def test_get_act_name_aliases_and_validation(tl, tokens):
    g = utils.get_act_name
    assert g("attn", 3) == "blocks.3.attn.hook_pattern" and g("value", 0) == "blocks.0.attn.hook_v"
    assert (
        g("scale4ln1") == "blocks.4.ln1.hook_scale"
        and g("normalized", 2, "ln2") == "blocks.2.ln2.hook_normalized"
    )
    assert (
        g("result", 1) == "blocks.1.attn.hook_result"
        and g("rot_q", 0) == "blocks.0.attn.hook_rot_q"
    )
    assert g("in", 2) == "blocks.2.hook_in" and g("pre5") == "blocks.5.mlp.hook_pre"
    _, cache = tl.run_with_cache(tokens)
    assert torch.equal(cache[g("in", 1)], cache["resid_pre", 1])
    assert torch.equal(cache["rot_q", 0], cache["q", 0])
    _, small = tl.run_with_cache(tokens, names_filter=[g("in", 1), "blocks.0.attn.hook_rot_k"])
    assert sorted(small.keys()) == ["blocks.0.attn.hook_k", "blocks.1.hook_resid_pre"]
    with pytest.raises(UnknownHookError, match="set_use_attn_result") as err:
        cache["result", 0]
    assert "blocks.{i}.hook_resid_pre" in str(err.value)
    wrong = "ln1" if tl.cfg.normalization_type == "RMS" else "ln1_post"
    with pytest.raises(UnknownHookError, match="valid names"):
        tl.run_with_hooks(tokens, fwd_hooks=[(g("scale", 0, wrong), lambda x, hook: None)])


def test_attn_result_split_qkv_and_mlp_in(tl, tokens):
    a = tl.adapter
    base = tl(tokens)
    tl.set_use_attn_result(True)
    tl.set_use_split_qkv_input(True)
    tl.set_use_hook_mlp_in(True)
    logits, cache = tl.run_with_cache(tokens, names_filter=no_pattern)
    assert torch.equal(logits, base)  # observing changes nothing
    raw = "attn_raw_out" if a.norm_placement == "post" else "attn_out"
    torch.testing.assert_close(cache["result", 0].sum(-2), cache[raw, 0], rtol=1e-4, atol=1e-5)
    assert cache["blocks.0.hook_k_input"].shape == (*tokens.shape, a.num_kv_heads, a.hidden_size)

    def zero_result_head(x, hook):
        x = x.clone()
        x[:, :, 1] = 0
        return x

    def zero_z_head(x, hook):
        x = x.clone()
        x[:, :, 1] = 0
        return x

    torch.testing.assert_close(
        tl.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", zero_result_head)]),
        tl.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_z_head)]),
        rtol=1e-4,
        atol=1e-5,
    )
    # zero one KV head's value input = zero that head's values (no norm, no RoPE on v)
    torch.testing.assert_close(
        tl.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_v_input", zero_result_head)]),
        tl.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_v", zero_z_head)]),
        rtol=1e-4,
        atol=1e-5,
    )
    same = tl.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.hook_q_input", lambda x, hook: x.clone())]
    )
    torch.testing.assert_close(same, base, rtol=1e-4, atol=1e-5)
    # editing the MLP input leaves the residual alone: resid_post - mlp_out is the old resid_mid
    _, edited = tl.run_with_cache(
        tokens, fwd_hooks=[("blocks.0.hook_mlp_in", lambda x, hook: x * 2)]
    )
    torch.testing.assert_close(
        edited["resid_post", 0] - edited["mlp_out", 0], cache["resid_mid", 0]
    )
    assert not torch.allclose(edited["mlp_out", 0], cache["mlp_out", 0])
    tl.set_use_attn_result(False)
    assert "blocks.0.attn.hook_result" not in tl.hook_dict


# ---------------------------------------------------------------------------------------- cache
def test_cache_decompositions(tl, tokens):
    a = tl.adapter
    tl.set_use_attn_result(True)
    logits, cache = tl.run_with_cache(tokens)
    final = cache["resid_post", -1]
    heads, labels = cache.stack_head_results(layer=-1, incl_remainder=True, return_labels=True)
    assert labels[-1] == "remainder" and heads.shape[0] == a.num_layers * a.num_heads + 1
    torch.testing.assert_close(heads.sum(0), final)
    neurons, nlabels = cache.stack_neuron_results(1, return_labels=True)
    assert nlabels[:2] == ["L0N0", "L0N1"]
    torch.testing.assert_close(neurons.sum(0), cache["mlp_out", 0], rtol=1e-4, atol=1e-5)
    full, flabels = cache.get_full_resid_decomposition(return_labels=True)
    torch.testing.assert_close(full.sum(0), final, rtol=1e-4, atol=1e-4)
    mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), cache["resid_mid", 1], rtol=1e-4, atol=1e-4)
    attn_only = cache.decompose_resid(mode="attn", incl_embeds=False)
    assert attn_only.shape[0] == a.num_layers
    # logit attributions of the full decomposition sum to the real logit (difference)
    answer, wrong = tokens[:, -1], tokens[:, 0]
    attrs = cache.logit_attrs(full[:, :, -1], answer, wrong, pos_slice=-1)
    rows = torch.arange(tokens.shape[0])
    total = logits[rows, -1, answer] - logits[rows, -1, wrong]
    torch.testing.assert_close(attrs.sum(0), total, rtol=1e-3, atol=1e-4)
    # apply_ln_to_stack slices the frozen scale like the stack
    normed = cache.apply_ln_to_stack(final[None, :, 2], pos_slice=2)[0]
    torch.testing.assert_close(
        normed, cache["ln_final.hook_normalized"][:, 2], rtol=1e-4, atol=1e-5
    )
    if a.norm_placement == "pre":  # a block's own norm, frozen (OLMo v1 only)
        ln1 = cache.apply_ln_to_stack(cache["resid_pre", 1][None], layer=1)[0]
        torch.testing.assert_close(ln1, cache["blocks.1.ln1.hook_normalized"], rtol=1e-4, atol=1e-5)
    else:
        with pytest.raises(ValueError, match="post-norm"):
            cache.apply_ln_to_stack(final[None], layer=1)
    plain = tl.run_with_cache(tokens, return_cache_object=False, names_filter="hook_embed")[1]
    assert isinstance(plain, dict) and list(plain) == ["hook_embed"]


def test_processing_flags(model_type, zoo_tokenizer):
    from olmokit.lens.processing import process_weights

    model = random_model(model_type, "tiny", seed=0)
    tokens = torch.randint(4, 4096, (1, 12), generator=torch.Generator().manual_seed(2))
    before = model(input_ids=tokens).logits
    adapter = HookedOlmo(model).adapter
    post = adapter.norm_placement == "post"
    if post:
        with pytest.warns(UserWarning, match="fold_ln=True is not applied"):
            applied = process_weights(
                adapter, fold_ln=True, center_writing_weights=True, center_unembed=True
            )
        assert applied == ["center_unembed"]
    else:
        applied = process_weights(
            adapter, fold_ln=True, center_writing_weights=True, center_unembed=True
        )
        assert applied == ["fold_ln", "center_writing_weights", "center_unembed"]
        assert adapter.o_proj(0).weight.mean(0).abs().max() < 1e-6
    after = model(input_ids=tokens).logits
    # exact up to a constant per position: log-probabilities unchanged
    torch.testing.assert_close(after.log_softmax(-1), before.log_softmax(-1), rtol=1e-4, atol=1e-4)
    with pytest.warns(UserWarning, match="rotary"):
        process_weights(adapter, refactor_factored_attn_matrices=True)


def test_utils(tl, tokens, zoo_tokenizer):
    logits = tl(tokens)
    acc = utils.lm_accuracy(logits, tokens, per_token=True)
    assert acc.shape == (2, tokens.shape[1] - 1)
    assert float(utils.lm_accuracy(logits, tokens)) == pytest.approx(float(acc.float().mean()))
    assert utils.to_numpy(torch.ones(2)).tolist() == [1.0, 1.0]
    assert utils.get_corner(torch.arange(16).view(4, 4), 2).tolist() == [[0, 1], [4, 5]]
    assert utils.remove_batch_dim(torch.ones(1, 3)).shape == (3,)
    rows = utils.tokenize_and_concatenate(
        ["def f(x):\n    return x"] * 10, zoo_tokenizer, max_length=8
    )
    assert rows.shape[1] == 8 and bool((rows[:, 0] == zoo_tokenizer.eos_token_id).all())
    records = utils.test_prompt("def f(x,", "self", tl, print_details=False)
    row = tl("def f(x,")[0, -1]
    assert records[0]["token"] == " self" and records[0]["rank"] == int((row > row[310]).sum())
    torch.testing.assert_close(torch.tensor(records[0]["logit"]), row[310])


def test_forward_with_past_kv_cache(tl, tokens):
    from transformers import DynamicCache

    full = tl(tokens)
    cache = DynamicCache(config=tl.model.config)
    first = tl(tokens[:, :7], past_kv_cache=cache)
    rest = tl(tokens[:, 7:], past_kv_cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-4, atol=1e-5)


def test_bypass_layers_restores_the_model(tiny_model, tokens):
    """The family accessor behind start_at_layer: bypassed blocks are identities, then restored."""
    adapter = HookedOlmo(tiny_model).adapter
    calls = []
    handle = adapter.layer(0).register_forward_hook(lambda *a: calls.append(1))
    with adapter.bypass_layers([0]):
        x = torch.randn(1, 3, adapter.hidden_size)
        assert adapter.layer(0)(x) is x and calls == []
    assert "forward" not in vars(adapter.layer(0)) and len(adapter.layer(0)._forward_hooks) == 1
    handle.remove()
    before = tiny_model(input_ids=tokens).logits
    assert torch.equal(tiny_model(input_ids=tokens).logits, before)
