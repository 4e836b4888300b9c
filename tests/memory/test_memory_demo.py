from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from olmokit.errors import ConfigError
from olmokit.family import get_adapter
from olmokit.memory.demo import (
    DemoBaseSettings,
    DemoMemorySettings,
    attach_demo_memory,
    demo_base_config,
    demo_memory_settings,
    in_window_example,
    load_demo_base,
    make_demo_base,
    mqar_set,
    passkey_set,
    register_demo,
    train_demo_memory,
)
from olmokit.memory.model import iter_memory_layers

SMOKE = DemoBaseSettings(window=16, hidden_size=32, max_pairs=2, steps=2, batch_size=4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_every_layer_is_windowed_on_cpu(impl):
    """HF's sliding mask: a token sees itself and the window - 1 before it, so after 2 layers the
    last token depends on exactly the last 2 * (W - 1) + 1 tokens."""
    settings = replace(SMOKE, window=8)
    config = demo_base_config(settings)
    assert config.layer_types == ["sliding_attention"] * settings.num_layers
    config._attn_implementation = impl
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(4, settings.vocab.size, (1, 40))
    reach = 2 * (8 - 1)  # positions 39 - 14 .. 39 reach the last token
    far, near = ids.clone(), ids.clone()
    far[0, : 39 - reach] = torch.randint(4, settings.vocab.size, (39 - reach,))
    near[0, 39 - reach] = (ids[0, 39 - reach] + 1 - 4) % (settings.vocab.size - 4) + 4
    with torch.no_grad():
        last = model(ids).logits[0, -1]
        assert torch.equal(model(far).logits[0, -1], last)
        assert not torch.allclose(model(near).logits[0, -1], last)


def test_in_window_examples_keep_the_evidence_in_the_window():
    s = DemoBaseSettings()
    tasks = set()
    for i in range(300):
        gen = torch.Generator().manual_seed(i)
        ex = in_window_example(gen, s)
        assert len(ex.input_ids) == s.length
        assert 1 <= min(ex.distances) and max(ex.distances) <= s.window - 1
        tasks.add((ex.info["task"], ex.info.get("n_pairs")))
    assert tasks == {("passkey", None)} | {("mqar", n) for n in range(1, s.max_pairs + 1)}


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="max_pairs"):
        DemoBaseSettings(window=16, max_pairs=3).check()
    with pytest.raises(ConfigError, match="window"):
        DemoBaseSettings(window=4).check()


def test_task_sets_are_whole_segments_at_the_asked_distance():
    v = SMOKE.vocab
    pk = passkey_set(v, 16, (64, 80), 8, 0, "t")
    mq = mqar_set(v, 16, (1, 8), (128, 144), 8, 0, "t", max_pairs=8)
    for ds, lo, hi in ((pk, 64, 80), (mq, 128, 144)):
        lengths = {len(ds[i]["input_ids"]) for i in range(8)}
        assert len(lengths) == 1 and lengths.pop() % 16 == 0
        for i in range(8):
            assert lo <= ds.example(i).info["distance"] <= hi
    assert {mq.example(i).info["n_pairs"] for i in range(8)} <= set(range(1, 9))


def test_passkey_boundary_fraction_puts_needles_on_segment_edges():
    """``boundary``: that share of needles on a segment's first/last token (uniform: ~2/16 of
    them), still at the asked distance; every example is drawn from its own generator."""
    v, n = SMOKE.vocab, 400
    edge_share = {}
    for frac in (0.0, 0.5, 1.0):
        ds = passkey_set(v, 16, (64, 96), n, 0, "t", boundary=frac)
        offsets = [ds.example(i).evidence_positions[0] % 16 for i in range(n)]
        edge_share[frac] = sum(o in (0, 15) for o in offsets) / n
        assert all(64 <= ds.example(i).info["distance"] <= 96 for i in range(0, n, 37))
    assert edge_share[1.0] == 1.0
    assert 0.05 < edge_share[0.0] < 0.2 and 0.45 < edge_share[0.5] < 0.65
    again = passkey_set(v, 16, (64, 96), n, 0, "t", boundary=0.5)
    assert torch.equal(
        again[7]["input_ids"], passkey_set(v, 16, (64, 96), n, 0, "t", 0.5)[7]["input_ids"]
    )
    with pytest.raises(ConfigError, match="segment edge"):
        passkey_set(v, 16, (20, 20), 4, 0, "t", boundary=0.5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "base"
    logs: list[str] = []
    return out, make_demo_base(out, SMOKE, log=logs.append), logs


def test_make_demo_base_writes_a_reusable_base(built):
    out, base, logs = built
    assert (out / "base" / "config.json").is_file() and (out / "demo_base.json").is_file()
    assert not (out / ".work").exists()
    assert base.info["settings"]["window"] == 16 and base.info["vocab_size"] == SMOKE.vocab.size
    assert base.info["chance"] == pytest.approx(1 / 32)
    for key in ("in_window_accuracy", "far_passkey_accuracy"):
        assert 0.0 <= base.info[key] <= 1.0  # measured on 256 examples; tiny training, any value
    model = load_demo_base(base)
    assert model.config.sliding_window == 16 and not model.training
    again_logs: list[str] = []
    again = make_demo_base(out, SMOKE, log=again_logs.append)
    assert again.info == base.info and again_logs == [f"make_demo_base: reusing {out / 'base'}"]


def test_make_demo_base_is_reproducible_and_refuses_other_settings(built, tmp_path):
    out, base, _ = built
    twin = make_demo_base(tmp_path / "twin", SMOKE, log=lambda *a: None)
    a, b = load_demo_base(base).state_dict(), load_demo_base(twin).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="steps: built with 2, now 3"):
        make_demo_base(out, replace(SMOKE, steps=3))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not a demo base"):
        make_demo_base(tmp_path / "other", SMOKE)


def test_make_demo_base_circuit_friendly_init(tmp_path):
    """embedding_init_std / post_norm_init reach the model before training (the MQAR base needs
    token identity to survive OLMo-3's unit-scale sublayer outputs); steps=1 keeps them visible."""
    s = replace(SMOKE, steps=1, embedding_init_std=1.0, post_norm_init=0.1)
    plain = load_demo_base(make_demo_base(tmp_path / "plain", replace(SMOKE, steps=1), log=print))
    wide = load_demo_base(make_demo_base(tmp_path / "wide", s, log=print))
    std = {
        n: float(m.get_input_embeddings().weight.detach().std())
        for n, m in (("p", plain), ("w", wide))
    }
    assert std["p"] < 0.05 and 0.9 < std["w"] < 1.1
    adapter = get_adapter(wide)
    norms = [
        float(n.weight.detach().mean())
        for i in range(adapter.num_layers)
        for n in adapter.norms(i).values()
    ]
    assert norms and all(abs(v - 0.1) < 0.02 for v in norms)  # one lr-3e-3 step away
    with pytest.raises(ConfigError, match="embedding_init_std: built with 1.0, now 2.0"):
        make_demo_base(tmp_path / "wide", replace(s, embedding_init_std=2.0))


def test_memory_stage_trains_only_the_memory(built, tmp_path):
    _, base, _ = built
    mem = DemoMemorySettings(steps=3, batch_size=2, alpha_bias=-7.0)
    mm = attach_demo_memory(load_demo_base(base), base.window, mem)
    assert mm.segment_len == 16
    layers = dict(iter_memory_layers(mm))
    assert list(layers) == [1]
    assert torch.equal(layers[1].memory.to_alpha.bias, torch.full((mem.heads,), -7.0))
    base_before = {k: v.clone() for k, v in mm.model.state_dict().items() if ".memory." not in k}
    mem_before = [p.detach().clone() for p in mm.memory_parameters()]
    train = passkey_set(base.vocab, base.window, (16, 32), 6, 0, "t")
    train_demo_memory(mm, train, mem, tmp_path / "work")
    after = mm.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    changed = [not torch.equal(a, p) for a, p in zip(mem_before, mm.memory_parameters())]
    assert any(changed)


def test_demo_memory_settings_pass_the_memory_options_through():
    """Every DemoMemorySettings field the MQAR stage sets reaches MemorySettings (a field dropped
    here would silently train the plain memory)."""
    mem = DemoMemorySettings(
        layer=2, heads=2, hidden=32, conv_kernel=3, alpha_bias=-6.0, carry_context=5,
        qk_init="tied", key_conv_init="previous_token", seed=4,
    )  # fmt: skip
    s = demo_memory_settings(16, mem)
    got = (s.memory_layers, s.heads, s.hidden, s.conv_kernel, s.alpha_bias, s.carry_context,
           s.qk_init, s.key_conv_init, s.init_seed, s.segment_len, s.chunk_train)  # fmt: skip
    assert got == ([2], 2, 32, 3, -6.0, 5, "tied", "previous_token", 4, 16, 8)


def test_cli_verb_is_registered():
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers()
    register_demo(verbs)
    args = parser.parse_args(["make-demo-base", "out/dir", "--steps", "5", "--window", "16"])
    assert (args.out, args.steps, args.window, args.seed) == ("out/dir", 5, 16, 0)
    assert args.func.__name__ == "_cli_make_demo_base"
