"""The zoo: models olmokit can always load offline, by name.

* ``olmo2-stdlib`` — the shipped default: a small OLMo-2 genuinely pretrained on text that ships with
  CPython (``olmokit zoo build`` reproduces it). Weights and tokenizer live inside the package.
* ``olmo-stdlib-tiny``, ``olmo3-stdlib-tiny`` — tiny OLMo v1 / OLMo-3 models trained by the same
  recipe, so tests of every generation can use trained weights.
* ``olmo2-induction`` — a 2-layer OLMo-2 built by the same recipe with 80% of its sequences a random
  token string repeated (and its own 512-token BPE): it has induction heads (the lens demos' model;
  its card records the scores the build measured).
* ``olmo-tiny-random``, ``olmo2-tiny-random``, ``olmo3-tiny-random`` — seeded random-init models of each
  generation (GQA; OLMo-3 with sliding-window layers), sharing the shipped tokenizer. For tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

__all__ = [
    "DEFAULT_MODEL",
    "ZooEntry",
    "ZOO",
    "zoo_entry",
    "list_models",
    "shipped_path",
    "is_zoo_name",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "olmo2-stdlib"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    model_type: str
    kind: str  #: "shipped" (trained weights inside the package) or "random" (built on demand)
    description: str
    size: str = "small"
    seed: int = 0

    @property
    def path(self) -> Path | None:
        return MODELS_DIR / self.name if self.kind == "shipped" else None

    @property
    def available(self) -> bool:
        return self.kind == "random" or (self.path / "model.safetensors").is_file()


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            DEFAULT_MODEL,
            "olmo2",
            "shipped",
            "OLMo-2, ~5M params, pretrained on CPython's docs, docstrings and stdlib sources",
        ),
        ZooEntry(
            "olmo-stdlib-tiny",
            "olmo",
            "shipped",
            "OLMo v1, ~0.6M params, GQA 4/2, trained like olmo2-stdlib (800 steps)",
            "tiny",
        ),
        ZooEntry(
            "olmo3-stdlib-tiny",
            "olmo3",
            "shipped",
            "OLMo-3, ~0.7M params, GQA 4/2, window 8 on 3 of 4 layers, trained (800 steps)",
            "tiny",
        ),
        ZooEntry(
            "olmo2-induction",
            "olmo2",
            "shipped",
            "OLMo-2, 2 layers, ~0.15M params, 512-token BPE, trained on repeated random strings "
            "(80%) and CPython text: induction heads",
            "tiny",
        ),
        ZooEntry("olmo-tiny-random", "olmo", "random", "OLMo v1, random init, GQA 4/2", "tiny"),
        ZooEntry("olmo2-tiny-random", "olmo2", "random", "OLMo-2, random init, GQA 4/2", "tiny"),
        ZooEntry(
            "olmo3-tiny-random",
            "olmo3",
            "random",
            "OLMo-3, random init, GQA 4/2, sliding window 8 on 3 of 4 layers",
            "tiny",
        ),
    ]
}


def is_zoo_name(name: str) -> bool:
    return name.removeprefix("zoo:") in ZOO


def zoo_entry(name: str) -> ZooEntry:
    key = name.removeprefix("zoo:")
    if key not in ZOO:
        raise CheckpointError(f"no zoo model {name!r}; available: {', '.join(ZOO)}")
    return ZOO[key]


def shipped_path(name: str = DEFAULT_MODEL) -> Path:
    """Directory of a shipped zoo model (loadable with plain ``from_pretrained``)."""
    entry = zoo_entry(name)
    if entry.kind != "shipped":
        raise CheckpointError(f"zoo model {name!r} is built on demand and has no directory")
    if not entry.available:
        raise CheckpointError(
            f"zoo model {name!r} is missing from this installation ({entry.path}); "
            "rebuild it with: olmokit zoo build"
        )
    return entry.path


def list_models() -> list[ZooEntry]:
    return list(ZOO.values())
