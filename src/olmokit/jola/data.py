"""The data a JoLA user already has, turned into token ids with labels on what should be learnt.

Accepted forms (any of them for ``train_dataset`` / ``eval_dataset`` of :class:`JoLATrainer`):

* a ``datasets.Dataset`` (or any sequence of dicts) with a ``text`` column (the reference
  ``JoLATrainer``'s ``dataset_text_field``; another column name via ``text_field``), TRL's chat
  ``messages`` column, or ``prompt``/``completion`` columns;
* a JSON/JSONL path (:func:`olmokit.data.readers.read_records`);
* :class:`~olmokit.data.readers.Record` objects, or already-encoded examples (passed through).

Where to put the loss (``loss_on``):

* ``"answer"`` (default): only the answer itself — an assistant turn's *content* and the line break
  that ends it, a prompt/completion record's *completion* — is a target; the chat template's
  end-of-turn marker (``<|im_end|>\\n``) and EOS are not. The line break is kept because it is
  ordinary text the model knows and it marks where a generated answer ends (exact match reads the
  first line). Why: a small model that never saw the template spends most of the loss on those
  tokens (on the zoo model 9.5 nats of 10.5 at the start), and an edit that learns to end the turn
  does not change which answer wins. Token ids are exactly those of ``"turn"`` (the same text
  tokenised the same way), only the label mask differs, so training and scoring see the same inputs.
* ``"turn"``: the whole assistant turn including the end marker (and EOS for prompt/completion), as
  :func:`olmokit.data.formatting.encode_record` does.

Text records are always trained on every token (there is no prompt to mask).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..data.formatting import Example
from ..data.masking import LOSS_ON, encode_answer
from ..data.readers import Record, read_records, record_from_dict
from ..errors import DataError

__all__ = ["LOSS_ON", "LossOn", "encode_for_training", "to_records"]

LossOn = Literal["answer", "turn"]

#: one record encoded with its labels per ``loss_on`` (:func:`olmokit.data.masking.encode_answer`)
encode_for_training = encode_answer


def _is_encoded(row: Any) -> bool:
    return isinstance(row, Example) or (isinstance(row, Mapping) and "input_ids" in row)


def to_records(
    data: str | Path | Iterable[Any], text_field: str = "text", name: str = "dataset"
) -> list[Record]:
    """Records from a path, a ``datasets.Dataset``, a list of dicts or a list of records.

    ``text_field`` names the column read as plain text when a row has no ``messages`` /
    ``prompt``+``completion`` (the reference trainer's ``dataset_text_field``).
    """
    if isinstance(data, (str, Path)):
        return read_records(data)
    out: list[Record] = []
    for i, row in enumerate(data):
        if isinstance(row, Record):
            out.append(row)
            continue
        if not isinstance(row, Mapping):
            raise DataError(
                f"{name}[{i}]: expected a dict (or Record), got {type(row).__name__}; rows need "
                f"'messages', 'prompt'+'completion' or '{text_field}'"
            )
        obj = dict(row)
        if text_field != "text" and text_field in obj and "messages" not in obj:
            obj = {"text": obj[text_field]}
        # datasets.Dataset fills absent columns of mixed-shape rows with None: drop them
        obj = {k: v for k, v in obj.items() if v is not None}
        out.append(record_from_dict(obj, f"{name}[{i}]"))
    if not out:
        raise DataError(f"{name}: no rows")
    return out


def prepare_dataset(
    data: Any,
    tokenizer: Any,
    max_length: int | None,
    loss_on: str = "answer",
    text_field: str = "text",
    name: str = "dataset",
) -> Any:
    """Whatever the user passed, as something ``Trainer`` can index (encoded :class:`Example` rows).

    Already-encoded rows (``input_ids``) pass through untouched.
    """
    if data is None:
        return None
    if not isinstance(data, (str, Path)):
        if not isinstance(data, Sequence) and not hasattr(data, "column_names"):
            data = list(data)
        if len(data) == 0:
            raise DataError(f"{name}: no rows")
        if _is_encoded(data[0]):
            return data
    if tokenizer is None:
        raise DataError(f"{name}: raw rows need a tokenizer to be encoded; pass tokenizer=")
    records = to_records(data, text_field, name)
    return [encode_answer(r, tokenizer, max_length, loss_on) for r in records]


def encode_all(
    records: Sequence[Record], tokenizer: Any, max_length: int | None, loss_on: str = "answer"
) -> list[Example]:
    return [encode_answer(r, tokenizer, max_length, loss_on) for r in records]
