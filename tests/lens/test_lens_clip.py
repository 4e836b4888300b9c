"""OLMo v1 clip_qkv: applied exactly and out of place by the lens, counted, backward hooks work."""

from __future__ import annotations

import pytest
import torch
from lens_helpers import torch_hook_count

from olmokit.lens import HookedOlmo
from olmokit.zoo.presets import random_model

CLIP = 0.05  # small enough that a large share of q/k/v entries is clipped in the tiny model


@pytest.fixture
def clipped():
    return random_model("olmo", "tiny", seed=0, clip_qkv=CLIP)


def _hf_counts(model, tokens):
    """Clipped entries per layer counted from the raw projections with plain torch hooks."""
    counts, handles = {}, []
    layers = model.model.layers  # test-side reference computation, independent of the adapter
    for i, layer in enumerate(layers):
        for which in "qkv":
            proj = getattr(layer.self_attn, f"{which}_proj")

            def hook(mod, inp, out, i=i, which=which):
                counts.setdefault(i, {})[which] = int((out.abs() > CLIP).sum())

            handles.append(proj.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
    for h in handles:
        h.remove()
    return counts


def test_clip_parity_and_counts(clipped, tokens):
    hooked = HookedOlmo(clipped)
    ref = clipped(input_ids=tokens, use_cache=False).logits
    unclipped = random_model("olmo", "tiny", seed=0)(input_ids=tokens, use_cache=False).logits
    assert not torch.allclose(ref, unclipped, atol=1e-3)  # the clip really changes the output
    logits, cache = hooked.run_with_cache(
        tokens, names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_v"]
    )
    assert torch.equal(logits, ref)
    assert cache["v", 0].abs().max() <= CLIP
    expected = _hf_counts(clipped, tokens)
    assert hooked.clip_counts == expected
    assert sum(c for layer in expected.values() for c in layer.values()) > 1000
    # tracked without hooks too
    assert torch.equal(hooked(tokens, track_clipping=True), ref)
    assert hooked.clip_counts == expected
    assert clipped.config.clip_qkv == CLIP
    assert all(layer.self_attn.config is clipped.config for layer in clipped.model.layers)
    assert torch_hook_count(clipped) == 0


def test_hf_inplace_clamp_breaks_full_backward_hooks(clipped, tokens):
    """The trap the lens avoids: HF's clamp_ on a q_proj output wrapped by a full backward hook."""
    handle = clipped.model.layers[0].self_attn.q_proj.register_full_backward_hook(lambda *a: None)
    try:
        with pytest.raises(RuntimeError, match="inplace|in-place"):
            clipped(input_ids=tokens, use_cache=False).logits.sum().backward()
    finally:
        handle.remove()


def test_backward_hooks_with_clip_firing(clipped, tokens):
    hooked = HookedOlmo(clipped)
    # reference gradients from plain HF (in-place clamp, no hooks)
    clipped.zero_grad()
    hooked(tokens, return_type="loss").backward()
    ref_grads = {n: p.grad.clone() for n, p in clipped.named_parameters() if p.grad is not None}
    clipped.zero_grad()

    grads = {}
    user_handle = clipped.model.layers[0].self_attn.q_proj.register_full_backward_hook(
        lambda mod, gin, gout: grads.__setitem__("q_proj", gout[0])
    )
    try:
        with hooked.hooks(
            bwd_hooks=[("blocks.0.attn.hook_q", lambda g, hook: grads.__setitem__(hook.name, g))],
        ):
            loss = hooked(tokens, return_type="loss")
            loss.backward()
    finally:
        user_handle.remove()
    assert set(grads) == {"q_proj", "blocks.0.attn.hook_q"}
    assert hooked.clip_counts == _hf_counts(clipped, tokens)
    for name, p in clipped.named_parameters():
        if name in ref_grads:
            torch.testing.assert_close(p.grad, ref_grads[name], rtol=0, atol=0)
    assert grads["blocks.0.attn.hook_q"].abs().sum() > 0
