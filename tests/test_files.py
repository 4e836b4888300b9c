"""Atomic writes: umask-respecting modes without touching the umask, fsync before rename, cleanup."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest
import torch

from olmokit.errors import DataError
from olmokit.files import (
    atomic_directory,
    atomic_path,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    read_text,
)


@pytest.fixture
def no_umask_calls(monkeypatch):
    """os.umask changes process-wide state (racy across threads); the writers must never call it."""

    def forbidden(*args):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)


def test_modes_follow_the_umask_in_a_fresh_process(tmp_path):
    script = (
        "import os, sys\n"
        "os.umask(0o027)\n"
        "from olmokit.files import atomic_write_text, atomic_directory\n"
        "atomic_write_text(sys.argv[1] + '/f.txt', 'x')\n"
        "with atomic_directory(sys.argv[1] + '/d') as tmp:\n"
        "    (tmp / 'inside.txt').write_text('y')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_writers_never_touch_the_umask(tmp_path, no_umask_calls):
    mask = _current_umask_from_proc()
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"k": [1, 2]})
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "d" / "x").read_text() == "1"


def _current_umask_from_proc() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no /proc/self/status")


def test_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os,
        "replace",
        lambda a, b: (events.append(f"replace {os.path.basename(b)}"), real_replace(a, b))[1],
    )
    atomic_write_text(tmp_path / "out.txt", "x")
    assert events == ["fsync", "replace out.txt", "fsync"]  # file, rename, directory
    events.clear()
    with atomic_directory(tmp_path / "m") as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("2")
    assert events == ["fsync", "fsync", "fsync", "replace m", "fsync"]  # a, b, dir, rename, parent


def test_failed_writes_leave_nothing_behind(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("new")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "dir") as tmp:
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"


def test_json_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values"):
        atomic_write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_long_target_names_get_short_temporary_names(tmp_path):
    name = "n" * 240 + ".json"
    atomic_write_json(tmp_path / name, [1])
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_concurrent_writers_to_one_target_do_not_collide(tmp_path):
    target = tmp_path / "shared.txt"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                atomic_write_text(target, f"writer {i}\n")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in {f"writer {i}\n" for i in range(4)}
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_safetensors_round_trip(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    path = atomic_save_safetensors(tmp_path / "t.safetensors", {"w": base.t()}, {"k": "v"})
    torch.testing.assert_close(load_safetensors(path)["w"], base.t(), rtol=0, atol=0)


def test_read_text_names_file_line_and_column(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"ok\nab\x80c\n")
    with pytest.raises(DataError) as info:
        read_text(path, DataError)
    assert str(info.value) == f"{path}:2:3: not valid UTF-8 (byte 0x80); save the file as UTF-8"
    with pytest.raises(DataError, match=rf"{tmp_path}: cannot read: Is a directory"):
        read_text(tmp_path, DataError)
