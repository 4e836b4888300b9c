"""docs/config_keys.md is exactly what `olmokit config-keys` generates from the config types."""

from __future__ import annotations

from pathlib import Path

from olmokit.cli.config_keys import TOOLS, document
from olmokit.cli.main import main
from olmokit.config import config_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "config_keys.md"


def test_doc_is_regenerated_output():
    assert DOC.read_text(encoding="utf-8") == document(), (
        "docs/config_keys.md is stale: run `olmokit config-keys --write docs/config_keys.md`"
    )


def test_every_key_of_every_tool_is_in_the_doc():
    text = DOC.read_text(encoding="utf-8")
    for _title, cls, _cmd in TOOLS.values():
        for key, *_ in config_rows(cls):
            assert f"| `{key}` |" in text, key


def test_cli_prints_one_tool_and_refuses_unknown(capsys):
    assert main(["config-keys", "memory"]) == 0
    out = capsys.readouterr().out
    assert "`memory.segment_len`" in out and "`models`" not in out
    assert main(["config-keys", "nope"]) == 2
    assert "valid: jola, merge, memory, lens" in capsys.readouterr().err
