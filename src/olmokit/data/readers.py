"""Reading JSON / JSONL datasets of chat conversations, prompt/completion pairs or plain text.

Each record is validated as it is read; a bad one raises :class:`~olmokit.errors.DataError` naming the
file, the line and what is wrong, so a user can open the file and fix it. Accepted record shapes:

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, or ShareGPT's
  ``{"conversations"|"conversation": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
  (read as the same chat record)
* prompt/completion: ``{"prompt": str, "completion": str}``
* text: ``{"text": str}``
* the public formats of JoLA's benchmarks (ARC, BoolQ, SIQA multiple choice; E2E, WebNLG generation),
  read as chat records (with ``choices`` for multiple choice): see :mod:`olmokit.data.public_formats`

A ``.json`` file holds a list of records (nothing may follow it); a ``.jsonl`` file one record per
line (blank lines skipped). Lines end at ``\n`` only: JSON strings may contain U+2028 and other
characters ``str.splitlines`` would split at. A file that is not UTF-8, nests absurdly deep or holds an
integer too long for Python is a :class:`~olmokit.errors.DataError` at its line, like any other bad row.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError
from ..files import read_text
from .public_formats import from_public_format

__all__ = ["Record", "read_records", "record_from_dict", "RECORD_KINDS", "VALID_ROLES"]

RecordKind = Literal["chat", "prompt_completion", "text"]
RECORD_KINDS: tuple[str, ...] = ("chat", "prompt_completion", "text")
VALID_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Record:
    kind: RecordKind
    data: dict[str, Any]
    source: str  #: "file:line" for error messages downstream

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.data["messages"]


#: ShareGPT speaker names (``from``) and the chat roles they stand for.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


def _sharegpt_messages(turns: Any, key: str, where: str) -> list[Any]:
    """ShareGPT turns (``{"from": "human"|"gpt"|"system", "value": str}``) as chat messages."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: '{key}' must be a non-empty list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise DataError(f"{where}: {key}[{i}] must be an object with 'from' and 'value'")
        if t["from"] not in SHAREGPT_ROLES:
            raise DataError(
                f"{where}: {key}[{i}].from {t['from']!r} not in {', '.join(SHAREGPT_ROLES)}"
            )
        out.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
    return out


def _classify(obj: Any, where: str) -> Record:
    obj = from_public_format(obj, where)  # ARC/BoolQ/SIQA/E2E/WebNLG rows -> chat records
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("conversations", "conversation"):  # ShareGPT, read as a chat record
        if key in obj and "messages" not in obj:
            obj = {"messages": _sharegpt_messages(obj[key], key, where)}
            break
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(
                    f"{where}: messages[{i}] must be an object with 'role' and 'content'"
                )
            if m["role"] not in VALID_ROLES:
                raise DataError(
                    f"{where}: messages[{i}].role {m['role']!r} not in {', '.join(VALID_ROLES)}"
                )
            if not isinstance(m["content"], str):
                raise DataError(f"{where}: messages[{i}].content must be a string")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: conversation has no assistant turn to learn from")
        return Record("chat", obj, where)
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise DataError(f"{where}: '{key}' must be a string")
        if not obj["completion"]:
            raise DataError(f"{where}: 'completion' is empty")
        return Record("prompt_completion", obj, where)
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return Record("text", obj, where)
    raise DataError(
        f"{where}: unrecognised record with keys {sorted(obj)}; expected 'messages', "
        "'conversations' (ShareGPT), 'prompt'+'completion' or 'text'"
    )


def record_from_dict(obj: Any, where: str = "record") -> Record:
    """One in-memory row (a dict, e.g. from a ``datasets.Dataset``) validated like a file's line;
    ``where`` names it in error messages."""
    return _classify(obj, where)


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _decode(text: str, idx: int, path: str, line: int, first_line: int = 1) -> tuple[Any, int]:
    """``raw_decode`` of the value at ``text[idx:]`` (which starts on ``line``; ``text`` itself starts
    on ``first_line``), every failure a :class:`DataError` naming the file and line."""
    try:
        return _DECODER.raw_decode(text, idx)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{first_line + exc.lineno - 1}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{path}:{line}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer over sys.get_int_max_str_digits()
        raise DataError(f"{path}:{line}: invalid JSON: {exc}") from None


class _LineCounter:
    """Line numbers of increasing offsets into ``text`` in linear total time (each ``\n`` is counted
    once; counting from the start for every record made the ``.json`` reader quadratic)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, idx: int) -> int:
        self.line += self.text.count("\n", self.pos, idx)
        self.pos = idx
        return self.line


def _iter_json_array(text: str, path: str) -> Iterator[tuple[Any, int]]:
    """Yield ``(element, line)`` from a JSON array, tracking each element's starting line."""
    n = len(text)
    line_of = _LineCounter(text)

    def skip_ws(i: int) -> int:
        return _WHITESPACE.match(text, i).end()

    idx = skip_ws(0)
    if idx >= n or text[idx] != "[":
        raise DataError(
            f"{path}:{line_of(idx)}: a .json dataset must be a list of records (use .jsonl for one per line)"
        )
    idx = skip_ws(idx + 1)
    if idx < n and text[idx] == "]":
        end_of_list = idx + 1
    else:
        while True:
            line = line_of(idx)
            if idx >= n:
                raise DataError(f"{path}:{line}: the record list is not closed with ']'")
            obj, end = _decode(text, idx, path, line)
            yield obj, line
            idx = skip_ws(end)
            if idx < n and text[idx] == ",":
                idx = skip_ws(idx + 1)
                continue
            if idx < n and text[idx] == "]":
                end_of_list = idx + 1
                break
            raise DataError(f"{path}:{line_of(idx)}: expected ',' or ']' in the record list")
    tail = skip_ws(end_of_list)
    if tail < n:
        raise DataError(
            f"{path}:{line_of(tail)}: unexpected text after the record list (a .json dataset is one "
            "list; use .jsonl for one record per line)"
        )


def read_records(path: str | os.PathLike[str], kind: str | None = None) -> list[Record]:
    """Read and validate every record; optionally require one ``kind`` (see :data:`RECORD_KINDS`)."""
    p = Path(path)
    if kind is not None and kind not in RECORD_KINDS:
        raise DataError(f"unknown record kind {kind!r}; valid: {', '.join(RECORD_KINDS)}")
    if not p.is_file():
        where = "" if p.is_absolute() else f" (relative paths are read from {Path.cwd()})"
        raise DataError(f"{p}: dataset file not found{where}")
    if p.suffix not in (".json", ".jsonl"):
        raise DataError(f"{p}: unsupported dataset extension {p.suffix!r}; use .json or .jsonl")
    text = read_text(p, DataError)
    records: list[Record] = []
    if p.suffix == ".jsonl":
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip(" \t\r"):
                continue
            where = f"{p}:{lineno}"
            obj, end = _decode(line, _WHITESPACE.match(line).end(), str(p), lineno, lineno)
            if line[end:].strip(" \t\r"):
                raise DataError(f"{where}: invalid JSON: extra data after the record")
            records.append(_classify(obj, where))
    else:
        for obj, lineno in _iter_json_array(text, str(p)):
            records.append(_classify(obj, f"{p}:{lineno}"))
    if not records:
        raise DataError(f"{p}: dataset is empty")
    if kind is not None:
        for r in records:
            if r.kind != kind:
                raise DataError(f"{r.source}: expected a {kind} record, got {r.kind}")
    return records
