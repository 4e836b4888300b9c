"""``olmokit lens`` verbs and the PNG plots."""

from __future__ import annotations

import json

import pytest

from olmokit.cli.main import main
from olmokit.zoo.registry import DEFAULT_MODEL, ZOO

PNG = b"\x89PNG\r\n\x1a\n"
needs_zoo = pytest.mark.skipif(
    not ZOO[DEFAULT_MODEL].available, reason="shipped zoo model not built"
)


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_lens_help(capsys):
    assert main(["lens"]) == 1
    assert "induction" in capsys.readouterr().out


def test_info_lists_hooks_and_estimate(capsys):
    assert main(["lens", "info", "zoo:olmo3-tiny-random", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.hook_pattern" in out and "ln1_post.hook_scale" in out
    assert "cache estimate" in out and "75 hooks" in out


def test_induction_writes_pngs_and_json(tmp_path, capsys):
    out = tmp_path / "ind"
    args = ["zoo:olmo2-tiny-random", "--seq-len", "6", "--batch", "2", "--out", str(out)]
    assert main(["lens", "induction", *args]) == 0
    name = "olmo2-tiny-random"
    pngs = sorted(p.name for p in out.glob("*.png"))
    top = json.loads((out / f"induction_{name}.json").read_text())["top"][0]
    layer, head = top["layer"], top["head"]
    assert pngs == sorted(
        [
            f"induction_{name}.png",
            f"induction_{name}_previous_token.png",
            f"pattern_{name}_L{layer}H{head}.png",
        ]
    )
    assert all(_is_png(out / p) for p in pngs)
    printed = capsys.readouterr().out
    assert (
        "induction score" in printed
        and f"| {layer}     | {head}    | {top['induction']:.3f}" in printed
    )
    pattern = json.loads((out / f"pattern_{name}.json").read_text())
    assert (pattern["layer"], pattern["head"], pattern["chosen_by"]) == (
        layer,
        head,
        "top induction score",
    )


def test_shortcut_refuses_to_overwrite_then_overwrites(tmp_path, capsys):
    args = ["lens", "induction", "zoo:olmo2-tiny-random", "--batch", "1", "--top", "1"]
    args += ["--out", str(tmp_path)]
    result = tmp_path / "induction_olmo2-tiny-random.json"
    assert main([*args, "--seq-len", "4"]) == 0
    assert main([*args, "--seq-len", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    before = result.stat().st_mtime_ns
    # same config: every job is complete, so nothing is recomputed or rewritten
    assert main([*args, "--seq-len", "4", "--resume"]) == 0
    assert result.stat().st_mtime_ns == before
    assert main([*args, "--seq-len", "5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "jobs.0.seq_len: saved 4, now 5" in err
    assert main([*args, "--seq-len", "5", "--overwrite"]) == 0
    assert json.loads(result.read_text())["seq_len"] == 5


@pytest.mark.parametrize(
    "argv",
    [
        ["logit-lens", "--prompt", ""],
        ["patch", "--clean", ""],
        ["patch", "--corrupted", ""],
        ["patch", "--answer", ""],
    ],
)
def test_empty_prompt_is_a_config_error_before_loading(tmp_path, capsys, argv):
    # a model that does not exist: the error must come from validation, before any load
    assert (
        main(["lens", *argv, "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "is empty" in err and "invalid config" in err
    assert not (tmp_path / "o").exists()


@needs_zoo
def test_patch_and_logit_lens_on_zoo_model(tmp_path, capsys):
    short = ["--clean", "def __init__(self", "--corrupted", "def __repr__(self"]  # 5 tokens: fast
    assert main(["lens", "patch", *short, "--out", str(tmp_path / "p")]) == 0
    for name in ("resid_pre", "attn_out", "mlp_out", "heads"):
        assert _is_png(tmp_path / "p" / f"patch_{name}.png")
    result = json.loads((tmp_path / "p" / "patch.json").read_text())
    # the prompts differ in token 2 only: patching the embedding there restores the clean run
    # exactly (1), patching it anywhere else changes nothing (0)
    assert result["results"]["resid_pre"][0] == [0.0, 0.0, 1.0, 0.0, 0.0]
    d = result["logit_diff"]
    assert (
        f"logit diff clean {d['clean']:.3f}, corrupted {d['corrupted']:.3f}"
        in capsys.readouterr().out
    )
    assert main(["lens", "logit-lens", "--out", str(tmp_path / "l")]) == 0
    assert _is_png(tmp_path / "l" / "logit_lens.png")
    assert "final_post" in capsys.readouterr().out


def test_patch_rejects_prompts_of_different_length(tmp_path, capsys):
    if not ZOO[DEFAULT_MODEL].available:
        pytest.skip("shipped zoo model not built")
    assert (
        main(["lens", "patch", "--clean", "a b c", "--corrupted", "a", "--out", str(tmp_path)]) == 2
    )
    assert "same token length" in capsys.readouterr().err


def test_run_verb_runs_a_config_with_overrides(tmp_path, capsys):
    config = tmp_path / "lens.yaml"
    config.write_text(
        "model: {name: zoo:olmo-tiny-random}\n"
        "output_dir: not-used\n"
        "jobs:\n  - {kind: head_scores, name: heads, seq_len: 4, batch: 1}\n"
    )
    out = tmp_path / "run"
    assert main(["lens", "run", str(config), "jobs_unused=1", "--out", str(out)]) == 2
    assert "unknown key 'jobs_unused'" in capsys.readouterr().err
    assert main(["lens", "run", str(config), "model.dtype=float32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    top = json.loads((out / "heads.json").read_text())["top"][0]
    assert "| heads | head_scores | induction=" in printed
    assert f"top_head='L{top['layer']}H{top['head']}' |" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "environment.json",
        "heads.json",
        "heads.png",
        "heads_previous_token.png",
        "summary.json",
    ]
