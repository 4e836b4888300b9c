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

from .files import AdapterFormat, load_adapter, read_adapter, save_adapter
from .fingerprint import BaseWeightsWarning, base_fingerprint, check_base
from .sites import (
    Injection,
    Site,
    freeze_base,
    get_injection,
    has_injection,
    injections,
    layer_site,
)
from .training import (
    FiniteLossGuard,
    NonFiniteStop,
    TrainingDivergedError,
    all_ranks_finite,
    training_arguments,
)

__all__ = [
    "AdapterFormat",
    "BaseWeightsWarning",
    "FiniteLossGuard",
    "Injection",
    "NonFiniteStop",
    "Site",
    "TrainingDivergedError",
    "all_ranks_finite",
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
