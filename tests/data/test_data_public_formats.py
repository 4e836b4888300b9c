"""ARC / BoolQ / SIQA multiple choice and E2E / WebNLG generation rows read as chat records."""

import json

import pytest

from olmokit.data.readers import read_records
from olmokit.data.tasks import mc_examples_from_records
from olmokit.errors import DataError

ARC_AI2 = {
    "id": "Mercury_1",
    "question": {
        "stem": "Which gas do plants take in?",
        "choices": [{"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"},
                    {"text": "helium", "label": "C"}],
    },
    "answerKey": "B",
}  # fmt: skip
ARC_HF = {
    "question": "What melts ice?",
    "choices": {"text": ["heat", "cold", "dark", "wind"], "label": ["1", "2", "3", "4"]},
    "answerKey": "1",
}
BOOLQ = {"question": "is water wet", "passage": "Water is a liquid.", "answer": False}
SIQA = {"context": "Sam gave Ana a gift.", "question": "How does Ana feel?", "answerA": "sad",
        "answerB": "happy", "answerC": "bored", "label": "2"}  # fmt: skip
E2E = {
    "meaning_representation": "name[Aromi], food[Italian]",
    "human_reference": "Aromi is Italian.",
}
WEBNLG = {"input": ["Aarhus | country | Denmark"], "target": "Aarhus is in Denmark.", "gem_id": "x"}


def _read(tmp_path, rows):
    p = tmp_path / "bench.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return read_records(p)


def test_multiple_choice_formats(tmp_path):
    recs = _read(tmp_path, [ARC_AI2, ARC_HF, BOOLQ, SIQA])
    assert all(r.kind == "chat" for r in recs)
    mc = mc_examples_from_records(recs)
    assert [ex.answer_text for ex in mc] == ["carbon dioxide", "heat", "no", "happy"]
    assert [len(ex.choices) for ex in mc] == [3, 4, 2, 3]
    assert all(all(c in ex.prompt for c in ex.choices) for ex in mc)
    assert "Water is a liquid." in mc[2].prompt and "Sam gave Ana a gift." in mc[3].prompt


def test_generation_formats(tmp_path):
    e2e, web = _read(tmp_path, [E2E, WEBNLG])
    assert e2e.messages[-1] == {"role": "assistant", "content": "Aromi is Italian."}
    assert "name[Aromi]" in e2e.messages[0]["content"]
    assert web.messages[-1]["content"] == "Aarhus is in Denmark."
    assert "Aarhus | country | Denmark" in web.messages[0]["content"]
    assert "choices" not in e2e.data  # generation: exact match, no options


def test_own_shapes_win_and_bad_rows_name_the_line(tmp_path):
    own = {"prompt": "question?", "completion": "x", "answer": True, "passage": "p"}
    assert _read(tmp_path, [own])[0].kind == "prompt_completion"
    with pytest.raises(DataError, match=r"bench.jsonl:2: BoolQ 'answer'"):
        _read(tmp_path, [BOOLQ, {**BOOLQ, "answer": "maybe"}])
    with pytest.raises(DataError, match=r"bench.jsonl:1: answerKey 'E'"):
        _read(tmp_path, [{**ARC_HF, "answerKey": "E"}])
    with pytest.raises(DataError, match=r"bench.jsonl:1: malformed benchmark row"):
        _read(tmp_path, [{"question": {"stem": "q"}, "answerKey": "A"}])
