"""MemoryState: save/load round-trip (through safetensors), detach, device moves, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from olmokit.errors import CheckpointError
from olmokit.memory.neural import NeuralMemory, NeuralMemoryConfig
from olmokit.memory.state import MemoryState


def make_memory(conv: int = 2, granularity: str = "token") -> NeuralMemory:
    torch.manual_seed(0)
    cfg = NeuralMemoryConfig(
        dim=10, heads=2, head_dim=4, hidden=6, depth=3, conv_kernel=conv, granularity=granularity
    )
    return NeuralMemory(cfg).double()


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_state_round_trips_through_safetensors(tmp_path, granularity):
    mem = make_memory(granularity=granularity)
    x = torch.randn(2, 23, 10, dtype=torch.float64)
    y_full, _ = mem(x, chunk_size=4)
    _, state = mem(x[:, :10], chunk_size=4)
    assert state.pending == 2
    save_file(state.state_dict(), tmp_path / "state.safetensors")
    loaded = MemoryState.from_state_dict(load_file(tmp_path / "state.safetensors"))
    assert loaded.position == 10 and loaded.pending == 2 and loaded.pending_chunk == 4
    assert loaded.batch_size == 2 and loaded.heads == 2 and len(loaded.weights) == 3
    for a, b in zip(state.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    y_rest, _ = mem(x[:, 10:], loaded, chunk_size=4)
    assert (y_rest - y_full[:, 10:]).abs().max() < 1e-12


def test_missing_key_is_a_checkpoint_error():
    sd = make_memory().init_state(1).state_dict()
    del sd["pending_gates"]
    with pytest.raises(CheckpointError, match="pending_gates"):
        MemoryState.from_state_dict(sd)


@pytest.mark.parametrize("granularity", ["token", "chunk"])
def test_detach_cuts_the_graph(granularity):
    mem = make_memory(conv=0, granularity=granularity)
    x = torch.randn(1, 8, 10, dtype=torch.float64)
    _, state = mem(x, chunk_size=4)
    # through the carried state the initial weights get a gradient from the next call...
    y, _ = mem(x, state, chunk_size=4)
    (g,) = torch.autograd.grad(y.sum(), [mem.init_weights[0]])
    assert g.abs().sum() > 0
    # ...and not through a detached one (they are only reachable through the state)
    detached = state.detach()
    assert all(not t.requires_grad for t in detached.weights + detached.momentum)
    y, _ = mem(x, detached, chunk_size=4)
    (g,) = torch.autograd.grad(y.sum(), [mem.init_weights[0]], allow_unused=True)
    assert g is None
    # detaching changes no value
    for a, b in zip(state.weights, detached.weights):
        assert torch.equal(a, b)


def test_to_device_and_fresh_state():
    mem = make_memory()
    state = mem.init_state(3)
    moved = state.to("cpu")
    assert moved.device.type == "cpu" and moved.dtype == torch.float64
    assert state.position == 0 and state.pending == 0 and state.conv_q.shape == (3, 1, 8)
    assert state.weights[0].shape == (6, 4, 6) and state.weights[-1].shape == (6, 6, 4)
    # row b*heads + h holds head h's learned initial weights
    assert torch.equal(state.weights[1][3], mem.init_weights[1][1])
    assert all(float(m.abs().sum()) == 0 for m in state.momentum)
