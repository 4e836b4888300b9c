"""The ``olmokit`` command: help on every level, info, zoo list/generate, one-line errors."""

from __future__ import annotations

import json

import pytest

from olmokit.cli.main import COMMAND_MODULES, build_parser, main


def _subcommand_paths(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_help_on_every_level(capsys):
    paths = [()] + list(_subcommand_paths(build_parser()))
    assert ("zoo", "build") in paths and ("info",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        assert "usage: olmokit" in capsys.readouterr().out


def test_zoo_build_help_lists_the_config_keys(capsys):
    with pytest.raises(SystemExit):
        main(["zoo", "build", "--help"])
    out = capsys.readouterr().out
    assert "  steps (default 1000): optimizer steps\n" in out
    assert "  model_type (default 'olmo2'): olmo, olmo2 or olmo3\n" in out


def test_every_command_module_registers():
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


def test_bare_tool_prints_its_help(capsys):
    assert main(["zoo"]) == 1
    assert "list" in capsys.readouterr().out


def test_info_json(capsys):
    assert main(["info", "olmo3-tiny-random", "--json", "--units"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "OLMo-3" and info["sliding_layers"] == [0, 1, 2]
    assert info["kv_heads"] == 2 and "layers.3.attn.q_norm" in info["units"]


def test_info_table(capsys):
    assert main(["info", "olmo-tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "| family" in out and "OLMo v1" in out


def test_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["info", "no/such/model/anywhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("olmokit: error: 'no/such/model/anywhere' is neither an existing")
    assert err.count("\n") == 1 and "zoo models: olmo2-stdlib" in err


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "olmo2-stdlib (default)" in out and "olmo3-tiny-random" in out


def test_zoo_generate_greedy_is_deterministic(capsys):
    args = [
        "zoo",
        "generate",
        "--model",
        "olmo2-tiny-random",
        "--prompt",
        "def ",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("def ")


def test_zoo_generate_refuses_an_empty_prompt_before_loading(capsys, monkeypatch):
    import olmokit.loading

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded for an empty prompt")

    monkeypatch.setattr(olmokit.loading, "load_model", no_load)
    assert main(["zoo", "generate", "--model", "olmo2-tiny-random", "--prompt", ""]) == 2
    assert capsys.readouterr().err == (
        "olmokit: error: --prompt is empty; give the text the model should read\n"
    )


def test_require_prompt_keeps_whitespace():
    from olmokit.cli.common import require_prompt
    from olmokit.errors import ConfigError

    assert require_prompt("\n    ") == "\n    "  # an indent is a meaningful start for code
    with pytest.raises(ConfigError, match="--text is empty"):
        require_prompt("", option="--text")
    with pytest.raises(ConfigError, match="--prompt is empty"):
        require_prompt(None)


def test_console_script_is_installed():
    import shutil
    import subprocess

    exe = shutil.which("olmokit")
    assert exe, "pip install -e . should install the olmokit console script"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("olmokit ")
