"""Fixtures for the lens tests: a wrapped tiny model per generation and token batches."""

from __future__ import annotations

import pytest
import torch

from olmokit.lens import HookedOlmo


@pytest.fixture
def hooked(tiny_model) -> HookedOlmo:
    return HookedOlmo(tiny_model)


@pytest.fixture
def tokens() -> torch.Tensor:
    # 20 tokens: longer than OLMo-3 tiny's sliding window (8), so the window mask matters.
    return torch.randint(4, 4096, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Lens tests run single-threaded (see ``common.one_thread``)."""
    yield
