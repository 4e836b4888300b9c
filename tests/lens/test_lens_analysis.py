"""Logit lens, direct logit attribution, head ablation and the induction score."""

from __future__ import annotations

import copy

import torch

from olmokit.family import get_adapter
from olmokit.lens.attribution import direct_logit_attribution
from olmokit.lens.heads import ablate_heads, head_ablation_scan, induction_score, repeated_tokens
from olmokit.lens.logit_lens import logit_lens


def test_logit_lens_last_row_is_the_model(hooked, tokens):
    result = logit_lens(hooked, tokens[:1], k=3)
    n = hooked.adapter.num_layers
    assert result.labels[-1] == "final_post" and result.logits.shape[0] == n + 1
    torch.testing.assert_close(result.logits[-1], hooked(tokens[:1])[0], rtol=0, atol=0)
    assert result.top_ids.shape == (n + 1, tokens.shape[1], 3)
    assert (
        torch.isnan(result.target_probs[:, -1]).all()
        and not torch.isnan(result.target_probs[:, :-1]).any()
    )


def test_dla_components_sum_to_the_logit(hooked, tokens):
    """Frozen-norm-scale linearisation: per-head + per-MLP + embed attributions add up to the logit diff."""
    result = direct_logit_attribution(hooked, tokens, answer=7, wrong=9, pos=-1)
    a = hooked.adapter
    assert len(result.labels) == 1 + a.num_layers * (a.num_heads + 1)
    assert result.values.shape == (len(result.labels), tokens.shape[0])
    torch.testing.assert_close(result.values.sum(0), result.total, rtol=1e-4, atol=1e-5)
    assert result.values.abs().max() > 1e-4 and result.top(3)[0][0] in result.labels
    single = direct_logit_attribution(hooked, tokens[:1], answer=7, pos=3)
    torch.testing.assert_close(
        single.values.sum(0), hooked(tokens[:1])[:, 3, 7], rtol=1e-4, atol=1e-5
    )


def _without_heads(model, layer: int, heads: list[int], replacement: torch.Tensor | None = None):
    """Reference without hooks: a copy of the HF model whose o_proj ignores the given heads' columns
    (and, for mean ablation, adds ``W_O_h @ mean_h`` as a bias instead)."""
    ref = copy.deepcopy(model)
    a = get_adapter(ref)
    o_proj, d = a.o_proj(layer), a.head_dim
    with torch.no_grad():
        added = torch.zeros(o_proj.out_features)
        for h in heads:
            cols = slice(h * d, (h + 1) * d)
            if replacement is not None:
                added += o_proj.weight[:, cols] @ replacement[h]
            o_proj.weight[:, cols] = 0
        if replacement is not None:
            bias = o_proj.bias if o_proj.bias is not None else 0
            o_proj.bias = torch.nn.Parameter(added + bias)
    return ref


def test_head_ablation_matches_a_model_without_those_heads(hooked, tokens):
    a = hooked.adapter
    heads = [(0, h) for h in range(a.num_heads)]
    logits = ablate_heads(hooked, tokens, heads, mode="zero")
    reference = _without_heads(hooked.model, 0, list(range(a.num_heads)))
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(input_ids=tokens).logits, rtol=1e-5, atol=1e-5)
    _, cache = hooked.run_with_cache(
        tokens,
        fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: torch.zeros_like(z))],
        names_filter=["blocks.0.hook_attn_out"],
    )
    assert torch.equal(cache["attn_out", 0], torch.zeros_like(cache["attn_out", 0]))
    # mean ablation: the head's output is its mean over batch and positions
    _, z_cache = hooked.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_z"])
    mean_z = z_cache["z", 1].mean(dim=(0, 1))
    mean = ablate_heads(hooked, tokens, [(1, 0)], mode="mean")
    reference = _without_heads(hooked.model, 1, [0], replacement=mean_z)
    with torch.no_grad():
        torch.testing.assert_close(mean, reference(input_ids=tokens).logits, rtol=1e-5, atol=1e-5)
    # the scan is metric(ablated) - metric(clean), head by head
    scan = head_ablation_scan(hooked, tokens[:1], lambda lg: lg[0, -1, 7])
    with torch.no_grad():
        base = hooked.model(input_ids=tokens[:1]).logits[0, -1, 7]
        expected = torch.tensor(
            [
                [
                    float(
                        _without_heads(hooked.model, i, [h])(input_ids=tokens[:1]).logits[0, -1, 7]
                        - base
                    )
                    for h in range(a.num_heads)
                ]
                for i in range(a.num_layers)
            ]
        )
    torch.testing.assert_close(scan, expected, rtol=1e-4, atol=1e-5)


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
