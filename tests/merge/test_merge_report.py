"""merge_report.json: reading and refusing bad reports, resumability checks, the decision table, the
mergekit passthrough export and the merge map PNG."""

from __future__ import annotations

import json

import pytest
import yaml

from olmokit.errors import ReportError
from olmokit.merge.config import MergeConfig
from olmokit.merge.report import (
    check_resumable,
    config_hash,
    decision_rows,
    layer_donors,
    load_report,
    mergekit_config,
    plot_report,
    trajectory,
    write_mergekit,
)

POOL = [
    {"name": "base", "path": "/pool/base", "fingerprint": "f0"},
    {"name": "prose", "path": "/pool/prose", "fingerprint": "f1"},
    {"name": "code", "path": "/pool/code", "fingerprint": "f2"},
]


def _decision(step, target, seq, winner, units, metrics, changed=True, es=()):
    return {
        "step": step,
        "target": target,
        "sequence": seq,
        "units": units,
        "current": "base",
        "winner": winner,
        "changed": changed,
        "candidates": [
            {"name": "base", "current": True, "metrics": {"a": 1.0, "b": 1.0}, "degraded": []},
            {
                "name": "code",
                "current": False,
                "metrics": {"a": None, "b": 0.1},
                "degraded": ["a"],
                "reason": "non-finite metric (null) on a",
            },
        ],  # fmt: skip
        "selection": {"method": "copeland", "candidates": [0], "winner": 0, "order": [0]},
        "es": list(es),
        "metrics": metrics,
    }


def _report():
    layers = {i: "base" for i in range(6)}
    layers.update({2: "prose", 3: "prose", 5: "code"})
    units_of = lambda i: [f"layers.{i}.mlp.up_proj", f"layers.{i}.attn.q_proj"]  # noqa: E731
    op = {"kind": "svd", "unit": "layers.4.mlp.up_proj", "key": "k", "seed": 1, "generation": 0,
          "sigma": 0.05, "offspring": 2, "lam": 4, "clamp": 3.0}  # fmt: skip
    return {
        "schema_version": 1,
        "tool": "olmokit.merge",
        "status": "complete",
        "config_hash": "h",
        "seed": 0,
        "dtype": "bfloat16",
        "datasets": [{"name": "a", "mode": "nll", "samples": 4}, {"name": "b", "mode": "nll"}],
        "pool": POOL,
        "num_layers": 6,
        "unit_layers": {
            "embed_tokens": None,
            **{u: i for i in range(6) for u in units_of(i)},
            "lm_head": None,
        },
        "base": "base",
        "base_metrics": {"a": 1.0, "b": 1.0},
        "boundary": _decision(
            "boundary", "boundary", 1, "code", ["embed_tokens", "lm_head"], {"a": 0.9, "b": 0.9}
        ),  # fmt: skip
        "layers": {
            str(i): _decision(
                "layer",
                str(i),
                2 + i,
                w,
                units_of(i),
                {"a": 0.9 - 0.1 * i, "b": 0.9},
                changed=w != "base",
            )  # fmt: skip
            for i, w in layers.items()
        },
        "units": {
            "layers.4.mlp.up_proj": _decision(
                "unit",
                "layers.4.mlp.up_proj",
                20,
                "base",
                ["layers.4.mlp.up_proj"],
                {"a": 0.2, "b": 0.8},
                changed=False,
                es=[op],
            )  # fmt: skip
        },
        "cache": {"hits": 3, "misses": 9},
    }


def test_load_report_refuses_corrupt_foreign_and_future_files(tmp_path):
    p = tmp_path / "merge_report.json"
    p.write_text('{"schema_version": 1, "tool": "olmokit.merge", "lay', encoding="utf-8")
    with pytest.raises(ReportError, match="not valid JSON.*corrupt"):
        load_report(p)
    p.write_text(json.dumps({"base_model": {"name": "x"}, "layers": {}}), encoding="utf-8")
    with pytest.raises(ReportError, match="not an olmokit merge report"):
        load_report(p)
    p.write_text(json.dumps({**_report(), "schema_version": 7}), encoding="utf-8")
    with pytest.raises(ReportError, match="schema_version 7"):
        load_report(p)
    bad = _report()
    del bad["units"]
    p.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ReportError, match="lacks units"):
        load_report(p)
    with pytest.raises(ReportError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    p.write_text(json.dumps(_report()), encoding="utf-8")
    assert load_report(tmp_path)["base"] == "base"  # a run directory means its report


def test_check_resumable():
    report = _report()
    check_resumable(report, config_digest="h", pool=POOL)
    with pytest.raises(ReportError, match="different merge config"):
        check_resumable(report, config_digest="other", pool=POOL)
    changed = [dict(POOL[0]), dict(POOL[1], fingerprint="new"), dict(POOL[2])]
    with pytest.raises(ReportError, match="pool model 'prose' changed"):
        check_resumable(report, config_digest="h", pool=changed)
    with pytest.raises(ReportError, match="the pool changed"):
        check_resumable(report, config_digest="h", pool=POOL[:2])


def test_config_hash_ignores_where_the_run_is():
    data = dict(models=["a", "b"], datasets=[{"path": "x.jsonl", "mode": "nll"}])
    c1 = MergeConfig.from_dict({**data, "output_dir": "r1", "device": "cpu"})
    c2 = MergeConfig.from_dict({**data, "output_dir": "r2", "device": "cuda"})
    c3 = MergeConfig.from_dict({**data, "output_dir": "r1", "epsilon": 0.1})
    assert config_hash(c1) == config_hash(c2) != config_hash(c3)
    assert len(config_hash(c1)) == 64


def test_trajectory_and_table():
    report = _report()
    steps = trajectory(report)
    assert [s for s, _ in steps][:3] == ["base", "boundary", "layer 0"]
    assert steps[-1] == ("unit layers.4.mlp.up_proj", {"a": 0.2, "b": 0.8})
    headers, rows = decision_rows(report)
    assert headers == ["step", "target", "winner", "changed", "rejected", "es", "a", "b"]
    assert rows[0] == ["base", "-", "base", "-", "-", "-", "1.000000", "1.000000"]
    assert rows[1][:6] == ["boundary", "boundary", "code", "yes", "1", "0"]
    assert rows[-1] == [
        "unit",
        "layers.4.mlp.up_proj",
        "base",
        "no",
        "1",
        "1",
        "0.200000",
        "0.800000",
    ]
    assert len(rows) == 1 + 1 + 6 + 1


def test_mergekit_export_structure(tmp_path):
    report = _report()
    assert layer_donors(report) == ["base", "base", "prose", "prose", "base", "code"]
    out = write_mergekit(report, tmp_path / "merge.yaml")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# mergekit passthrough config")
    cfg = yaml.safe_load(text)
    assert cfg == mergekit_config(report)
    assert cfg["merge_method"] == "passthrough"
    assert cfg["slices"] == [
        {"sources": [{"model": "/pool/base", "layer_range": [0, 2]}]},
        {"sources": [{"model": "/pool/prose", "layer_range": [2, 4]}]},
        {"sources": [{"model": "/pool/base", "layer_range": [4, 5]}]},
        {"sources": [{"model": "/pool/code", "layer_range": [5, 6]}]},
    ]
    # every layer covered exactly once, in order
    ranges = [s["sources"][0]["layer_range"] for s in cfg["slices"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 6
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert cfg["base_model"] == "/pool/code"  # the boundary donor
    assert cfg["dtype"] == "bfloat16"
    assert cfg["olmokit_not_exported"] == ["layers.4.mlp.up_proj"]  # an ES-refined unit


def test_mergekit_export_without_layers_is_refused():
    report = {**_report(), "layers": {}, "num_layers": 0}
    with pytest.raises(ReportError, match="no layers"):
        mergekit_config(report)


def test_merge_map_png(tmp_path):
    path = plot_report(_report(), tmp_path / "map.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
