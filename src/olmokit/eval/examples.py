"""Accuracy and exact match together on held-out examples (what JoLA reports for base vs edited)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..data.tasks import MultipleChoiceExample
from .choices import mc_accuracy
from .generation import exact_match

__all__ = ["evaluate_examples"]


def evaluate_examples(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    batch_size: int = 16,
    generate: bool = True,
    progress: bool = False,
    max_length: int | None = None,
    first_line: bool = False,
    loss_on: str = "turn",
) -> dict[str, float]:
    """``{"acc", "n"}`` from :func:`mc_accuracy` (choices scored per ``loss_on``), plus ``"em"`` from
    :func:`exact_match` when ``generate`` (``first_line``: of the output's first line)."""
    out: dict[str, float] = {}
    mc = mc_accuracy(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        progress=progress,
        max_length=max_length,
        loss_on=loss_on,
    )
    out["acc"], out["n"] = mc["acc"], mc["n"]
    if generate:
        em = exact_match(
            model,
            tokenizer,
            examples,
            batch_size=batch_size,
            progress=progress,
            first_line=first_line,
        )
        out["em"] = em["em"]
    return out
