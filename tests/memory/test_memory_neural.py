"""NeuralMemory as a module: chained calls, prefill + decode, store/retrieve, dtypes, NaN safety, errors."""

from __future__ import annotations

import pytest
import torch

from olmokit.errors import ConfigError
from olmokit.memory.neural import NeuralMemory, NeuralMemoryConfig
from olmokit.memory.reference import reference_forward


def make_memory(seed: int = 0, **overrides) -> NeuralMemory:
    torch.manual_seed(seed)
    kwargs = dict(dim=10, heads=2, head_dim=4, hidden=6, depth=2, max_lr=0.8)
    kwargs.update(overrides)
    mem = NeuralMemory(NeuralMemoryConfig(**kwargs)).double()
    with torch.no_grad():
        for p in mem.parameters():
            p.add_(torch.randn_like(p) * 0.4)
        mem.to_alpha.bias.fill_(-1.5)
        mem.to_eta.bias.fill_(1.5)
    return mem


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("granularity", ["token", "chunk"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
@pytest.mark.parametrize("conv", [0, 3])
def test_chained_calls_equal_one_call(chunk, conv, granularity):
    mem = make_memory(conv_kernel=conv, residual_norm=conv > 0, granularity=granularity)
    x = torch.randn(2, 23, 10, dtype=torch.float64)
    y, full = mem(x, chunk_size=chunk)
    state, ys = None, []
    for lo, hi in ((0, 3), (3, 7), (7, 8), (8, 8), (8, 20), (20, 23)):
        part, state = mem(x[:, lo:hi], state, chunk_size=chunk)
        ys.append(part)
    assert maxdiff(torch.cat(ys, 1), y) < 1e-12
    assert state.position == full.position == 23 and state.pending == full.pending == 23 % chunk
    for a, b in zip(mem.current_weights(state), mem.current_weights(full)):
        assert maxdiff(a, b) < 1e-12
    # and the chained graph carries outer gradients identically
    probe = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
    g1 = torch.autograd.grad((y * probe).sum(), list(mem.parameters()))
    g2 = torch.autograd.grad((torch.cat(ys, 1) * probe).sum(), list(mem.parameters()))
    assert max(maxdiff(a, b) for a, b in zip(g1, g2)) < 1e-11


@pytest.mark.parametrize("granularity", ["token", "chunk"])
@pytest.mark.parametrize("chunk", [1, 4, 8])
def test_prefill_then_decode_equals_full_forward(chunk, granularity):
    mem = make_memory(conv_kernel=2, granularity=granularity).eval()
    x = torch.randn(2, 19, 10, dtype=torch.float64)
    y, _ = mem(x, chunk_size=chunk)
    out, state = mem(x[:, :7], chunk_size=chunk)
    outs = [out]
    for t in range(7, 19):
        step, state = mem(x[:, t : t + 1], state, chunk_size=chunk)
        outs.append(step)
    assert maxdiff(torch.cat(outs, 1), y) < 1e-12


def test_default_chunks_follow_mode():
    mem = make_memory(chunk_train=4, chunk_prefill=8, chunk_decode=1)
    x = torch.randn(1, 15, 10, dtype=torch.float64)
    assert maxdiff(mem(x)[0], mem(x, chunk_size=4)[0]) == 0
    mem.eval()
    assert mem.resolve_chunk(None, 11) == 8 and mem.resolve_chunk(None, 1) == 1
    assert maxdiff(mem(x)[0], mem(x, chunk_size=8)[0]) == 0


def test_prefill_and_decode_chunk_sizes_may_differ():
    """Prefill at 8 leaves 3 tokens pending; decoding at chunk 1 first closes that partial chunk: the
    result is the reference with chunks [0, 8), [8, 11), then one token each."""
    mem = make_memory(chunk_prefill=8, chunk_decode=1).eval()
    x = torch.randn(2, 15, 10, dtype=torch.float64)
    out, state = mem(x[:, :11])
    assert state.pending == 3 and state.pending_chunk == 8
    outs = [out]
    for t in range(11, 15):
        step, state = mem(x[:, t : t + 1], state)
        outs.append(step)
    assert state.pending == 0 and state.position == 15
    y_ref, w_ref, _ = reference_forward(mem, x, 8, chunk_lengths=[8, 3, 1, 1, 1, 1])
    assert maxdiff(torch.cat(outs, 1), y_ref) < 1e-12
    for a, b in zip(state.weights, w_ref):
        assert maxdiff(a, b) < 1e-12
    # and it is not the same as one call at chunk 8 (so the comparison above can fail)
    assert maxdiff(torch.cat(outs, 1), mem(x, chunk_size=8)[0]) > 1e-6


def test_per_chunk_prefill_and_decode_chunk_sizes_may_differ():
    """granularity chunk: prefill at 8 leaves 3 tokens pending (read with the weights after chunk
    [0, 8)); decoding at chunk 1 first applies [8, 11) as one chunk, then one update per token."""
    mem = make_memory(chunk_prefill=8, chunk_decode=1, granularity="chunk").eval()
    x = torch.randn(2, 15, 10, dtype=torch.float64)
    out, state = mem(x[:, :11])
    assert state.pending == 3 and state.pending_chunk == 8
    outs = [out]
    for t in range(11, 15):
        step, state = mem(x[:, t : t + 1], state)
        outs.append(step)
    y = torch.cat(outs, 1)
    assert state.pending == 0 and state.position == 15
    y_ref, w_ref, s_ref = reference_forward(mem, x, 8, chunk_lengths=[8, 3, 1, 1, 1, 1])
    # token 10 was answered before its partial chunk was applied: it read the weights after [0, 8)
    assert maxdiff(y[:, :10], y_ref[:, :10]) < 1e-12 and maxdiff(y[:, 11:], y_ref[:, 11:]) < 1e-12
    assert maxdiff(y[:, 10], reference_forward(mem, x[:, :11], 8)[0][:, 10]) < 1e-12
    assert maxdiff(y[:, 10], y_ref[:, 10]) > 1e-6
    for a, b in zip(state.weights + state.momentum, w_ref + s_ref):
        assert maxdiff(a, b) < 1e-12
    assert maxdiff(y, mem(x, chunk_size=8)[0]) > 1e-6


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_store_then_retrieve_matches_forward(granularity):
    mem = make_memory(granularity=granularity)
    x = torch.randn(2, 10, 10, dtype=torch.float64)
    y, state = mem(x, chunk_size=4)
    stored = mem.store(x, chunk_size=4)
    for a, b in zip(stored.weights + stored.momentum, state.weights + state.momentum):
        assert maxdiff(a, b) == 0
    # y_T = M_T(q_T): retrieving the last token with the final state gives the forward's last output
    last = mem.retrieve(x[:, -1:], state)
    assert maxdiff(last[:, 0], y[:, -1]) < 1e-12
    # retrieve is read-only and uses one set of weights for every token
    a = mem.retrieve(x[:, :5], state)
    b = torch.cat([mem.retrieve(x[:, t : t + 1], state) for t in range(5)], 1)
    assert maxdiff(a, b) < 1e-12


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_current_weights_match_reference(granularity):
    mem = make_memory(depth=3, granularity=granularity)
    x = torch.randn(1, 10, 10, dtype=torch.float64)
    _, state = mem(x, chunk_size=4)
    _, w_ref, _ = reference_forward(mem, x, 4)
    for a, b in zip(mem.current_weights(state), w_ref):
        assert maxdiff(a, b) < 1e-12


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_every_parameter_gets_gradient_in_fp32(granularity):
    mem = NeuralMemory(
        NeuralMemoryConfig(
            dim=12, heads=2, head_dim=4, hidden=8, conv_kernel=3, granularity=granularity
        )
    )
    y, state = mem(torch.randn(2, 9, 12), chunk_size=4)
    y2, _ = mem(torch.randn(2, 5, 12), state, chunk_size=4)
    (y.square().sum() + y2.square().sum()).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_input_keeps_fp32_state():
    mem = NeuralMemory(NeuralMemoryConfig(dim=12, heads=2, head_dim=4, hidden=8))
    x = torch.randn(2, 9, 12)
    y32, s32 = mem(x, chunk_size=4)
    y16, s16 = mem.to(torch.bfloat16)(x.bfloat16(), chunk_size=4)
    assert y16.dtype == torch.bfloat16 and s16.weights[0].dtype == torch.float32
    assert s32.weights[0].dtype == torch.float32
    assert maxdiff(y16.float(), y32) < 0.1 * y32.abs().max().item()


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_huge_inputs_stay_finite(granularity):
    mem = NeuralMemory(
        NeuralMemoryConfig(
            dim=12, heads=2, head_dim=4, hidden=8, max_lr=10.0, granularity=granularity
        )
    )
    with torch.no_grad():
        mem.to_v.weight.mul_(1e4)
        mem.to_theta.bias.fill_(10.0)
    x = torch.randn(1, 64, 12) * 1e15  # squares stay finite in fp32: the RMSNorm path is exercised
    y, state = mem(x, chunk_size=4)
    y.sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(w).all() for w in state.weights)
    assert all(torch.isfinite(p.grad).all() for p in mem.parameters())


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_unclipped_huge_update_is_what_the_clip_prevents(granularity):
    """Without the soft clip the same setting diverges — so the test above is not vacuous."""
    mem = NeuralMemory(
        NeuralMemoryConfig(
            dim=12,
            heads=2,
            head_dim=4,
            hidden=8,
            max_lr=10.0,
            grad_clip=None,
            granularity=granularity,
        )
    )
    with torch.no_grad():
        mem.to_v.weight.mul_(1e4)
        mem.to_theta.bias.fill_(10.0)
    y, state = mem(torch.randn(1, 64, 12), chunk_size=4)
    assert not torch.isfinite(y).all() or y.abs().max() > 1e6


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="depth"):
        NeuralMemoryConfig(dim=8, depth=1)
    with pytest.raises(ConfigError, match="bias"):
        NeuralMemoryConfig(dim=8, bias="l1")
    with pytest.raises(ConfigError, match="chunk_train"):
        NeuralMemoryConfig(dim=8, chunk_train=0)
    with pytest.raises(ConfigError, match="granularity must be one of token, chunk"):
        NeuralMemoryConfig(dim=8, granularity="tokens")
    mem = NeuralMemory(NeuralMemoryConfig(dim=8, heads=2, head_dim=4, hidden=8))
    with pytest.raises(ConfigError, match="chunk_size"):
        mem(torch.randn(1, 3, 8), chunk_size=0)
    with pytest.raises(ConfigError, match=r"\[batch, tokens, 8\]"):
        mem(torch.randn(1, 3, 9))
    state = mem.init_state(2)
    with pytest.raises(ConfigError, match="batch 2"):
        mem(torch.randn(1, 3, 8), state)


def test_empty_input_is_a_no_op():
    mem = make_memory()
    _, state = mem(torch.randn(1, 5, 10, dtype=torch.float64), chunk_size=4)
    y, same = mem(torch.zeros(1, 0, 10, dtype=torch.float64), state, chunk_size=4)
    assert y.shape == (1, 0, 10) and same is state


def test_per_chunk_matches_titans_pytorch():
    """fp64, shared weights: granularity chunk equals titans-pytorch ``NeuralMemory(chunk_size=b,
    batch_size=b)`` — outputs and the gradients of the shared outer parameters — at depth 2 and 3,
    batch 2, T not a multiple of b. titans' extras olmokit lacks are set to match: its q/k RMSNorm
    becomes olmokit's ℓ2 normalisation, its retrieve gate is removed, no residual norm (titans' has a
    learned fast-weight scale), no gradient clip (titans clamps a different quantity)."""
    titans = pytest.importorskip("titans_pytorch")
    import warnings

    from torch import nn

    class UnitNorm(nn.Module):
        def forward(self, t):
            return t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6)

    x = torch.randn(2, 37, 32, dtype=torch.float64)
    for depth, b in ((2, 4), (3, 8), (2, 1)):
        torch.manual_seed(depth * 10 + b)
        cfg = NeuralMemoryConfig(
            dim=32, heads=2, head_dim=8, hidden=16, depth=depth, grad_clip=None, granularity="chunk"
        )
        ours = NeuralMemory(cfg).double()
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            ours.to_alpha.bias.fill_(-2.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = titans.NeuralMemory(
                dim=32,
                heads=2,
                dim_head=8,
                chunk_size=b,
                batch_size=b,
                model=titans.MemoryMLP(8, depth=depth, expansion_factor=2),
                mem_model_norm_add_residual=False,
                default_step_transform_max_lr=cfg.max_lr,
            ).double()
        shared = [
            (ref.to_queries.weight, ours.to_q.weight),
            (ref.to_keys.weight, ours.to_k.weight),
            (ref.to_values.weight, ours.to_v.weight),
            (ref.combine_heads.weight, ours.to_out.weight),
        ]
        for dst, src in (
            (ref.to_adaptive_step[0], ours.to_theta),
            (ref.to_momentum[0], ours.to_eta),
            (ref.to_decay_factor[0], ours.to_alpha),
        ):
            shared += [(dst.weight, src.weight), (dst.bias, src.bias)]
        shared += list(zip(ref.memory_model_parameters, ours.init_weights, strict=True))
        with torch.no_grad():
            for norm in (ref.store_norm, ref.retrieve_norm):
                norm.weight.copy_(ours.norm_weight)
                norm.eps = 1e-6
            for dst, src in shared:
                dst.copy_(src)
        ref.q_norm, ref.k_norm, ref.retrieve_gate = UnitNorm(), UnitNorm(), None
        y = ours(x, chunk_size=b)[0]
        y_ref = ref(x)[0]
        assert maxdiff(y, y_ref) < 1e-12, (depth, b)
        assert y.abs().max() > 0.1
        probe = torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
        g_ours = torch.autograd.grad((y * probe).sum(), [s for _, s in shared])
        g_ref = torch.autograd.grad((y_ref * probe).sum(), [d for d, _ in shared])
        for a, c in zip(g_ours, g_ref, strict=True):
            assert a.abs().max() > 0 and maxdiff(a, c) < 1e-12, (depth, b)
        # and the per-token granularity is a different function from this titans setting
        if b > 1:
            tok = NeuralMemory(NeuralMemoryConfig(**{**cfg.to_dict(), "granularity": "token"}))
            tok.load_state_dict(ours.state_dict())
            assert maxdiff(tok.double()(x, chunk_size=b)[0], y_ref) > 1e-3


def test_tied_qk_and_previous_token_key_init():
    """qk_init 'tied' copies to_k into to_q and draws nothing else differently; key_conv_init
    'previous_token' makes the key of token t exactly token t-1's projected key (values and
    queries stay the identity), so the memory starts storing (t-1 -> t)."""
    base = dict(dim=10, heads=2, head_dim=4, hidden=6, conv_kernel=3)
    torch.manual_seed(0)
    plain = NeuralMemory(NeuralMemoryConfig(**base))
    torch.manual_seed(0)
    tied = NeuralMemory(NeuralMemoryConfig(**base, qk_init="tied", key_conv_init="previous_token"))
    assert torch.equal(tied.to_q.weight, tied.to_k.weight)
    assert not torch.equal(plain.to_q.weight, plain.to_k.weight)
    same = {n for n, _ in plain.named_parameters()} - {"to_q.weight", "conv_k"}
    assert all(
        torch.equal(dict(plain.named_parameters())[n], p)
        for n, p in tied.named_parameters()
        if n in same
    )
    x = torch.randn(2, 7, 10)
    state = tied.init_state(2)
    k, v, _, _ = tied._write_inputs(tied._norm(x), state)
    k_plain, v_plain, _, _ = plain._write_inputs(plain._norm(x), plain.init_state(2))
    torch.testing.assert_close(v, v_plain)  # values: identity conv in both
    torch.testing.assert_close(k[:, 1:], k_plain[:, :-1])  # key of t == plain key of t-1
    assert k[:, 0].abs().max() == 0  # nothing before the first token (zero conv history)
    q, _ = tied._query(tied._norm(x), state)
    torch.testing.assert_close(q, k_plain)  # tied query of t == plain key of t
    with pytest.raises(ConfigError, match="previous_token' needs conv_kernel >= 2"):
        NeuralMemoryConfig(dim=8, key_conv_init="previous_token", conv_kernel=1)
    with pytest.raises(ConfigError, match="qk_init must be one of independent, tied"):
        NeuralMemoryConfig(dim=8, qk_init="shared")
