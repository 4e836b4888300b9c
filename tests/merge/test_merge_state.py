"""The working model: units swapped in place from lazy donors and restored from a copy of just that
unit; tied embeddings; the state key; no donor is ever materialised whole."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import transformers
from merge_helpers import make_pool

from olmokit.loading import load_model
from olmokit.merge.pool import Pool
from olmokit.merge.state import WorkingModel, state_key, unit_source


@pytest.fixture(scope="module")
def pool_dirs(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("pool"), seeds=(0, 1))


@pytest.fixture
def working(pool_dirs):
    pool = Pool(pool_dirs)
    model = load_model(pool_dirs[0])
    w = WorkingModel(model, pool, base=pool_dirs[0])
    pool.check_architecture(w.adapter)
    return w


def no_whole_loads(monkeypatch):
    """Any whole-model or whole-file load fails (the lazy path must not need one)."""

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", _refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", _refuse)
    monkeypatch.setattr(safetensors.torch, "load", _refuse)


def test_apply_copies_exactly_one_unit_and_restore_undoes_it(working, pool_dirs, monkeypatch):
    donor = load_donor_state(pool_dirs[1])
    no_whole_loads(monkeypatch)
    before = {k: v.clone() for k, v in working.model.state_dict().items()}
    unit = working.units["layers.1.mlp.up_proj"]
    snap = working.snapshot([unit])
    working.apply(unit, pool_dirs[1])
    after = working.model.state_dict()
    for key, value in after.items():
        expected = donor[key] if key in unit.keys else before[key]
        assert torch.equal(value, expected), key
    assert working.overrides == {unit.name: pool_dirs[1]}
    working.restore(snap)
    assert working.overrides == {}
    for key, value in working.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_trial_restores_on_exception(working, pool_dirs):
    before = {k: v.clone() for k, v in working.model.state_dict().items()}
    units = working.layer_units(0)
    with pytest.raises(RuntimeError, match="boom"), working.trial(units):
        working.apply_all(units, pool_dirs[1])
        assert len(working.overrides) == len(units)
        raise RuntimeError("boom")
    assert working.overrides == {}
    for key, value in working.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unit_groups(working):
    names = [u.name for u in working.layer_units(1)]
    assert len(names) == 11 and all(n.startswith("layers.1.") for n in names)
    assert [u.name for u in working.boundary_units()] == ["embed_tokens", "final_norm", "lm_head"]
    with_norms = working.searchable_units(skip_norm=False)
    no_norms = working.searchable_units(skip_norm=True)
    # per layer 4 norms (q/k norm, two post-norms) + the final norm
    assert len(with_norms) - len(no_norms) == 2 * 4 + 1
    assert not any(u.is_norm for u in no_norms)


def test_tied_embeddings_follow(tmp_path, monkeypatch):
    dirs = make_pool(tmp_path, seeds=(0, 1), tied=True)
    pool = Pool(dirs)
    model = load_model(dirs[0])
    w = WorkingModel(model, pool, base=dirs[0])
    pool.check_architecture(w.adapter)
    donor = load_donor_state(dirs[1])
    monkeypatch.setattr(safetensors.torch, "load_file", _refuse)
    assert [u.name for u in w.boundary_units()] == ["embed_tokens", "final_norm"]
    assert "lm_head" not in [u.name for u in w.searchable_units()]
    w.apply("embed_tokens", dirs[1])
    assert torch.equal(model.lm_head.weight, donor["model.embed_tokens.weight"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    w.apply("lm_head", dirs[0])  # a tied lm_head is not a unit of its own: a no-op
    assert torch.equal(model.lm_head.weight, donor["model.embed_tokens.weight"])


def test_state_key():
    assert state_key({"a": "x", "b": "y"}) == state_key({"b": "y", "a": "x"})
    assert state_key({}) != state_key({"a": "x"})
    assert state_key({"a": "x"}) != state_key({"a": "x+svd:1:0:2"})
    op = {"kind": "svd", "seed": 7, "generation": 0, "offspring": 3}
    assert unit_source("m1", [op, {**op, "kind": "norm"}]) == "m1+svd:7:0:3+norm:7:0:3"


def test_state_key_of_working_model(working, pool_dirs):
    k0 = working.state_key()
    assert working.state_key({"embed_tokens": pool_dirs[0]}) == k0  # the base's own unit
    k1 = working.state_key({"embed_tokens": pool_dirs[1]})
    working.apply("embed_tokens", pool_dirs[1])
    assert working.state_key() == k1 != k0
    working.apply("embed_tokens", pool_dirs[0])
    assert working.state_key() == k0


def test_rebase(working, pool_dirs):
    units = [u for u in working.units.values() if u.tied_to is None]
    with pytest.raises(ValueError, match="hold other weights"):
        working.rebase(pool_dirs[1])
    working.apply_all(units, pool_dirs[1])
    working.rebase(pool_dirs[1])
    assert working.base == pool_dirs[1] and working.overrides == {}


def _refuse(*args, **kwargs):
    raise AssertionError("a donor was materialised whole")


def load_donor_state(path: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(f"{path}/model.safetensors")


def test_snapshot_reuses_the_released_buffers_and_a_released_snapshot_cannot_restore(working):
    """A layer step's snapshot goes into the previous step's buffers (same shapes, no new
    allocation); buffers of other shapes are dropped; restoring still gives the exact tensors."""
    first = working.snapshot(working.layer_units(0))
    ptrs = sorted(t.data_ptr() for t in first["tensors"].values())
    working.release(first)
    with pytest.raises(RuntimeError, match="released"):
        working.restore(first)
    before = {k: v.clone() for k, v in working.model.state_dict().items()}
    second = working.snapshot(working.layer_units(1))
    assert sorted(t.data_ptr() for t in second["tensors"].values()) == ptrs
    for key, t in second["tensors"].items():
        assert torch.equal(t, before[key])
    with torch.no_grad():
        for u in working.layer_units(1):
            for key in u.keys:
                working.tensor(key).mul_(2.0)
    working.restore(second)
    for key, value in working.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    working.release(second)
    embed = next(u for u in working.boundary_units() if u.role == "embed_tokens")
    boundary = working.snapshot([embed])  # another shape: a fresh copy; the spares are dropped
    assert not {t.data_ptr() for t in boundary["tensors"].values()} & set(ptrs)
    assert working._spare == {}
    for key, t in boundary["tensors"].items():
        assert torch.equal(t, before[key])
