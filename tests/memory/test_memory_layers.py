"""MAC / MAG / MAL layers: exact identity at initialisation, causality, the MAC mask, removal."""

from __future__ import annotations

import pytest
import torch
from common import TOOL_FAMILIES, random_tokens
from memory_support import SEG, open_gates, tiny_settings

from olmokit.memory import MemorySettings, attach_memory
from olmokit.memory.layers import MemoryLayer
from olmokit.zoo.presets import random_model


def settings(mode: str, **kw) -> MemorySettings:
    return tiny_settings(mode, **{"persistent_tokens": 2, **kw})


def segmented_base_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        parts = [model(input_ids=ids[:, s : s + SEG]).logits for s in range(0, ids.shape[1], SEG)]
    return torch.cat(parts, 1)


@pytest.mark.parametrize("family", TOOL_FAMILIES["memory"])
@pytest.mark.parametrize("mode", ["mac", "mag", "mal"])
def test_identity_at_init_is_exact(family, mode):
    model = random_model(family, "tiny", seed=0)
    ids = random_tokens(2, 3 * SEG - 3, model.config.vocab_size)
    want = segmented_base_logits(model, ids)
    mm = attach_memory(model, settings(mode))
    mm.eval()
    with torch.no_grad():
        got = mm(ids).logits
    assert torch.equal(got, want)
    # the gates are what keeps it exact: opened, the memory changes the logits
    open_gates(mm)
    with torch.no_grad():
        assert not torch.allclose(mm(ids).logits, want, atol=1e-4)


@pytest.mark.parametrize("mode", ["mac", "mag"])
def test_identity_with_bfloat16_base_and_float32_memory(mode):
    model = random_model("olmo3", "tiny", seed=0).to(torch.bfloat16)
    ids = random_tokens(2, 2 * SEG, model.config.vocab_size)
    want = segmented_base_logits(model, ids)
    mm = attach_memory(model, settings(mode))
    mm.eval()
    assert {p.dtype for p in mm.memory_parameters()} == {torch.float32}
    with torch.no_grad():
        out = mm(ids)
    assert out.logits.dtype == torch.bfloat16 and torch.equal(out.logits, want)
    state = out.memory_state.per_layer[1]
    assert state.weights[0].dtype == torch.float32


@pytest.mark.parametrize("mode", ["mac", "mag", "mal"])
@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
def test_causal_within_and_across_segments(family, mode):
    """Changing token j changes no logit before j (MAC: no token sees a later retrieved token)."""
    model = random_model(family, "tiny", seed=0)
    mm = attach_memory(model, settings(mode))
    open_gates(mm)
    mm.eval()
    ids = random_tokens(1, 3 * SEG, model.config.vocab_size)
    for j in (3, SEG + 5):
        other = ids.clone()
        other[0, j] = (other[0, j] + 1) % model.config.vocab_size
        with torch.no_grad():
            a, b = mm(ids).logits, mm(other).logits
        assert torch.equal(a[:, :j], b[:, :j])
        assert not torch.allclose(a[:, j:], b[:, j:])
        # the change reaches later segments only through the memory
        if j < SEG:
            with mm.disabled(), torch.no_grad():
                assert torch.equal(mm(ids).logits[:, SEG:], mm(other).logits[:, SEG:])
            assert not torch.allclose(a[:, SEG:], b[:, SEG:])


def test_mac_mask_pinned():
    """Segment query i sees: every persistent key, retrieved keys h_j and segment keys s_j, j <= i."""
    layer = MemoryLayer.__new__(MemoryLayer)
    layer.window = None
    q = [("p", 0), ("h", 0), ("h", 1), ("s", 0), ("s", 1)]
    mask = layer._mask(q, q, torch.float32, torch.device("cpu"))[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],  # a persistent row sees only persistent keys
        [1, 1, 0, 0, 0],  # h_0 (output discarded): persistent + h_<=0
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],  # s_0: persistent, h_0, s_0
        [1, 1, 1, 1, 1],  # s_1: persistent, h_0, h_1, s_0, s_1
    ]
    layer.window = 2  # a sliding window also bounds the retrieved tokens
    rows = [("s", 3)]
    keys = [("p", 0)] + [("h", j) for j in range(4)] + [("s", j) for j in range(4)]
    allowed = (layer._mask(rows, keys, torch.float32, torch.device("cpu"))[0, 0] == 0).int()
    assert allowed.tolist() == [[1, 0, 0, 1, 1, 0, 0, 1, 1]]


def test_remove_restores_the_plain_model_and_disabled_is_the_base():
    model = random_model("olmo2", "tiny", seed=0)
    ids = random_tokens(1, SEG, model.config.vocab_size)
    keys = set(model.state_dict())
    with torch.no_grad():
        want = model(input_ids=ids).logits
    mm = attach_memory(model, settings("mag"))
    open_gates(mm)
    assert all(k.startswith("model.layers.1.memory.") for k in set(model.state_dict()) - keys)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".memory." not in n)
    with torch.no_grad(), mm.disabled():
        assert torch.equal(model(input_ids=ids).logits, want)
    plain = mm.detach()
    assert set(plain.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, want)


def test_refuses_attention_kernels_without_explicit_masks():
    from olmokit.errors import ConfigError

    model = random_model("olmo2", "tiny", seed=0)
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ConfigError, match="attn_implementation 'flash_attention_2'"):
        attach_memory(model, settings("mac"))
    attach_memory(model, settings("mag", persistent_tokens=0))  # MAG without extra tokens is fine


@pytest.mark.parametrize("mode", ["mag", "mal"])
@pytest.mark.parametrize("norm", [True, False])
def test_gated_read_is_the_rms_normalised_memory_output(mode, norm):
    """``retrieval_norm``: the layer adds ``g ⊙ y / rms(y)`` (``g ⊙ y`` when off), ``y`` the
    NeuralMemory's own output, with the read's size set by the gate alone."""
    model = random_model("olmo3", "tiny", seed=0)
    mm = attach_memory(model, settings(mode, persistent_tokens=0, retrieval_norm=norm))
    layer = mm.memory_layers[1]
    with torch.no_grad():
        layer.mem_gate.copy_(torch.linspace(-1.0, 2.0, layer.mem_gate.numel()))
    x = torch.randn(2, SEG, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = layer.read_write(x)
        y, _ = layer.memory(x, None, chunk_size=4)
        want = y / y.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() if norm else y
        want = layer.mem_gate * want
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        # scale invariance: a read ten times louder gives the same normalised read
        layer.memory.to_out.weight.mul_(10.0)
        louder = layer.read_write(x)
    if norm:  # the same up to the eps inside the norm (1e-6 against a mean square of ~1e-3)
        torch.testing.assert_close(louder, got, rtol=1e-2, atol=1e-4)
        assert not torch.allclose(louder, 10.0 * got, rtol=0.5)
    else:
        torch.testing.assert_close(louder, 10.0 * got, rtol=1e-5, atol=1e-6)
