"""Gate schedulers: the time-varying factor s_t of the gate penalty.

t counts *optimizer* steps (gradient accumulation and the number of processes are already folded in by
``Trainer``); evaluation never advances a scheduler, unlike the reference, whose ``compute_loss``
stepped it on eval batches too. The loss of optimizer step t+1 uses s_t.

What s_t scales depends on the penalty form (``jola_config.penalty``):

* ``strength`` (default): ``loss = CE + gate_lambda · s_t · Σ_{l,h} [P(g1 open) + P(g2 open)]``
* ``mixing`` (the reference code): ``loss = CE + s_t · Σ_l mean_h P(g1 open) / (L·H)
  + (1 − s_t) · Σ_l mean_h P(g2 open) / (L·H)`` — s_t trades the additive against the
  multiplicative gates and ``gate_lambda`` is unused.

========== ===== ================================================================================
name       s_0   s_t
========== ===== ================================================================================
expon      0.1   0.1 · exp(−0.01 t)  (default)
linear     0.0   0.2 · t / T  (T = total optimizer steps; 0 → 0.2)
cyclic     0.5   0.5 + 0.5 · sin(2π t / 20)  (period 20 steps)
perform    0.1   +0.01 after an evaluation whose eval loss improved on the previous one, −0.01
                 otherwise; clipped to [0, 1]; unchanged between evaluations
constant   1.0   1
========== ===== ================================================================================
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

__all__ = ["GateScheduler", "make_scheduler", "SCHEDULERS"]


class GateScheduler:
    """Base: a pure function of the optimizer step (``perform`` also reacts to evaluations)."""

    name = "constant"

    def __init__(self, total_steps: int | None = None):
        self.total_steps = total_steps
        self.step = 0
        self.value = self.value_at(0)

    def value_at(self, step: int) -> float:
        return 1.0

    def set_step(self, step: int) -> float:
        """Called after each optimizer step with the number of steps done so far."""
        self.step = step
        self.value = self.value_at(step)
        return self.value

    def on_evaluate(self, eval_loss: float) -> None:
        """Called after each evaluation (only ``perform`` uses it)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly (stored in every training checkpoint)."""
        return {"name": self.name, "step": self.step, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ConfigError(
                f"checkpoint has gate scheduler {state.get('name')!r}, this run uses {self.name!r}"
            )
        self.total_steps = state.get("total_steps")
        self.set_step(int(state["step"]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step={self.step}, value={self.value:.6g})"


class ExponScheduler(GateScheduler):
    name = "expon"

    def value_at(self, step: int) -> float:
        return 0.1 * math.exp(-0.01 * step)


class LinearScheduler(GateScheduler):
    name = "linear"

    def value_at(self, step: int) -> float:
        if not self.total_steps:
            return 0.0
        return 0.2 * min(step, self.total_steps) / self.total_steps


class CyclicScheduler(GateScheduler):
    name = "cyclic"

    def value_at(self, step: int) -> float:
        return 0.5 + 0.5 * math.sin(2 * math.pi * step / 20)


class PerformScheduler(GateScheduler):
    name = "perform"

    def __init__(self, total_steps: int | None = None):
        self._level = 0.1
        self._last: float | None = None
        super().__init__(total_steps)

    def value_at(self, step: int) -> float:
        return self._level

    def on_evaluate(self, eval_loss: float) -> None:
        if self._last is not None:
            delta = 0.01 if eval_loss < self._last else -0.01
            self._level = min(1.0, max(0.0, self._level + delta))
            self.value = self._level
        self._last = eval_loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "level": self._level, "last": self._last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._level, self._last = float(state["level"]), state["last"]
        super().load_state_dict(state)


SCHEDULERS: dict[str, type[GateScheduler]] = {
    "expon": ExponScheduler,
    "linear": LinearScheduler,
    "cyclic": CyclicScheduler,
    "perform": PerformScheduler,
    "constant": GateScheduler,
}


def make_scheduler(
    spec: str | GateScheduler | None, total_steps: int | None = None
) -> GateScheduler:
    """A scheduler from a name (``None``/"" = constant) or an existing instance."""
    if isinstance(spec, GateScheduler):
        if total_steps is not None:
            spec.total_steps = total_steps
        return spec
    name = spec or "constant"
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown gate_scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](total_steps)
