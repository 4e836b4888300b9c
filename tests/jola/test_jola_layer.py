"""Gate math and the vectorised per-head edit (against hand-written formulas)."""

import math

import pytest
import torch

from olmokit.jola.layer import (
    HardConcrete,
    JoLAEdit,
    expected_gate,
    hard_gate,
    prob_open,
    sample_gate,
)

HC = HardConcrete()


def test_expected_gate_is_reference_formula():
    la = torch.linspace(-5, 5, 101)
    want = (1.2 * torch.sigmoid(la) - 0.1).clamp(0, 1)
    torch.testing.assert_close(expected_gate(la, HC), want, rtol=0, atol=1e-7)
    # exactly closed / open beyond ±ln(11)
    assert expected_gate(torch.tensor([-2.4]), HC).item() == 0.0
    assert expected_gate(torch.tensor([2.4]), HC).item() == 1.0
    assert 0 < expected_gate(torch.tensor([-2.39]), HC).item() < 1


def test_prob_open_shift():
    # P(open) = sigmoid(log_alpha - beta * log(-l/r)) = sigmoid(log_alpha + 0.7913) for the defaults
    shift = 0.33 * math.log(0.1 / 1.1)
    assert shift == pytest.approx(-0.7913, abs=1e-4)
    la = torch.tensor([-3.0, 0.0, 2.0])
    torch.testing.assert_close(prob_open(la, HC), torch.sigmoid(la + 0.7913), rtol=0, atol=1e-4)


def test_sample_gate_range_and_mean():
    torch.manual_seed(0)
    la = torch.zeros(200_000)
    g = sample_gate(la, HC)
    assert g.min().item() == 0.0 and g.max().item() == 1.0  # clamped, and both ends are reached
    # symmetric at log_alpha = 0: P(g=0) = P(g=1), both = sigmoid(beta*log(l/(l-r)))... > 0
    assert (g == 0).float().mean().item() == pytest.approx((g == 1).float().mean().item(), abs=0.01)
    assert g.mean().item() == pytest.approx(0.5, abs=0.01)
    # P(g > 0) matches the expected-L0 term
    la = torch.full((200_000,), 1.0)
    assert (sample_gate(la, HC) > 0).float().mean().item() == pytest.approx(
        prob_open(la[:1], HC).item(), abs=0.01
    )


def test_hard_gate_threshold():
    la = torch.tensor([-1.0, 0.0, 0.5])  # expected gates 0.22, 0.5, 0.65
    assert hard_gate(la, HC, 0.5).tolist() == [0.0, 0.0, 1.0]
    assert hard_gate(la, HC, 0.2).tolist() == [1.0, 1.0, 1.0]


def _edit(h=4, d=8, seed=0):
    torch.manual_seed(seed)
    e = JoLAEdit(h, d, HC)
    with torch.no_grad():
        e.attn_A.normal_()
        e.attn_v.normal_()
        e.log_g1.normal_(0, 3)
        e.log_g2.normal_(0, 3)
    return e.eval()


def test_edit_matches_per_head_formula():
    e = _edit()
    z = torch.randn(2, 5, 4 * 8)
    g1, g2 = expected_gate(e.log_g1, HC), expected_gate(e.log_g2, HC)
    want = torch.cat(
        [
            (1 + g2[h] * e.attn_A[h]) * z[..., h * 8 : (h + 1) * 8] + g1[h] * e.attn_v[h]
            for h in range(4)
        ],
        -1,
    )
    torch.testing.assert_close(e(z), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(e.forward_loop(z), want, rtol=1e-6, atol=1e-6)


def test_per_head_gate_masking():
    """A closed head (both gates 0) is untouched; an open head changes only its own slice."""
    e = _edit()
    with torch.no_grad():
        e.log_g1.fill_(-10.0)
        e.log_g2.fill_(-10.0)
        e.log_g1[2] = 10.0  # only head 2's additive gate is open
    z = torch.randn(3, 4, 32)
    out = e(z)
    changed = (out != z).reshape(3, 4, 4, 8).any(-1).any(0).any(0)
    assert changed.tolist() == [False, False, True, False]
    torch.testing.assert_close(out[..., 16:24], z[..., 16:24] + e.attn_v[2])
    with torch.no_grad():
        e.log_g1[2] = -10.0
        e.log_g2[1] = 10.0  # now only head 1's multiplicative gate
    out = e(z)
    torch.testing.assert_close(out[..., 8:16], z[..., 8:16] * (1 + e.attn_A[1]))
    assert torch.equal(out[..., :8], z[..., :8]) and torch.equal(out[..., 16:], z[..., 16:])


def test_zero_edit_is_bit_identical_in_bf16_and_fp32():
    e = JoLAEdit(4, 8, HC).eval()  # A = v = 0
    for dtype in (torch.float32, torch.bfloat16):
        z = torch.randn(2, 3, 32).to(dtype)
        out = e(z)
        assert out.dtype == dtype and torch.equal(out, z)


def test_training_gates_sampled_eval_deterministic():
    e = _edit()
    e.train()
    torch.manual_seed(1)
    a = e.gates()
    b = e.gates()
    assert not torch.equal(a[0], b[0])
    e.eval()
    assert torch.equal(e.gates()[0], e.gates()[0])


def test_gradients_reach_all_jola_tensors():
    e = _edit()
    with torch.no_grad():
        e.log_g1.zero_()
        e.log_g2.zero_()
    e.train()
    e(torch.randn(2, 3, 32)).square().sum().backward()
    for p in e.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_reset_parameters_reference_init():
    e = JoLAEdit(40, 128, HC)
    e.reset_parameters(1e-3, "xavier", generator=torch.Generator().manual_seed(0))
    bound = math.sqrt(6 / 41)
    assert e.log_g1.abs().max() <= bound and e.log_g1.abs().max() > 0.5 * bound
    assert e.attn_A.std().item() == pytest.approx(1e-3, rel=0.1)
    e.reset_parameters(0.0, 2.0)
    assert torch.all(e.attn_A == 0) and torch.all(e.log_g2 == 2.0)
