"""The shared test matrix (tests/common.py) names real zoo models of the right generation."""

from __future__ import annotations

from common import FAMILIES, FAMILY_MODELS, TOOL_FAMILIES, TRAINED_MODELS, family_cases

from olmokit.family import FAMILIES as ADAPTER_FAMILIES
from olmokit.zoo.registry import zoo_entry


def test_matrix_covers_every_adapter_family():
    assert set(FAMILIES) == set(ADAPTER_FAMILIES)
    assert all(set(fams) <= set(FAMILIES) for fams in TOOL_FAMILIES.values())


def test_matrix_models_are_zoo_models_of_their_family():
    for table, kind in ((FAMILY_MODELS, "random"), (TRAINED_MODELS, "shipped")):
        assert set(table) == set(FAMILIES)
        for family, name in table.items():
            entry = zoo_entry(name)
            assert (entry.model_type, entry.kind, entry.available) == (family, kind, True)


def test_family_cases_ids():
    ids = [c.id for c in family_cases(trained=None)]
    assert ids == [f"{f}-{k}" for k in ("random", "trained") for f in FAMILIES]


def test_family_model_fixture(family_case, family_model):
    assert family_model.config.model_type == family_case.family and not family_model.training
