"""Activation patching: self-patches are exact; patch results have the right shapes and meaning."""

from __future__ import annotations

import pytest
import torch
from lens_helpers import no_pattern

from olmokit.lens import patching


@pytest.fixture
def prompts(tokens):
    clean = tokens[:1, :10]
    corrupted = clean.clone()
    corrupted[0, 5] = (corrupted[0, 5] + 1) % 4096
    return clean, corrupted


@pytest.mark.parametrize("name", ["resid_pre", "resid_mid", "resid_post"])
def test_patching_own_clean_activation_restores_clean_logits_exactly(hooked, prompts, name):
    clean, corrupted = prompts
    clean_logits = hooked(clean)
    _, cache = hooked.run_with_cache(clean, names_filter=no_pattern)
    for layer in range(hooked.adapter.num_layers):
        out = hooked.run_with_hooks(
            corrupted, fwd_hooks=[((name, layer), lambda x, hook, c=cache[name, layer]: c.clone())]
        )
        assert torch.equal(out, clean_logits), (name, layer)
        # and a clean run patched with itself is the clean run, bit for bit
        same = hooked.run_with_hooks(
            clean, fwd_hooks=[((name, layer), lambda x, hook, c=cache[name, layer]: c.clone())]
        )
        assert torch.equal(same, clean_logits)


def test_self_patch_of_components_is_exact(hooked, prompts):
    clean, _ = prompts
    clean_logits = hooked(clean)
    _, cache = hooked.run_with_cache(clean, names_filter=no_pattern)
    for name in ["attn_out", "mlp_out", "z", "q", "k", "v", "post", "pre"]:
        out = hooked.run_with_hooks(
            clean, fwd_hooks=[((name, 0), lambda x, hook, c=cache[name, 0]: c.clone())]
        )
        assert torch.equal(out, clean_logits), name


def test_patching_sweeps(hooked, prompts):
    clean, corrupted = prompts
    with torch.no_grad():
        clean_logits, corrupted_logits = hooked(clean), hooked(corrupted)
    answer = int(clean_logits[0, -1].argmax())
    wrong = (
        int(corrupted_logits[0, -1].argmax())
        if int(corrupted_logits[0, -1].argmax()) != answer
        else (answer + 1) % 4096
    )
    metric = patching.logit_diff_metric(answer, wrong)
    _, cache = hooked.run_with_cache(clean, names_filter=no_pattern)
    a = hooked.adapter
    s = clean.shape[1]
    resid = patching.get_act_patch_resid_pre(hooked, corrupted, cache, metric)
    assert resid.shape == (a.num_layers, s)
    # patching the residual at the corrupted position of layer 0 restores the clean metric exactly
    assert resid[0, 5] == pytest.approx(float(metric(clean_logits)), abs=0)
    # positions before the corruption change nothing in layer 0
    assert torch.all(resid[0, :5] == float(metric(corrupted_logits)))
    heads = patching.get_act_patch_attn_head_out_all_pos(hooked, corrupted, cache, metric)
    assert heads.shape == (a.num_layers, a.num_heads)
    every = patching.get_act_patch_block_every(hooked, corrupted, cache, metric)
    assert every.shape == (3, a.num_layers, s)
    norm = patching.normalize_patching(
        resid, float(metric(clean_logits)), float(metric(corrupted_logits))
    )
    assert norm[0, 5] == pytest.approx(1.0)
    by_pos = patching.get_act_patch_attn_head_out_by_pos(
        hooked, corrupted, cache, metric, index_list=[(0, 5, 1), (1, 5, 0)]
    )
    assert by_pos.shape == (2,)
