"""The zoo registry: small OLMo models olmokit ships (or builds on load), so everything works offline.

What ships and how to load it: :mod:`olmokit.zoo.registry` (names, shipped directories under
``zoo/models/``) and :mod:`olmokit.zoo.presets` (architecture presets and seeded random models). How the
shipped models were made is the build recipe, :mod:`olmokit.zoo.build`, which this package never
imports (the recipe sits above the registry and above :mod:`olmokit.data`).
"""

from .presets import SIZES, SPECIAL_TOKENS, ZOO_VOCAB_SIZE, make_config, random_model
from .registry import (
    DEFAULT_MODEL,
    ZOO,
    ZooEntry,
    is_zoo_name,
    list_models,
    shipped_path,
    zoo_entry,
)

__all__ = [
    "DEFAULT_MODEL",
    "SIZES",
    "SPECIAL_TOKENS",
    "ZOO",
    "ZOO_VOCAB_SIZE",
    "ZooEntry",
    "is_zoo_name",
    "list_models",
    "make_config",
    "random_model",
    "shipped_path",
    "zoo_entry",
]
