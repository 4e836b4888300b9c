"""Property tests of model-name resolution and local ``config.json`` reading: one clear error, offline.

A model argument is an existing directory, a zoo name or a valid hub id; anything else is one
``CheckpointError`` that lists the zoo models. A local directory whose ``config.json`` is broken in any
way is an olmokit error naming the directory. Every answer comes within a second and without the
network (``fuzz_support.forbid_network`` records any socket use).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from fuzz_support import forbid_network, fuzz
from hypothesis import assume, given
from hypothesis import strategies as st

from olmokit.errors import CheckpointError, FamilyError, OlmokitError
from olmokit.loading import _is_dir, is_hub_id, load_model, load_tokenizer, save_model
from olmokit.zoo.registry import ZOO, is_zoo_name

ZOO_LIST = "zoo models: " + ", ".join(ZOO)


@pytest.fixture(scope="module")
def _warm(tmp_path_factory):
    """Import transformers' lazy modules once, so the one-second bound times olmokit, not imports."""
    tmp = tmp_path_factory.mktemp("warm")
    (tmp / "config.json").write_text('{"model_type": "olmo2"}')
    for load in (load_model, load_tokenizer):
        with pytest.raises(OlmokitError):
            load(tmp)


@pytest.fixture
def guard(_warm, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative names resolve in an empty directory
    return forbid_network(monkeypatch)


_segment = st.text(st.sampled_from("abcXYZ019-_.~ :/\\@%"), min_size=0, max_size=12)
_names = (
    st.text(max_size=40)
    | st.lists(_segment, min_size=1, max_size=5).map("/".join)
    | st.builds(
        lambda p, n: p + n, st.sampled_from(["./", "../", "/", "~/", "zoo:", "hf://"]), _segment
    )
    | st.integers(90, 5000).map(lambda n: "a" * n)
    | st.builds(lambda n: "a/" + "b" * n, st.integers(90, 400))
)


@fuzz(600)
@given(name=_names)
def test_any_name_is_refused_with_one_clear_message(guard, name):
    assume(name and not is_zoo_name(name))
    start = time.perf_counter()
    with pytest.raises(OlmokitError) as info:
        load_model(name)
    msg = str(info.value)
    assert isinstance(info.value, CheckpointError), msg
    assert time.perf_counter() - start < 1.0
    if _is_dir(name):  # ".", "/", "a/.." ...: a directory, but not a model's
        assert msg == f"{name}: no config.json; pass a directory written by save_pretrained"
    elif name.startswith("zoo:"):
        assert msg == f"no zoo model {name!r}; available: {', '.join(ZOO)}"
    elif is_hub_id(name):  # valid syntax, so it went to the (offline) hub
        assert msg.startswith(f"could not load {name!r}") and "zoo model: olmo2-stdlib" in msg
    else:
        assert "is neither an existing model directory, a zoo model nor a valid" in msg
        assert msg.endswith(ZOO_LIST), msg
    assert guard.attempts == []


@pytest.mark.parametrize("name", ["./missing/dir", "/abs/missing", "a/b/c", "a" * 5000, "x\x00y"])
def test_unresolvable_names_get_one_message_listing_the_zoo(guard, name):
    shown = name if len(name) <= 120 else name[:117] + "..."
    for load in (load_model, load_tokenizer):
        with pytest.raises(CheckpointError) as info:
            load(name)
        assert str(info.value) == (
            f"{shown!r} is neither an existing model directory, a zoo model nor a valid Hugging Face "
            f"hub id ('namespace/name'); {ZOO_LIST}"
        )
    assert guard.attempts == []


def test_unknown_zoo_name_lists_the_zoo(guard):
    for load in (load_model, load_tokenizer):
        with pytest.raises(CheckpointError) as info:
            load("zoo:nope")
        assert str(info.value) == f"no zoo model 'zoo:nope'; available: {', '.join(ZOO)}"
        assert "Repo id" not in str(info.value)
    assert guard.attempts == []


def test_a_file_is_not_a_model_directory(guard, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model.safetensors: is a file; pass the model's dir"):
        load_model(str(tmp_path / "model.safetensors"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_config_keys = st.sampled_from(
    [
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "layer_types",
        "architectures",
        "rope_parameters",
        "torch_dtype",
        "tie_word_embeddings",
    ]
)
_model_types = st.sampled_from(["olmo", "olmo2", "olmo3", "llama", "", "bert"]) | st.text(
    max_size=6
)
_configs = st.builds(
    lambda mt, extra: {"model_type": mt, **extra},
    _model_types,
    st.dictionaries(_config_keys, _json, max_size=4),
)
_bodies = (
    _configs.map(json.dumps)
    | _json.map(json.dumps)
    | st.binary(max_size=60).map(lambda b: b.decode("latin-1"))
    | st.integers(1, 3000).map(lambda n: "[" * n)
    | st.just('{"model_type": "olmo2", "hidden_size": ' + "9" * 4400 + "}")
)


@fuzz(500)
@given(body=_bodies, loader=st.sampled_from([load_model, load_tokenizer]))
def test_a_broken_local_config_names_the_directory(guard, body, loader):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_bytes(body.encode("utf-8", "surrogatepass"))
        start = time.perf_counter()
        with pytest.raises(OlmokitError) as info:
            loader(tmp)  # never loads: there are no weights and no tokenizer files
        assert tmp in str(info.value), str(info.value)
        assert time.perf_counter() - start < 1.0
    assert guard.attempts == []


@pytest.mark.parametrize(
    "body,message",
    [
        ("[1, 2]", "config.json: must hold a JSON object, got list"),
        ('{"model_type": 3}', "config.json: 'model_type' must be a string such as 'olmo2', got 3"),
        ('{"model_type": "olmo2", "hidden_size": "big"}', "config.json: cannot load: Strict"),
        ('{"model_type": "olmo2",\n "x": }', "config.json:2: invalid JSON: Expecting value"),
        (
            '{"model_type": "llama"}',
            ": unsupported model LlamaConfig (model_type 'llama'); olmokit",
        ),
    ],
)
def test_local_config_errors_are_pinned(guard, tmp_path, body, message):
    (tmp_path / "config.json").write_text(body)
    with pytest.raises((CheckpointError, FamilyError)) as info:
        load_model(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}") and message in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("hidden_size", 32, "the weights do not match its config.json"),
        ("vocab_size", 4000, "the weights do not match its config.json"),
        ("num_hidden_layers", 1, "7 tensors of the checkpoint have no place in the model"),
        ("num_hidden_layers", 3, "7 tensors are missing from the checkpoint"),
    ],
)
def test_weights_that_disagree_with_config_are_refused(tmp_path, key, value, message):
    from olmokit.zoo.presets import random_model

    out = save_model(random_model("olmo", "tiny"), tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg[key] = value
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_model(out)


def test_a_directory_without_tokenizer_files_is_refused(guard, tmp_path):
    """transformers would build an empty tokenizer from config.json alone (encodes text to [])."""
    (tmp_path / "config.json").write_text('{"model_type": "olmo"}')
    with pytest.raises(CheckpointError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: no tokenizer files (tokenizer.json, ")
