"""Loading and saving OLMo models and tokenizers through ``transformers``.

``name_or_path`` may be a local directory, a Hugging Face hub id (``allenai/OLMo-2-0425-1B``), or a zoo
name (``olmo2-stdlib``, ``olmo3-tiny-random``; ``zoo:`` prefix optional). ``None`` means the shipped
default. The family is checked from the config *before* any weights are read, and a checkpoint that
leaves tensors newly initialised is refused. ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .family import FamilyAdapter, get_adapter
from .files import atomic_directory
from .zoo.presets import random_model
from .zoo.registry import DEFAULT_MODEL, ZOO, ZooEntry, is_zoo_name, shipped_path, zoo_entry

__all__ = [
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


def _zoo(name: str) -> ZooEntry | None:
    """The zoo entry ``name`` refers to, or ``None`` for paths and hub ids (an existing path wins)."""
    if Path(name).exists() or not is_zoo_name(name):
        return None
    return zoo_entry(name)


def _source(name: str, entry: ZooEntry | None) -> str:
    """What ``from_pretrained`` should read: a shipped zoo model's directory, else ``name`` itself."""
    return str(shipped_path(entry.name)) if entry is not None and entry.kind == "shipped" else name


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
    """Load an OLMo v1/2/3 causal LM, checked against the supported families, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    entry = _zoo(name)
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

    source = _source(name, entry)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _offline_hint(name, exc) from exc
    FamilyAdapter.for_config(config)  # family + transformers-version gate before reading weights
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
        model, info = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    except OSError as exc:
        raise _offline_hint(name, exc) from exc
    missing = list(info.get("missing_keys", []))
    if missing and not allow_missing:
        raise CheckpointError(
            f"{name}: {len(missing)} tensors are missing from the checkpoint and would be randomly "
            f"initialised: {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    get_adapter(model)
    if entry is not None:
        model.name_or_path = f"zoo:{entry.name}"
    if device is not None:
        model = model.to(device)
    return model.eval()


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
    entry = _zoo(name)
    if entry is not None and entry.kind == "random":
        source = str(shipped_path(DEFAULT_MODEL))  # random zoo models share the default's tokenizer
    else:
        source = _source(name, entry)
    try:
        tok = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _offline_hint(name, exc) from exc
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
