"""The shared test matrix: OLMo generation x tool, one table every tool's tests draw from.

Like PEFT's ``testing_common``: a tool's tests parametrize over :func:`family_params` (or use the
:func:`family_model` fixture, registered in ``tests/conftest.py``) instead of listing models
themselves, so adding an OLMo generation, or a tool, is one line here. Importable by name
(``from common import ...``): pytest puts ``tests/`` on ``sys.path`` for ``tests/conftest.py``.

Every model here builds offline: ``*-tiny-random`` are seeded random-init presets (milliseconds),
the trained ones ship with olmokit (``olmokit.zoo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

#: One seed for every RNG the tests touch (torch's global RNG is reset to it before each test).
SEED = 42

FAMILIES = ("olmo", "olmo2", "olmo3")

#: Random-init tiny model per generation (GQA 4/2; OLMo-3 with sliding window 8 on 3 of 4 layers).
FAMILY_MODELS = {
    "olmo": "olmo-tiny-random",
    "olmo2": "olmo2-tiny-random",
    "olmo3": "olmo3-tiny-random",
}

#: The trained zoo model per generation (its predictions are peaked, unlike a random model's).
TRAINED_MODELS = {"olmo": "olmo-stdlib-tiny", "olmo2": "olmo2-stdlib", "olmo3": "olmo3-stdlib-tiny"}

#: Which generations each tool is tested on.
TOOL_FAMILIES: dict[str, tuple[str, ...]] = {
    "eval": FAMILIES,
    "jola": FAMILIES,
    "lens": FAMILIES,
    "merge": FAMILIES,
    "memory": FAMILIES,
}


@dataclass(frozen=True)
class FamilyCase:
    """One row of the matrix: an OLMo generation and the zoo model that stands for it."""

    family: str
    model: str
    trained: bool

    @property
    def id(self) -> str:
        return f"{self.family}-{'trained' if self.trained else 'random'}"

    def load(self) -> torch.nn.Module:
        """A fresh fp32 copy in eval mode (tests may modify it)."""
        from olmokit.loading import load_model

        return load_model(self.model)


def family_cases(tool: str = "eval", trained: bool | None = False) -> list[FamilyCase]:
    """The matrix rows for ``tool``: random models (``trained=False``), trained ones (``True``) or
    both (``None``)."""
    kinds = [False, True] if trained is None else [trained]
    table = {False: FAMILY_MODELS, True: TRAINED_MODELS}
    return [FamilyCase(f, table[k][f], k) for k in kinds for f in TOOL_FAMILIES[tool]]


def family_params(tool: str = "eval", trained: bool | None = False) -> list:
    """:func:`family_cases` as ``pytest.param`` s with readable ids, for ``parametrize``."""
    return [pytest.param(c, id=c.id) for c in family_cases(tool, trained)]


@pytest.fixture(params=family_params(trained=None))
def family_case(request) -> FamilyCase:
    """Every generation, random and trained."""
    return request.param


@pytest.fixture
def family_model(family_case: FamilyCase) -> torch.nn.Module:
    """A fresh model for :func:`family_case` (six cases: three generations x random/trained)."""
    return family_case.load()


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (restored afterwards): tiny models are faster so, and on
    a shared CI box a second OpenMP thread spinning against busy processes made a 4-token forward
    ~80x slower (found by the lens tests). Tool test folders autouse it from their conftest."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def seeded_generator(seed: int = SEED) -> torch.Generator:
    """A private CPU generator, so a test's random data does not depend on what ran before it."""
    return torch.Generator().manual_seed(seed)


def random_tokens(
    batch: int, length: int, vocab: int, low: int = 4, seed: int = SEED
) -> torch.Tensor:
    """``[batch, length]`` ids in ``[low, vocab)`` (``low`` skips the zoo's special tokens)."""
    return torch.randint(low, vocab, (batch, length), generator=seeded_generator(seed))
