"""Running a model for scoring: eval mode that is always restored, and where the model lives.

Every scorer in :mod:`olmokit.eval` runs under :func:`eval_mode`, so dropout is off while scoring
and a model that was training (a JoLA run evaluating between epochs) goes back to training
afterwards, even when scoring raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "model_device"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; restore every submodule's own flag in ``finally``.

    Flags are restored per submodule, not with one ``model.train(was_training)``: a model may carry
    modules in a different mode from their parent (a frozen base with a training adapter), and a
    single flag would overwrite that.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (inputs are moved there before a forward).

    A model without parameters runs on the CPU.
    """
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
