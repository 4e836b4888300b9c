"""The injection base: train a few added modules on a frozen OLMo, save only them, refuse the wrong base.

JoLA (per-head edits on ``o_proj``'s input) and the memory tool (memory modules in chosen layers) share
one shape, so it lives here once:

* **attach** — :class:`Injection` registers each added module as a submodule of a family-adapter-named
  module (so ``.to()``, optimizers, DDP/FSDP and ``state_dict`` see it) and a forward(-pre) hook on a
  second adapter-named module that runs it. Sites (:class:`Site`, :func:`layer_site`) come from
  :class:`~olmokit.family.FamilyAdapter`, never from hard-coded HF attribute names. The model stays an
  instance of its HF class; :meth:`Injection.remove` leaves the plain model behind.
* **freeze** — :func:`freeze_base`: only the added parameters train.
* **save / load only the added tensors** — :func:`save_adapter` / :func:`read_adapter` /
  :func:`load_adapter` write
  safetensors plus a JSON config (format name + version, written last and atomically, so its presence
  means "complete"), with a **base fingerprint** (:func:`base_fingerprint`): family and sizes, every
  base tensor's name and shape, and a short hash of a few deterministic weight slices.
  :func:`check_base` refuses an adapter on another base and names the difference (family, a size, a
  missing/extra tensor, a shape). *Same architecture but different weights* is a **warning**
  (:class:`BaseWeightsWarning`) by default, an error with ``strict_weights=True``: loading an adapter
  onto a fine-tuned sibling of its base, or onto the same weights in another dtype, is a legitimate
  experiment (PEFT allows it too), whereas a shape mismatch can only be a mistake.
* **training arguments** — :func:`training_arguments` turns a config section into
  ``transformers.TrainingArguments`` with ``model_dump`` (olmokit-only keys are excluded by the
  section's declared ``OLMOKIT_ONLY`` set, never copied field by field).
* **finite-loss guard** — :class:`FiniteLossGuard`, a ``Trainer`` mixin: a NaN/inf training loss (or
  added parameter) stops training with :class:`TrainingDivergedError` naming the optimizer step, the
  last good added parameters are restored and saved to ``<output_dir>/last_good``; the Trainer
  checkpoints written before stay as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from . import __version__
from .errors import CheckpointError, ConfigError, OlmokitError
from .family import FamilyAdapter, get_adapter
from .files import atomic_save_safetensors, atomic_write_json, load_safetensors

__all__ = [
    "AdapterFormat",
    "BaseWeightsWarning",
    "FiniteLossGuard",
    "Injection",
    "Site",
    "TrainingDivergedError",
    "base_fingerprint",
    "check_base",
    "freeze_base",
    "get_injection",
    "has_injection",
    "injections",
    "layer_site",
    "load_adapter",
    "read_adapter",
    "save_adapter",
    "training_arguments",
]

_REGISTRY_ATTR = "_olmokit_injections"
#: how many values are hashed from the start and from the end of each fingerprinted tensor
_HASH_SLICE = 256
#: the size facts of a base that an adapter depends on (from the family adapter)
_SIZE_KEYS = (
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
)


# ============================================================================ sites and attaching
@dataclass(frozen=True)
class Site:
    """Where one added module lives and runs.

    ``key`` names it in saved files independently of the family's module paths (``layers.3``);
    ``owner`` is the dotted path of the module it is registered under; ``target`` the dotted path of
    the module whose forward is hooked to run it.
    """

    key: str
    owner: str
    target: str


def layer_site(model: nn.Module, layer: int, target: str, owner: str = "attn") -> Site:
    """The :class:`Site` for decoder layer ``layer``: hook the module with role ``target`` (e.g.
    ``"o_proj"``, ``"attn"``, ``"layer"``) and register under role ``owner`` (roles as in
    :meth:`FamilyAdapter.module_path <olmokit.family.FamilyAdapter.module_path>`)."""
    adapter = get_adapter(model)
    n = adapter.num_layers
    if not -n <= layer < n:
        raise ConfigError(f"layer {layer} out of range for a {n}-layer model (valid: 0..{n - 1})")
    i = layer % n
    return Site(f"layers.{i}", adapter.module_path(i, owner), adapter.module_path(i, target))


#: ``rewrite(added, args, kwargs) -> (args, kwargs) or None`` for a pre-hook;
#: ``rewrite(added, args, kwargs, output) -> new output or None`` for a post-hook.
Rewrite = Callable[..., Any]


def _apply_to_input(added: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Replace the hooked module's hidden-state input ``x`` (positional or named) by ``added(x)``."""
    x = FamilyAdapter.module_input(args, kwargs)
    return FamilyAdapter.replace_module_input(args, kwargs, added(x))


def _apply_to_output(
    added: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> Any:
    """Replace the hooked module's hidden-state output ``y`` (bare or first of a tuple) by ``added(y)``."""
    return FamilyAdapter.replace_module_output(output, added(FamilyAdapter.module_output(output)))


class Injection:
    """A named set of modules added to one base model (``"jola"``, ``"memory"``).

    Each module is registered as ``<owner>.<name>`` (its state-dict prefix) and run from a hook on its
    site's target. While :attr:`enabled` is False every hook passes its input through untouched, so the
    model computes exactly the base model. A model may carry several injections under distinct names.
    """

    def __init__(self, model: nn.Module, name: str):
        if not name.isidentifier():
            raise ConfigError(f"injection name {name!r} must be a Python identifier")
        registry = _registry(model, create=True)
        if name in registry:
            raise ConfigError(f"{name!r} is already attached to this model; remove it first")
        self.model, self.name = model, name
        self.modules: dict[str, nn.Module] = {}
        self.sites: dict[str, Site] = {}
        self.enabled = True
        self._handles: list[Any] = []
        registry[name] = self

    def add(
        self,
        site: Site,
        module: nn.Module,
        *,
        hook: str = "pre",
        rewrite: Rewrite | None = None,
    ) -> nn.Module:
        """Register ``module`` at ``site`` and hook it in.

        ``hook="pre"`` runs before the target's forward (default ``rewrite``: replace its hidden-state
        input ``x``, positional or named, by ``module(x)``); ``hook="post"`` runs after it (default:
        replace the hidden-state output — the output, or its first element for a tuple — by
        ``module(output)``). Call conventions come from the family adapter. The new module takes the
        owner's train/eval mode.
        """
        if site.key in self.modules:
            raise ConfigError(f"{self.name}: site {site.key!r} already has a module")
        owner, target = self.model.get_submodule(site.owner), self.model.get_submodule(site.target)
        if self.name in owner._modules or hasattr(owner, self.name):
            raise ConfigError(f"{site.owner} already has an attribute {self.name!r}")
        module.train(owner.training)
        owner.add_module(self.name, module)
        if hook == "pre":
            fn = rewrite or _apply_to_input

            def pre(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return fn(module, args, kwargs) if self.enabled else None

            handle = target.register_forward_pre_hook(pre, with_kwargs=True)
        elif hook == "post":
            fn = rewrite or _apply_to_output

            def post(
                _mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
            ) -> Any:
                return fn(module, args, kwargs, output) if self.enabled else None

            handle = target.register_forward_hook(post, with_kwargs=True)
        else:
            raise ConfigError(f"hook {hook!r} not in pre, post")
        self.modules[site.key] = module
        self.sites[site.key] = site
        self._handles.append(handle)
        return module

    # ------------------------------------------------------------------ parameters
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(key.param, parameter)`` in site order — the names used in saved files."""
        for key, module in self.modules.items():
            for pname, p in module.named_parameters():
                yield f"{key}.{pname}", p

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The added tensors (detached, not copied) keyed ``<site key>.<parameter>``."""
        return {k: p.detach() for k, p in self.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], where: str = "") -> None:
        """Copy ``tensors`` into the added parameters exactly; every key and shape must match."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        prefix = f"{where}: " if where else ""
        if missing or unexpected:
            raise CheckpointError(
                f"{prefix}{self.name} tensors do not match: missing {missing[:6]}, "
                f"unexpected {unexpected[:6]}"
            )
        for key, p in own.items():
            t = tensors[key]
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{prefix}{key}: saved shape {tuple(t.shape)} != model shape {tuple(p.shape)}"
                )
        for key, p in own.items():
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))

    def module_paths(self) -> list[str]:
        """State-dict prefixes of the added modules (``<owner>.<name>``)."""
        return [f"{self.sites[k].owner}.{self.name}" for k in self.modules]

    # ------------------------------------------------------------------ switching
    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Run the base model for the block (hooks pass inputs through untouched)."""
        before, self.enabled = self.enabled, False
        try:
            yield self.model
        finally:
            self.enabled = before

    def remove(self) -> nn.Module:
        """Remove hooks and modules; the model is its plain HF self again (the base stays frozen)."""
        for h in self._handles:
            h.remove()
        for key in self.modules:
            owner = self.model.get_submodule(self.sites[key].owner)
            owner._modules.pop(self.name, None)
        registry = _registry(self.model)
        registry.pop(self.name, None)
        if not registry:
            delattr(self.model, _REGISTRY_ATTR)
        self._handles, self.modules, self.sites = [], {}, {}
        return self.model


def _registry(model: nn.Module, create: bool = False) -> dict[str, Injection]:
    reg = model.__dict__.get(_REGISTRY_ATTR)
    if reg is None:
        reg = {}
        if create:
            # plain attribute (not a submodule): nn.Module.__setattr__ stores a dict in __dict__
            object.__setattr__(model, _REGISTRY_ATTR, reg)
    return reg


def injections(model: nn.Module) -> dict[str, Injection]:
    """Every injection attached to ``model``, by name."""
    return dict(_registry(model))


def has_injection(model: nn.Module, name: str) -> bool:
    return name in _registry(model)


def get_injection(model: nn.Module, name: str) -> Injection:
    reg = _registry(model)
    if name not in reg:
        attached = ", ".join(reg) or "none"
        raise ConfigError(f"this model has no {name!r} attached (attached: {attached})")
    return reg[name]


def freeze_base(model: nn.Module, trainable: Iterable[nn.Parameter]) -> nn.Module:
    """Make exactly ``trainable`` require gradients; every other parameter of ``model`` is frozen."""
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return model


# ============================================================================ base fingerprint
def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict without any injected module's tensors."""
    prefixes = tuple(f"{p}." for inj in _registry(model).values() for p in inj.module_paths())
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def _hash_keys(keys: list[str]) -> list[str]:
    """A few tensors to hash, chosen from the sorted names alone: first, middle and last."""
    if not keys:
        return []
    ordered = sorted(keys)
    picks = {ordered[0], ordered[len(ordered) // 2], ordered[-1]}
    return sorted(picks)


def _weights_hash(state: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over the first and last values of a few tensors.

    Values are rounded to bfloat16 first, so the same weights loaded in fp32 or bf16 hash alike (an
    adapter trained on a bf16 base still matches its base loaded in fp32 for merging).
    """
    h = hashlib.sha256()
    for key in _hash_keys(list(state)):
        t = state[key].detach()
        if t.is_meta:
            continue
        flat = t.reshape(-1)
        n = flat.numel()
        part = (
            flat if n <= 2 * _HASH_SLICE else torch.cat((flat[:_HASH_SLICE], flat[-_HASH_SLICE:]))
        )
        vals = part.to(device="cpu", dtype=torch.bfloat16).to(torch.float32).contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(vals.numpy().tobytes())
    return h.hexdigest()[:16]


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What an adapter records about its base: identity, family, sizes, tensor shapes, a weights hash."""
    adapter = get_adapter(model)
    cfg = model.config
    state = _base_state(model)
    return {
        "name_or_path": str(
            getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", "")
        ),
        "revision": getattr(cfg, "_commit_hash", None),
        "model_type": adapter.model_type,
        "family": adapter.spec.display_name,
        "sizes": {k: getattr(adapter, k) for k in _SIZE_KEYS},
        "tensors": {k: list(v.shape) for k, v in sorted(state.items())},
        "weights_hash": _weights_hash(state),
    }


class BaseWeightsWarning(UserWarning):
    """An adapter is loaded onto a base of the same architecture whose weights hash differently."""


def check_base(
    saved: Mapping[str, Any], model: nn.Module, where: str, *, strict_weights: bool = False
) -> None:
    """Refuse ``model`` as the base for an adapter recorded with fingerprint ``saved``.

    Checks, in order: family, sizes, missing/extra base tensors, tensor shapes, then the weights hash
    (a :class:`BaseWeightsWarning`, or :class:`CheckpointError` with ``strict_weights``). Keys the
    saved fingerprint lacks (adapters from older olmokit versions) are not checked.
    """
    here = base_fingerprint(model)
    trained_on = saved.get("name_or_path") or "an unnamed base"
    if saved.get("model_type") != here["model_type"]:
        raise CheckpointError(
            f"{where} was trained on {saved.get('family')} (model_type {saved.get('model_type')!r}, "
            f"{trained_on}), but this model is {here['family']} (model_type {here['model_type']!r}, "
            f"{here['name_or_path']}); load it onto its own base"
        )
    sizes = saved.get("sizes", {})
    diffs = [
        f"{k}: adapter {sizes[k]} vs model {here['sizes'][k]}"
        for k in _SIZE_KEYS
        if k in sizes and sizes[k] != here["sizes"][k]
    ]
    if diffs:
        raise CheckpointError(
            f"{where} does not fit this model ({'; '.join(diffs)}); it was trained on {trained_on}"
        )
    if "tensors" in saved:
        want, have = saved["tensors"], here["tensors"]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            parts = []
            if missing:
                parts.append(
                    f"missing base tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}"
                )
            if extra:
                parts.append(f"extra base tensors {extra[:4]}{' ...' if len(extra) > 4 else ''}")
            raise CheckpointError(
                f"{where} does not fit this model: {'; '.join(parts)} (trained on {trained_on})"
            )
        shapes = [f"{k}: adapter {want[k]} vs model {have[k]}" for k in want if want[k] != have[k]]
        if shapes:
            raise CheckpointError(
                f"{where} does not fit this model: base tensor shapes differ "
                f"({'; '.join(shapes[:4])}); it was trained on {trained_on}"
            )
    if "weights_hash" in saved and saved["weights_hash"] != here["weights_hash"]:
        msg = (
            f"{where} was trained on {trained_on!r}; this model ({here['name_or_path']!r}) has the same "
            f"architecture but different weights (hash {saved['weights_hash']} vs "
            f"{here['weights_hash']})"
        )
        if strict_weights:
            raise CheckpointError(msg)
        warnings.warn(msg, BaseWeightsWarning, stacklevel=3)
    elif "weights_hash" not in saved:
        # older adapters record only the base's name: a different name may mean different weights
        name, here_name = saved.get("name_or_path"), here["name_or_path"]
        if name and here_name and name != here_name:
            warnings.warn(
                f"{where} was trained on {name!r}; loading it onto {here_name!r} "
                "(same architecture, possibly different weights)",
                BaseWeightsWarning,
                stacklevel=3,
            )


# ============================================================================ adapter files
@dataclass(frozen=True)
class AdapterFormat:
    """A tool's adapter file layout: file names, format name, the version written and the oldest read."""

    name: str  #: e.g. "olmokit-jola"
    version: int  #: written by this olmokit
    weights_file: str  #: safetensors file name
    config_file: str  #: JSON file name (written last: its presence means the adapter is complete)
    min_version: int = 1
    label: str = ""  #: how messages name it ("JoLA"); default: ``name``

    @property
    def title(self) -> str:
        return self.label or self.name


def save_adapter(
    out_dir: str | os.PathLike[str],
    fmt: AdapterFormat,
    tensors: Mapping[str, torch.Tensor],
    model: nn.Module,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` (fp32 safetensors) and a JSON config with ``meta``, the format and the base
    fingerprint to ``out_dir``; nothing of the base model. Non-finite tensors are refused."""
    bad = [
        k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise CheckpointError(
            f"refusing to save {fmt.name} adapter: non-finite values in {bad[:6]}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    atomic_save_safetensors(out / fmt.weights_file, clean, metadata={"format": fmt.name})
    record = {
        "format": fmt.name,
        "format_version": fmt.version,
        "olmokit_version": __version__,
        "base_model": base_fingerprint(model),
        "num_parameters": sum(t.numel() for t in clean.values()),
        **dict(meta or {}),
    }
    atomic_write_json(out / fmt.config_file, record)
    return out


def read_adapter(
    adapter_dir: str | os.PathLike[str], fmt: AdapterFormat
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, tensors)`` of a saved adapter, without needing its base model."""
    d = Path(adapter_dir)
    cfg_path, w_path = d / fmt.config_file, d / fmt.weights_file
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{d} is not a {fmt.title} adapter (needs {fmt.config_file} and {fmt.weights_file})"
        )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{cfg_path}: invalid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt.name:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{cfg_path}: not a {fmt.title} adapter (format {got!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or not fmt.min_version <= version:
        raise CheckpointError(f"{cfg_path}: unknown format version {version!r}")
    if version > fmt.version:
        raise CheckpointError(
            f"{cfg_path}: format version {version} is newer than this olmokit supports "
            f"({fmt.version}); upgrade olmokit"
        )
    try:
        tensors = load_safetensors(w_path)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{w_path}: unreadable safetensors file ({exc})") from None
    return meta, tensors


def load_adapter(
    injection: Injection,
    adapter_dir: str | os.PathLike[str],
    fmt: AdapterFormat,
    *,
    strict_weights: bool = False,
) -> dict[str, Any]:
    """Read an adapter, check its base fingerprint against ``injection.model`` and copy its tensors
    into ``injection`` exactly. Returns the adapter's JSON config."""
    meta, tensors = read_adapter(adapter_dir, fmt)
    where = f"{fmt.title} adapter {adapter_dir}"
    check_base(meta.get("base_model", {}), injection.model, where, strict_weights=strict_weights)
    injection.load_state_dict(tensors, where=where)
    return meta


# ============================================================================ training arguments
_TRAINING_ARGUMENT_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def training_arguments(
    section: Any, output_dir: str | os.PathLike[str] | None = None, **overrides: Any
) -> TrainingArguments:
    """``TrainingArguments`` from a pydantic config section, via ``section.model_dump()``.

    Fields named in the section class's ``OLMOKIT_ONLY`` set are left out; ``extra_args`` (a dict of
    any other ``TrainingArguments``) is merged in, then whatever the section's
    ``derived_training_arguments()`` returns (settings computed from olmokit-only keys), then
    ``overrides``. Defaults suited to a frozen base with a few added parameters:
    ``remove_unused_columns=False`` (collated batches carry exactly the model's inputs) and
    ``ddp_find_unused_parameters=False``. Unknown names are a :class:`ConfigError`.
    """
    exclude = set(getattr(type(section), "OLMOKIT_ONLY", ())) | {"extra_args"}
    kw: dict[str, Any] = {"remove_unused_columns": False, "ddp_find_unused_parameters": False}
    kw.update(section.model_dump(exclude=exclude))
    kw.update(getattr(section, "extra_args", None) or {})
    derived = getattr(section, "derived_training_arguments", None)
    if callable(derived):
        kw.update(derived())
    kw.update(overrides)
    if output_dir is not None:
        kw["output_dir"] = str(output_dir)
    unknown = sorted(set(kw) - _TRAINING_ARGUMENT_FIELDS)
    if unknown:
        raise ConfigError(
            f"{type(section).__name__}: {unknown} are not transformers.TrainingArguments fields "
            "(check extra_args)"
        )
    try:
        return TrainingArguments(**kw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid training arguments: {exc}") from None


# ============================================================================ finite-loss guard
class TrainingDivergedError(OlmokitError, RuntimeError):
    """The loss (or an added tensor) became NaN/inf; the last good added parameters were restored."""


class NonFiniteStop(Exception):
    """Raised inside a training step to stop on a non-finite value (turned into the public error)."""

    def __init__(self, what: str, step: int):
        super().__init__(f"{what} at optimizer step {step}")
        self.what, self.step = what, step


def all_ranks_finite(value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every process (all ranks must stop together, or DDP hangs)."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


class _GuardCallback(TrainerCallback):
    """Snapshots the trainable tensors after every finite optimizer step."""

    def __init__(self, trainer: FiniteLossGuard):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._last_good = (state.global_step, self.trainer._guarded_snapshot())

    def on_step_end(self, args, state, control, **kwargs):
        snap = self.trainer._guarded_snapshot()
        bad = [k for k, v in snap.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteStop(f"non-finite parameter {bad[0]}", state.global_step)
        self.trainer._last_good = (state.global_step, snap)


class FiniteLossGuard:
    """``Trainer`` mixin (list it before ``Trainer``): stop on a non-finite loss, keep the last good state.

    The guarded tensors are the model's trainable parameters (the added ones, with a frozen base), so
    a snapshot per optimizer step costs a copy of the adapter only. On a NaN/inf training loss or
    parameter: the snapshot of the last finite step is restored, written with ``self._save`` (a
    subclass writes its adapter there) to ``<output_dir>/last_good`` on the main process, and
    :class:`TrainingDivergedError` names the optimizer step. Checkpoints written before stay.
    """

    #: where the last good state is saved (default ``<output_dir>/last_good``)
    last_good_dir: str | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        self._last_good: tuple[int, dict[str, torch.Tensor]] | None = None
        super().__init__(*args, **kwargs)
        self.add_callback(_GuardCallback(self))  # type: ignore[attr-defined]

    def _guarded_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)  # type: ignore[attr-defined]

    def _guarded_snapshot(self) -> dict[str, torch.Tensor]:
        return {
            k: p.detach().clone()
            for k, p in self._guarded_model().named_parameters()
            if p.requires_grad
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and not all_ranks_finite(loss):
            step = self.state.global_step + 1  # type: ignore[attr-defined]
            raise NonFiniteStop(f"non-finite loss ({loss.detach().float().mean().item()})", step)
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any):
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        except NonFiniteStop as exc:
            model = self._guarded_model()
            good_step, good = self._last_good or (0, None)
            if good is not None:
                with torch.no_grad():
                    params = dict(model.named_parameters())
                    for k, v in good.items():
                        params[k].copy_(v)
            where = ""
            args_ = self.args  # type: ignore[attr-defined]
            if args_.should_save:
                path = Path(self.last_good_dir or Path(args_.output_dir) / "last_good")
                self._save(str(path))  # type: ignore[attr-defined]
                where = f" and saved it to {path}"
            raise TrainingDivergedError(
                f"{exc}; training stopped, restored the trained parameters from optimizer step "
                f"{good_step}{where}"
            ) from None
