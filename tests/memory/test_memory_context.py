"""Carried attention context (``memory.carry_context``): each segment's base attention also sees the
tokens before it through a KV cache carried across segments (Titans' sliding-window MAG/MAL)."""

from __future__ import annotations

import json

import pytest
import torch
from common import random_tokens
from memory_support import SEG, open_gates, tiny_settings
from transformers import AutoModelForCausalLM

from olmokit.errors import ConfigError
from olmokit.memory import (
    MemorySettings,
    attach_memory,
    load_memory,
    load_memory_state,
    save_memory_state,
)
from olmokit.zoo.presets import make_config, random_model

W = 8  # the sliding window of the all-sliding base below and of the zoo's tiny OLMo-3


def sliding_base(window: int = W) -> torch.nn.Module:
    """A tiny OLMo-3 whose every layer is sliding_attention (like the memory demo's base)."""
    cfg = make_config(
        "olmo3", "tiny", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
        layer_types=["sliding_attention"] * 2, max_position_embeddings=256,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg).eval()


def settings(mode: str = "mag", **kw) -> MemorySettings:
    return tiny_settings(mode, **{"carry_context": W, **kw})


def build(family="olmo3", mode="mag", **kw):
    return attach_memory(random_model(family, "tiny", seed=0), settings(mode, **kw))


@pytest.mark.parametrize(("seg", "carry"), [(8, 7), (8, 8), (8, "auto"), (4, 7), (8, 30)])
def test_all_sliding_base_in_segments_equals_one_unsegmented_forward(seg, carry):
    """A sliding-window model run in segments with carried keys/values is the unsegmented model:
    HF's sliding layer sees itself and the window - 1 tokens before, so any carry >= window - 1
    gives every token its whole window (with the memory attached at its identity init too)."""
    model = sliding_base()
    ids = random_tokens(2, 5 * SEG, 64)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    chunk = {"chunk_train": 4, "chunk_prefill": 4, "chunk_decode": 4}
    mm = attach_memory(model, settings(segment_len=seg, carry_context=carry, **chunk))
    mm.eval()
    with torch.no_grad():
        got = mm(ids)
        with mm.disabled():
            plain = mm(ids).logits
    torch.testing.assert_close(got.logits, want, rtol=0, atol=2e-6)
    torch.testing.assert_close(plain, want, rtol=0, atol=2e-6)
    ctx = got.memory_state.context
    assert ctx.tokens == min(mm.carry_context, 5 * SEG)
    assert [k.shape[-2] for k in ctx.keys] == [W - 1, W - 1]  # a sliding layer keeps window - 1
    mm.detach()
    isolated = attach_memory(model, settings(segment_len=seg, carry_context=0, **chunk)).eval()
    with torch.no_grad():
        assert (isolated(ids).logits - want).abs().max() > 1e-2  # today's isolated segments


def _reference_logits(model, ids: torch.Tensor, seg: int, carry: int) -> torch.Tensor:
    """One plain HF forward with explicit masks: token i (segment start s) sees token j iff
    s - carry <= j <= i, and on a sliding layer also i - j < window; absolute positions."""
    n = ids.shape[1]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    start = i // seg * seg
    full = (j <= i) & (j >= start - carry)
    window = getattr(model.config, "sliding_window", None) or n
    masks = {"full_attention": full, "sliding_attention": full & (i - j < window)}

    def additive(allowed: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return m[None, None].expand(ids.shape[0], 1, n, n)

    mask = {k: additive(v) for k, v in masks.items()}
    if not getattr(model.config, "layer_types", None):  # OLMo-2: one mask for its full layers
        mask = mask["full_attention"]
    pos = torch.arange(n)[None].expand(ids.shape[0], -1)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
@pytest.mark.parametrize("carry", [3, 11])
def test_full_and_sliding_layers_match_a_masked_reference(family, carry):
    """OLMo-3 tiny (3 sliding layers + 1 full) and OLMo-2 (full only): a full-attention layer sees
    the ``carry`` tokens before its segment, a sliding one at most window - 1 of them."""
    mm = build(family, carry_context=carry)
    mm.eval()
    ids = random_tokens(2, 4 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        got = mm(ids).logits
        with mm.disabled():
            want = _reference_logits(mm.model, ids, SEG, carry)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_a_segment_sees_the_previous_segments_last_tokens_only_with_carry():
    """The memory at its identity init: segment 1's logits change with segment 0's last two tokens
    when context is carried, and not at all without (attention never spans two segments)."""
    for carry in (0, 2):
        mm = build("olmo3", carry_context=carry)
        mm.eval()
        ids = random_tokens(2, 2 * SEG, mm.config.vocab_size)
        other = ids.clone()
        other[:, SEG - 2 : SEG] = (ids[:, SEG - 2 : SEG] + 1) % mm.config.vocab_size
        with torch.no_grad():
            a, b = mm(ids).logits[:, SEG:], mm(other).logits[:, SEG:]
        if carry:
            assert (a - b).abs().amax(-1)[:, 0].min() > 1e-3  # the first token already sees them
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["mag", "mal"])
def test_chained_calls_equal_one_call_with_carry(mode, tmp_path):
    """The state carries the context: two calls (with a save/load of the state between them)
    equal one call."""
    mm = build("olmo3", mode, conv_kernel=2)
    open_gates(mm)
    mm.eval()
    ids = random_tokens(2, 4 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        full = mm(ids)
        first = mm(ids[:, : 2 * SEG])
        path = save_memory_state(first.memory_state, tmp_path / "s.safetensors")
        state = load_memory_state(path)
        second = mm(ids[:, 2 * SEG :], state=state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full.logits)
    assert state.context.tokens == W
    for a, b in zip(state.context.keys, first.memory_state.context.keys):
        assert torch.equal(a, b)
    for a, b in zip(second.memory_state.context.values, full.memory_state.context.values):
        torch.testing.assert_close(a, b)
    # a state without context cannot continue a carrying memory, and the reverse
    with pytest.raises(ConfigError, match="carries no attention context"):
        mm(ids[:, :SEG], state=build("olmo3", mode, carry_context=0)(ids[:, :SEG]).memory_state)
    with pytest.raises(ConfigError, match="carry_context 0"):
        build("olmo3", mode, carry_context=0)(ids[:, :SEG], state=first.memory_state)


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
@pytest.mark.parametrize("mode", ["mag", "mal"])
def test_generation_with_carry_equals_the_full_forward(family, mode):
    """KV cache kept across segment boundaries (trimmed to the carry), and the non-cached path,
    both equal recomputing mm(sequence) at every step."""
    mm = build(family, mode, carry_context=5)
    open_gates(mm)
    mm.eval()
    prompt = random_tokens(2, SEG + 3, mm.config.vocab_size)
    new = 2 * SEG  # crosses two segment boundaries
    cached, s1 = mm.generate(prompt, new, use_cache=True, return_state=True)
    plain, s2 = mm.generate(prompt, new, use_cache=False, return_state=True)
    seq = prompt
    with torch.no_grad():
        for _ in range(new):
            seq = torch.cat([seq, mm(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
        want = mm(seq[:, : seq.shape[1] // SEG * SEG]).memory_state
    assert torch.equal(cached, seq) and torch.equal(plain, seq)
    assert s1.tokens == s2.tokens == seq.shape[1]
    # prefill + decode logits equal the full forward's
    with torch.no_grad():
        logits = mm(seq).logits
        _, state = mm.generate(seq[:, : 2 * SEG], 0, return_state=True)
        assert state.tokens == 2 * SEG
        step = mm(seq[:, 2 * SEG : 3 * SEG], state=state).logits
    torch.testing.assert_close(step, logits[:, 2 * SEG : 3 * SEG], rtol=1e-5, atol=1e-5)
    for a, b in zip(s1.context.keys, s2.context.keys):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert want.context.tokens == 5


@pytest.mark.parametrize("mode", ["mag", "mal"])
def test_lm_gradient_reaches_every_memory_parameter_with_carry(mode):
    mm = build("olmo3", mode, memory_layers=[1, 3])
    mm.train()
    ids = random_tokens(2, 3 * SEG, mm.config.vocab_size)
    opt = torch.optim.SGD(mm.memory_parameters(), lr=1.0)
    mm(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    out = mm(ids, labels=ids)
    out.loss.backward()
    dead = [
        n for n, p in mm.named_parameters() if p.requires_grad and not bool((p.grad != 0).any())
    ]
    assert dead == [] and len(mm.memory_parameters()) > 10
    assert all(p.grad is None for p in mm.model.parameters() if not p.requires_grad)
    assert all(not k.requires_grad for k in out.memory_state.context.keys)  # detached KV


def test_controls_change_the_memory_not_the_carried_context():
    """Reset and shuffle act on the memory only: with the memory at its identity init both equal the
    plain forward (which equals the unsegmented base); with open gates the shuffled call's carried
    context is the example's own (unpermuted)."""
    model = sliding_base()
    mm = attach_memory(model, settings(carry_context=W - 1))
    mm.eval()
    ids = random_tokens(2, 4 * SEG, 64)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        for kw in ({"reset_every_segment": True}, {"shuffle_state": True}):
            torch.testing.assert_close(mm(ids, **kw).logits, want, rtol=0, atol=2e-6)
        open_gates(mm)
        plain = mm(ids).memory_state.context
        shuffled = mm(ids, shuffle_state=True, shuffle_at=SEG).memory_state.context
        reset = mm(ids, reset_every_segment=True).memory_state.context
    # layer 0 is below the memory (layer 1): its keys are the example's own, whatever the memory
    assert torch.equal(shuffled.keys[0], plain.keys[0])
    assert torch.equal(reset.keys[0], plain.keys[0])
    assert not torch.equal(plain.keys[0][0], plain.keys[0][1])  # the examples differ


def test_adapter_records_carry_and_old_adapters_load_without(tmp_path):
    mm = build("olmo3", carry_context="auto")
    assert mm.carry_context == W
    open_gates(mm, 0.3)
    mm.eval()
    ids = random_tokens(2, 2 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        want = mm(ids).logits
    path = mm.save_pretrained(tmp_path / "mem")
    again = load_memory(random_model("olmo3", "tiny", seed=0), path).eval()
    assert again.settings.carry_context == "auto" and again.carry_context == W
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)
    cfg = path / "memory_config.json"
    meta = json.loads(cfg.read_text())
    del meta["memory"]["carry_context"]  # an adapter saved before the key existed
    cfg.write_text(json.dumps(meta))
    old = load_memory(random_model("olmo3", "tiny", seed=0), path).eval()
    assert old.carry_context == 0
    with torch.no_grad():
        assert not torch.allclose(old(ids).logits, want)
