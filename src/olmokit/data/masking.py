"""Label masks on the answer alone: the chat template's end-of-turn tokens and EOS left out.

:func:`encode_answer` encodes a record exactly as :func:`olmokit.data.formatting.encode_record` does
(same text, same token ids) but marks as targets only the answer — an assistant turn's content and the
line break that ends it, a prompt/completion record's completion — not ``<|im_end|>`` or EOS. JoLA
trains with it by default (``loss_on: answer``), and the multiple-choice scorer can score choices the
same way (:func:`olmokit.eval.choice_logprobs` with ``loss_on="answer"``), so a model is judged on
the tokens it was trained on. Why: a model that never saw the chat template puts most of its loss
on the end-of-turn marker (72% of the zoo model's target loss on ``stdlib_module``), and the marker's
log-probability after each choice is noise unrelated to which choice is right.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .formatting import IGNORE_INDEX, Example, encode_record, record_segments
from .readers import Record

__all__ = ["LOSS_ON", "encode_answer", "trim_after_target"]

#: where the loss (and choice scoring) goes: the answer alone, or the whole assistant turn
LOSS_ON: tuple[str, ...] = ("answer", "turn")


def _answers(record: Record) -> list[str]:
    """The answer texts of a record's target segments, in order."""
    if record.kind == "chat":
        return [m["content"] for m in record.messages if m["role"] == "assistant"]
    if record.kind == "prompt_completion":
        return [record.data["completion"]]
    return []


def _answer_mask(tokenizer: Any, text: str, answer: str) -> tuple[list[int], list[bool]]:
    """Ids of ``text`` (tokenised as a whole, as :func:`encode_record` does) and which of them overlap
    ``answer``'s span in it (its first occurrence)."""
    start = text.find(answer)
    if start < 0:
        raise DataError(f"the answer {answer[:40]!r} is not inside its rendered turn {text[:60]!r}")
    end = start + len(answer)
    if text[end : end + 1] == "\n":
        end += 1
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = enc["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        # slow tokenizers have no offsets: tokenise the three pieces apart (ids may then differ)
        parts = [(text[:start], False), (text[start:end], True), (text[end:], False)]
        ids, mask = [], []
        for piece, target in parts:
            if piece:
                p = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += p
                mask += [target] * len(p)
        return ids, mask
    mask = [a < end and b > start for a, b in spans]
    return list(enc["input_ids"]), mask


def encode_answer(
    record: Record, tokenizer: Any, max_length: int | None = None, loss_on: str = "answer"
) -> Example:
    """One record as an :class:`Example` with labels per ``loss_on`` (see the module docstring)."""
    if loss_on not in LOSS_ON:
        raise DataError(f"loss_on {loss_on!r} not in {', '.join(LOSS_ON)}")
    if loss_on == "turn" or record.kind == "text":
        return encode_record(record, tokenizer, max_length)
    answers = iter(_answers(record))
    ids: list[int] = []
    labels: list[int] = []
    for text, target in record_segments(record, tokenizer):
        if not text:
            continue
        if target:
            piece, mask = _answer_mask(tokenizer, text, next(answers))
            labels += [t if m else IGNORE_INDEX for t, m in zip(piece, mask)]
        else:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            labels += [IGNORE_INDEX] * len(piece)
        ids += piece
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise DataError(f"{record.source}: no target tokens left (increase max_length?)")
    return Example(ids, labels, record.source)


def trim_after_target(example: Example) -> Example:
    """The example cut after its last target token (the untrained template tail dropped), so the
    target is one trailing span again; earlier positions' log-probabilities are unchanged."""
    last = max(i for i, lab in enumerate(example.labels) if lab != IGNORE_INDEX)
    return Example(example.input_ids[: last + 1], example.labels[: last + 1], example.source)
