"""Property tests: no YAML file, override or mapping makes the config loader fail with a raw exception.

Every input either validates or raises :class:`ConfigError` naming the file (and the line, or the key),
within a second, without the network. The strategies aim at what a hypothesis run of ~4,000 inputs
found in issue 8: invalid UTF-8, deep nesting, integers over Python's digit limit, non-string keys,
NaN/inf, malformed ``key=value`` overrides.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import yaml
from fuzz_support import forbid_network, fuzz
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field

from olmokit.config import MAX_DEPTH, OlmokitConfig
from olmokit.errors import ConfigError
from olmokit.zoo.build import ZooBuildConfig


class Inner(OlmokitConfig):
    rate: float = Field(0.1, description="a rate")
    pair: tuple[float, float] = (0.0, 1.0)
    name: str = "x"


class Fuzzed(OlmokitConfig):
    steps: int = 3
    lr: float = 1e-3
    flag: bool = False
    scales: dict[str, float] = Field(default_factory=dict)
    inner: Inner = Field(default_factory=Inner)


CLASSES = st.sampled_from([Fuzzed, ZooBuildConfig])
KEYS = ["steps", "lr", "flag", "scales", "inner", "rate", "pair", "name", "seq_len", "model_type"]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.integers(4300, 5000).map(lambda n: 10**n)  # too long for str()
)
_keys = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers() | st.booleans()
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)

#: YAML-looking text: fragments that exercise the scanner, the composer and the constructors.
_fragments = st.sampled_from(
    [
        "steps: ",
        "lr: ",
        "inner:\n  ",
        "pair: [",
        "]",
        "{",
        "}",
        ": ",
        "- ",
        "\n",
        "  ",
        "\t",
        "'",
        '"',
        "&a ",
        "*a",
        "!!python/object:os.system ",
        "!!binary ",
        "? ",
        ".nan",
        "-.inf",
        "1e400",
        "0x",
        "0o",
        "2024-13-45",
        "~",
        "%YAML 1.1\n---\n",
        "---\n",
        "...\n",
        "\x00",
        "\ufeff",
        "\u2028",
        "#",
        "|\n",
        ">-\n",
        "9" * 4400,
    ]
)
_yaml_text = st.lists(_fragments | st.text(max_size=6), max_size=24).map("".join)


def _depth_text(n: int, kind: str) -> str:
    if kind == "flow":
        return "steps: " + "[" * n + "]" * n + "\n"
    if kind == "map":
        return "steps: " + "{a: " * n + "1" + "}" * n + "\n"
    return "".join(" " * i + "a:\n" for i in range(n)) + " " * n + "b: 1\n"


_deep_yaml = st.builds(_depth_text, st.integers(1, 3000), st.sampled_from(["flow", "map", "block"]))


def _check(cls, path: Path, data: bytes, guard) -> None:
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        cfg = cls.from_yaml(path)
    except ConfigError as exc:
        assert str(path) in str(exc), str(exc)
    else:
        # What validated is usable: every float finite, the config round-trips through strict JSON.
        json.dumps(cfg.as_dict(), allow_nan=False)
        assert type(cfg).from_yaml(_write(path, cfg.to_yaml())) == cfg
    assert time.perf_counter() - start < 1.0
    assert guard.attempts == []


def _write(path: Path, text: str) -> Path:
    out = path.with_suffix(".roundtrip.yaml")
    out.write_text(text, encoding="utf-8")
    return out


@pytest.fixture
def workdir(monkeypatch):
    guard = forbid_network(monkeypatch)
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp), guard


@fuzz(500)
@given(cls=CLASSES, text=_yaml_text)
def test_yaml_like_text_validates_or_names_the_file(workdir, cls, text):
    tmp, guard = workdir
    _check(cls, tmp / "fuzz.yaml", text.encode("utf-8", "surrogatepass"), guard)


@fuzz(300)
@given(cls=CLASSES, data=st.binary(max_size=200))
def test_arbitrary_bytes_validate_or_name_the_file(workdir, cls, data):
    tmp, guard = workdir
    _check(cls, tmp / "fuzz.yaml", data, guard)


@fuzz(60)
@given(text=_deep_yaml)
def test_deep_nesting_is_a_config_error_with_a_line(workdir, text):
    tmp, guard = workdir
    path = tmp / "deep.yaml"
    path.write_text(text)
    start = time.perf_counter()
    depth = text.count("[") or text.count("{") or text.count(":\n")
    if depth + 1 <= MAX_DEPTH:
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            Fuzzed.from_yaml(path)  # shallow enough to parse; 'steps' is not an int/mapping
    else:
        with pytest.raises(ConfigError, match=re.escape(str(path)) + r":\d+:\d+: nested deeper"):
            Fuzzed.from_yaml(path)
    assert time.perf_counter() - start < 1.0


@fuzz(300)
@given(cls=CLASSES, data=st.dictionaries(st.sampled_from(KEYS) | _keys, _values, max_size=5))
def test_mappings_validate_or_name_the_key(workdir, cls, data):
    _, guard = workdir
    for strict in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # strict=False: unknown keys dropped
                cfg = cls.from_dict(data, source="fuzz.yaml", strict=strict)
        except ConfigError as exc:
            msg = str(exc)
            assert msg.startswith("fuzz.yaml: "), msg
            assert "invalid config" in msg or "nested deeper" in msg, msg
        else:
            dumped = cfg.as_dict()
            json.dumps(dumped, allow_nan=False)  # what crashed the adapter save with NaN
            floats = [v for v in _leaves(dumped) if isinstance(v, float)]
            assert all(math.isfinite(v) for v in floats)
    assert guard.attempts == []


def _leaves(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _leaves(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _leaves(v)
    else:
        yield node


_override_keys = st.sampled_from(
    ["steps", "lr", "inner.rate", "inner.pair", "scales.a", "inner"]
) | (st.text(max_size=10))
_override_values = _fragments | st.text(max_size=12) | _yaml_text


@fuzz(300)
@given(key=_override_keys, value=_override_values, bare=st.booleans())
def test_overrides_apply_or_name_the_override(workdir, key, value, bare):
    _, guard = workdir
    item = key if bare else f"{key}={value}"
    try:
        cfg = Fuzzed.from_dict({}).merge([item])
    except ConfigError as exc:
        msg = str(exc)
        named = "override" in msg or "invalid config" in msg
        assert named, msg
    else:
        json.dumps(cfg.as_dict(), allow_nan=False)
    assert guard.attempts == []


@pytest.mark.parametrize(
    "text,where",
    [
        ("lr: 1\n  steps: 2\n", ":2:8: mapping values are not allowed here"),
        ("inner:\n  pair: [1, 2\nsteps: 3\n", ":3:6: expected ',' or ']'"),
        ("steps: '1\n", ":2:1: found unexpected end of stream"),
        ("a: 1\nb: \x07\n", ":2:4: special characters are not allowed"),
        ("steps: " + "1" * 4400 + "\n", ":1:8: invalid value: Exceeds the limit (4300 digits)"),
        ("when: 2024-13-45\n", ":1:7: invalid value: month must be in 1..12"),
    ],
)
def test_malformed_yaml_names_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Fuzzed.from_yaml(path)
    assert str(info.value).startswith(f"{path}{where}"), str(info.value)


def test_invalid_utf8_names_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("steps: 3\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        Fuzzed.from_yaml(path)
    assert str(info.value) == f"{path}:2:10: not valid UTF-8 (byte 0xe9); save the file as UTF-8"


@pytest.mark.parametrize(
    "overrides,key",
    [(["lr=.nan"], "lr"), (["lr=-.inf"], "lr"), (["inner.pair=[0, .inf]"], "inner.pair.1")],
)
def test_non_finite_floats_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: Input should be a finite number"):
        Fuzzed.from_dict({}).merge(overrides)
    with pytest.raises(ConfigError, match=r"scales.a: Input should be a finite number"):
        Fuzzed.from_dict({"scales": {"a": float("nan")}})


def test_override_yaml_errors_name_the_override():
    with pytest.raises(ConfigError) as info:
        Fuzzed.from_dict({}).merge(["inner.pair=[1"])
    assert str(info.value) == (
        "override 'inner.pair=[1':1:3: expected ',' or ']', but got '<stream end>' (invalid YAML)"
    )


def test_mixed_type_keys_are_dropped_or_named():
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \[1, 'zz'\]"):
        cfg = Fuzzed.from_dict({1: "a", "zz": 2, "steps": 5}, strict=False)
    assert cfg.steps == 5
    with pytest.raises(ConfigError, match=r"1: Keys should be strings"):
        Fuzzed.from_dict({1: "a", "steps": 5})


def test_alias_bombs_stay_small_and_fast(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"unknown key 'a0'") as info:
        Fuzzed.from_yaml(path)
    assert time.perf_counter() - start < 1.0 and len(str(info.value)) < 2000


def test_yaml_round_trip_of_dumped_configs(tmp_path):
    cfg = Fuzzed.from_dict({"scales": {"a": 1e-300}, "inner": {"pair": [-0.0, 5e300]}})
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert yaml.safe_load(path.read_text())["inner"]["pair"] == [-0.0, 5e300]
    assert Fuzzed.from_yaml(path) == cfg
