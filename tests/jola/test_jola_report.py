"""Gate report: per-layer x per-head open gates (additive and multiplicative separately) + heatmap."""

import json

import torch

from olmokit.jola import attach_jola, gate_report, jola_edits, save_jola, write_report
from olmokit.zoo.presets import random_model


def _model():
    m = random_model("olmo3", "tiny", seed=0)  # 4 layers x 4 heads
    attach_jola(m)
    with torch.no_grad():
        for e in jola_edits(m).values():
            e.log_g1.fill_(-5.0)
            e.log_g2.fill_(-5.0)
        jola_edits(m)[1].log_g1[2] = 5.0  # one additive gate open: layer 1, head 2
        jola_edits(m)[3].log_g2[0] = 0.0  # one multiplicative gate half open: layer 3, head 0
    return m


def test_report_counts_and_values(tmp_path):
    m = _model()
    rep = gate_report(m)
    s = rep.summary()
    assert (s["open_additive"], s["open_multiplicative"], s["open_either"], s["heads"]) == (
        1,
        1,
        2,
        16,
    )
    assert rep.g1[1, 2] == 1.0 and rep.g2[3, 0] == 0.5
    md = rep.markdown()
    assert "| 1 | 1/4 | 0/4 |" in md and "| 3 | 0/4 | 1/4 |" in md
    # the same report from the saved adapter alone (no base model)
    save_jola(m, tmp_path / "a")
    rep2 = gate_report(tmp_path / "a")
    assert torch.equal(rep2.g1, rep.g1) and torch.equal(rep2.g2, rep.g2)
    assert gate_report(m, mode="hard").summary()["open_multiplicative"] == 0  # 0.5 is not > 0.5


def test_write_report_files(tmp_path):
    paths = write_report(_model(), tmp_path)
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert len(data["heads"]) == 16 and data["summary"]["open_additive"] == 1
    row = next(r for r in data["heads"] if r["layer"] == 1 and r["head"] == 2)
    assert row["g_add"] == 1.0 and row["g_mult"] == 0.0 and "norm_A" in row
