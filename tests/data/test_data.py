"""Dataset readers (good and bad files), label masking, collation."""

from __future__ import annotations

import json

import pytest
import torch

from olmokit.data import IGNORE_INDEX, PaddingCollator, encode_record, read_records, record_segments
from olmokit.data.formatting import chatml_segments
from olmokit.errors import DataError

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}
PC = {"prompt": "Capital of France:", "completion": " Paris"}
TEXT = {"text": "import os"}


def _jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_reads_all_three_kinds_from_jsonl_and_json(tmp_path):
    recs = read_records(_jsonl(tmp_path, [CHAT, PC, "", TEXT]))
    assert [r.kind for r in recs] == ["chat", "prompt_completion", "text"]
    assert recs[2].source.endswith("d.jsonl:4")
    p = tmp_path / "d.json"
    p.write_text(json.dumps([CHAT, PC], indent=2))
    assert [r.kind for r in read_records(p)] == ["chat", "prompt_completion"]


@pytest.mark.parametrize(
    "row,message",
    [
        (
            '{"messages": [{"role": "robot", "content": "x"}]}',
            "role 'robot' not in system, user, assistant",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
        ('{"prompt": "x"}', "'completion' must be a string"),
        ('{"foo": 1}', "unrecognised record with keys"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    p = _jsonl(tmp_path, [PC, PC, row])
    with pytest.raises(DataError, match=rf"d\.jsonl:3: .*{message}"):
        read_records(p)


def test_bad_element_in_json_array_reports_its_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"text": "a"},\n  {"text": ""}\n]\n')
    with pytest.raises(DataError, match=r"d\.json:3: 'text' must be a non-empty string"):
        read_records(p)


def test_empty_missing_and_wrong_kind(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_records(_jsonl(tmp_path, [""]))
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(DataError, match="empty"):
        read_records(tmp_path / "e.json")
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="expected a chat record"):
        read_records(_jsonl(tmp_path, [PC]), kind="chat")
    with pytest.raises(DataError, match=".csv"):
        (tmp_path / "d.csv").write_text("a")
        read_records(tmp_path / "d.csv")


def test_chat_labels_cover_only_assistant_content(tmp_path, zoo_tokenizer):
    (rec,) = read_records(_jsonl(tmp_path, [CHAT]))
    ex = encode_record(rec, zoo_tokenizer)
    targets = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert zoo_tokenizer.decode(targets) == "4\n<|im_end|>\n"
    full = zoo_tokenizer.decode(ex.input_ids)
    assert full == zoo_tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)


def test_template_and_chatml_fallback_agree(tmp_path, zoo_tokenizer):
    """The zoo tokenizer's template is seed-000 ChatML, so both code paths give the same segments."""
    (rec,) = read_records(_jsonl(tmp_path, [CHAT]))
    assert record_segments(rec, zoo_tokenizer) == chatml_segments(rec.messages)


def test_prompt_completion_and_text_labels(tmp_path, zoo_tokenizer):
    pc, text = read_records(_jsonl(tmp_path, [PC, TEXT]))
    ex = encode_record(pc, zoo_tokenizer)
    n_prompt = len(zoo_tokenizer(PC["prompt"], add_special_tokens=False)["input_ids"])
    assert all(lab == IGNORE_INDEX for lab in ex.labels[:n_prompt])
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.input_ids[-1] == zoo_tokenizer.eos_token_id
    ex = encode_record(text, zoo_tokenizer)
    assert ex.labels == ex.input_ids
    with pytest.raises(DataError, match="no target tokens"):
        encode_record(pc, zoo_tokenizer, max_length=n_prompt)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_and_masks(side):
    from olmokit.data import Example

    batch = PaddingCollator(pad_token_id=1, padding_side=side)(
        [Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])]
    )
    assert batch["input_ids"].shape == (2, 3)
    row = batch["input_ids"][1].tolist()
    assert row == ([8, 1, 1] if side == "right" else [1, 1, 8])
    assert batch["attention_mask"][1].sum() == 1
    assert (batch["labels"][1] == IGNORE_INDEX).sum() == 2
    assert torch.equal(batch["labels"][0], torch.tensor([-100, 6, 7]))
