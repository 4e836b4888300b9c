"""The cache planner predicts the bytes exactly and refuses before running."""

from __future__ import annotations

import pytest
import torch

from olmokit.lens import CacheTooLargeError


@pytest.mark.parametrize("names", [None, "resid", "pattern"])
def test_plan_matches_actual_bytes(hooked, tokens, names):
    filt = None if names is None else (lambda n: names in n)
    plan = hooked.plan_cache(tokens, filt)
    _, cache = hooked.run_with_cache(tokens, names_filter=filt)
    assert len(plan.entries) == len(cache)
    assert plan.unique_bytes == cache.nbytes()
    if names is None:
        assert plan.total_bytes > plan.unique_bytes  # resid_post[i] is resid_pre[i+1]


def test_plan_bf16_and_formula(hooked):
    plan = hooked.plan_cache((3, 50), "blocks.0.attn.hook_pattern", dtype=torch.bfloat16)
    assert plan.unique_bytes == 3 * hooked.adapter.num_heads * 50 * 50 * 2


def test_refuses_past_limit_before_running(hooked, tokens, monkeypatch):
    calls = []
    monkeypatch.setattr(hooked.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(CacheTooLargeError, match="limit"):
        hooked.run_with_cache(tokens, max_cache_bytes=1000)
    assert calls == []
