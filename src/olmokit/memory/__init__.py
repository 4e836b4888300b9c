"""Titans/MIRAS neural long-term memory for frozen OLMo models.

* :mod:`.neural` / :mod:`.state` / :mod:`.engine` — the memory module, its carried state and the
  closed-form chunked update (with a float64 per-token reference in :mod:`.reference`);
* :mod:`.layers` — MAC / MAG / MAL wiring into decoder layers via the family adapter and hooks;
* :mod:`.model` — :func:`attach_memory` / :class:`MemoryModel` (segmented forward with carried state,
  generation, save/load); :mod:`.context` — the base's keys/values carried across segments
  (``carry_context``);
* :mod:`.train` / :mod:`.run` — HF ``Trainer`` training and whole runs from a YAML config;
* ``olmokit memory train|eval|generate`` — the CLI (:mod:`.cli`).

>>> mm = attach_memory(load_model("olmo2-stdlib"), MemorySettings(memory_layers=[2], segment_len=64))
>>> out = mm(input_ids, labels=input_ids)          # out.loss, out.logits, out.memory_state
"""

from .config import DataSection, MemoryConfig, MemorySettings, ModelSection, TrainingSection
from .context import CarriedContext
from .model import (
    ADAPTER_FORMAT,
    MemoryModel,
    MemoryModelState,
    MemoryOutput,
    attach_memory,
    load_memory,
    load_memory_state,
    read_memory_settings,
    save_memory_state,
)
from .neural import NeuralMemory, NeuralMemoryConfig
from .state import MemoryState

__all__ = [
    "ADAPTER_FORMAT",
    "CarriedContext",
    "DataSection",
    "MemoryConfig",
    "MemoryModel",
    "MemoryModelState",
    "MemoryOutput",
    "MemorySettings",
    "MemoryState",
    "ModelSection",
    "NeuralMemory",
    "NeuralMemoryConfig",
    "TrainingSection",
    "attach_memory",
    "load_memory",
    "load_memory_state",
    "read_memory_settings",
    "save_memory_state",
]
