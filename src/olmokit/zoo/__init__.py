"""The zoo: small OLMo models olmokit builds itself and ships, so everything works offline.

See :mod:`olmokit.zoo.registry` for the names, :mod:`olmokit.zoo.build` for the recipe.
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
