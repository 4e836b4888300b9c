"""olmokit: edit (JoLA), merge (OLM), extend (MIRAS memory) and inspect (lens) OLMo v1/2/3 models.

Start with :func:`olmokit.load_model` and :func:`olmokit.get_adapter`; each tool lives in its own
subpackage (``olmokit.jola``, ``olmokit.lens``, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, FamilyError, OlmokitError
from .family import FamilyAdapter, get_adapter, get_family
from .loading import load_model, load_model_and_tokenizer, load_tokenizer, save_model

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FamilyAdapter",
    "FamilyError",
    "OlmokitError",
    "get_adapter",
    "get_family",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "save_model",
]
