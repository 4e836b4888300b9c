"""Which Unicode scripts a text uses, in pure Python (no ``regex`` dependency, no ICU).

The merge's diversity metric penalises answers that drift into a script the evaluation does not
expect (a model merged from multilingual donors that starts answering in Chinese). The original
checked only U+4E00–U+9FFF; here each script is a table of code-point ranges from the Unicode
blocks, so Japanese kana, Korean Hangul and the CJK extensions are caught too, and the set to
penalise is configurable.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["SCRIPT_RANGES", "SCRIPTS", "script_of", "scripts_in", "uses_script"]

#: Inclusive code-point ranges per script (Unicode blocks; kana supplements split by letter).
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "cjk": (
        (0x2E80, 0x2EFF),  # CJK Radicals Supplement
        (0x2F00, 0x2FDF),  # Kangxi Radicals
        (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
        (0x4E00, 0x9FFF),  # CJK Unified Ideographs (the original's only range)
        (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
        (0x20000, 0x2A6DF),  # Extension B
        (0x2A700, 0x2EBEF),  # Extensions C-F (and I)
        (0x2F800, 0x2FA1F),  # CJK Compatibility Ideographs Supplement
        (0x30000, 0x323AF),  # Extensions G-H
    ),
    "hiragana": (
        (0x3040, 0x309F),  # Hiragana
        (0x1B001, 0x1B11F),  # Kana Supplement and Extended-A: archaic hiragana, hentaigana
        (0x1B132, 0x1B132),  # small hiragana ko (Small Kana Extension)
        (0x1B150, 0x1B152),  # small hiragana wi/we/wo
    ),
    "katakana": (
        (0x30A0, 0x30FF),  # Katakana
        (0x31F0, 0x31FF),  # Katakana Phonetic Extensions
        (0xFF66, 0xFF9F),  # Halfwidth Katakana
        (0x1AFF0, 0x1AFFF),  # Kana Extended-B
        (0x1B000, 0x1B000),  # katakana archaic e (Kana Supplement)
        (0x1B120, 0x1B122),  # katakana archaic yi/ye/wu (Kana Extended-A)
        (0x1B155, 0x1B155),  # small katakana ko (Small Kana Extension)
        (0x1B164, 0x1B167),  # small katakana wi/we/wo/n
    ),
    "hangul": (
        (0x1100, 0x11FF),  # Hangul Jamo
        (0x3130, 0x318F),  # Hangul Compatibility Jamo
        (0xA960, 0xA97F),  # Hangul Jamo Extended-A
        (0xAC00, 0xD7AF),  # Hangul Syllables
        (0xD7B0, 0xD7FF),  # Hangul Jamo Extended-B
        (0xFFA0, 0xFFDC),  # Halfwidth Hangul
    ),
}
SCRIPTS: tuple[str, ...] = tuple(SCRIPT_RANGES)

_TABLE = sorted((lo, hi, name) for name, ranges in SCRIPT_RANGES.items() for lo, hi in ranges)
_STARTS = [lo for lo, _, _ in _TABLE]


def script_of(char: str) -> str | None:
    """The script name of one character (a key of :data:`SCRIPT_RANGES`), or ``None``."""
    code = ord(char)
    i = bisect.bisect_right(_STARTS, code) - 1
    if i >= 0 and code <= _TABLE[i][1]:
        return _TABLE[i][2]
    return None


def scripts_in(text: str) -> set[str]:
    """Every script of :data:`SCRIPT_RANGES` that occurs in ``text``."""
    return {s for s in map(script_of, set(text)) if s is not None}


def uses_script(text: str, scripts: Iterable[str]) -> bool:
    """Whether ``text`` holds a character of ``scripts``; unknown names raise ``ValueError``."""
    wanted = set(scripts)
    unknown = wanted - set(SCRIPT_RANGES)
    if unknown:
        raise ValueError(f"unknown script(s) {sorted(unknown)}; valid: {', '.join(SCRIPTS)}")
    return bool(scripts_in(text) & wanted)
