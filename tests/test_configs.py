"""Every YAML under configs/ validates against its tool's config class (keys map one to one)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from olmokit.config import read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: configs/<tool>/ -> the config class its files must validate against
CONFIG_CLASSES = {
    "zoo": "olmokit.zoo.build.config:ZooBuildConfig",
    "jola": "olmokit.jola.config:JoLAConfig",
    "lens": "olmokit.lens.config:LensConfig",
    "merge": "olmokit.merge.config:MergeConfig",
    "memory": "olmokit.memory.config:MemoryConfig",
}


#: configs/quickstart/<tool>[-fast].yaml: one config per quickstart step, validated as that tool's
QUICKSTART_DIR = "quickstart"


def _config_class(tool: str):
    module, _, name = CONFIG_CLASSES[tool].partition(":")
    return getattr(importlib.import_module(module), name)


def _class_of(path: Path):
    tool = path.parent.name
    if tool == QUICKSTART_DIR:
        tool = path.stem.removesuffix("-fast")
    return _config_class(tool)


def test_every_config_directory_has_a_class():
    tools = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} - {QUICKSTART_DIR}
    assert tools <= set(CONFIG_CLASSES), (
        f"no config class registered for {tools - set(CONFIG_CLASSES)}"
    )


@pytest.mark.parametrize(
    "path", sorted(CONFIG_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_config_file_validates(path):
    cfg = _class_of(path).from_yaml(path)
    dumped = cfg.as_dict()
    _assert_subset(read_yaml(path), dumped, str(path))  # every value in the file is what is used
    assert type(cfg).from_dict(dumped) == cfg  # and the dump (a run's config.yaml) reloads equal


def _assert_subset(written, used, where):
    if isinstance(written, dict):
        for key, value in written.items():
            _assert_subset(value, used[key], f"{where}:{key}")
    elif isinstance(written, list):
        assert len(written) == len(used), where
        for i, (w, u) in enumerate(zip(written, used)):
            _assert_subset(w, u, f"{where}[{i}]")
    else:
        assert written == used, where
