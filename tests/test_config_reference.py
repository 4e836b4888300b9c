"""The key tables generated from config types: every setting appears once, with its real default."""

from __future__ import annotations

from pydantic import Field

from olmokit.config import OlmokitConfig, config_rows, config_table


class _Inner(OlmokitConfig):
    depth: int = Field(2, description="layers of the memory MLP")
    layers: list[int] | None = Field(None, description="where | to attach")


class _Outer(OlmokitConfig):
    name: str = Field(description="required name")
    inner: _Inner = Field(default_factory=_Inner)
    rate: float = 0.5


def test_rows_flatten_sections_in_declaration_order():
    rows = config_rows(_Outer)
    assert [r[0] for r in rows] == ["name", "inner.depth", "inner.layers", "rate"]
    by_key = {r[0]: r for r in rows}
    assert by_key["name"][2] == "required"
    assert by_key["inner.depth"][1:] == ("int", "2", "layers of the memory MLP")
    assert by_key["inner.layers"][1:3] == ("list[int] | None", "null")
    assert by_key["rate"][1:3] == ("float", "0.5")


def test_table_escapes_pipes_and_has_one_row_per_key():
    table = config_table(_Outer).splitlines()
    assert len(table) == 2 + 4
    assert "`list[int] \\| None`" in table[4]
    assert "where \\| to attach" in table[4]


def test_every_tool_config_key_is_documented():
    """Each real tool config flattens without error, and every key is unique."""
    from olmokit.jola.config import JoLAConfig
    from olmokit.merge.config import MergeConfig

    for cls in (JoLAConfig, MergeConfig):
        keys = [r[0] for r in config_rows(cls)]
        assert len(keys) == len(set(keys)) > 10
