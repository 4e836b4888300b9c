"""MemoryModel: gradients reach every memory parameter, segment bookkeeping, controls, generation,
save/load."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from common import random_tokens
from memory_support import SEG, open_gates, tiny_settings

from olmokit.errors import CheckpointError, ConfigError
from olmokit.inject import BaseWeightsWarning
from olmokit.memory import (
    MemoryModelState,
    attach_memory,
    load_memory,
    load_memory_state,
    save_memory_state,
)
from olmokit.zoo.presets import random_model


def build(family="olmo2", mode="mag", **kw):
    model = random_model(family, "tiny", seed=0)
    return attach_memory(model, tiny_settings(mode, **kw))


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
@pytest.mark.parametrize("mode", ["mac", "mag", "mal"])
def test_lm_gradient_reaches_every_memory_parameter(family, mode):
    """From the identity init, one optimizer step opens the gates; after it the LM loss has a
    nonzero gradient for every memory parameter (the seed's code failed exactly here) and none
    reaches the frozen base."""
    layers = [1] if family == "olmo2" else [1, 3]  # OLMo-3 tiny: 4 layers, memory in 2 of them
    mm = build(family, mode, persistent_tokens=2, memory_layers=layers)
    mm.train()
    ids = random_tokens(2, 3 * SEG, mm.config.vocab_size)
    opt = torch.optim.SGD(mm.memory_parameters(), lr=1.0)
    mm(ids, labels=ids).loss.backward()
    gates = {n for n, p in mm.named_parameters() if p.requires_grad and n.endswith("gate")}
    moved = {n for n, p in mm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == gates  # at init only the gates can feel the loss
    opt.step()
    opt.zero_grad()
    mm(ids, labels=ids).loss.backward()
    names = [n for n, p in mm.named_parameters() if p.requires_grad]
    assert len(names) == len(mm.memory_parameters()) > 10
    dead = [
        n for n, p in mm.named_parameters() if p.requires_grad and not bool((p.grad != 0).any())
    ]
    assert dead == []
    assert all(p.grad is None for p in mm.model.parameters() if not p.requires_grad)


def test_single_segment_loss_equals_hf_loss_and_segments_add_up():
    mm = build()
    mm.eval()
    ids = random_tokens(2, SEG, mm.config.vocab_size)
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        want = mm.model(input_ids=ids, labels=labels).loss
        got = mm(ids, labels=labels).loss
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # several segments: one mean over every scored token, including each segment's last token
    # (predicting the next segment's first), computed from the concatenated logits
    ids = random_tokens(2, 3 * SEG - 2, mm.config.vocab_size)
    open_gates(mm)
    with torch.no_grad():
        out = mm(ids, labels=ids)
    ref = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)
    assert out.segment_counts == [2 * SEG, 2 * SEG, 2 * (SEG - 3)]


@pytest.mark.parametrize("mode", ["mac", "mag"])
def test_chained_calls_equal_one_call(mode):
    mm = build(mode=mode, persistent_tokens=1)
    open_gates(mm)
    mm.eval()
    ids = random_tokens(2, 4 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        full = mm(ids)
        first = mm(ids[:, : 2 * SEG])
        second = mm(ids[:, 2 * SEG :], state=first.memory_state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full.logits)
    assert second.memory_state.tokens == 4 * SEG
    with pytest.raises(ConfigError, match="ends inside a segment"):
        mm(ids[:, :3], state=MemoryModelState(first.memory_state.per_layer, 3))


def test_reset_every_segment_is_a_fresh_memory_per_segment():
    mm = build(mode="mac")
    open_gates(mm)
    mm.eval()
    ids = random_tokens(2, 3 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        reset = mm(ids, reset_every_segment=True).logits
        carried = mm(ids).logits
        for k in range(3):
            alone = mm(ids[:, k * SEG : (k + 1) * SEG]).logits
            torch.testing.assert_close(reset[:, k * SEG : (k + 1) * SEG], alone)
    assert torch.equal(reset[:, :SEG], carried[:, :SEG])
    assert not torch.allclose(reset[:, SEG:], carried[:, SEG:])


def test_shuffled_state_reads_another_examples_memory():
    mm = build(mode="mag")
    open_gates(mm)
    mm.eval()
    ids = random_tokens(3, 2 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        shuffled = mm(ids, shuffle_state=True).logits
        first = mm(ids[:, :SEG]).memory_state
        roll = torch.tensor([2, 0, 1])  # example b reads example b-1's memory
        want = mm(ids[:, SEG:], state=first.permute(roll)).logits
        same = mm(ids, shuffle_state=torch.arange(3)).logits
    torch.testing.assert_close(shuffled[:, SEG:], want)
    torch.testing.assert_close(same, mm(ids).logits)
    with pytest.raises(ConfigError, match="at least 2"):
        mm(ids[:1], shuffle_state=True)
    with pytest.raises(ConfigError, match="permutation"):
        mm(ids, shuffle_state=torch.tensor([0, 0, 1]))


def test_shuffled_state_is_handed_over_once_not_rerolled_at_every_boundary():
    """Batch 2, 4 segments: a roll at every boundary composes to the identity at the last segment
    (each example would get its own memory back); the control shuffles once, before the last
    segment, and the examples own their memory up to there."""
    mm = build(mode="mag")
    open_gates(mm)
    mm.eval()
    ids = random_tokens(2, 4 * SEG, mm.config.vocab_size)
    swap = torch.tensor([1, 0])
    with torch.no_grad():
        own = mm(ids).logits
        shuffled = mm(ids, shuffle_state=True).logits
        head = mm(ids[:, : 3 * SEG]).memory_state
        want = mm(ids[:, 3 * SEG :], state=head.permute(swap)).logits
        at_one = mm(ids, shuffle_state=True, shuffle_at=SEG).logits
        first = mm(ids[:, :SEG]).memory_state
        want_at_one = mm(ids[:, SEG:], state=first.permute(swap)).logits
    torch.testing.assert_close(shuffled[:, : 3 * SEG], own[:, : 3 * SEG])
    torch.testing.assert_close(shuffled[:, 3 * SEG :], want)
    assert not torch.allclose(shuffled[:, 3 * SEG :], own[:, 3 * SEG :])
    torch.testing.assert_close(at_one[:, :SEG], own[:, :SEG])
    torch.testing.assert_close(at_one[:, SEG:], want_at_one)
    for bad in (0, SEG + 1, 4 * SEG):
        with pytest.raises(ConfigError, match="shuffle_at"):
            mm(ids, shuffle_state=True, shuffle_at=bad)
    with pytest.raises(ConfigError, match="shuffle_state is off"):
        mm(ids, shuffle_at=SEG)
    with pytest.raises(ConfigError, match="at least 2 segments"):
        mm(ids[:, :SEG], shuffle_state=True)


def test_truncated_bptt_changes_gradients_not_values():
    torch.manual_seed(0)
    grads = {}
    for bptt in (None, 1):
        mm = build(mode="mag", bptt_segments=bptt)
        open_gates(mm)
        mm.train()
        ids = random_tokens(2, 3 * SEG, mm.config.vocab_size)
        out = mm(ids, labels=ids)
        out.loss.backward()
        grads[bptt] = (out.loss.detach(), mm.memory_parameters()[3].grad.clone())
    torch.testing.assert_close(grads[None][0], grads[1][0])
    assert not torch.allclose(grads[None][1], grads[1][1])


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
@pytest.mark.parametrize("mode", ["mac", "mag", "mal"])
def test_cached_generation_equals_recomputation(family, mode):
    """KV cache within the segment + memory across segments == recomputing mm(sequence) each step."""
    mm = build(family, mode, persistent_tokens=2)
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
    assert torch.equal(cached, seq) and torch.equal(plain, seq)
    assert s1.tokens == s2.tokens == seq.shape[1]
    for a, b in zip(s1.per_layer[1].weights, s2.per_layer[1].weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["mac", "mag"])
def test_cached_generation_with_query_convolution(mode):
    """With a short causal conv on q/k/v the history is carried too (MAC: through the read state)."""
    mm = build("olmo3", mode, conv_kernel=3, persistent_tokens=1)
    open_gates(mm)
    mm.eval()
    prompt = random_tokens(2, 5, mm.config.vocab_size)
    cached = mm.generate(prompt, SEG + 6, use_cache=True)
    seq = prompt
    with torch.no_grad():
        for _ in range(SEG + 6):
            seq = torch.cat([seq, mm(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq)


def test_generation_stops_at_eos_and_checks_arguments():
    mm = build()
    mm.eval()
    prompt = random_tokens(1, 3, mm.config.vocab_size)
    first = mm.generate(prompt, 1)[0, -1].item()
    out = mm.generate(prompt, 10, eos_token_id=first)
    assert out.shape[1] == 4 and out[0, -1].item() == first
    with pytest.raises(ConfigError):
        mm.generate(prompt[:, :0], 3)
    _, state = mm.generate(prompt, 2, return_state=True)
    assert state.tokens == 5
    with pytest.raises(ConfigError, match="ends inside a segment"):
        mm.generate(prompt, 2, state=state)


def test_save_load_round_trip_and_base_check(tmp_path):
    mm = build(mode="mac", persistent_tokens=2)
    open_gates(mm, 0.3)
    mm.eval()
    ids = random_tokens(2, 2 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        out = mm(ids)
    path = mm.save_pretrained(tmp_path / "mem", state=out.memory_state)
    assert {p.name for p in path.iterdir()} == {
        "memory_adapter.safetensors", "memory_config.json", "memory_state.safetensors"
    }  # fmt: skip
    again = load_memory(random_model("olmo2", "tiny", seed=0), path)
    again.eval()
    assert again.settings == mm.settings
    with torch.no_grad():
        assert torch.equal(again(ids).logits, out.logits)
    state = load_memory_state(path / "memory_state.safetensors")
    with torch.no_grad():
        cont_a = mm(ids, state=out.memory_state).logits
        cont_b = again(ids, state=state).logits
    assert torch.equal(cont_a, cont_b)
    with pytest.raises(CheckpointError, match="OLMo-3"):
        load_memory(random_model("olmo3", "tiny", seed=0), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_memory(random_model("olmo2", "tiny", seed=1), path)
    assert any(issubclass(w.category, BaseWeightsWarning) for w in caught)
    with pytest.raises(CheckpointError, match="not a memory state"):
        save_memory_state(MemoryModelState({}, 0), tmp_path / "empty.safetensors")
        load_memory_state(tmp_path / "empty.safetensors")


def test_adapter_saved_before_retrieval_norm_loads_with_the_unnormalised_read(tmp_path):
    """An adapter whose settings lack ``retrieval_norm`` was trained without the norm: it loads
    with ``retrieval_norm: false`` and reproduces its logits; new adapters record the key."""
    import json

    mm = build(mode="mag", retrieval_norm=False)
    open_gates(mm, 0.3)
    mm.eval()
    ids = random_tokens(2, 2 * SEG, mm.config.vocab_size)
    with torch.no_grad():
        want = mm(ids).logits
    path = mm.save_pretrained(tmp_path / "old")
    cfg = path / "memory_config.json"
    meta = json.loads(cfg.read_text())
    assert meta["memory"]["retrieval_norm"] is False
    del meta["memory"]["retrieval_norm"]
    cfg.write_text(json.dumps(meta))
    again = load_memory(random_model("olmo2", "tiny", seed=0), path)
    again.eval()
    assert again.settings.retrieval_norm is False
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)
    assert build(mode="mag").settings.retrieval_norm is True


@pytest.mark.parametrize("mode", ["mac", "mag"])
def test_chunk_granularity_through_the_model(mode):
    """memory.granularity: chunk reaches every layer's engine; the model's invariants hold for it:
    chained calls == one call, cached generation == recomputation, the LM gradient reaches every
    memory parameter; and it computes another function than the per-token default."""
    mm = build(mode=mode, persistent_tokens=1, granularity="chunk")
    assert all(m.memory.per_chunk for m in mm.memory_layers.values())
    open_gates(mm)
    ids = random_tokens(2, 3 * SEG, mm.config.vocab_size)
    out = mm(ids, labels=ids)
    out.loss.backward()
    for name, p in mm.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    mm.eval()
    with torch.no_grad():
        full = mm(ids)
        first = mm(ids[:, :SEG])
        second = mm(ids[:, SEG:], state=first.memory_state)
        token = build(mode=mode, persistent_tokens=1)
        token.load_state_dict(mm.state_dict())
        token.eval()
        assert (token(ids).logits - full.logits).abs().max() > 1e-4
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full.logits)
    prompt = ids[:, : SEG + 3]
    cached = mm.generate(prompt, 2 * SEG, use_cache=True)
    seq = prompt
    with torch.no_grad():
        for _ in range(2 * SEG):
            seq = torch.cat([seq, mm(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq)
