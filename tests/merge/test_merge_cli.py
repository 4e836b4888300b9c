"""``olmokit merge run|report|export-mergekit|make-demo-pool``: help for every verb, a run through
the CLI (overrides, refusal without flags, --overwrite), the report table and merge map, the
mergekit export, and the demo-pool verb wired to olmokit.merge.demo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from merge_helpers import make_pool, write_sharegpt

from olmokit.cli.main import main
from olmokit.merge import demo
from olmokit.merge.report import load_report


@pytest.mark.parametrize(
    "verb", [[], ["run"], ["report"], ["export-mergekit"], ["make-demo-pool"]], ids=str
)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["merge", *verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: olmokit merge")
    if not verb:
        for v in ("run", "report", "export-mergekit", "make-demo-pool"):
            assert v in out


def test_bare_merge_prints_help(capsys):
    assert main(["merge"]) == 1
    assert "usage: olmokit merge" in capsys.readouterr().out


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pool = make_pool(root / "pool", seeds=(0, 1))
    data = write_sharegpt(root / "chat.jsonl")
    cfg = {
        "models": pool,
        "datasets": [{"path": str(data), "mode": "nll", "samples": 3}],
        "layer_swap": True,
        "batch_size": 4,
        "output_dir": str(root / "default"),
    }
    path = root / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path, pool


def test_run_report_export(config_file, tmp_path, capsys, one_thread):
    path, pool = config_file
    out = tmp_path / "run"
    args = ["merge", "run", str(path), "epsilon=0.5", "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = [line.split("|")[1:3] for line in printed.splitlines() if line.startswith("| ")]
    assert [[c.strip() for c in r] for r in rows] == [
        ["step", "target"],
        ["base", "-"],
        ["layer", "0"],
        ["layer", "1"],
    ]
    assert f"merged model: {out / 'model'}" in printed
    report = load_report(out)
    assert report["epsilon"] == 0.5 and report["status"] == "complete"
    assert (out / "model" / "model.safetensors").is_file()

    # an existing run is refused without a flag (exit 2, one-line error), replaced with --overwrite
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()

    assert main(["merge", "report", str(out / "merge_report.json")]) == 0
    printed = capsys.readouterr().out
    assert "| base " in printed and f"merge map: {out / 'merge_map.png'}" in printed
    assert (out / "merge_map.png").read_bytes()[:4] == b"\x89PNG"
    png = tmp_path / "elsewhere.png"
    assert main(["merge", "report", str(out), "--png", str(png)]) == 0
    assert png.is_file()

    yml = tmp_path / "mergekit.yaml"
    assert main(["merge", "export-mergekit", str(out), str(yml)]) == 0
    cfg = yaml.safe_load(yml.read_text(encoding="utf-8"))
    assert cfg["merge_method"] == "passthrough"
    ranges = [s["sources"][0]["layer_range"] for s in cfg["slices"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 2
    donors = [s["sources"][0]["model"] for s in cfg["slices"]]
    assert set(donors) <= set(pool)


def test_report_of_a_non_report_is_an_error(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    assert main(["merge", "report", str(bad)]) == 2
    assert "not an olmokit merge report" in capsys.readouterr().err


def test_make_demo_pool_calls_the_demo_builder(monkeypatch, tmp_path, capsys):
    calls = []

    class Built:
        models = [tmp_path / "base", tmp_path / "prose"]
        config = tmp_path / "merge.yaml"

    def fake(out, **kwargs):
        calls.append((out, kwargs))
        return Built()

    monkeypatch.setattr(demo, "make_demo_pool", fake)
    assert main(["merge", "make-demo-pool", str(tmp_path), "--steps", "3", "--seed", "5"]) == 0
    assert calls == [(str(tmp_path), {"steps": 3, "seed": 5})]
    assert str(Path(tmp_path) / "merge.yaml") in capsys.readouterr().out
