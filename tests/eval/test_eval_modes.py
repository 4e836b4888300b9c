"""eval_mode: eval inside, every submodule's own flag back afterwards, also after an exception."""

from __future__ import annotations

import pytest
import torch

from olmokit.eval import eval_mode, model_device
from olmokit.family import get_adapter


def _flags(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_restores_after_exception(tiny_model):
    tiny_model.train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(tiny_model):
            assert not any(_flags(tiny_model))
            raise RuntimeError("boom")
    assert all(_flags(tiny_model))


def test_restores_mixed_flags(tiny_model):
    """A frozen base in eval with one submodule training (an adapter) comes back exactly so."""
    tiny_model.eval()
    layer = get_adapter(tiny_model).layer(1)
    layer.train()
    before = _flags(tiny_model)
    assert any(before) and not all(before)
    with eval_mode(tiny_model) as m:
        assert m is tiny_model and not any(_flags(tiny_model))
    assert _flags(tiny_model) == before


def test_model_device(tiny_model):
    assert model_device(tiny_model) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: CPU
