"""Rows in the public formats of JoLA's benchmarks, rewritten as olmokit chat records.

JoLA is evaluated on commonsense multiple choice (ARC, BoolQ, SIQA, ...) and GEM generation (E2E,
WebNLG, ...). A user with those JSONL files reads them with :func:`olmokit.data.readers.read_records`
like any other dataset: :func:`from_public_format` recognises each row's shape and returns a chat
record (``messages``: the question as the user turn, the answer as the assistant turn), with a
``choices`` list for multiple choice so scoring is log-likelihood accuracy over the options. Rows in
olmokit's own shapes pass through unchanged.

Recognised shapes (keys as the datasets publish them):

* ARC (AI2 JSONL): ``{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``; and the
  Hugging Face layout ``{"question": str, "choices": {"text": [...], "label": [...]}, "answerKey"}``
  (also OpenBookQA's ``question_stem``);
* BoolQ: ``{"question", "passage", "answer": true|false}`` (choices ``yes``/``no``);
* SIQA: ``{"context", "question", "answerA", "answerB", "answerC", "label": 1|2|3}``;
* E2E NLG: ``{"meaning_representation", "human_reference" | "target"}``;
* WebNLG (GEM): ``{"input": [triple, ...], "target"}``, or ``{"triples"|"modified_triple_sets", "lex"}``
  with ``lex`` a string or a list of strings (the first is the reference).
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError

__all__ = ["PUBLIC_FORMATS", "from_public_format"]

#: names of the recognised shapes, for error messages and docs
PUBLIC_FORMATS = ("arc", "boolq", "siqa", "e2e", "webnlg")
_OWN_KEYS = ("prompt", "messages", "text", "conversations", "conversation")


def _mc(question: str, options: list[str], answer: int, where: str) -> dict[str, Any]:
    if not 0 <= answer < len(options):
        raise DataError(f"{where}: answer index {answer} out of range for {len(options)} options")
    if len(set(options)) != len(options):
        raise DataError(f"{where}: the options are not distinct: {options}")
    listed = "\n".join(f"- {o}" for o in options)
    return {
        "messages": [
            {"role": "user", "content": f"{question}\n\nOptions:\n{listed}"},
            {"role": "assistant", "content": options[answer]},
        ],
        "choices": list(options),
    }


def _gen(instruction: str, source: str, target: Any, where: str) -> dict[str, Any]:
    if isinstance(target, list):
        target = target[0] if target else None
    if isinstance(target, dict):  # WebNLG lex entries {"lex"|"text": ...}
        target = target.get("lex", target.get("text"))
    if not isinstance(target, str) or not target:
        raise DataError(f"{where}: the reference text is missing or empty")
    return {
        "messages": [
            {"role": "user", "content": f"{instruction}\n\n{source}"},
            {"role": "assistant", "content": target},
        ]
    }


def _arc(obj: dict[str, Any], where: str) -> dict[str, Any]:
    q = obj.get("question", obj.get("question_stem"))
    if isinstance(q, dict):  # AI2 layout
        stem = q.get("stem")
        texts = [c["text"] for c in q["choices"]]
        labels = [str(c["label"]) for c in q["choices"]]
    else:  # Hugging Face layout
        stem = q
        texts = list(obj["choices"]["text"])
        labels = [str(x) for x in obj["choices"]["label"]]
    key = str(obj["answerKey"])
    if key not in labels:
        raise DataError(f"{where}: answerKey {key!r} not among the labels {labels}")
    return _mc(str(stem), texts, labels.index(key), where)


def _boolq(obj: dict[str, Any], where: str) -> dict[str, Any]:
    answer = obj["answer"]
    if isinstance(answer, str) and answer.lower() in ("true", "false"):
        answer = answer.lower() == "true"
    if not isinstance(answer, bool):
        raise DataError(f"{where}: BoolQ 'answer' must be true or false, got {answer!r}")
    question = f"{obj['passage']}\n\nQuestion: {obj['question']}?".replace("??", "?")
    return _mc(question, ["yes", "no"], 0 if answer else 1, where)


def _siqa(obj: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        label = int(obj["label"])
    except (TypeError, ValueError):
        raise DataError(f"{where}: SIQA 'label' must be 1, 2 or 3, got {obj['label']!r}") from None
    options = [obj["answerA"], obj["answerB"], obj["answerC"]]
    return _mc(f"{obj['context']}\n\nQuestion: {obj['question']}", options, label - 1, where)


def _triples(triples: Any) -> str:
    if isinstance(triples, dict):  # {"mtriple_set": [[...]]} and similar nestings
        triples = next(iter(triples.values()), [])
    flat: list[str] = []
    for t in triples if isinstance(triples, list) else [triples]:
        flat += [str(x) for x in t] if isinstance(t, list) else [str(t)]
    return "\n".join(flat)


def from_public_format(obj: Any, where: str) -> Any:
    """``obj`` as a chat record when it has one of the :data:`PUBLIC_FORMATS` shapes, else unchanged.

    olmokit's own keys (``messages``, ``conversations``, ``prompt``/``completion``, ``text``) win, so a
    record that already is a chat or prompt/completion record is never rewritten.
    """
    if not isinstance(obj, dict) or any(k in obj for k in _OWN_KEYS):
        return obj  # the common case first: olmokit's own shapes cost a few dict lookups
    try:
        if "answerKey" in obj and ("question" in obj or "question_stem" in obj):
            return _arc(obj, where)
        if {"passage", "question", "answer"} <= obj.keys():
            return _boolq(obj, where)
        if {"context", "question", "answerA", "answerB", "answerC", "label"} <= obj.keys():
            return _siqa(obj, where)
        if "meaning_representation" in obj:
            target = obj.get("human_reference", obj.get("target", obj.get("references")))
            return _gen(
                "Write a sentence that expresses this meaning representation.",
                str(obj["meaning_representation"]),
                target,
                where,
            )
        if "target" in obj and "input" in obj or "lex" in obj:
            triples = obj.get("input", obj.get("triples", obj.get("modified_triple_sets")))
            target = obj.get("target", obj.get("lex"))
            return _gen(
                "Write a text that verbalises these triples.", _triples(triples), target, where
            )
    except (KeyError, TypeError, IndexError) as exc:
        raise DataError(f"{where}: malformed benchmark row ({type(exc).__name__}: {exc})") from None
    return obj
