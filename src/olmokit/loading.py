"""Loading and saving OLMo models and tokenizers through ``transformers``.

``name_or_path`` may be a local directory, a Hugging Face hub id (``allenai/OLMo-2-0425-1B``), or a zoo
name (``olmo2-stdlib``, ``olmo3-tiny-random``; ``zoo:`` prefix optional). ``None`` means the shipped
default. The family is checked from the config *before* any weights are read, and a checkpoint that
leaves tensors newly initialised is refused. ``trust_remote_code`` stays off unless asked for.

A name is resolved once, in that order: an existing directory wins; then a zoo name; then a valid hub
id. Anything else (``./missing/dir``, ``/abs/missing``, ``a/b/c``, ``zoo:nope``, a 5,000-character
string) is refused with one message listing the zoo models, before ``transformers`` or the hub sees it.
A local ``config.json`` that is not UTF-8, not JSON, not an object or has mistyped fields is a
:class:`~olmokit.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, FamilyError
from .family import FamilyAdapter, get_adapter
from .files import atomic_directory, read_text
from .zoo.presets import random_model
from .zoo.registry import DEFAULT_MODEL, ZOO, ZooEntry, is_zoo_name, shipped_path, zoo_entry

__all__ = [
    "is_hub_id",
    "load_model",
    "load_tokenizer",
    "load_model_and_tokenizer",
    "save_model",
    "resolve_dtype",
    "resolve_device",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> str | torch.device | None:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; a CUDA device on a machine
    without one is a :class:`ConfigError` (rather than torch's error deep inside ``.to()``)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available; use device: cpu or auto"
        )
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """Accept a torch dtype, a name ("bf16", "float32", ...) or "auto"."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _offline_hint(name: str, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not load {name!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
        "If this machine has no network access, pass a local directory (one written by save_pretrained) "
        f"or a zoo model: {', '.join(ZOO)}"
    )


def _config_errors() -> tuple[type[BaseException], ...]:
    """What ``from_pretrained`` raises when a config's *content* is wrong (a string where an int
    belongs, a number where a list does), besides the usual ``OSError``/``ValueError``."""
    from huggingface_hub.errors import StrictDataclassError

    return (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
        StrictDataclassError,
    )


@dataclass(frozen=True)
class _Source:
    """A resolved model name: what ``from_pretrained`` reads, and the zoo entry if it is one."""

    name: str  #: as the user gave it
    location: str  #: a directory or a hub id
    local: bool
    entry: ZooEntry | None = None


def _is_dir(name: str) -> bool:
    try:
        return Path(name).is_dir()
    except (OSError, ValueError):  # a name too long for the filesystem, an embedded NUL
        return False


def _exists(name: str) -> bool:
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def is_hub_id(name: str) -> bool:
    """A syntactically valid hub repo id that does not read as a filesystem path (``gpt2`` and
    ``allenai/OLMo-2-0425-1B``; not ``./x``, ``/x``, ``~/x``). Shared by every place that resolves
    a model name, so a name means the same thing to ``load_model`` and to a merge pool."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", "./", "../", "~", "\\")) or name in (".", ".."):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _unresolvable(name: str) -> CheckpointError:
    shown = name if len(name) <= 120 else name[:117] + "..."
    return CheckpointError(
        f"{shown!r} is neither an existing model directory, a zoo model nor a valid Hugging Face hub "
        f"id ('namespace/name'); zoo models: {', '.join(ZOO)}"
    )


def _resolve(name: str) -> _Source:
    """Decide once what ``name`` is (see the module docstring for the order)."""
    if _is_dir(name):
        return _Source(name, name, local=True)
    if _exists(name):
        raise CheckpointError(f"{name}: is a file; pass the model's directory (with config.json)")
    if name.startswith("zoo:") or is_zoo_name(name):
        entry = zoo_entry(name)  # "zoo:nope" -> "no zoo model ...; available: ..."
        if entry.kind == "shipped":
            return _Source(name, str(shipped_path(entry.name)), local=True, entry=entry)
        return _Source(name, name, local=False, entry=entry)
    if is_hub_id(name):
        return _Source(name, name, local=False)
    raise _unresolvable(name)


def _check_local_config(directory: str) -> None:
    """Validate a local ``config.json`` enough that ``transformers`` gets an object with a string
    ``model_type`` (on anything else it raises raw ``TypeError`` exceptions)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{directory}: no config.json; pass a directory written by save_pretrained"
        )
    text = read_text(path, CheckpointError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # over-long integers, absurd nesting
        raise CheckpointError(f"{path}: invalid JSON: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("model_type"), str):
        raise CheckpointError(
            f"{path}: 'model_type' must be a string such as 'olmo2', got {data.get('model_type')!r:.60}"
        )


def _load_error(source: _Source, exc: BaseException, file: str = "") -> CheckpointError:
    """A user's local directory is named (with ``file`` inside it when that is what failed); zoo
    models and hub ids get the offline hint."""
    if source.local and source.entry is None:
        first = str(exc).splitlines()[0] if str(exc) else ""
        where = Path(source.location) / file if file else Path(source.location)
        return CheckpointError(f"{where}: cannot load: {exc.__class__.__name__}: {first[:300]}")
    return _offline_hint(source.name, exc)


#: Checkpoint tensors that must all be used: the decoder's. Rotary ``inv_freq`` buffers (saved by old
#: checkpoints, recomputed by transformers) and keys outside the decoder stay allowed.
_DECODER_PREFIXES = ("model.", "lm_head.")


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = "cpu",
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_missing: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Load an OLMo v1/2/3 causal LM, checked against the supported families, in eval mode.

    A checkpoint that would leave tensors randomly initialised, or whose decoder tensors the model
    would not use, is refused unless ``allow_missing`` (for deliberately partial checkpoints).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    source = _resolve(name)
    entry = source.entry
    if entry is not None and entry.kind == "random":
        model = random_model(
            entry.model_type,
            entry.size,
            seed=entry.seed,
            dtype=torch.float32 if torch_dtype == "auto" else torch_dtype,
            attn_implementation=attn_implementation,
        )
        model.name_or_path = f"zoo:{entry.name}"
        model.config._name_or_path = f"zoo:{entry.name}"
        return model.to(device) if device is not None else model

    if source.local:
        _check_local_config(source.location)
    try:
        config = AutoConfig.from_pretrained(
            source.location, revision=revision, trust_remote_code=trust_remote_code
        )
    except _config_errors() as exc:
        raise _load_error(source, exc, "config.json") from exc
    try:  # family + transformers-version gate before reading weights
        FamilyAdapter.for_config(config)
    except FamilyError as exc:
        raise FamilyError(f"{name}: {exc}") from None
    load_kwargs: dict[str, Any] = dict(
        config=config,
        revision=revision,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    load_kwargs.update(kwargs)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source.location, **load_kwargs)
    except OSError as exc:
        raise _load_error(source, exc) from exc
    except RuntimeError as exc:
        if "mismatched" not in str(exc):
            raise
        # transformers refuses tensors whose shapes differ from what config.json describes
        raise CheckpointError(
            f"{name}: the weights do not match its config.json (tensor shapes differ: hidden, "
            "intermediate or vocabulary size?)"
        ) from exc
    missing = list(info.get("missing_keys", []))
    if missing and not allow_missing:
        raise CheckpointError(
            f"{name}: {len(missing)} tensors are missing from the checkpoint and would be randomly "
            f"initialised: {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    unused = [
        k
        for k in info.get("unexpected_keys", [])
        if k.startswith(_DECODER_PREFIXES) and not k.endswith("inv_freq")
    ]
    if unused and not allow_missing:
        # e.g. config.json says fewer layers than the weights hold: the model would silently lose them
        raise CheckpointError(
            f"{name}: {len(unused)} tensors of the checkpoint have no place in the model its "
            f"config.json describes (num_hidden_layers?): {unused[:8]}{' ...' if len(unused) > 8 else ''}"
        )
    get_adapter(model)
    if entry is not None:
        model.name_or_path = f"zoo:{entry.name}"
    if device is not None:
        model = model.to(device)
    return model.eval()


#: Files one of which a local tokenizer directory must hold.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """Load the tokenizer of a model (zoo random models share the shipped zoo tokenizer).

    A pad token is guaranteed: OLMo tokenizers without one reuse EOS, never adding a token (adding one
    would resize the embeddings and complicate merged exports).
    """
    from transformers import AutoTokenizer

    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    source = _resolve(name)
    if source.entry is not None and source.entry.kind == "random":
        # random zoo models share the default's tokenizer
        source = _Source(name, str(shipped_path(DEFAULT_MODEL)), local=True, entry=source.entry)
    if source.local:
        _check_local_config(source.location)
        if not any((Path(source.location) / f).is_file() for f in _TOKENIZER_FILES):
            # transformers would build an empty tokenizer from the config alone (len 2, encodes
            # every text to nothing) instead of failing
            raise CheckpointError(
                f"{source.location}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); pass the "
                "directory the tokenizer was saved to (tokenizer.save_pretrained)"
            )
    try:
        tok = AutoTokenizer.from_pretrained(
            source.location, revision=revision, trust_remote_code=trust_remote_code
        )
    except _config_errors() as exc:
        raise _load_error(source, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(name_or_path: str | os.PathLike[str] | None = None, **kwargs: Any):
    """``(model, tokenizer)`` for one name; tokenizer options ``revision``/``trust_remote_code`` are shared."""
    tok_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
    return load_model(name_or_path, **kwargs), load_tokenizer(name_or_path, **tok_kwargs)


def save_model(model: nn.Module, out_dir: str | os.PathLike[str], tokenizer: Any = None) -> Path:
    """Write a directory stock ``transformers`` loads (``save_pretrained``, safetensors), atomically."""
    get_adapter(model)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
