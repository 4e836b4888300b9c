"""The lens on the shipped, trained zoo model (skipped until it is built)."""

from __future__ import annotations

import pytest
import torch
from lens_helpers import no_pattern

from olmokit.lens import HookedOlmo
from olmokit.lens.heads import induction_score
from olmokit.zoo.registry import DEFAULT_MODEL, ZOO

pytestmark = pytest.mark.skipif(not ZOO[DEFAULT_MODEL].available, reason="shipped zoo model not built")


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


def test_zoo_model_induction_scores(zoo_model):
    result = induction_score(HookedOlmo(zoo_model), seq_len=16, batch=4)
    assert result.scores.shape == (4, 8)
    assert torch.all((result.scores >= 0) & (result.scores <= 1))
    assert result.previous_token is not None and result.previous_token.max() > result.previous_token.mean()
