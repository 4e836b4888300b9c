"""The demo pool: reproducible to the bit, experts really moved, evaluation data split cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from olmokit.data.stdlib import Document, build_corpus, is_held_out
from olmokit.errors import ConfigError
from olmokit.merge.config import MergeConfig
from olmokit.merge.demo import (
    DEMO_POOL_DIR,
    DemoPool,
    demo_merge_config,
    demo_samples,
    demo_split,
    make_demo_pool,
)

REPO = Path(__file__).resolve().parents[2]
TINY = dict(steps=2, batch_size=2, seq_len=32, merge_samples=6, heldout_samples=8)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


@pytest.fixture(scope="module")
def pools(tmp_path_factory, corpus) -> tuple[DemoPool, DemoPool]:
    root = tmp_path_factory.mktemp("demo")
    quiet = lambda *a, **k: None  # noqa: E731
    a = make_demo_pool(root / "a", corpus=corpus, log=quiet, **TINY)
    b = make_demo_pool(root / "b", corpus=corpus, log=quiet, **TINY)
    return a, b


def _files(pool: DemoPool) -> dict[str, bytes]:
    out = {}
    for path in sorted(pool.root.rglob("*")):
        if path.is_file():
            data = path.read_bytes().replace(str(pool.root).encode(), b"<OUT>")
            out[path.relative_to(pool.root).as_posix()] = data
    return out


def test_two_builds_are_bit_identical(pools):
    a, b = pools
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in ("base", "prose", "code"):
        assert f"{name}/model.safetensors" in fa
    differing = [k for k in fa if fa[k] != fb[k]]
    assert differing == []


def test_layout_and_no_work_files_left(pools):
    a, _ = pools
    assert a.models == [a.root / "base", a.root / "prose", a.root / "code"]
    assert not (
        a.root / ".work"
    ).exists()  # Trainer checkpoints are removed once an expert is saved
    for path in [*a.merge_data.values(), *a.heldout.values()]:
        assert path.parent == a.root / "data"


def test_experts_differ_from_the_base_in_every_tensor_and_from_each_other(pools):
    a, _ = pools
    base = load_file(a.base / "model.safetensors")
    prose = load_file(a.experts["prose"] / "model.safetensors")
    code = load_file(a.experts["code"] / "model.safetensors")
    assert set(base) == set(prose) == set(code)
    # AdamW moves every trained tensor on its first step (norm weights too: weight decay aside,
    # the update is lr * m / sqrt(v), nonzero wherever the gradient is)
    for key in base:
        assert not base[key].equal(prose[key]), key
        assert not base[key].equal(code[key]), key
        assert not prose[key].equal(code[key]), key


def test_base_is_the_shipped_model_exactly(pools):
    from olmokit.zoo.registry import shipped_path

    a, _ = pools
    shipped = load_file(shipped_path("olmo2-stdlib") / "model.safetensors")
    base = load_file(a.base / "model.safetensors")
    assert set(shipped) == set(base)
    for key, value in shipped.items():
        assert base[key].dtype.is_floating_point
        assert base[key].equal(value.float()), key


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluation_sets_are_conversations_from_their_side_of_the_split(pools, corpus):
    a, _ = pools
    by_source = {d.source: d for d in corpus.documents}
    seen: dict[str, set[str]] = {"merge": set(), "heldout": set()}
    for side, files in (("merge", a.merge_data), ("heldout", a.heldout)):
        for kind, path in files.items():
            records = _records(path)
            assert len(records) == (TINY["merge_samples"] if side == "merge" else 8)
            for r in records:
                doc = by_source[r["source"]]
                assert doc.kind == kind
                assert doc.held_out and is_held_out_group(doc)
                assert demo_split(doc) == side
                human, gpt = r["conversations"]
                assert human["from"] == "human" and gpt["from"] == "gpt"
                # context and continuation are consecutive pieces of the document
                assert human["value"] in doc.text and gpt["value"] in doc.text
                assert doc.text.index(human["value"]) < doc.text.index(gpt["value"])
                seen[side].add(r["source"].split(":")[1])
    # no file (or topic) feeds both the merge's data and the held-out sets
    assert seen["merge"].isdisjoint(seen["heldout"])


def is_held_out_group(doc: Document) -> bool:
    kind, _, rest = doc.source.partition(":")
    key = f"file:{rest.split(':', 1)[0]}" if kind in ("doc", "code") else doc.source
    return is_held_out(key)


def test_demo_split_pins():
    train = Document("code:abc.py", "code", "x", held_out=False)
    assert demo_split(train) == "train"
    # a docstring goes wherever the code of its file goes
    for rel in ("json/decoder.py", "os.py", "email/parser.py", "zipfile/__init__.py"):
        code = Document(f"code:{rel}", "code", "x", held_out=True)
        doc = Document(f"doc:{rel}:f", "prose", "x", held_out=True)
        assert demo_split(code) == demo_split(doc) in ("merge", "heldout")
    sides = {demo_split(Document(f"topic:t{i}", "prose", "x", held_out=True)) for i in range(20)}
    assert sides == {"merge", "heldout"}


def test_demo_samples_windows_are_whitespace_cut_and_seeded():
    text = " ".join(f"w{i}" for i in range(400))
    docs = [Document("topic:a", "prose", text, True)]
    one = demo_samples(docs, 10, seed=0, context_chars=40, response_chars=40, windows_per_doc=3)
    two = demo_samples(docs, 10, seed=0, context_chars=40, response_chars=40, windows_per_doc=3)
    assert one == two and len(one) == 3
    assert any(text.startswith(r["conversations"][0]["value"]) for r in one)  # a doc prefix
    for r in one:
        for turn in r["conversations"]:
            assert all(w.startswith("w") for w in turn["value"].split(" "))  # no word cut
    short = [Document("topic:b", "prose", "too short", True)]
    assert demo_samples(short, 5, seed=0) == []


def test_the_written_config_validates_and_configs_demo_yaml_matches_the_default_layout(pools):
    a, _ = pools
    cfg = MergeConfig.from_yaml(a.config)
    assert cfg.models == [str(p) for p in a.models]
    assert [d.path for d in cfg.datasets] == [str(a.merge_data[k]) for k in ("prose", "code")]
    shipped = yaml.safe_load((REPO / "configs/merge/demo.yaml").read_text())
    expected = demo_merge_config(
        DEMO_POOL_DIR,
        {k: f"{DEMO_POOL_DIR}/data/merge_{k}.jsonl" for k in ("prose", "code")},
        "runs/merge-demo",
    )
    assert shipped == expected
    MergeConfig.from_yaml(REPO / "configs/merge/demo.yaml")


def test_a_rebuild_with_other_settings_is_refused(pools, corpus):
    a, _ = pools
    with pytest.raises(ConfigError, match="steps: built with 2, now 3"):
        make_demo_pool(a.root, corpus=corpus, log=lambda *x: None, **dict(TINY, steps=3))
