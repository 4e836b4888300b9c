"""Chunked closed-form engine vs the per-token autograd reference, in float64.

Outputs, the final fast weights/momentum and the gradient of every outer parameter must agree to 1e-10
(relative to the tensor's scale) over MLP depth, residual+LayerNorm form, attentional bias and chunk
size, with T not a multiple of the chunk. The sensitivity tests show the comparison can fail: a changed
gate formula, loss gradient, chunk size or clip is caught.
"""

from __future__ import annotations

import pytest
import torch

import olmokit.memory.engine as engine
from olmokit.memory.neural import NeuralMemory, NeuralMemoryConfig
from olmokit.memory.reference import reference_forward

TOL = 1e-10


def make_memory(seed: int = 0, **overrides) -> NeuralMemory:
    """A tiny fp64 memory whose parameters are all perturbed away from their init (so gates, conv,
    norms and initial weights are generic, and every outer gradient is non-trivial)."""
    torch.manual_seed(seed)
    kwargs = dict(dim=10, heads=2, head_dim=4, hidden=6, depth=2, max_lr=0.8, grad_clip=0.6)
    kwargs.update(overrides)
    mem = NeuralMemory(NeuralMemoryConfig(**kwargs)).double()
    with torch.no_grad():
        for p in mem.parameters():
            p.add_(torch.randn_like(p) * 0.4)
        # gates spread over (0, 1): forget up to ~0.5, momentum from ~0.3 to ~0.99
        mem.to_alpha.bias.fill_(-1.5)
        mem.to_eta.bias.fill_(1.5)
    return mem


def scaled_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def outer_grads(mem: NeuralMemory, y: torch.Tensor, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [n for n, _ in mem.named_parameters()]
    grads = torch.autograd.grad((y * probe).sum(), list(mem.parameters()), allow_unused=True)
    return dict(zip(names, grads))


def check_parity(mem: NeuralMemory, x: torch.Tensor, chunk: int) -> dict[str, float]:
    """Compare engine and reference; returns the worst scaled differences (and asserts nothing)."""
    y, state = mem(x, chunk_size=chunk)
    y_ref, w_ref, s_ref = reference_forward(mem, x, chunk)
    probe = torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
    g = outer_grads(mem, y, probe)
    g_ref = outer_grads(mem, y_ref, probe)
    current = mem.current_weights(state)
    out = {"y": scaled_diff(y, y_ref)}
    out["weights"] = max(scaled_diff(a, b) for a, b in zip(current, w_ref))
    if state.pending == 0:
        out["momentum"] = max(scaled_diff(a, b) for a, b in zip(state.momentum, s_ref))
    for name, gr in g_ref.items():
        assert gr is not None and gr.abs().max() > 0, f"reference gives {name} no gradient"
        assert g[name] is not None, f"engine gives {name} no gradient"
        out[f"grad:{name}"] = scaled_diff(g[name], gr)
    return out


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("residual_norm", [False, True])
@pytest.mark.parametrize("bias", ["l2", "huber", "lp"])
def test_engine_matches_reference(depth, residual_norm, bias):
    mem = make_memory(depth=depth, residual_norm=residual_norm, bias=bias, huber_delta=0.2)
    x = torch.randn(2, 11, 10, dtype=torch.float64)
    for chunk in (1, 4, 16):
        diffs = check_parity(mem, x, chunk)
        worst = max(diffs, key=diffs.get)
        assert diffs[worst] <= TOL, (chunk, worst, diffs[worst])


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_engine_matches_reference_with_conv(chunk):
    mem = make_memory(seed=1, conv_kernel=3, depth=2, residual_norm=True)
    x = torch.randn(2, 13, 10, dtype=torch.float64)
    diffs = check_parity(mem, x, chunk)
    assert "grad:conv_k" in diffs and "grad:conv_q" in diffs and "grad:conv_v" in diffs
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, (worst, diffs[worst])


def test_parity_covers_every_parameter():
    mem = make_memory(conv_kernel=2)
    diffs = check_parity(mem, torch.randn(1, 6, 10, dtype=torch.float64), 4)
    names = {n for n, _ in mem.named_parameters()}
    assert {k.split(":", 1)[1] for k in diffs if k.startswith("grad:")} == names
    assert {
        "to_alpha.weight",
        "to_eta.bias",
        "to_theta.weight",
        "init_weights.0",
        "to_out.weight",
    } <= names


def test_huber_and_clip_are_exercised():
    """The parity grid only means something if the Huber kink and the soft clip are actually hit."""
    x = torch.randn(2, 11, 10, dtype=torch.float64)
    y_l2, _ = make_memory(bias="l2")(x, chunk_size=4)
    y_huber, _ = make_memory(bias="huber", huber_delta=0.2)(x, chunk_size=4)
    y_noclip, _ = make_memory(grad_clip=None)(x, chunk_size=4)
    assert scaled_diff(y_huber, y_l2) > 1e-3
    assert scaled_diff(y_noclip, y_l2) > 1e-3


def _fails(mem, x, chunk) -> float:
    diffs = check_parity(mem, x, chunk)
    return max(diffs.values())


def test_parity_detects_a_changed_gate(monkeypatch):
    mem = make_memory()
    x = torch.randn(1, 9, 10, dtype=torch.float64)
    orig = engine.chunk_coefficients
    monkeypatch.setattr(engine, "chunk_coefficients", lambda lk, le: orig(lk, le * 1.01))
    assert _fails(mem, x, 4) > 1e-6
    monkeypatch.setattr(engine, "chunk_coefficients", lambda lk, le: orig(lk * 1.01, le))
    assert _fails(mem, x, 4) > 1e-6


def test_parity_detects_a_changed_loss_gradient(monkeypatch):
    mem = make_memory(bias="lp")
    x = torch.randn(1, 9, 10, dtype=torch.float64)
    orig = engine.attentional_bias_grad
    monkeypatch.setattr(engine, "attentional_bias_grad", lambda e, spec: orig(e, spec) * 1.001)
    assert _fails(mem, x, 4) > 1e-8


def test_parity_detects_wrong_chunking_and_clip():
    mem = make_memory()
    x = torch.randn(1, 9, 10, dtype=torch.float64)
    y, _ = mem(x, chunk_size=4)
    assert scaled_diff(y, reference_forward(mem, x, 3)[0]) > 1e-6
    mem_noclip = make_memory(grad_clip=None)
    assert scaled_diff(y, reference_forward(mem_noclip, x, 4)[0]) > 1e-6


def test_chunk_coefficients_match_products():
    """RD, β, cS and the momentum carries from their defining products (no log space)."""
    torch.manual_seed(0)
    n = 5
    alpha = torch.rand(n, dtype=torch.float64) * 0.9
    eta = torch.rand(n, dtype=torch.float64)
    rd, beta, cs, dlast, eta_all = engine.chunk_coefficients(torch.log1p(-alpha), torch.log(eta))

    def prod(t, lo, hi):  # Π t[lo..hi] inclusive, 1 if empty
        return torch.prod(t[lo : hi + 1]) if hi >= lo else torch.tensor(1.0, dtype=t.dtype)

    keep = 1 - alpha
    for i in range(n):
        assert torch.isclose(beta[i], prod(keep, 0, i), rtol=1e-13)
        want_cs = sum(prod(keep, s + 1, i) * prod(eta, 0, s) for s in range(i + 1))
        assert torch.isclose(cs[i], want_cs, rtol=1e-13)
        for r in range(n):
            want = sum(prod(keep, s + 1, i) * prod(eta, r + 1, s) for s in range(r, i + 1))
            assert torch.isclose(
                rd[i, r], torch.as_tensor(want, dtype=rd.dtype), rtol=1e-13, atol=0
            )
    for r in range(n):
        assert torch.isclose(dlast[r], prod(eta, r + 1, n - 1), rtol=1e-13)
    assert torch.isclose(eta_all, prod(eta, 0, n - 1), rtol=1e-13)


def test_coefficients_finite_at_extreme_gates():
    """α → 1 and η → 0 (log → -inf-ish) and α → 0, η → 1 give finite coefficients and gradients."""
    z = torch.tensor([-60.0, 60.0, 0.0, -60.0, 60.0], dtype=torch.float64, requires_grad=True)
    lk = torch.nn.functional.logsigmoid(-z)
    le = torch.nn.functional.logsigmoid(z)
    out = engine.chunk_coefficients(lk, le)
    total = sum(t.sum() for t in out)
    total.backward()
    assert all(torch.isfinite(t).all() for t in out)
    assert torch.isfinite(z.grad).all()
