"""Turning records into token ids with labels on the tokens the model should learn to produce.

A record becomes a list of *segments* ``(text, is_target)``; each segment is tokenised separately and
the pieces concatenated, so label masks fall exactly on segment boundaries (no offset arithmetic).

* chat — rendered with the tokenizer's chat template when it has one (each turn's text is found by
  rendering growing prefixes of the conversation), else with ChatML exactly as in seed 000
  (``<|im_start|>{role}\\n{content}\\n<|im_end|>\\n``). Only assistant turns (content and end marker) are
  targets; the ``<|im_start|>assistant\\n`` header is not.
* prompt/completion — the completion (plus EOS) is the target.
* text — every token is a target (plain language modelling), EOS appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DataError
from .readers import Record

__all__ = [
    "CHATML_TEMPLATE",
    "IGNORE_INDEX",
    "Example",
    "chatml_segments",
    "record_segments",
    "encode_record",
    "encode_records",
]

IGNORE_INDEX = -100

#: ChatML exactly as seed 000 writes it: each turn is ``<|im_start|>{role}\n{content}\n<|im_end|>\n``.
#: The zoo tokenizer ships this as its chat template, so both paths format identically.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '\\n<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


def chatml_segments(messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    for m in messages:
        header = f"<|im_start|>{m['role']}\n"
        body = f"{m['content']}\n<|im_end|>\n"
        if m["role"] == "assistant":
            segments += [(header, False), (body, True)]
        else:
            segments.append((header + body, False))
    return segments


def _template_segments(
    tokenizer: Any, messages: Sequence[dict[str, str]]
) -> list[tuple[str, bool]]:
    def render(msgs, gen):
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    segments: list[tuple[str, bool]] = []
    done = ""
    for k, m in enumerate(messages):
        full = render(messages[: k + 1], False)
        if not full.startswith(done):
            raise DataError("the tokenizer's chat template is not prefix-stable; cannot mask turns")
        if m["role"] == "assistant":
            prompt = render(messages[:k], True) if k else done
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(
                    "the chat template's generation prompt does not prefix the assistant turn"
                )
            if prompt != done:
                segments.append((prompt[len(done) :], False))
            segments.append((full[len(prompt) :], True))
        else:
            segments.append((full[len(done) :], False))
        done = full
    return segments


def record_segments(record: Record, tokenizer: Any) -> list[tuple[str, bool]]:
    eos = tokenizer.eos_token or ""
    if record.kind == "chat":
        if getattr(tokenizer, "chat_template", None):
            return _template_segments(tokenizer, record.messages)
        return chatml_segments(record.messages)
    if record.kind == "prompt_completion":
        return [(record.data["prompt"], False), (record.data["completion"] + eos, True)]
    return [(record.data["text"] + eos, True)]


def encode_record(record: Record, tokenizer: Any, max_length: int | None = None) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    for text, target in record_segments(record, tokenizer):
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if target else [IGNORE_INDEX] * len(piece)
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(f"{record.source}: no target tokens left (increase max_length?)")
    return Example(ids, labels, record.source)


def encode_records(
    records: Sequence[Record], tokenizer: Any, max_length: int | None = None
) -> list[Example]:
    return [encode_record(r, tokenizer, max_length) for r in records]
