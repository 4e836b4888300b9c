"""ActivationCache: indexing, stacking, accumulated_resid, decompose_resid, head results."""

from __future__ import annotations

import torch

from olmokit.lens.cache import ActivationCache


def test_indexing_and_new_caches(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    assert torch.equal(cache["q", 1], cache["blocks.1.attn.hook_q"])
    assert torch.equal(cache["q1"], cache["blocks.1.attn.hook_q"])
    assert torch.equal(
        cache["resid_post", -1], cache[f"blocks.{hooked.adapter.num_layers - 1}.hook_resid_post"]
    )
    assert ("pattern", 0) in cache and "nope" not in cache
    one = cache.apply_slice_to_batch_dim(0).remove_batch_dim()
    assert isinstance(one, ActivationCache) and one["z", 0].shape == cache["z", 0].shape[1:]
    assert cache.stack_activation("resid_post").shape == (
        hooked.adapter.num_layers,
        *tokens.shape,
        hooked.adapter.hidden_size,
    )


def test_accumulated_resid_logit_lens_ends_at_logits(hooked, tokens):
    logits, cache = hooked.run_with_cache(tokens)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    n = hooked.adapter.num_layers
    assert labels[0] == "0_pre" and labels[-1] == "final_post" and len(labels) == n + 1
    assert torch.equal(hooked.adapter.lm_head()(stack[-1]), logits)
    mids, mid_labels = cache.accumulated_resid(layer=1, incl_mid=True, return_labels=True)
    # TransformerLens's meaning: up to and including resid_pre of `layer` itself
    assert mid_labels == ["0_pre", "0_mid", "1_pre"] and torch.equal(mids[1], cache["resid_mid", 0])
    assert torch.equal(mids[2], cache["resid_pre", 1])


def test_decompose_resid_sums_to_residual(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    n = hooked.adapter.num_layers
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:3] == ["embed", "0_attn_out", "0_mlp_out"] and len(labels) == 2 * n + 1
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], rtol=1e-5, atol=1e-5)
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), cache["resid_mid", 1], rtol=1e-5, atol=1e-5)
    # frozen final scale: normalised components sum to the normalised residual
    normed = cache.decompose_resid(apply_ln=True)
    torch.testing.assert_close(
        normed.sum(0), cache["ln_final.hook_normalized"], rtol=1e-4, atol=1e-5
    )


def test_head_results_sum_to_attn_out(hooked, tokens):
    """Per-head outputs add up to hook_attn_out (OLMo-2/3 via the frozen post-attention-norm scale)."""
    _, cache = hooked.run_with_cache(tokens)
    a = hooked.adapter
    stack, labels = cache.stack_head_results(return_labels=True)
    assert stack.shape[0] == a.num_layers * a.num_heads and labels[1] == "L0H1"
    for i in range(a.num_layers):
        heads = stack[i * a.num_heads : (i + 1) * a.num_heads]
        torch.testing.assert_close(heads.sum(0), cache["attn_out", i], rtol=1e-4, atol=1e-5)
    # the same with only the minimal hooks cached (scale recomputed from raw_out on OLMo-2/3)
    minimal = ["blocks.0.attn.hook_z"] + (
        ["blocks.0.attn.hook_raw_out"] if a.norm_placement == "post" else []
    )
    _, small = hooked.run_with_cache(tokens, names_filter=minimal)
    torch.testing.assert_close(small.head_results(0), cache.head_results(0))
