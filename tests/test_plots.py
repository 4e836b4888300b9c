"""``olmokit.plots``: every function writes a real PNG of the expected pixel size, atomically,
returns the path, and leaves the user's matplotlib backend alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from olmokit import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pattern() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.softmax(torch.randn(6, 6), -1).tril()


# (name, call writing to a path, expected (height, width) in pixels = figsize x dpi)
CASES = [
    (
        "attention_pattern",
        lambda p: plots.plot_attention_pattern(_pattern(), list("abcdef"), p, "t", mark_offset=-2),
        (int(3.4 * 80), int(4.4 * 80)),
    ),
    ("head_scores", lambda p: plots.plot_head_scores(torch.rand(2, 4), p), (192, 320)),
    (
        "head_scores_signed",
        lambda p: plots.plot_head_scores(torch.randn(2, 4), p, symmetric=True),
        (192, 320),
    ),
    (
        "patching_2d",
        lambda p: plots.plot_patching_heatmap(torch.randn(2, 6), p, col_labels=list("abcdef")),
        (int(2.4 * 80), int(4.7 * 80)),
    ),
    (
        "patching_1d",
        lambda p: plots.plot_patching_heatmap(np.arange(3.0), p),
        (int(2.85 * 80), 196),
    ),
    (
        "logit_lens",
        lambda p: plots.plot_logit_lens(
            torch.rand(3, 6), [["x\n"] * 6] * 3, ["0_pre", "1_pre", "final_post"], list("abcdef"), p
        ),
        (int(2.7 * 80), int(7.4 * 80)),
    ),
    (
        "gate_heatmap",
        lambda p: plots.plot_gate_heatmap(torch.rand(3, 4), torch.rand(3, 4), [0, 2, 5], p),
        (int(3.25 * 100), int(6.1 * 100)),
    ),
    (
        "recall_vs_distance",
        lambda p: plots.plot_recall_vs_distance(
            [1, 4, 32], {"memory": [1.0, 0.98, 0.97], "base": [0.9, 0.03, 0.03]}, p, chance=1 / 32
        ),
        (360, 550),
    ),
    (
        "recall_vs_pairs",
        lambda p: plots.plot_recall_vs_pairs([1, 8, 32], {"memory": [1.0, 0.9, 0.5]}, p),
        (360, 550),
    ),
]


@pytest.mark.parametrize("name,draw,hw", CASES, ids=[c[0] for c in CASES])
def test_writes_png_of_expected_size_atomically(tmp_path, name, draw, hw):
    target = tmp_path / "sub" / f"{name}.png"  # the parent does not exist yet
    out = draw(target)
    assert out == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(target)
    assert img.shape[:2] == hw and img.shape[2] in (3, 4)
    assert float(img[..., :3].std()) > 0.05  # something was drawn, not a blank canvas
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file left


def test_overwrites_existing_file(tmp_path):
    target = tmp_path / "h.png"
    target.write_bytes(b"old")
    plots.plot_head_scores(torch.ones(1, 1), target)
    assert target.read_bytes()[:8] == PNG_SIGNATURE


def test_failed_plot_leaves_no_file(tmp_path):
    target = tmp_path / "bad.png"
    with pytest.raises(ValueError):
        plots.plot_head_scores(torch.ones(3), target)  # 1-D: not [layers, heads]
    assert list(tmp_path.iterdir()) == []


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_user_backend_is_kept(tmp_path):
    out = _run(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        from olmokit import plots
        plots.plot_head_scores([[0.1, 0.2]], {str(tmp_path / "h.png")!r})
        print(matplotlib.get_backend(), len(plt.get_fignums()))
        """
    )
    assert out == "svg 0"  # backend untouched, no pyplot figure left open


def test_importing_olmokit_does_not_import_matplotlib():
    out = _run(
        """
        import sys
        import olmokit, olmokit.plots, olmokit.lens, olmokit.jola
        print("matplotlib" in sys.modules)
        """
    )
    assert out == "False"


def test_signed_scores_use_a_scale_centred_at_zero(tmp_path):
    """With ``symmetric`` a score of 0 is drawn in the middle colour of the diverging map, whatever
    the range: the -1 and +1 cells get the two ends, the 0 cell the (near-white) centre."""
    path = plots.plot_head_scores([[-1.0, 0.0, 1.0]], tmp_path / "s.png", symmetric=True)
    img = mpimg.imread(path)[..., :3]
    row = img.shape[0] // 2
    # sample the three cells along the middle row, left of their text labels
    xs = [int(img.shape[1] * f) for f in (0.2, 0.42, 0.64)]
    left, mid, right = (img[row, x] for x in xs)
    assert mid.min() > 0.9  # RdBu's centre is near white
    assert left[0] > left[2] and right[2] > right[0]  # red for -1, blue for +1


def test_recall_curve_rejects_a_series_of_the_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="'memory' has 2 values for 3"):
        plots.plot_recall_vs_pairs([1, 2, 4], {"memory": [1.0, 0.5]}, tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []
