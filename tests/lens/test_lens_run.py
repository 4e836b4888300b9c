"""``run_lens`` end to end on ``configs/lens/tiny.yaml``: every job's JSON equals the library called
directly, PNGs are written, ``summary.json`` lists them, and ``resume`` reruns only missing jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from olmokit.errors import OlmokitError
from olmokit.lens.attribution import direct_logit_attribution
from olmokit.lens.config import JOB_KINDS, LensConfig
from olmokit.lens.heads import induction_score
from olmokit.lens.logit_lens import logit_lens
from olmokit.lens.patching import (
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_out,
    get_act_patch_mlp_out,
    get_act_patch_resid_mid,
    get_act_patch_resid_pre,
    logit_diff_metric,
    normalize_patching,
)
from olmokit.lens.run import load_hooked, run_lens

TINY = Path(__file__).resolve().parents[2] / "configs" / "lens" / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def _ids(model, text: str) -> torch.Tensor:
    """A prompt as the lens run reads YAML prompts: as written, no BOS."""
    return model.to_tokens(text, prepend_bos=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = LensConfig.from_yaml(TINY, [f"output_dir={tmp_path_factory.mktemp('lens') / 'run'}"])
    model = load_hooked(config.model)
    # the same single thread as the tests' direct calls (the autouse one_thread fixture is function
    # scoped and not yet active here): the JSON is compared with them bit for bit, and a different
    # intra-op thread count changes float32 reductions in the last bits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = run_lens(config, model=model)
    finally:
        torch.set_num_threads(threads)
    return config, model, run


def _load(run, name):
    return json.loads((run.path / f"{name}.json").read_text())


def _same(saved, tensor):
    """JSON numbers are the float32 values exactly (a float32 is a double; JSON keeps doubles)."""
    assert saved == tensor.tolist()


def test_tiny_config_has_every_job_kind(tiny_run):
    config, _, run = tiny_run
    assert {job.kind for job in config.jobs} == set(JOB_KINDS)
    assert (run.path / "config.yaml").is_file() and (run.path / "environment.json").is_file()


def test_summary_lists_every_job_and_its_files(tiny_run):
    config, model, run = tiny_run
    summary = _load(run, "summary")
    assert [j["name"] for j in summary["jobs"]] == config.job_names()
    assert [j["kind"] for j in summary["jobs"]] == [job.kind for job in config.jobs]
    assert summary["cfg"] == model.cfg.to_dict() and summary["model"] == "zoo:olmo2-tiny-random"
    listed = {f for j in summary["jobs"] for f in j["files"]}
    on_disk = {p.name for p in run.path.glob("*.png")}
    assert listed == on_disk and len(on_disk) == 1 + 5 + 1 + 2 + 1 + 1
    for name in on_disk:
        assert (run.path / name).read_bytes()[:8] == PNG
    assert not list(run.path.glob(".*.tmp"))


def test_logit_lens_job_matches_the_library(tiny_run):
    _, model, run = tiny_run
    saved = _load(run, "logit_lens")
    direct = logit_lens(model, _ids(model, "def main():\n    return"), k=3)
    assert saved["labels"] == direct.labels == ["0_pre", "1_pre", "final_post"]
    _same(saved["top_ids"], direct.top_ids)
    _same(saved["top_probs"], direct.top_probs)
    assert saved["target_probs"][0][:-1] == direct.target_probs[0, :-1].tolist()
    assert saved["target_probs"][0][-1] is None  # no next token: NaN in torch, null in JSON
    # the last row is the model's own prediction
    assert saved["top_ids"][-1][-1][0] == int(
        model(_ids(model, "def main():\n    return"))[0, -1].argmax()
    )


def test_patching_job_matches_the_library(tiny_run):
    _, model, run = tiny_run
    saved = _load(run, "patch")
    clean, corrupted = _ids(model, "def __init__(self"), _ids(model, "def __repr__(self")
    answer, wrong = saved["answer"]["id"], saved["wrong"]["id"]
    assert (saved["answer"]["text"], saved["wrong"]["text"]) == (",", ")")
    metric = logit_diff_metric(answer, wrong)
    # cache only what patching needs, as the job does: a full cache would hook the attention
    # patterns, which runs eager attention instead of SDPA (equal up to float rounding, not bits)
    needed = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_mid", "attn.hook_z")
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(needed))
    with torch.no_grad():
        c, k = float(metric(clean_logits)), float(metric(model(corrupted)))
    assert saved["logit_diff"] == {"clean": c, "corrupted": k}
    for kind, fn in [
        ("resid_pre", get_act_patch_resid_pre),
        ("attn_out", get_act_patch_attn_out),
        ("mlp_out", get_act_patch_mlp_out),
        ("resid_mid", get_act_patch_resid_mid),
        ("heads", get_act_patch_attn_head_out_all_pos),
    ]:
        _same(saved["results"][kind], normalize_patching(fn(model, corrupted, cache, metric), c, k))
    # the prompts differ in token 2 only: the embedding patched there restores the clean run
    assert saved["results"]["resid_pre"][0] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert torch.tensor(saved["results"]["heads"]).shape == (2, 4)


def test_attribution_job_matches_the_library(tiny_run):
    _, model, run = tiny_run
    saved = _load(run, "attribution")
    prompt = "import os\nos.path."
    answer = int(model(_ids(model, prompt))[0, -1].argmax())
    assert saved["answer"]["id"] == answer and saved["wrong"] is None
    direct = direct_logit_attribution(model, _ids(model, prompt), answer)
    assert saved["labels"] == direct.labels
    _same(saved["values"], direct.values[:, 0])
    assert saved["total"] == float(direct.total[0])
    assert saved["sum_of_components"] == pytest.approx(saved["total"], abs=1e-4)
    assert [t["component"] for t in saved["top"]] == [c for c, _ in direct.top(5)]


def test_head_score_and_pattern_jobs_match_the_library(tiny_run):
    _, model, run = tiny_run
    saved = _load(run, "induction")
    direct = induction_score(model, seq_len=8, batch=2, seed=0)
    _same(saved["induction"], direct.scores)
    _same(saved["previous_token"], direct.previous_token)
    assert saved["copy_gain"] == direct.copy_gain
    assert saved["uniform_baseline"] == pytest.approx(sum(1 / (q + 1) for q in range(8, 16)) / 8)
    layer, head, score = direct.top(1)[0]
    assert (saved["top"][0]["layer"], saved["top"][0]["head"], saved["top"][0]["induction"]) == (
        layer,
        head,
        score,
    )

    top = _load(run, "pattern_top")
    assert (top["layer"], top["head"], top["chosen_by"]) == (layer, head, "top induction score")
    tokens = direct.tokens[:1]
    assert top["token_ids"] == tokens[0].tolist()
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_pattern")
    _same(top["pattern"], cache[("pattern", layer)][0, head])
    assert (run.path / f"pattern_top_L{layer}H{head}.png").is_file()

    fixed = _load(run, "pattern_prompt")
    assert (fixed["layer"], fixed["head"], fixed["chosen_by"]) == (1, 0, "config")
    pattern = torch.tensor(fixed["pattern"])
    assert fixed["tokens"] == model.to_str_tokens("for i in range(10):", prepend_bos=False)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(len(fixed["tokens"])))
    assert torch.equal(
        pattern.triu(1), torch.zeros_like(pattern)
    )  # causal: nothing from the future


def test_resume_reruns_only_missing_jobs(tmp_path):
    config = LensConfig.from_dict(
        {
            "model": {"name": "zoo:olmo2-tiny-random"},
            "output_dir": str(tmp_path / "run"),
            "jobs": [
                {"kind": "head_scores", "name": "a", "seq_len": 4, "batch": 1},
                {"kind": "attention_pattern", "name": "b", "seq_len": 4, "batch": 1},
            ],
        }
    )
    model = load_hooked(config.model)
    run = run_lens(config, model=model)
    first = _load(run, "summary")
    a_time = (run.path / "a.json").stat().st_mtime_ns
    (run.path / "b.json").unlink()  # as if the run had been killed during job b
    run = run_lens(config, model=model, resume=True)
    assert run.resumed and (run.path / "a.json").stat().st_mtime_ns == a_time
    assert _load(run, "summary") == first
    assert len(json.loads((run.path / "environment.json").read_text())["starts"]) == 2


def test_a_model_that_does_not_load_leaves_no_run_behind(tmp_path):
    out = tmp_path / "run"
    config = LensConfig.from_dict(
        {
            "model": {"name": str(tmp_path / "no-such-model")},
            "output_dir": str(out),
            "jobs": [{"kind": "head_scores"}],
        }
    )
    with pytest.raises(OlmokitError):
        run_lens(config)
    assert not out.exists()  # so the corrected config can use the directory without --overwrite
