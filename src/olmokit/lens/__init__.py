"""olmokit.lens: a hooked interpretability bridge for OLMo v1/2/3 with TransformerLens hook names.

Start with :class:`HookedOlmo` (``hooked.py``); hook names and their shapes are in ``names.py`` and
``docs/lens.md``. Analyses: :mod:`.patching`, :mod:`.logit_lens`, :mod:`.attribution`, :mod:`.heads`.
A YAML list of analyses (:class:`LensConfig`, ``config.py``) runs with :func:`run_lens` (``run.py``)
into a run directory of JSON and PNG files (figures: :mod:`olmokit.plots`); command line:
``olmokit lens run CONFIG.yaml`` and the shortcut verbs of ``olmokit lens``.
"""

from __future__ import annotations

from .cache import ActivationCache
from .config import LensConfig
from .hook_points import HookPoint, LensHandle
from .hooked import HookedOlmo
from .names import HookSpec, get_act_name, hook_specs
from .planner import CachePlan, CacheTooLargeError
from .run import run_lens

__all__ = [
    "ActivationCache",
    "CachePlan",
    "CacheTooLargeError",
    "HookPoint",
    "HookSpec",
    "HookedOlmo",
    "LensConfig",
    "LensHandle",
    "get_act_name",
    "hook_specs",
    "run_lens",
]
