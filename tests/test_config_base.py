from __future__ import annotations

import pytest
from pydantic import Field

from olmokit.config import OlmokitConfig
from olmokit.errors import ConfigError


class Inner(OlmokitConfig):
    rate: float = Field(0.1, description="a rate")
    name: str = "x"


class Outer(OlmokitConfig):
    model: str = Field("m", alias="model_config")
    inner: Inner = Field(default_factory=Inner)
    steps: int = 3


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'inner.rte'.*valid keys here: name, rate"):
        Outer.from_dict({"inner": {"rte": 1}})
    with pytest.raises(ConfigError, match=r"valid keys here: inner, model_config, steps"):
        Outer.from_dict({"stepz": 1})


def test_type_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"steps: .*'many'"):
        Outer.from_dict({"steps": "many"})


def test_yaml_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_config: a\ninner:\n  rate: 0.5\n")
    cfg = Outer.from_yaml(path, ["inner.name=y", "steps=7"])
    assert (cfg.model, cfg.inner.rate, cfg.inner.name, cfg.steps) == ("a", 0.5, "y", 7)
    out = tmp_path / "out.yaml"
    cfg.to_yaml(out)
    assert Outer.from_yaml(out) == cfg
    assert cfg.merge(["inner.rate=2"]).inner.rate == 2.0
    with pytest.raises(ConfigError, match="must look like"):
        cfg.merge(["oops"])


def test_lenient_loading_drops_unknown_keys_with_a_warning():
    with pytest.warns(UserWarning) as record:
        cfg = Outer.from_dict({"steps": 2, "future_key": 1, "inner": {"later": 2}}, strict=False)
    messages = [str(w.message) for w in record]
    assert any("['future_key']" in m for m in messages) and any("['later']" in m for m in messages)
    assert cfg.steps == 2 and cfg.inner == Inner()


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Outer.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        Outer.from_yaml(bad)


def test_overrides_index_into_lists_of_sections():
    from olmokit.config import apply_overrides

    data = {"jobs": [{"kind": "a", "prompt": "x"}, {"kind": "b"}], "seeds": [1, 2]}
    apply_overrides(data, ["jobs.1.prompt=def f", "jobs.0.kind=c", "seeds.1=7"])
    assert data == {
        "jobs": [{"kind": "c", "prompt": "x"}, {"kind": "b", "prompt": "def f"}],
        "seeds": [1, 7],
    }
    with pytest.raises(ConfigError, match="index 2 is past the end of a 2-item list"):
        apply_overrides(data, ["jobs.2.prompt=y"])
    with pytest.raises(ConfigError, match="'first' must be a list index here"):
        apply_overrides(data, ["jobs.first.prompt=y"])
    with pytest.raises(ConfigError, match="'kind' is not a section"):
        apply_overrides(data, ["jobs.0.kind.x=y"])


def test_integers_beyond_64_bits_are_refused_naming_the_key():
    class Cfg(OlmokitConfig):
        steps: int = 1
        sizes: list[int] = Field(default_factory=list)

    assert Cfg.from_dict({"steps": 2**63 - 1}).steps == 2**63 - 1
    with pytest.raises(ConfigError, match=r"steps: .*64 bits.*<an integer too long to print>"):
        Cfg.from_dict({"steps": 10**4300}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"sizes: .*64 bits"):
        Cfg.from_dict({"sizes": [1, -(2**63) - 1]})
