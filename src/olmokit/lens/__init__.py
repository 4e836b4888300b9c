"""olmokit.lens: a hooked interpretability bridge for OLMo v1/2/3 with TransformerLens hook names.

Start with :class:`HookedOlmo` (``hooked.py``); hook names and their shapes are in ``names.py`` and
``docs/lens.md``. Analyses: :mod:`.patching`, :mod:`.logit_lens`, :mod:`.attribution`, :mod:`.heads`;
figures: :mod:`olmokit.plots`; command line: ``olmokit lens``.
"""

from __future__ import annotations

from .cache import ActivationCache
from .hook_points import HookPoint, LensHandle
from .hooked import HookedOlmo
from .names import HookSpec, get_act_name, hook_specs
from .planner import CachePlan, CacheTooLargeError

__all__ = [
    "ActivationCache",
    "CachePlan",
    "CacheTooLargeError",
    "HookPoint",
    "HookSpec",
    "HookedOlmo",
    "LensHandle",
    "get_act_name",
    "hook_specs",
]
