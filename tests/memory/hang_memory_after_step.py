"""``python hang_memory_after_step.py N <olmokit args...>``: run the ``olmokit`` CLI with every memory
trainer sleeping after optimizer step N, so the SIGKILL-resume test can kill it at a known point.

A test driver, not a feature: the hook is added here by wrapping ``MemoryTrainer.__init__`` in the
child process, so nothing in the package carries test-only code.
"""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback

from olmokit.cli.main import main
from olmokit.memory import train as memory_train


class _HangAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            time.sleep(3600)


def _install(step: int) -> None:
    original = memory_train.MemoryTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(_HangAfterStep(step))

    memory_train.MemoryTrainer.__init__ = init


if __name__ == "__main__":
    _install(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
