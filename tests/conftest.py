"""Shared fixtures: tiny seeded random models of every OLMo generation, and the shipped zoo model.

Fixtures that return models hand out a *fresh* model per test (tests may modify them); building one
takes milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from common import FAMILIES, SEED, family_case, family_model, one_thread

# fixtures from the shared matrix (tests/common.py)
__all__ = ["family_case", "family_model", "one_thread"]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(SEED)
    yield


@pytest.fixture(params=FAMILIES)
def model_type(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(model_type):
    """A random-init tiny model (GQA 4/2; OLMo-3 with sliding window 8) in fp32, eval mode."""
    from olmokit.zoo.presets import random_model

    return random_model(model_type, "tiny", seed=0)


@pytest.fixture(scope="session")
def zoo_tokenizer():
    from olmokit.loading import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def zoo_model():
    """The shipped, trained default model (fp32)."""
    from olmokit.loading import load_model

    return load_model()
