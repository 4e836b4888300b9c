"""The lens on the shipped, trained zoo model (skipped until it is built)."""

from __future__ import annotations

import pytest
import torch
from lens_helpers import no_pattern

from olmokit.lens import HookedOlmo
from olmokit.lens.heads import induction_score
from olmokit.loading import load_model
from olmokit.zoo.registry import DEFAULT_MODEL, ZOO

pytestmark = pytest.mark.skipif(
    not ZOO[DEFAULT_MODEL].available, reason="shipped zoo model not built"
)


def test_zoo_model_exact_and_identities(zoo_model, zoo_tokenizer):
    hooked = HookedOlmo(zoo_model, zoo_tokenizer)
    tokens = hooked.to_tokens("import os\nprint(os.path.join('a', 'b'))")
    with torch.no_grad():
        ref = zoo_model(input_ids=tokens, use_cache=False, output_hidden_states=True)
        logits, cache = hooked.run_with_cache(tokens, names_filter=no_pattern)
    assert torch.equal(logits, ref.logits)
    for i in range(hooked.adapter.num_layers):
        assert torch.equal(cache["resid_pre", i], ref.hidden_states[i])
        assert torch.equal(cache["resid_pre", i] + cache["attn_out", i], cache["resid_mid", i])
        assert torch.equal(cache["resid_mid", i] + cache["mlp_out", i], cache["resid_post", i])


def test_zoo_model_induction_scores_match_hf_attentions():
    """Scores recomputed in float64 from HF's own eager attention weights (``output_attentions``)."""
    model = load_model(DEFAULT_MODEL, attn_implementation="eager")
    n = 16
    result = induction_score(HookedOlmo(model), seq_len=n, batch=4)
    assert result.scores.shape == (4, 8)
    with torch.no_grad():
        attentions = model(input_ids=result.tokens, output_attentions=True).attentions
    induction = torch.zeros(4, 8, dtype=torch.float64)
    previous = torch.zeros(4, 8, dtype=torch.float64)
    for layer, att in enumerate(attentions):  # [batch, heads, query, key]
        att = att.double()
        # second copy: query q attends to the token after q's first occurrence, key q - n + 1
        induction[layer] = torch.stack([att[:, :, q, q - n + 1] for q in range(n, 2 * n)]).mean(
            dim=(0, 1)
        )
        previous[layer] = torch.stack([att[:, :, q, q - 1] for q in range(1, 2 * n)]).mean(
            dim=(0, 1)
        )
    torch.testing.assert_close(result.scores.double(), induction, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.previous_token.double(), previous, rtol=1e-5, atol=1e-6)
