"""The pool: name resolution, header-only indexes, lazy single-tensor reads, architecture checks."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from common import TOOL_FAMILIES
from fuzz_support import forbid_network

import olmokit.merge.pool as pool_mod
from olmokit.errors import CheckpointError
from olmokit.family import get_adapter
from olmokit.loading import load_model, save_model
from olmokit.merge.pool import (
    LazyDonor,
    Pool,
    TensorIndex,
    load_working_model,
    resolve_model_dir,
)
from olmokit.zoo.presets import random_model
from olmokit.zoo.registry import shipped_path


def _save(tmp_path, name, model_type="olmo2", seed=0, **overrides):
    model = random_model(model_type, "tiny", seed=seed, **overrides)
    return save_model(model, tmp_path / name), model


@pytest.fixture
def two_models(tmp_path):
    a, ma = _save(tmp_path, "a", seed=1)
    b, mb = _save(tmp_path, "b", seed=2)
    return (a, ma), (b, mb)


_REAL_SAFE_OPEN = safetensors.safe_open


class _SpyOpen:
    """Wraps ``safe_open``, recording every file opened and every tensor read."""

    def __init__(self):
        self.opened: list[str] = []
        self.read: list[str] = []

    def __call__(self, path, framework, device="cpu"):
        assert framework == "pt"
        self.opened.append(path)
        handle = _REAL_SAFE_OPEN(path, framework=framework, device=device)
        spy = self

        class Handle:
            def get_tensor(self, key):
                spy.read.append(key)
                return handle.get_tensor(key)

            def __getattr__(self, name):  # anything else would be a whole-file access: refuse
                raise AssertionError(f"LazyDonor used safe_open().{name}")

        return Handle()


def _fail(*args, **kwargs):
    raise AssertionError("a whole safetensors file was loaded")


def test_lazy_get_reads_one_tensor_without_loading_the_file(two_models, monkeypatch):
    (a, model), _ = two_models
    spy = _SpyOpen()
    monkeypatch.setattr(pool_mod, "safe_open", spy)
    for name in ("load_file", "load", "safe_open"):  # nothing may load or open it another way
        monkeypatch.setattr(safetensors.torch, name, _fail, raising=False)
    monkeypatch.setattr(safetensors, "safe_open", _fail)
    donor = LazyDonor(a)
    key = "model.layers.1.mlp.down_proj.weight"
    got = donor.get(key)
    assert spy.read == [key] and len(spy.opened) == 1
    torch.testing.assert_close(got, model.state_dict()[key], rtol=0, atol=0)
    # a second read reuses the one handle; the result owns its memory and can be cast and moved
    half = donor.get("model.norm.weight", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and len(spy.opened) == 1
    assert spy.read == [key, "model.norm.weight"]
    donor.close()
    assert not donor.is_open
    # safe_open's get_tensor returns a view of the mapping (a write would show in later reads):
    # get() must hand out a copy, or swapping a unit in place and perturbing it would corrupt the donor
    again = donor.get(key)  # the handle is open again
    again.add_(1.0)
    torch.testing.assert_close(donor.get(key), model.state_dict()[key], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no tensor 'nope'"):
        donor.get("nope")


def test_tensor_index_reads_headers_only(two_models, monkeypatch):
    (a, model), _ = two_models
    monkeypatch.setattr(pool_mod, "safe_open", _fail)
    index = TensorIndex.from_dir(a)
    state = model.state_dict()
    assert set(index.tensors) == set(state)
    info = index.tensors["model.embed_tokens.weight"]
    assert (info.file, info.shape, info.dtype) == ("model.safetensors", (4096, 64), "F32")
    assert info.shape == tuple(state["model.embed_tokens.weight"].shape)


def test_sharded_index_and_pool_unit_reads(tmp_path):
    """A sharded directory (model.safetensors.index.json) reads the same tensors as a single file."""
    model = random_model("olmo2", "tiny", seed=3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    d = tmp_path / "sharded"
    d.mkdir()
    halves = {"s-1.safetensors": keys[::2], "s-2.safetensors": keys[1::2]}
    for file, ks in halves.items():
        safetensors.torch.save_file({k: state[k] for k in ks}, d / file)
    weight_map = {k: f for f, ks in halves.items() for k in ks}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text(model.config.to_json_string())
    index = TensorIndex.from_dir(d)
    assert index.files == ("s-1.safetensors", "s-2.safetensors")
    assert {k: i.file for k, i in index.tensors.items()} == weight_map
    pool = Pool([str(d)])
    pool.check_architecture(get_adapter(model))
    unit = next(u for u in get_adapter(model).units() if u.name == "layers.0.attn.q_proj")
    got = pool.unit_tensors(str(d), unit)
    assert list(got) == list(unit.keys)
    for k, v in got.items():
        assert torch.equal(v, state[k])


def test_pool_keeps_at_most_max_open_donors_mapped(two_models):
    (a, model), (b, _) = two_models
    pool = Pool([str(a), str(b)], max_open=1)
    unit = get_adapter(model).units()[0]
    pool.unit_tensors(str(a), unit)
    assert [m.donor.is_open for m in pool] == [True, False]
    pool.unit_tensors(str(b), unit)
    assert [m.donor.is_open for m in pool] == [False, True]
    pool.close()
    assert not any(m.donor.is_open for m in pool)


def test_pool_by_default_unmaps_a_donor_after_each_unit(two_models):
    """Open mappings keep their pages resident: by default nothing stays mapped between reads."""
    (a, model), (b, _) = two_models
    pool = Pool([str(a), str(b)])
    unit = get_adapter(model).units()[0]
    got = pool.unit_tensors(str(b), unit)
    assert [m.donor.is_open for m in pool] == [False, False]
    again = pool.unit_tensors(str(b), unit)  # reopened on demand
    assert all(torch.equal(got[k], again[k]) for k in got)


def test_architecture_mismatch_names_model_and_tensor(tmp_path, two_models):
    (a, base), _ = two_models
    wide, _ = _save(tmp_path, "wide", intermediate_size=96)  # tiny: 128 (every mlp tensor differs)
    pool = Pool([str(a), str(wide)])
    with pytest.raises(
        CheckpointError,
        match=r"pool model '.*wide': tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape "
        r"\[96, 64\], the base model \[128, 64\]",  # the first differing key in state_dict order
    ):
        pool.check_architecture(get_adapter(base))
    deeper, _ = _save(tmp_path, "deeper", num_hidden_layers=3)  # tiny: 2 layers
    with pytest.raises(
        CheckpointError,
        match=r"pool model '.*deeper': tensor 'model\.layers\.2\..*' is not in the base model",
    ):
        Pool([str(a), str(deeper)]).check_architecture(get_adapter(base))
    with pytest.raises(CheckpointError, match=r"pool model '.*a': tensor 'model\.layers\.2\."):
        Pool([str(deeper), str(a)]).check_architecture(
            get_adapter(random_model("olmo2", "tiny", num_hidden_layers=3))
        )


def test_different_family_is_refused_by_name(tmp_path, two_models):
    (a, base), _ = two_models
    other, _ = _save(tmp_path, "v1", model_type="olmo")
    with pytest.raises(
        CheckpointError, match=r"pool model '.*v1' .* is model_type 'olmo'; the base is 'olmo2'"
    ):
        Pool([str(a), str(other)]).check_architecture(get_adapter(base))


@pytest.mark.parametrize("model_type", TOOL_FAMILIES["merge"])
def test_same_architecture_passes_and_units_read_the_donor(tmp_path, model_type):
    (a, base), (b, donor_model) = (
        _save(tmp_path, "a", model_type, seed=1),
        _save(tmp_path, "b", model_type, seed=2),
    )
    pool = Pool([str(a), str(b)])
    adapter = get_adapter(base)
    pool.check_architecture(adapter)
    assert pool.names == [str(a), str(b)]
    for unit in adapter.units():
        got = pool.unit_tensors(pool.members[1], unit, dtype=torch.float32)
        for k in unit.keys:
            assert torch.equal(got[k], donor_model.state_dict()[k])


def test_tied_lm_head_absent_from_files_reads_the_embedding(tmp_path):
    path, model = _save(tmp_path, "tied", tie_word_embeddings=True)
    assert "lm_head.weight" not in TensorIndex.from_dir(path).tensors  # save_pretrained omits it
    pool = Pool([str(path)])
    adapter = get_adapter(model)
    pool.check_architecture(adapter)  # the omitted tied key is not "missing"
    lm_head = next(u for u in adapter.units() if u.role == "lm_head")
    assert lm_head.tied_to == "embed_tokens"
    got = pool.unit_tensors(str(path), lm_head)
    assert torch.equal(got["lm_head.weight"], model.state_dict()["model.embed_tokens.weight"])


def test_shipped_zoo_name_resolves_in_place(tmp_path):
    assert resolve_model_dir("olmo2-stdlib") == shipped_path("olmo2-stdlib")
    assert resolve_model_dir("zoo:olmo2-stdlib", tmp_path) == shipped_path("olmo2-stdlib")
    assert not any(tmp_path.iterdir())


def test_random_zoo_model_is_materialised_once(tmp_path, monkeypatch):
    import olmokit.loading

    path = resolve_model_dir("olmo2-tiny-random", tmp_path / "cache")
    assert path == tmp_path / "cache" / "olmo2-tiny-random"
    expected = random_model("olmo2", "tiny", seed=0).state_dict()
    donor = LazyDonor(path)
    assert set(donor.keys()) == set(expected)
    assert torch.equal(
        donor.get("model.layers.0.self_attn.q_proj.weight"),
        expected["model.layers.0.self_attn.q_proj.weight"],
    )
    assert (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(olmokit.loading, "save_model", _fail)  # a second call writes nothing
    assert resolve_model_dir("zoo:olmo2-tiny-random", tmp_path / "cache") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(CheckpointError, match="built on demand; pass a cache directory"):
        resolve_model_dir("olmo3-tiny-random")


def test_hub_id_offline_and_not_cached_says_so(tmp_path, monkeypatch):
    guard = forbid_network(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        CheckpointError,
        match=r"pool model 'allenai/OLMo-2-0425-1B': not in the local Hugging Face cache and this "
        r"machine is offline",
    ):
        Pool(["allenai/OLMo-2-0425-1B"], tmp_path)
    assert guard.attempts == []


def test_unresolvable_names(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file; pass the model's directory"):
        resolve_model_dir(str(tmp_path / "f.txt"))
    with pytest.raises(CheckpointError, match="neither a directory, a zoo model .* nor a hub id"):
        resolve_model_dir("no such thing!")
    with pytest.raises(CheckpointError, match="no zoo model 'zoo:nope'"):
        resolve_model_dir("zoo:nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no model.safetensors .* convert to safetensors"):
        TensorIndex.from_dir(empty)


def test_corrupt_header_is_a_checkpoint_error(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "model.safetensors").write_bytes((10).to_bytes(8, "little") + b"{not json}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        TensorIndex.from_dir(d)
    (d / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        TensorIndex.from_dir(d)


def test_fingerprint_changes_with_the_weights_not_the_location(tmp_path, two_models):
    (a, model), (b, _) = two_models
    fa = TensorIndex.from_dir(a).fingerprint()
    copy = save_model(model, tmp_path / "copy")
    assert TensorIndex.from_dir(copy).fingerprint() == fa
    assert TensorIndex.from_dir(b).fingerprint() != fa  # same shapes, other weights
    assert Pool([str(a), str(b)]).fingerprints() == {
        str(a): fa,
        str(b): TensorIndex.from_dir(b).fingerprint(),
    }


def test_random_zoo_seed_variants_are_distinct_models(tmp_path):
    cache = tmp_path / "cache"
    pool = Pool(["olmo2-tiny-random", "olmo2-tiny-random@1", "zoo:olmo2-tiny-random@2"], cache)
    assert [m.path.name for m in pool] == [
        "olmo2-tiny-random",
        "olmo2-tiny-random@1",
        "olmo2-tiny-random@2",
    ]
    base = random_model("olmo2", "tiny", seed=0)
    pool.check_architecture(get_adapter(base))
    key = "model.layers.0.mlp.up_proj.weight"
    for member, seed in zip(pool, (0, 1, 2)):
        expected = random_model("olmo2", "tiny", seed=seed).state_dict()[key]
        assert torch.equal(member.donor.get(key), expected)
    assert len(set(pool.fingerprints().values())) == 3
    with pytest.raises(
        CheckpointError, match="'@<seed>' variants exist only for random zoo models"
    ):
        resolve_model_dir("olmo2-stdlib@1", cache)
    with pytest.raises(CheckpointError, match="'@<seed>' variants"):
        resolve_model_dir("olmo2-tiny-random@x", cache)


def _every_tensor(model):
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))  # rotary inv_freq included
    return out


@pytest.mark.parametrize("model_type", TOOL_FAMILIES["merge"])
@pytest.mark.parametrize(
    ("tied", "stored", "dtype"),
    [
        (False, torch.bfloat16, "float32"),
        (True, torch.float32, "float32"),
        (True, torch.float32, "bf16"),
    ],
)
def test_working_model_equals_load_model_bit_for_bit(tmp_path, model_type, tied, stored, dtype):
    """The merge's tensor-by-tensor loader gives what from_pretrained gives: every parameter and
    buffer (non-persistent rotary inv_freq too) bit-equal with the same dtype, the same config and
    generation config, the tie kept (one tensor), eval mode."""
    model = random_model(model_type, "tiny", seed=4, tie_word_embeddings=tied)
    path = save_model(model.to(stored), tmp_path / "m")
    want, got = load_model(path, dtype=dtype), load_working_model(path, dtype=dtype)
    a, b = _every_tensor(want), _every_tensor(got)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert any(k.endswith("inv_freq") for k in b)  # olmo3 names one per attention type
    assert got.config.to_dict() == want.config.to_dict()
    assert got.generation_config.to_dict() == want.generation_config.to_dict()
    same = got.get_output_embeddings().weight is got.get_input_embeddings().weight
    assert same is tied and not got.training
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    assert torch.equal(want(ids).logits, got(ids).logits)


def test_working_model_reads_one_tensor_at_a_time_and_unmaps(tmp_path, monkeypatch):
    """No whole-file load: every tensor is read alone, and the file is unmapped (handle dropped)
    after each one, so its pages never accumulate next to the model."""
    path, _ = _save(tmp_path, "m")
    spy = _SpyOpen()
    monkeypatch.setattr(pool_mod, "safe_open", spy)
    for name in ("load_file", "load", "safe_open"):
        monkeypatch.setattr(safetensors.torch, name, _fail, raising=False)
    load_working_model(path)
    stored = TensorIndex.from_dir(path).keys()
    assert sorted(spy.read) == sorted(stored) and len(spy.opened) == len(stored)


def test_working_model_refuses_missing_and_extra_tensors(tmp_path):
    path, model = _save(tmp_path, "m")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    key = "model.layers.0.mlp.up_proj.weight"
    safetensors.torch.save_file(
        {k: v for k, v in state.items() if k != key}, str(path / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match="missing.*up_proj"):
        load_working_model(path)
    extra = dict(state, **{"model.layers.9.mlp.up_proj.weight": state[key].clone()})
    safetensors.torch.save_file(extra, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no place.*layers.9"):
        load_working_model(path)
