"""Helpers the memory tests share (importable by name: pytest puts ``tests/memory`` on sys.path).

Every model-level memory test wants the same small memory on a tiny random base — one memory layer
at decoder layer 1, segments of 8 with chunks of 4, 2 heads of an MLP of 16 — and gates opened away
from their exact-zero start, so that the memory actually changes the logits a test compares.
"""

from __future__ import annotations

import torch

from olmokit.memory import MemorySettings

#: segment length of the tiny test memories (= the tiny OLMo-3's sliding window)
SEG = 8


def tiny_settings(mode: str = "mag", **overrides) -> MemorySettings:
    """The tests' small memory settings; keyword overrides replace or add keys."""
    base = dict(memory_layers=[1], mode=mode, segment_len=SEG, chunk_train=4, chunk_prefill=4,
                chunk_decode=4, heads=2, hidden=16)  # fmt: skip
    return MemorySettings(**{**base, **overrides})


def open_gates(mm: torch.nn.Module, value: float = 0.5) -> None:
    """Set every trainable memory gate to ``value`` (they start at exactly zero: the identity)."""
    with torch.no_grad():
        for name, p in mm.named_parameters():
            if p.requires_grad and name.endswith("gate"):
                p.fill_(value)
