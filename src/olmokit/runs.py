"""Run directories: one directory per tool run, holding everything needed to trust, repeat and resume it.

Every tool (``jola``, ``lens``, ``merge``, ``memory``) writes its outputs through a :class:`RunDir`::

    runs/jola-tiny/
      config.yaml        the resolved config: every default filled in, so the run can be repeated exactly
      environment.json   olmokit/torch/transformers/python versions, device, seed, git commit, command line,
                         and one entry per start (the first one and every resume)
      checkpoints/       checkpoint-<step>/ directories (HF Trainer's layout), the newest complete one resumes
      ...                the tool's own outputs (JSON reports, PNGs, adapters), written atomically

Why a class rather than loose helpers: three rules must hold for every tool alike. Nothing already written is
overwritten unless the user says ``--overwrite``; ``--resume`` continues only a run made from the *same* config
(a different config would silently mix two experiments, so it is refused with the keys that differ); and every
JSON output is standard JSON (no ``NaN``/``Infinity``, which other JSON readers reject) written atomically, so a
killed run never leaves a half-written report.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import OlmokitConfig, read_yaml
from .errors import ReportError
from .files import atomic_write_json, atomic_write_text

__all__ = ["RunDir", "environment_record", "json_safe", "flatten_config", "config_differences"]

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
CHECKPOINTS_DIR = "checkpoints"
#: HF Trainer names its checkpoints ``checkpoint-<global step>``.
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: A Trainer checkpoint is complete once its ``trainer_state.json`` exists (Trainer writes it last).
_CHECKPOINT_DONE = "trainer_state.json"


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that standard JSON can hold: non-finite floats become ``None`` (JSON ``null``),
    tensors and numpy values become Python numbers/lists, paths and other objects become strings.

    Why ``null``: ``json.dumps`` would otherwise write ``NaN``/``Infinity``, which is not JSON and which
    strict readers (browsers, ``jq``, most languages) reject — the defect of the original olm.py report.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        return json_safe(tolist())
    return str(value)


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "jobs": [{"n": 2}]}`` -> ``{"a.b": 1, "jobs.0.n": 2}``, for comparing two
    configs key by key. Lists of sections (a lens config's jobs) are indexed so a difference names the
    one field that changed; lists of plain values stay one value."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, f"{dotted}."))
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, Mapping) for v in value)
        ):
            out.update(flatten_config({str(i): v for i, v in enumerate(value)}, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """Human-readable ``"key: saved X, now Y"`` lines for every dotted key that differs.

    A key in ``ignore`` matches itself and everything below it (``"training"`` ignores ``training.*``).
    """
    ignored = tuple(ignore)

    def skip(key: str) -> bool:
        return any(key == i or key.startswith(f"{i}.") for i in ignored)

    a, b = flatten_config(saved), flatten_config(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if skip(key):
            continue
        if key not in a:
            lines.append(f"{key}: not in the saved config, now {b[key]!r}")
        elif key not in b:
            lines.append(f"{key}: saved {a[key]!r}, not in the current config")
        elif a[key] != b[key]:
            lines.append(f"{key}: saved {a[key]!r}, now {b[key]!r}")
    return lines


def _git_commit() -> str | None:
    """The commit of the olmokit checkout this code runs from, when it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _device_record() -> dict[str, Any]:
    import torch

    record: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        record["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
        record["cuda_version"] = torch.version.cuda
    return record


def environment_record(seed: int | None = None) -> dict[str, Any]:
    """What a reader needs to know to reproduce a run: versions, device, seed, commit, command line."""
    import torch
    import transformers

    from . import __version__

    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "olmokit": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": _device_record(),
        "seed": seed,
        "git_commit": _git_commit(),
        "argv": list(sys.argv),
    }


class RunDir:
    """One run's directory. Make it with :meth:`create`; it refuses to clobber or to mix runs."""

    def __init__(self, path: str | os.PathLike[str], *, tool: str, resumed: bool = False):
        self.path = Path(path)
        self.tool = tool
        #: True when this run continues a previous one (``resume=True`` on an existing run directory)
        self.resumed = resumed

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, tool={self.tool!r}, resumed={self.resumed})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        config: OlmokitConfig,
        *,
        tool: str,
        resume: bool = False,
        overwrite: bool = False,
        seed: int | None = None,
        ignore_on_resume: Iterable[str] = (),
    ) -> RunDir:
        """Open the run directory for ``config``.

        * a new or empty directory: ``config.yaml`` and ``environment.json`` are written;
        * an existing run with ``resume=True``: its saved config must equal ``config`` (keys in
          ``ignore_on_resume`` excepted, e.g. an output path or a device), else :class:`ReportError`
          naming every differing key; the start is appended to ``environment.json``;
        * an existing non-empty directory otherwise: :class:`ReportError`, unless ``overwrite=True``,
          which removes its contents first.

        ``resume=True`` on a directory with no run in it simply starts the run (so the same command
        can be used to start a job and to restart it after it was killed).
        """
        if resume and overwrite:
            raise ReportError("--resume and --overwrite exclude each other: choose one")
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise ReportError(f"run directory {root} exists and is not a directory")
        occupied = root.is_dir() and any(root.iterdir())
        saved_config = root / CONFIG_FILE
        if occupied and resume:
            if not saved_config.is_file():
                raise ReportError(
                    f"cannot resume {root}: it has no {CONFIG_FILE}, so it is not an olmokit run "
                    "directory (or it was made by an older olmokit); use --overwrite or another directory"
                )
            saved = read_yaml(saved_config)
            diffs = config_differences(saved, config.as_dict(), ignore_on_resume)
            if diffs:
                raise ReportError(
                    f"cannot resume {root}: it was made with a different config "
                    f"({len(diffs)} {'keys differ' if len(diffs) != 1 else 'key differs'}: {'; '.join(diffs)}). "
                    "Resume with the saved config.yaml, or start a new run with --overwrite "
                    "or another output directory"
                )
            run = cls(root, tool=tool, resumed=True)
            run._record_start(seed)
            return run
        if occupied and not overwrite:
            raise ReportError(
                f"{root} already holds files; pass --resume to continue that run or --overwrite to "
                "replace it (or choose another output directory)"
            )
        if occupied:
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        run = cls(root, tool=tool, resumed=False)
        config.to_yaml(root / CONFIG_FILE)
        run._record_start(seed)
        return run

    @classmethod
    def create_on_main_process(
        cls,
        path: str | os.PathLike[str],
        config: OlmokitConfig,
        *,
        tool: str,
        resume: bool = False,
        overwrite: bool = False,
        seed: int | None = None,
        ignore_on_resume: Iterable[str] = (),
    ) -> RunDir:
        """:meth:`create` on rank 0 (or without a distributed launch); on the other ranks of an
        ``accelerate``/``torchrun`` launch, only a handle on the same directory.

        Ranks are read from the launcher's environment (``RANK``), because a tool opens its run
        directory before ``TrainingArguments`` sets up the process group. Other ranks must not write
        into the directory before rank 0 has created (or checked) it: they only read it, and Trainer
        writes their checkpoint files once the process group has formed.
        """
        if int(os.environ.get("RANK", "0")) == 0:
            return cls.create(
                path,
                config,
                tool=tool,
                resume=resume,
                overwrite=overwrite,
                seed=seed,
                ignore_on_resume=ignore_on_resume,
            )
        return cls(path, tool=tool, resumed=resume)

    def _record_start(self, seed: int | None) -> None:
        env_path = self.path / ENVIRONMENT_FILE
        starts: list[dict[str, Any]] = []
        if env_path.is_file():
            try:
                starts = list(json.loads(env_path.read_text(encoding="utf-8")).get("starts", []))
            except (json.JSONDecodeError, AttributeError, TypeError):
                starts = []  # a damaged record is replaced, never fatal
        record = environment_record(seed)
        record["resumed"] = self.resumed
        starts.append(record)
        self.write_json(ENVIRONMENT_FILE, {"tool": self.tool, "starts": starts, **record})

    # ------------------------------------------------------------------------------------ files
    def file(self, *parts: str) -> Path:
        """A path inside the run directory (its parent directories are created)."""
        p = self.path.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def exists(self, *parts: str) -> bool:
        return self.path.joinpath(*parts).exists()

    def write_json(self, name: str, data: Any) -> Path:
        """Write standard JSON atomically (temp file, fsync, rename); non-finite floats become null."""
        return atomic_write_json(self.file(name), json_safe(data))

    def read_json(self, name: str) -> Any:
        p = self.path / name
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReportError(f"{p} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{p}: not valid JSON ({exc})") from None

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.file(name), text)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    # ------------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: give it to HF ``Trainer`` as ``output_dir`` for ``checkpoint-<step>`` dirs."""
        p = self.path / CHECKPOINTS_DIR
        p.mkdir(parents=True, exist_ok=True)
        return p

    def last_checkpoint(self) -> Path | None:
        """The newest *complete* ``checkpoint-<step>`` directory, or ``None``.

        A checkpoint a kill interrupted (no ``trainer_state.json`` yet) is skipped, so resuming always
        starts from one that was fully written.
        """
        root = self.path / CHECKPOINTS_DIR
        if not root.is_dir():
            return None
        done = []
        for child in root.iterdir():
            m = _CHECKPOINT_RE.match(child.name)
            if m and child.is_dir() and (child / _CHECKPOINT_DONE).is_file():
                done.append((int(m.group(1)), child))
        return max(done)[1] if done else None
