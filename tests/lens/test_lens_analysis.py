"""Logit lens, direct logit attribution, head ablation and the induction score."""

from __future__ import annotations

import torch

from olmokit.lens.attribution import direct_logit_attribution
from olmokit.lens.heads import ablate_heads, head_ablation_scan, induction_score, repeated_tokens
from olmokit.lens.logit_lens import logit_lens


def test_logit_lens_last_row_is_the_model(hooked, tokens):
    result = logit_lens(hooked, tokens[:1], k=3)
    n = hooked.adapter.num_layers
    assert result.labels[-1] == "final_post" and result.logits.shape[0] == n + 1
    torch.testing.assert_close(result.logits[-1], hooked(tokens[:1])[0], rtol=0, atol=0)
    assert result.top_ids.shape == (n + 1, tokens.shape[1], 3)
    assert torch.isnan(result.target_probs[:, -1]).all() and not torch.isnan(result.target_probs[:, :-1]).any()


def test_dla_components_sum_to_the_logit(hooked, tokens):
    """Frozen-norm-scale linearisation: per-head + per-MLP + embed attributions add up to the logit diff."""
    result = direct_logit_attribution(hooked, tokens, answer=7, wrong=9, pos=-1)
    a = hooked.adapter
    assert len(result.labels) == 1 + a.num_layers * (a.num_heads + 1)
    assert result.values.shape == (len(result.labels), tokens.shape[0])
    torch.testing.assert_close(result.values.sum(0), result.total, rtol=1e-4, atol=1e-5)
    assert result.values.abs().max() > 1e-4 and result.top(3)[0][0] in result.labels
    single = direct_logit_attribution(hooked, tokens[:1], answer=7, pos=3)
    torch.testing.assert_close(single.values.sum(0), hooked(tokens[:1])[:, 3, 7], rtol=1e-4, atol=1e-5)


def test_ablating_every_head_removes_attention(hooked, tokens):
    a = hooked.adapter
    heads = [(0, h) for h in range(a.num_heads)]
    logits = ablate_heads(hooked, tokens, heads, mode="zero")
    _, cache = hooked.run_with_cache(
        tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: torch.zeros_like(z))], names_filter=["blocks.0.hook_attn_out"]
    )
    assert torch.equal(cache["attn_out", 0], torch.zeros_like(cache["attn_out", 0]))
    assert not torch.allclose(logits, hooked(tokens))
    mean = ablate_heads(hooked, tokens, [(1, 0)], mode="mean")
    assert not torch.allclose(mean, logits)
    scan = head_ablation_scan(hooked, tokens[:1], lambda lg: lg[0, -1, 7])
    assert scan.shape == (a.num_layers, a.num_heads) and scan.abs().sum() > 0


def test_repeated_tokens_shape():
    toks = repeated_tokens(100, 5, batch=3, seed=1, low=4)
    assert toks.shape == (3, 10) and torch.equal(toks[:, :5], toks[:, 5:]) and toks.min() >= 4


def test_induction_score_detects_a_planted_induction_head(hooked):
    """Rewrite one head's pattern into a perfect induction stripe: it must score 1, the others less."""
    n = 6

    def plant(pattern, hook):
        s = pattern.shape[-1]
        p = pattern.clone()
        for q in range(n, s):
            p[:, 1, q] = 0
            p[:, 1, q, q - n + 1] = 1
        return p

    hooked.add_hook("blocks.0.attn.hook_pattern", plant)
    try:
        result = induction_score(hooked, seq_len=n, batch=2)
    finally:
        hooked.reset_hooks()
    assert result.scores.shape == (hooked.adapter.num_layers, hooked.adapter.num_heads)
    assert result.scores[0, 1] == 1.0
    assert result.top(1)[0][:2] == (0, 1)
    assert result.scores[0, 0] < 0.6
