"""Atomic file writing, and reading text files with errors that name the file.

A killed run never leaves a half-written report, config or tensor file: everything is written to a
temporary file in the destination directory, flushed to disk (``fsync``) and then renamed over the target
(``os.replace`` is atomic on POSIX and Windows when both paths are on one filesystem); the directory is
synced too, so the rename itself survives a power cut.

Temporary files and directories are created with mode ``0o666`` / ``0o777`` and the kernel applies the
process umask, so outputs get the permissions a plain ``open()`` would give them without ever calling
``os.umask`` (which changes process-wide state and is not thread-safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import OlmokitError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_safetensors",
    "atomic_directory",
    "load_safetensors",
    "read_text",
]

#: Characters of the target's name kept in a temporary name (keeps it under NAME_MAX).
_TMP_NAME_CHARS = 100


def _tmp_name(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name[:_TMP_NAME_CHARS]}.{os.urandom(4).hex()}{suffix}")


def _fsync_path(path: Path) -> None:
    """Flush a file's data to disk (opened read-write: Windows refuses to fsync a read-only handle)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename into it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # Windows
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync directories
    finally:
        os.close(fd)


def _create_tmp_file(target: Path) -> Path:
    while True:
        tmp = _tmp_name(target, ".tmp")
        try:
            # 0o666 & ~umask, applied by the kernel: the mode a plain open() would give.
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success sync and rename it onto ``path``, else
    delete it. The caller writes the temporary path by name (any library's ``save(path)`` works)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_tmp_file(target)
    try:
        yield tmp_path
        _fsync_path(tmp_path)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_text(path: str | os.PathLike[str], error: type[OlmokitError] = OlmokitError) -> str:
    """Read a UTF-8 text file; a missing, unreadable or non-UTF-8 file raises ``error`` naming the file
    (and, for bad bytes, the line and column), never a raw ``UnicodeDecodeError``/``OSError``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{p}:{line}:{column}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write strict JSON (no NaN/Infinity: those raise) with sorted keys and indent 2, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors with ``safetensors`` atomically (tensors are made contiguous and detached first)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def load_safetensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file (never pickle)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` (old contents are removed).

    Used for model directories written by ``save_pretrained`` so a crash never leaves a directory
    with a config but missing weights.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _tmp_name(target, ".tmp")
        try:
            os.mkdir(tmp, 0o777)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        for child in sorted(tmp.rglob("*")):
            if child.is_file() and not child.is_symlink():
                _fsync_path(child)
        _fsync_dir(tmp)
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
