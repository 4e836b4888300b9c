"""The model pool: where each donor's files are, what tensors they hold, and lazy reads of them.

The original (jeffmeloy/olm) called ``from_pretrained`` on a whole donor for every candidate, so a
step over N donors read N whole models. Here a donor is only its safetensors *headers* (a
:class:`TensorIndex`, read once) and a :class:`LazyDonor` that memory-maps a shard and reads just the
tensors asked for (``safetensors.safe_open``). The pool never materialises a donor: peak memory is
the one working model plus the unit being tried, whatever the pool size. Handles are closed again
once a donor is no longer the one being read (:class:`Pool` keeps at most ``max_open`` donors'
shards mapped), so mapped pages of earlier donors do not accumulate either.

Names resolve like everywhere in olmokit: a local directory; a zoo name (``olmo2-stdlib`` or
``zoo:olmo2-stdlib``: shipped models are used in place, random-init ones are materialised once into
the run's cache directory); or a hub id, fetched through the normal Hugging Face cache
(``huggingface_hub.snapshot_download``; offline or not cached is a :class:`CheckpointError` saying so).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from ..family import FamilyAdapter, get_adapter
from ..files import read_text
from ..loading import (
    is_hub_id,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    save_model,
)
from ..zoo.presets import random_model
from ..zoo.registry import ZOO, is_zoo_name, shipped_path, zoo_entry

__all__ = [
    "LazyDonor",
    "Pool",
    "PoolMember",
    "TensorIndex",
    "TensorInfo",
    "check_pool_names",
    "load_working_model",
    "resolve_model_dir",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

#: Keys a checkpoint may hold that are not weights (old checkpoints saved rotary caches).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

#: A header longer than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000

#: Patterns fetched for a hub model: config, weights, tokenizer; never pickles.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


# ---------------------------------------------------------------------------- resolution
def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


def _random_variant(name: str) -> tuple[str, int | None] | None:
    """``("olmo2-tiny-random", 3)`` for ``olmo2-tiny-random@3`` (a seed variant of a random zoo
    model), ``(name, None)`` for a plain zoo name, ``None`` otherwise."""
    base, sep, seed = name.removeprefix("zoo:").partition("@")
    if not is_zoo_name(base):
        return None
    if not sep:
        return base, None
    if zoo_entry(base).kind != "random" or not seed.isdigit():
        raise CheckpointError(
            f"pool model {name!r}: '@<seed>' variants exist only for random zoo models "
            f"({', '.join(n for n, e in ZOO.items() if e.kind == 'random')}), e.g. "
            "olmo2-tiny-random@1"
        )
    return base, int(seed)


def _materialise_random(name: str, seed: int | None, cache_dir: Path) -> Path:
    """Write a random-init zoo model (and the zoo tokenizer) to ``cache_dir/<name>[@seed]`` once,
    so it can be read lazily like any other pool member; later calls reuse the directory.
    Without a seed it is exactly ``load_model(name)``; ``@seed`` re-initialises with that seed."""

    entry = zoo_entry(name)
    out = cache_dir / (entry.name if seed is None else f"{entry.name}@{seed}")
    if (out / "config.json").is_file() and (out / SINGLE_FILE).is_file():
        return out
    if seed is None:
        model = load_model(entry.name, dtype="float32", device="cpu")
    else:
        model = random_model(entry.model_type, entry.size, seed=seed)
    save_model(model, out, load_tokenizer(entry.name))
    return out


def _snapshot(name: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = _hub_offline()
    try:
        return Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS, local_files_only=offline))
    except LocalEntryNotFoundError:
        why = (
            "this machine is offline (HF_HUB_OFFLINE is set)"
            if offline
            else "the hub could not be reached (is this machine offline?)"
        )
        raise CheckpointError(
            f"pool model {name!r}: not in the local Hugging Face cache and {why}; download it "
            f"on a connected machine, or pass a local directory or a zoo model ({', '.join(ZOO)})"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise CheckpointError(
            f"pool model {name!r}: {exc.__class__.__name__} (no such repository, or no access)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"pool model {name!r}: download failed: {exc.__class__.__name__}: {first[:200]}"
        ) from None


def resolve_model_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``name``'s config and safetensors.

    Order: an existing local directory; a zoo name (shipped: its package directory; random: written
    once to ``cache_dir/<name>``, so ``cache_dir`` is required for those; ``olmo2-tiny-random@3`` is
    the same architecture initialised with seed 3, for pools of distinct random models); a hub id
    (the HF cache).
    """
    path = Path(name).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError):  # a name too long for the filesystem, an embedded NUL
        is_dir = exists = False
    if is_dir:
        return path
    if exists:
        raise CheckpointError(f"pool model {name!r} is a file; pass the model's directory")
    variant = _random_variant(name)
    if variant is not None or name.startswith("zoo:"):
        base, seed = variant if variant is not None else (name, None)
        entry = zoo_entry(base)  # "zoo:nope" -> "no zoo model ...; available: ..."
        if entry.kind == "shipped":
            return shipped_path(entry.name)
        if cache_dir is None:
            raise CheckpointError(
                f"pool model {name!r} is built on demand; pass a cache directory to write it to"
            )
        return _materialise_random(entry.name, seed, Path(cache_dir))
    if is_hub_id(name) and "/" in name:  # a pool names hub models in full ('namespace/name')
        return _snapshot(name)
    raise CheckpointError(
        f"pool model {name!r} is neither a directory, a zoo model ({', '.join(ZOO)}) nor a hub id "
        "('namespace/name')"
    )


def check_pool_names(names: Iterable[str]) -> None:
    """Resolve every pool name that needs no run directory (local directories, shipped zoo models,
    hub ids through the Hugging Face cache) and check random zoo names by name only (they are
    written into the run's cache later): a typo is a :class:`CheckpointError` *before* the run
    directory is created, so it leaves nothing behind to ``--overwrite``."""
    for name in names:
        path = Path(name).expanduser()
        try:
            if path.is_dir():
                continue
        except (OSError, ValueError):
            pass
        variant = _random_variant(name)  # a bad '@seed' raises here
        if variant is not None and zoo_entry(variant[0]).kind == "random":
            continue
        resolve_model_dir(name)


# ---------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: the shard file (name inside the model directory), shape and dtype
    (the safetensors dtype string, e.g. ``BF16``)."""

    file: str
    shape: tuple[int, ...]
    dtype: str


def _read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """The parsed safetensors header of ``path`` and its raw bytes (without reading any tensor)."""
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors file (header of {n} bytes)")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise CheckpointError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not an object)")
    return header, raw


@dataclass
class TensorIndex:
    """Every tensor of a model directory: ``key -> TensorInfo``, from the safetensors headers only."""

    path: Path
    tensors: dict[str, TensorInfo]
    files: tuple[str, ...]

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> TensorIndex:
        """Index ``model.safetensors`` or the shards listed in ``model.safetensors.index.json``."""
        root = Path(path)
        if (root / INDEX_FILE).is_file():
            text = read_text(root / INDEX_FILE, CheckpointError)
            try:
                weight_map = json.loads(text)["weight_map"]
            except (ValueError, KeyError, TypeError, RecursionError):
                raise CheckpointError(
                    f"{root / INDEX_FILE}: not a safetensors index (no 'weight_map')"
                ) from None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{root / INDEX_FILE}: 'weight_map' must be an object")
            files = tuple(sorted(set(map(str, weight_map.values()))))
        elif (root / SINGLE_FILE).is_file():
            files = (SINGLE_FILE,)
        else:
            bins = sorted(p.name for p in root.glob("*.bin"))
            extra = f" (it has {', '.join(bins[:3])}: convert to safetensors)" if bins else ""
            raise CheckpointError(f"{root}: no {SINGLE_FILE} or {INDEX_FILE}{extra}")
        tensors: dict[str, TensorInfo] = {}
        for name in files:
            shard = root / name
            if not shard.is_file():
                raise CheckpointError(f"{shard}: listed in {INDEX_FILE} but missing")
            header, _ = _read_header(shard)
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                try:
                    tensors[key] = TensorInfo(
                        name, tuple(int(d) for d in info["shape"]), str(info["dtype"])
                    )
                except (KeyError, TypeError, ValueError):
                    raise CheckpointError(f"{shard}: corrupt header entry for {key!r}") from None
        return cls(root, tensors, files)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def fingerprint(self) -> str:
        """A short hash that changes when the model's files do: every shard's header and size plus
        16 sampled 4 KiB blocks of its tensor data (fine-tuning changes essentially every block), at
        a cost independent of the model's size. Used to notice a pool that changed since a report
        was written; the directory's location does not enter it."""
        h = hashlib.sha256()
        for name in self.files:
            shard = self.path / name
            _, raw = _read_header(shard)
            size = shard.stat().st_size
            h.update(name.encode() + b"\0" + raw + str(size).encode())
            start = 8 + len(raw)
            span = max(size - start, 0)
            with open(shard, "rb") as fh:
                for k in range(16):
                    fh.seek(start + span * k // 16)
                    h.update(fh.read(4096))
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- lazy reads
def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a name ("bf16", "float32", ...) with loading's one table of names."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = resolve_dtype(dtype)
    if not isinstance(resolved, torch.dtype):  # "auto" means nothing for one tensor
        raise CheckpointError(f"dtype {dtype!r} cannot be applied to a single tensor")
    return resolved


class LazyDonor:
    """Reads single tensors of one model directory through memory-mapped ``safe_open`` handles.

    At most one handle per shard is open, opened on first use; :meth:`close` drops them (unmapping
    the files). Nothing here ever loads a whole file.
    """

    def __init__(self, path: str | os.PathLike[str], index: TensorIndex | None = None):
        self.path = Path(path)
        self.index = index if index is not None else TensorIndex.from_dir(self.path)
        self._handles: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return self.index.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.index.tensors

    @property
    def is_open(self) -> bool:
        return bool(self._handles)

    def _handle(self, file: str) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            try:
                handle = safe_open(str(self.path / file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise CheckpointError(f"{self.path / file}: cannot open: {exc}") from None
            self._handles[file] = handle
        return handle

    def get(
        self, key: str, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
    ) -> torch.Tensor:
        """The tensor ``key``, read alone from its shard, on ``device`` in ``dtype`` (default: as
        stored). The result owns its memory: ``get_tensor`` returns a view of the mapping, whose
        writes later reads would see, so it is always copied."""
        info = self.index.tensors.get(key)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        try:
            tensor = self._handle(info.file).get_tensor(key)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{self.path / info.file}: cannot read {key!r}: {exc}") from None
        return tensor.to(device=device, dtype=_as_dtype(dtype) or tensor.dtype, copy=True)

    @torch.no_grad()
    def copy_into(self, key: str, dest: torch.Tensor) -> None:
        """Copy the stored tensor ``key`` into ``dest`` in place, cast by ``copy_`` itself: one
        copy from the mapped file, where :meth:`get` then ``copy_`` makes two (and allocates)."""
        info = self.index.tensors.get(key)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        if info.shape != tuple(dest.shape):
            raise CheckpointError(
                f"{self.path}: tensor {key!r} has shape {list(info.shape)}, the model "
                f"{list(dest.shape)}"
            )
        try:
            view = self._handle(info.file).get_tensor(key)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{self.path / info.file}: cannot read {key!r}: {exc}") from None
        dest.copy_(view)

    def close(self) -> None:
        if self._handles:
            self._handles.clear()


# ---------------------------------------------------------------------------- the pool
def _resolve_all(names: list[str], cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    """:func:`resolve_model_dir` for every name. Under an initialised multi-process group the
    first process resolves first (writing random zoo models, downloading hub models) while the
    others wait, then they find everything in place: processes never write one directory at once."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [resolve_model_dir(n, cache_dir) for n in names]
    if dist.get_rank() == 0:
        paths = [resolve_model_dir(n, cache_dir) for n in names]
    dist.barrier()
    if dist.get_rank() != 0:
        paths = [resolve_model_dir(n, cache_dir) for n in names]
    return paths


@dataclass
class PoolMember:
    """One pool model: the name as configured, its directory, its tensor index and lazy reader."""

    name: str
    path: Path
    index: TensorIndex
    donor: LazyDonor = field(repr=False)

    @property
    def model_type(self) -> str | None:
        """``model_type`` of its ``config.json`` (``None`` when absent or unreadable)."""
        try:
            data = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = data.get("model_type") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    def fingerprint(self) -> str:
        return self.index.fingerprint()


class Pool:
    """The pool's members in configured order, with architecture checks and lazy unit reads.

    ``cache_dir`` receives random-init zoo models (pass ``<run>/pool_cache``). ``max_open`` bounds
    how many members keep their shards mapped at once (the least recently read are closed). The
    default 0 closes a donor's mapping right after each unit is read: the pages of a mapped file
    stay resident (and count in RSS) while it is open, so keeping even one donor open let a whole
    donor's pages accumulate over a layer-by-layer search (measured: 1.64x one model's bytes at a
    pool of 2 with ``max_open=1``). Reopening costs one header read per unit.
    """

    def __init__(
        self,
        names: Iterable[str],
        cache_dir: str | os.PathLike[str] | None = None,
        max_open: int = 0,
    ):
        names = list(names)
        self.members: list[PoolMember] = []
        for name, path in zip(names, _resolve_all(names, cache_dir)):
            index = TensorIndex.from_dir(path)
            self.members.append(PoolMember(name, path, index, LazyDonor(path, index)))
        if not self.members:
            raise CheckpointError("the model pool is empty")
        self.max_open = max(0, int(max_open))
        self._open: OrderedDict[str, LazyDonor] = OrderedDict()
        self._aliases: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> PoolMember:
        for m in self.members:
            if m.name == name:
                return m
        raise CheckpointError(f"{name!r} is not in the pool; pool: {', '.join(self.names)}")

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def check_architecture(self, base_adapter: Any) -> None:
        """Refuse a pool whose members differ from the working model in family or tensors.

        ``base_adapter`` is the family adapter of the loaded working model. Every member's
        ``config.json`` ``model_type`` must equal the model's, and its files must hold exactly the
        model's stored tensors (``state_dict`` keys, less a tied ``lm_head``, which checkpoints omit)
        with the same shapes. The first mismatch is a :class:`CheckpointError` naming the pool model
        and the tensor.
        """
        model = getattr(base_adapter, "model", None)
        if model is None:
            raise CheckpointError("check_architecture needs the adapter of a loaded model")
        family = base_adapter.model_type
        state = model.state_dict()
        units = base_adapter.units(state)
        by_role = {u.role: u for u in units}
        tied_keys: dict[str, str] = {}
        for u in units:
            if u.tied_to is not None and u.tied_to in by_role:
                for key, target in zip(u.keys, by_role[u.tied_to].keys):
                    tied_keys[key] = target
        expected = {k: tuple(v.shape) for k, v in state.items() if k not in tied_keys}
        for m in self.members:
            if m.model_type != family:
                raise CheckpointError(
                    f"pool model {m.name!r} ({m.path}) is model_type {m.model_type!r}; the base "
                    f"is {family!r}: every pool model must be of one family"
                )
            have = m.index.tensors
            for key, shape in expected.items():
                if key not in have:
                    raise CheckpointError(f"pool model {m.name!r}: tensor {key!r} is missing")
                if have[key].shape != shape:
                    raise CheckpointError(
                        f"pool model {m.name!r}: tensor {key!r} has shape {list(have[key].shape)}, "
                        f"the base model {list(shape)}"
                    )
            for key in have:
                if key in expected or key.endswith(_IGNORED_SUFFIXES):
                    continue
                if key in tied_keys:
                    if have[key].shape != tuple(state[key].shape):
                        raise CheckpointError(
                            f"pool model {m.name!r}: tensor {key!r} has shape "
                            f"{list(have[key].shape)}, the base model {list(state[key].shape)}"
                        )
                    continue
                raise CheckpointError(
                    f"pool model {m.name!r}: tensor {key!r} is not in the base model"
                )
        self._aliases = tied_keys

    def _donor(self, member: PoolMember) -> LazyDonor:
        if self.max_open == 0:  # opened on demand; unit_tensors closes it after the read
            return member.donor
        self._open[member.name] = member.donor
        self._open.move_to_end(member.name)
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return member.donor

    def unit_tensors(
        self,
        member: PoolMember | str,
        unit: Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """The tensors of ``unit`` (a :class:`~olmokit.family.ParameterUnit`) as ``member`` stores
        them, ``{state_dict key: tensor}``, read lazily. A tied ``lm_head`` absent from the files
        reads the embedding it is tied to (after :meth:`check_architecture`)."""
        m = self.member(member) if isinstance(member, str) else member
        donor = self._donor(m)
        out = {}
        try:
            for key in unit.keys:
                source = key if key in donor else self._aliases.get(key, key)
                out[key] = donor.get(source, device=device, dtype=dtype)
        finally:
            if self.max_open == 0:
                donor.close()
        return out

    def copy_units(
        self, member: PoolMember | str, units: Iterable[Any], live: Mapping[str, torch.Tensor]
    ) -> None:
        """Copy ``member``'s tensors of every unit in ``units`` into ``live`` (``{state_dict key:
        model tensor}``) in place, cast on the way in. The member's shard is opened once for all
        the units (not once per unit: opening parses the header, about 1 ms on a 162M model) and,
        unless kept open (``max_open``), unmapped once afterwards. A key the
        member lacks is a :class:`CheckpointError` before anything is written."""
        m = self.member(member) if isinstance(member, str) else member
        units = list(units)
        keys = [key for u in units for key in u.keys]
        donor = self._donor(m)
        sources = {key: key if key in donor else self._aliases.get(key, key) for key in keys}
        absent = [key for key, src in sources.items() if src not in donor]
        if absent:
            raise CheckpointError(f"{m.name}: no tensor {absent[0]!r}")
        try:
            for key, src in sources.items():
                donor.copy_into(src, live[key])
        finally:
            if self.max_open == 0:
                donor.close()

    def fingerprints(self) -> dict[str, str]:
        """``{name: fingerprint}`` of every member (see :meth:`TensorIndex.fingerprint`)."""
        return {m.name: m.fingerprint() for m in self.members}

    def close(self) -> None:
        for donor in self._open.values():
            donor.close()
        self._open.clear()


# ---------------------------------------------------------------------------- the working model
def load_working_model(
    path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = "float32",
    device: str | torch.device | None = "cpu",
    index: TensorIndex | None = None,
) -> torch.nn.Module:
    """The model of directory ``path`` in eval mode, equal bit for bit to
    ``olmokit.loading.load_model(path, dtype=dtype, device=device)`` but filled one tensor at a time.

    Why not ``from_pretrained``: it keeps the checkpoint file mapped while it fills the model, so a
    bf16 checkpoint loaded as fp32 briefly holds the whole file's pages *and* the model (1.5x one
    model's bytes, the merge's peak). Here the model is built from its config with weight
    initialisation skipped (``transformers.initialization.no_init_weights``: parameters are
    allocated, not written, so their pages are not resident yet; buffers such as the rotary
    ``inv_freq`` are computed by the modules' own ``__init__`` as usual), then every stored tensor is
    read alone through :class:`LazyDonor` and copied in, the file being unmapped after each one. The
    peak is the model plus one tensor. A tied ``lm_head`` is re-tied to the embedding (checkpoints
    omit it); a tensor the model needs that the files lack, or a stored decoder tensor the model has
    no place for, is a :class:`CheckpointError` (``load_model``'s rule).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    root = Path(path)
    torch_dtype = _as_dtype(dtype) or torch.float32
    try:
        config = AutoConfig.from_pretrained(root)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root / 'config.json'}: cannot load: {exc}") from None
    FamilyAdapter.for_config(config)  # family + transformers-version gate, as load_model
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.tie_weights()
    target = resolve_device(device)
    if target is not None and torch.device(target) != torch.device("cpu"):
        model = model.to(target)
    donor = LazyDonor(root, index)
    state = model.state_dict(keep_vars=True)
    tied = _tied_keys(model, state)
    stored = set(donor.keys())
    missing = [k for k in state if k not in stored and k not in tied]
    if missing:
        raise CheckpointError(
            f"{root}: {len(missing)} tensors are missing from the checkpoint: {missing[:8]}"
        )
    unused = [
        k
        for k in stored
        if k not in state and k.startswith(("model.", "lm_head.")) and not k.endswith("inv_freq")
    ]
    if unused:
        raise CheckpointError(
            f"{root}: {len(unused)} tensors of the checkpoint have no place in the model its "
            f"config.json describes (num_hidden_layers?): {unused[:8]}"
        )
    with torch.no_grad():
        try:
            for key, live in state.items():
                if key in tied and key not in stored:
                    continue  # the same tensor as the embedding, written through it
                info = donor.index.tensors[key]
                if info.shape != tuple(live.shape):
                    raise CheckpointError(
                        f"{root}: tensor {key!r} has shape {list(info.shape)}, its config.json "
                        f"describes {list(live.shape)}"
                    )
                live.copy_(donor.get(key, device=live.device))
                donor.close()  # unmap: the pages read so far leave RSS
        finally:
            donor.close()
    get_adapter(model)
    return model.eval()


def _tied_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """State-dict keys whose tensor is another key's (a tied ``lm_head``): written once, through
    the first key that names it."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in state.items():
        ident = id(tensor)
        if ident in seen:
            tied.add(key)
        else:
            seen[ident] = key
    return tied
