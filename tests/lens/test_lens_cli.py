"""``olmokit lens`` verbs and the PNG plots."""

from __future__ import annotations

import pytest

from olmokit.cli.main import main
from olmokit.zoo.registry import DEFAULT_MODEL, ZOO

PNG = b"\x89PNG\r\n\x1a\n"
needs_zoo = pytest.mark.skipif(not ZOO[DEFAULT_MODEL].available, reason="shipped zoo model not built")


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


def test_induction_writes_pngs(tmp_path, capsys):
    assert main(["lens", "induction", "zoo:olmo2-tiny-random", "--seq-len", "6", "--batch", "2", "--out", str(tmp_path)]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2 and all(_is_png(p) for p in pngs)
    assert "induction score" in capsys.readouterr().out


@needs_zoo
def test_patch_and_logit_lens_on_zoo_model(tmp_path):
    short = ["--clean", "def __init__(self", "--corrupted", "def __repr__(self"]  # 4 tokens: fast
    assert main(["lens", "patch", *short, "--out", str(tmp_path)]) == 0
    for name in ("resid_pre", "attn_out", "mlp_out", "heads"):
        assert _is_png(tmp_path / f"patch_{name}.png")
    assert main(["lens", "logit-lens", "--out", str(tmp_path)]) == 0
    assert _is_png(tmp_path / "logit_lens.png")


def test_patch_rejects_prompts_of_different_length(tmp_path, capsys):
    if not ZOO[DEFAULT_MODEL].available:
        pytest.skip("shipped zoo model not built")
    assert main(["lens", "patch", "--clean", "a b c", "--corrupted", "a", "--out", str(tmp_path)]) == 2
    assert "same token length" in capsys.readouterr().err
