"""The injection base on every OLMo generation: identity attach, freezing, exact adapter round trip,
wrong-base refusal naming the difference, training arguments from a config, the finite-loss guard."""

import json
import warnings
from typing import ClassVar

import pytest
import torch
from common import FAMILY_MODELS
from pydantic import Field
from torch import nn
from transformers import Trainer, TrainerCallback

from olmokit.config import OlmokitConfig
from olmokit.errors import CheckpointError, ConfigError
from olmokit.family import get_adapter
from olmokit.inject import (
    AdapterFormat,
    BaseWeightsWarning,
    FiniteLossGuard,
    Injection,
    TrainingDivergedError,
    base_fingerprint,
    check_base,
    freeze_base,
    get_injection,
    has_injection,
    layer_site,
    load_adapter,
    read_adapter,
    save_adapter,
    training_arguments,
)
from olmokit.loading import load_model
from olmokit.zoo.presets import random_model

ZOO = FAMILY_MODELS  # the shared test matrix's tiny random model per OLMo generation
IDS = torch.tensor(
    [[5, 17, 99, 3, 250, 1000, 7, 8, 9, 10, 11, 12], [42, 43, 44, 45, 1, 2, 3, 4, 5, 6, 7, 8]]
)
FMT = AdapterFormat("olmokit-test", 1, "test_adapter.safetensors", "test_config.json")


class Scale(nn.Module):
    """A per-feature scale, the identity at initialisation."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.scale.to(x.dtype)


def _attach(model, layers=(0, -1)):
    a = get_adapter(model)
    inj = Injection(model, "probe")
    for i in layers:
        inj.add(layer_site(model, i, "o_proj"), Scale(a.num_heads * a.head_dim))
    freeze_base(model, inj.parameters())
    return inj


@pytest.fixture(params=list(ZOO))
def zoo_model(request):
    return request.param, load_model(ZOO[request.param])


def test_attach_identity_freeze_and_remove(zoo_model):
    model_type, model = zoo_model
    want = model(IDS).logits
    inj = _attach(model)
    a = get_adapter(model)
    assert torch.equal(model(IDS).logits, want)  # identity at initialisation, bit for bit
    assert inj.num_parameters() == 2 * a.num_heads * a.head_dim
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in inj.parameters()}
    last = a.num_layers - 1
    assert list(inj.state_dict()) == ["layers.0.scale", f"layers.{last}.scale"]
    # registered as submodules under the injection's name (so state_dict/.to()/optimizers see them)
    assert sum(".probe." in k for k in model.state_dict()) == 2
    with torch.no_grad():
        inj.modules["layers.0"].scale.mul_(3.0)
    changed = model(IDS).logits
    assert (changed - want).abs().max() > 1e-3
    with inj.disabled():
        assert torch.equal(model(IDS).logits, want)
    assert has_injection(model, "probe") and get_injection(model, "probe") is inj
    inj.remove()
    assert not has_injection(model, "probe") and not any(".probe." in k for k in model.state_dict())
    assert torch.equal(model(IDS).logits, want)


class Shift(nn.Module):
    """Adds a learned vector to the residual stream (zero at initialisation)."""

    def __init__(self, width: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return x + self.shift.to(x.dtype)


def test_layer_hooks_act_where_they_sit():
    """Before layer 1 (pre-hook) and after layer 0 (post-hook) are the same point of the residual
    stream: the same shift there gives bit-identical logits; zero shift is the identity."""
    shift = None
    logits = {}
    for hook, layer in (("pre", 1), ("post", 0)):
        model = random_model("olmo2", "tiny", seed=0)
        a = get_adapter(model)
        want = model(IDS).logits
        inj = Injection(model, "mem")
        added = inj.add(
            layer_site(model, layer, "layer", owner="layer"), Shift(a.hidden_size), hook=hook
        )
        assert torch.equal(model(IDS).logits, want)
        shift = torch.linspace(-1, 1, a.hidden_size) if shift is None else shift
        with torch.no_grad():
            added.shift.copy_(shift)
        logits[hook] = model(IDS).logits
        assert (logits[hook] - want).abs().max() > 1e-3
    assert torch.equal(logits["pre"], logits["post"])


def test_post_hook_on_tuple_output_and_errors():
    model = random_model("olmo2", "tiny", seed=0)
    want = model(IDS).logits
    inj = Injection(model, "post")
    inj.add(layer_site(model, 1, "attn", owner="layer"), nn.Identity(), hook="post")
    assert torch.equal(model(IDS).logits, want)  # attention returns (output, weights)
    with pytest.raises(ConfigError, match="already attached"):
        Injection(model, "post")
    with pytest.raises(ConfigError, match="already has a module"):
        inj.add(layer_site(model, 1, "attn", owner="layer"), nn.Identity())
    with pytest.raises(ConfigError, match="hook 'mid' not in pre, post"):
        inj.add(layer_site(model, 0, "attn", owner="layer"), nn.Identity(), hook="mid")
    with pytest.raises(ConfigError, match=r"out of range.*valid: 0\.\.1"):
        layer_site(model, 5, "o_proj")
    with pytest.raises(ConfigError, match="no 'nope' attached .*post"):
        get_injection(model, "nope")


def test_save_load_round_trip_bit_exact(zoo_model, tmp_path):
    model_type, model = zoo_model
    inj = _attach(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in inj.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    want = model(IDS).logits
    save_adapter(tmp_path, FMT, inj.state_dict(), model, {"layers": [0, -1]})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FMT.config_file, FMT.weights_file])
    meta, tensors = read_adapter(tmp_path, FMT)
    assert (
        meta["format"] == "olmokit-test"
        and meta["format_version"] == 1
        and meta["layers"] == [0, -1]
    )
    fp = meta["base_model"]
    assert fp["model_type"] == model_type and fp["name_or_path"] == f"zoo:{ZOO[model_type]}"
    assert len(fp["weights_hash"]) == 16 and not any(".probe." in k for k in fp["tensors"])
    assert fp == json.loads(
        json.dumps(base_fingerprint(model))
    )  # the injection is not part of the base

    fresh = load_model(ZOO[model_type])
    check_base(fp, fresh, "adapter")  # same base: silent
    inj2 = _attach(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_adapter(inj2, tmp_path, FMT)["layers"] == [0, -1]
    assert all(torch.equal(inj2.state_dict()[k], v) for k, v in inj.state_dict().items())
    assert torch.equal(fresh(IDS).logits, want)


def test_different_base_refused_naming_the_difference(tmp_path):
    model = random_model("olmo2", "tiny", seed=0)
    fp = base_fingerprint(model)
    with pytest.raises(
        CheckpointError, match=r"OLMo-2 \(model_type 'olmo2'.*this model is OLMo v1"
    ):
        check_base(fp, random_model("olmo", "tiny", seed=0), "adapter x")
    with pytest.raises(CheckpointError, match="num_layers: adapter 2 vs model 3"):
        check_base(fp, random_model("olmo2", "tiny", seed=0, num_hidden_layers=3), "adapter x")
    with pytest.raises(CheckpointError, match="intermediate_size: adapter 128 vs model 96"):
        check_base(fp, random_model("olmo2", "tiny", seed=0, intermediate_size=96), "adapter x")
    # a tensor the saved base had is missing here (sizes alone cannot tell: an unseen config change)
    short = dict(fp, tensors={**fp["tensors"], "model.extra.weight": [3]})
    with pytest.raises(CheckpointError, match=r"missing base tensors \['model.extra.weight'\]"):
        check_base(short, model, "adapter x")
    fewer = dict(fp, tensors={k: v for k, v in fp["tensors"].items() if k != "lm_head.weight"})
    with pytest.raises(CheckpointError, match=r"extra base tensors \['lm_head.weight'\]"):
        check_base(fewer, model, "adapter x")
    shape = dict(fp, tensors={**fp["tensors"], "lm_head.weight": [1, 2]})
    with pytest.raises(
        CheckpointError, match=r"lm_head.weight: adapter \[1, 2\] vs model \[4096, 64\]"
    ):
        check_base(shape, model, "adapter x")
    # same architecture, different weights: a warning by default, an error when strict
    other = random_model("olmo2", "tiny", seed=1)
    with pytest.warns(
        BaseWeightsWarning, match=r"same architecture but different weights \(hash [0-9a-f]{16}"
    ):
        check_base(fp, other, "adapter x")
    with pytest.raises(CheckpointError, match="different weights"):
        check_base(fp, other, "adapter x", strict_weights=True)
    # the same weights in bf16 hash alike (adapters trained on a bf16 base merge into its fp32 copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_base(fp, random_model("olmo2", "tiny", seed=0, dtype=torch.bfloat16), "adapter x")


def test_adapter_files_refused(tmp_path):
    model = random_model("olmo2", "tiny", seed=0)
    inj = _attach(model)
    save_adapter(tmp_path / "ok", FMT, inj.state_dict(), model)
    other = random_model("olmo2", "tiny", seed=0, num_hidden_layers=3)
    with pytest.raises(
        CheckpointError, match=r"olmokit-test adapter .* \(num_layers: adapter 2 vs model 3\)"
    ):
        load_adapter(_attach(other), tmp_path / "ok", FMT)
    with pytest.raises(CheckpointError, match="not a olmokit-test adapter"):
        read_adapter(tmp_path, FMT)
    with torch.no_grad():
        inj.parameters()[0][3] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in \['layers.0.scale'\]"):
        save_adapter(tmp_path, FMT, inj.state_dict(), model)
    with torch.no_grad():
        inj.parameters()[0][3] = 1.0
    save_adapter(tmp_path, FMT, inj.state_dict(), model)
    newer = AdapterFormat(FMT.name, 0, FMT.weights_file, FMT.config_file, min_version=0)
    with pytest.raises(
        CheckpointError, match="format version 1 is newer than this olmokit supports"
    ):
        read_adapter(tmp_path, newer)
    with pytest.raises(CheckpointError, match=r"saved shape \(3,\) != model shape \(64,\)"):
        inj.load_state_dict({**inj.state_dict(), "layers.0.scale": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"missing \['layers.1.scale'\]"):
        inj.load_state_dict({"layers.0.scale": torch.ones(64)})


class _Section(OlmokitConfig):
    OLMOKIT_ONLY: ClassVar[frozenset[str]] = frozenset({"patience"})

    output_dir: str = "out"
    learning_rate: float = 1e-2
    max_steps: int = 5
    patience: int | None = Field(2)
    extra_args: dict = Field(default_factory=dict)

    def derived_training_arguments(self):
        return {"save_strategy": "no"}


def test_training_arguments_from_model_dump(tmp_path):
    args = training_arguments(_Section(extra_args={"adam_beta2": 0.9}), tmp_path, use_cpu=True)
    assert (args.learning_rate, args.max_steps, args.adam_beta2) == (1e-2, 5, 0.9)
    assert args.output_dir == str(tmp_path) and args.save_strategy == "no"
    assert args.remove_unused_columns is False
    with pytest.raises(
        ConfigError, match=r"\['adam_beta3'\] are not transformers.TrainingArguments fields"
    ):
        training_arguments(_Section(extra_args={"adam_beta3": 0.9}))


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.tensor([(7 * i + j) % 200 + 3 for j in range(10)])
        return {"input_ids": ids, "labels": ids.clone()}


class _GuardTrainer(FiniteLossGuard, Trainer):
    def _save(self, output_dir=None, state_dict=None):
        inj = get_injection(self.model, "probe")
        save_adapter(output_dir, FMT, inj.state_dict(), self.model)


class _Poison(TrainerCallback):
    """NaN into a base weight after optimizer step ``at``: the next training loss is NaN."""

    def __init__(self, model, at):
        self.model, self.at = model, at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            with torch.no_grad():
                get_adapter(self.model).embed_tokens().weight.fill_(float("nan"))


def test_finite_loss_guard_stops_and_keeps_last_good(zoo_model, tmp_path):
    model_type, model = zoo_model
    inj = _attach(model)
    section = _Section(max_steps=8)
    args = training_arguments(
        section,
        tmp_path,
        use_cpu=True,
        per_device_train_batch_size=4,
        report_to=[],
        disable_tqdm=True,
        logging_steps=100,
    )
    tr = _GuardTrainer(model=model, args=args, train_dataset=_Data())
    snap = {}

    class _Grab(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                snap.update({k: v.clone() for k, v in inj.state_dict().items()})

    tr.add_callback(_Grab())
    tr.add_callback(_Poison(model, 3))
    with pytest.raises(
        TrainingDivergedError,
        match=r"non-finite loss \(nan\) at optimizer step 4.*from optimizer step 3",
    ):
        tr.train()
    assert snap and all(
        not torch.equal(v, torch.ones_like(v)) for v in snap.values()
    )  # it did train
    assert all(torch.equal(inj.state_dict()[k], v) for k, v in snap.items())
    _, saved = read_adapter(tmp_path / "last_good", FMT)
    assert all(torch.equal(saved[k], v) for k, v in snap.items())
