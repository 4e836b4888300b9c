"""olmokit.lens: a hooked interpretability bridge for OLMo v1/2/3 with TransformerLens hook names.

Start with :class:`HookedOlmo` (``hooked.py``; also importable as ``HookedTransformer``, with
``HookPoint``, ``ActivationCache``, ``FactoredMatrix`` and ``utils`` as in TransformerLens); hook names and their shapes are in ``names.py`` and
``docs/lens.md``. Analyses: :mod:`.patching`, :mod:`.logit_lens`, :mod:`.attribution`, :mod:`.heads`.
A YAML list of analyses (:class:`LensConfig`, ``config.py``) runs with :func:`run_lens` (``run.py``)
into a run directory of JSON and PNG files (figures: :mod:`olmokit.plots`); command line:
``olmokit lens run CONFIG.yaml`` and the shortcut verbs of ``olmokit lens``.
"""

from __future__ import annotations

from . import utils
from .cache import ActivationCache
from .cfg import HookedOlmoConfig
from .config import LensConfig
from .factored import FactoredMatrix
from .hook_points import HookPoint, LensHandle
from .hooked import HookedOlmo, HookedTransformer
from .names import HookSpec, UnknownHookError, get_act_name, hook_specs
from .planner import CachePlan, CacheTooLargeError
from .root import HookedRootModule
from .run import run_lens

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "HookedOlmoConfig",
    "HookedTransformer",
    "HookedRootModule",
    "UnknownHookError",
    "utils",
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
