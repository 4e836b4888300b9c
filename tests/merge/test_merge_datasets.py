"""Evaluation sets: ShareGPT and olmokit chat records, chat template / ChatML fallback, errors at
file:line, deterministic selection."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from olmokit.data.formatting import CHATML_TEMPLATE
from olmokit.errors import DataError
from olmokit.merge.config import REASONING_MASK, DatasetSpec, MergeConfig
from olmokit.merge.datasets import format_context, load_dataset, load_datasets

# small files with the default samples=200 warn that they use every record
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer than samples")

DATA = Path(__file__).resolve().parents[2] / "configs" / "merge" / "data"


def _ids(tok, text):
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _conv(q, a, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]
    return {"messages": msgs}


def test_sharegpt_file_uses_the_chat_template(zoo_tokenizer):
    spec = DatasetSpec(path=str(DATA / "prose_sharegpt.json"), mode="bigram_loss", samples=3)
    es = load_dataset(spec, zoo_tokenizer)
    assert (es.name, es.mode, len(es), es.options) == ("prose_sharegpt", "bigram_loss", 3, {})
    raw = json.loads((DATA / "prose_sharegpt.json").read_text())
    first = raw[0]["conversations"]
    expected_context = (
        f"<|im_start|>system\n{first[0]['value']}\n<|im_end|>\n"
        f"<|im_start|>user\n{first[1]['value']}\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert es.samples[0].context_ids == _ids(zoo_tokenizer, expected_context)
    assert es.samples[0].response_ids == _ids(zoo_tokenizer, first[2]["value"])
    assert es.sources[0].endswith("prose_sharegpt.json:2") and es.sources[1].endswith(":18")
    assert es.tokenizer is zoo_tokenizer


def test_olmokit_chat_jsonl_and_diversity_options(zoo_tokenizer):
    spec = DatasetSpec(
        path=str(DATA / "code.jsonl"),
        mode="diversity",
        samples=2,
        max_new_tokens=5,
        script_penalty=["cjk", "hangul"],
    )
    es = load_dataset(spec, zoo_tokenizer)
    assert es.options == {"max_new_tokens": 5, "penalized_scripts": ("cjk", "hangul")}
    rec = json.loads((DATA / "code.jsonl").read_text().splitlines()[1])
    q, a = (m["content"] for m in rec["messages"])
    assert es.samples[1].context_ids == _ids(
        zoo_tokenizer, f"<|im_start|>user\n{q}\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert es.samples[1].response_ids == _ids(zoo_tokenizer, a)
    assert es.sources == [f"{DATA / 'code.jsonl'}:1", f"{DATA / 'code.jsonl'}:2"]


def test_chatml_fallback_matches_the_template_path(zoo_tokenizer, tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_conv("q1", "a1 b1", system="sys")])
    plain = copy.deepcopy(zoo_tokenizer)
    plain.chat_template = None
    spec = DatasetSpec(path=str(path), mode="nll")
    with_template = load_dataset(spec, zoo_tokenizer).samples
    without = load_dataset(spec, plain).samples
    assert without == with_template  # the zoo template is ChatML, so both paths agree
    msgs = [{"role": "user", "content": "x"}]
    assert format_context(msgs, plain) == "<|im_start|>user\nx\n<|im_end|>\n<|im_start|>assistant\n"
    assert zoo_tokenizer.chat_template == CHATML_TEMPLATE


def test_a_different_template_is_used(zoo_tokenizer, tmp_path):
    tok = copy.deepcopy(zoo_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    path = _write_jsonl(tmp_path / "d.jsonl", [_conv("hello", "world x")])
    es = load_dataset(DatasetSpec(path=str(path), mode="nll"), tok)
    assert es.samples[0].context_ids == _ids(tok, "[user]hello[assistant]")


def test_context_is_everything_before_the_last_assistant_turn(zoo_tokenizer, tmp_path):
    rec = {
        "messages": [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2 final"},
            {"role": "user", "content": "ignored trailing turn"},
        ]
    }
    path = _write_jsonl(tmp_path / "d.jsonl", [rec])
    spec = DatasetSpec(path=str(path), mode="exact_match", prompt_suffix=REASONING_MASK)
    sample = load_dataset(spec, zoo_tokenizer).samples[0]
    context = (
        "<|im_start|>user\nu1\n<|im_end|>\n<|im_start|>assistant\na1\n<|im_end|>\n"
        "<|im_start|>user\nu2\n<|im_end|>\n<|im_start|>assistant\n" + REASONING_MASK
    )
    assert sample.context_ids == _ids(zoo_tokenizer, context)
    assert sample.response_ids == _ids(zoo_tokenizer, "a2 final")


def test_selection_is_deterministic(zoo_tokenizer, tmp_path):
    rows = [_conv(f"question {i}", f"answer number {i}") for i in range(10)]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    spec = DatasetSpec(path=str(path), mode="nll", samples=4)
    first = load_dataset(spec, zoo_tokenizer)
    assert [s.rsplit(":", 1)[1] for s in first.sources] == ["1", "2", "3", "4"]
    a = load_dataset(spec, zoo_tokenizer, seed=7)
    b = load_dataset(spec, zoo_tokenizer, seed=7)
    assert a.samples == b.samples and a.sources == b.sources
    lines = [int(s.rsplit(":", 1)[1]) for s in a.sources]
    assert lines == sorted(lines) and len(set(lines)) == 4  # file order, no repeats
    assert lines != [1, 2, 3, 4] or load_dataset(spec, zoo_tokenizer, seed=8).sources != a.sources
    with pytest.warns(UserWarning, match="10 records, fewer than samples=50; using all"):
        assert (
            len(load_dataset(DatasetSpec(path=str(path), mode="nll", samples=50), zoo_tokenizer))
            == 10
        )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [_conv("q", "a b"), {"conversations": [{"from": "bot", "value": "x"}]}],
            r"d\.jsonl:2: conversations\[0\]\.from 'bot' not in system, human",
        ),
        (
            [_conv("q", "a b"), {"conversation": [{"from": "human"}]}],
            r"d\.jsonl:2: conversation\[0\] must be an object with 'from' and 'value'",
        ),
        (
            [{"messages": [{"role": "user", "content": "only a question"}]}],
            r"d\.jsonl:1: conversation has no assistant turn",
        ),
        ([{"prompt": "p", "completion": "c"}], r"d\.jsonl:1: expected a conversation"),
        ([_conv("q", "a b"), _conv("q", "")], r"d\.jsonl:2: the answer has 0 token\(s\)"),
    ],
)
def test_bad_rows_are_data_errors_at_file_line(zoo_tokenizer, tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(path=str(path), mode="nll"), zoo_tokenizer)


def test_bigram_loss_needs_two_answer_tokens(zoo_tokenizer, tmp_path):
    one = next(t for t in ("A", "x", "1") if len(_ids(zoo_tokenizer, t)) == 1)
    path = _write_jsonl(tmp_path / "d.jsonl", [_conv("q", "a longer answer"), _conv("q", one)])
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:2: the answer has 1 token\(s\); mode bigram_loss needs at least 2",
    ):
        load_dataset(DatasetSpec(path=str(path), mode="bigram_loss"), zoo_tokenizer)
    assert len(load_dataset(DatasetSpec(path=str(path), mode="exact_match"), zoo_tokenizer)) == 2


def test_broken_json_and_missing_file(zoo_tokenizer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_conv("q", "a b")) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_dataset(DatasetSpec(path=str(bad), mode="nll"), zoo_tokenizer)
    with pytest.raises(DataError, match="dataset file not found"):
        load_dataset(DatasetSpec(path=str(tmp_path / "none.json"), mode="nll"), zoo_tokenizer)


def test_tiny_config_datasets_load(zoo_tokenizer):
    cfg = MergeConfig.from_yaml(
        DATA.parent / "tiny.yaml",
        overrides=[
            f"datasets.0.path={DATA / 'prose_sharegpt.json'}",
            f"datasets.1.path={DATA / 'code.jsonl'}",
        ],
    )
    sets = load_datasets(cfg.datasets, zoo_tokenizer)
    assert [(s.name, s.mode, len(s)) for s in sets] == [
        (d.name, d.mode, d.samples) for d in cfg.datasets
    ]
