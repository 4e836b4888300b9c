"""Reading JSON / JSONL datasets of chat conversations, prompt/completion pairs or plain text.

Each record is validated as it is read; a bad one raises :class:`~olmokit.errors.DataError` naming the
file, the line and what is wrong, so a user can open the file and fix it. Accepted record shapes:

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
* prompt/completion: ``{"prompt": str, "completion": str}``
* text: ``{"text": str}``

A ``.json`` file holds a list of records; a ``.jsonl`` file one record per line (blank lines skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError

__all__ = ["Record", "read_records", "RECORD_KINDS", "VALID_ROLES"]

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


def _classify(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
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
        "'prompt'+'completion' or 'text'"
    )


def _iter_json_array(text: str, path: str) -> Iterator[tuple[Any, int]]:
    """Yield ``(element, line)`` from a JSON array, tracking each element's starting line."""
    decoder = json.JSONDecoder()
    idx = 0
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    idx = skip_ws(idx)
    if idx >= n or text[idx] != "[":
        raise DataError(
            f"{path}:{line_of(idx)}: a .json dataset must be a list of records (use .jsonl for one per line)"
        )
    idx = skip_ws(idx + 1)
    if idx < n and text[idx] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, idx)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        yield obj, line_of(idx)
        idx = skip_ws(end)
        if idx < n and text[idx] == ",":
            idx = skip_ws(idx + 1)
            continue
        if idx < n and text[idx] == "]":
            return
        raise DataError(f"{path}:{line_of(idx)}: expected ',' or ']' in the record list")


def read_records(path: str | os.PathLike[str], kind: str | None = None) -> list[Record]:
    """Read and validate every record; optionally require one ``kind`` (see :data:`RECORD_KINDS`)."""
    p = Path(path)
    if kind is not None and kind not in RECORD_KINDS:
        raise DataError(f"unknown record kind {kind!r}; valid: {', '.join(RECORD_KINDS)}")
    if not p.is_file():
        raise DataError(f"{p}: dataset file not found")
    text = p.read_text(encoding="utf-8")
    records: list[Record] = []
    if p.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{lineno}: invalid JSON: {exc.msg}") from None
            records.append(_classify(obj, f"{p}:{lineno}"))
    elif p.suffix == ".json":
        for obj, lineno in _iter_json_array(text, str(p)):
            records.append(_classify(obj, f"{p}:{lineno}"))
    else:
        raise DataError(f"{p}: unsupported dataset extension {p.suffix!r}; use .json or .jsonl")
    if not records:
        raise DataError(f"{p}: dataset is empty")
    if kind is not None:
        for r in records:
            if r.kind != kind:
                raise DataError(f"{r.source}: expected a {kind} record, got {r.kind}")
    return records
