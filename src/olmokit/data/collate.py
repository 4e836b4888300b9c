"""Padding a batch of :class:`~olmokit.data.formatting.Example` for ``Trainer``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .formatting import IGNORE_INDEX, Example

__all__ = ["PaddingCollator"]


@dataclass
class PaddingCollator:
    """Pads ``input_ids`` with ``pad_token_id``, ``labels`` with -100, and builds ``attention_mask``.

    ``padding_side="left"`` is for generation (new tokens follow the prompt directly).
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, batch: Sequence[Example | dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [
            (b.input_ids, b.labels) if isinstance(b, Example) else (b["input_ids"], b.get("labels"))
            for b in batch
        ]
        width = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            n = len(ids)
            sl = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            input_ids[i, sl] = torch.as_tensor(ids, dtype=torch.long)
            labels[i, sl] = torch.as_tensor(lab if lab is not None else ids, dtype=torch.long)
            mask[i, sl] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
