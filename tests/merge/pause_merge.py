"""``python pause_merge.py decision|evaluation N MARKER <olmokit args...>``: run the ``olmokit`` CLI
with the merge pausing (sleeping) right after its N-th report write (``decision``: the base metrics
are write 1, then one write per decision) or inside its N-th model evaluation (``evaluation``: e.g.
while an ES offspring is written into the model; each candidate of a grouped evaluation counts as one), after touching the file MARKER. The SIGKILL-resume
test kills it there.

A test driver, not a feature: the pause is installed here by wrapping ``MergeSearch`` methods in the
child process, so nothing in the package carries test-only code.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from olmokit.cli.main import main
from olmokit.merge import search


def _pause(marker: str) -> None:
    Path(marker).write_text("paused", encoding="utf-8")
    time.sleep(3600)


def _install(point: str, n: int, marker: str) -> None:
    count = 0
    if point == "decision":
        original = search.MergeSearch.save

        def save(self):
            nonlocal count
            original(self)
            count += 1
            if count == n:
                _pause(marker)

        search.MergeSearch.save = save
    elif point == "evaluation":
        original_eval = search.MergeSearch.evaluate

        def evaluate(self):
            nonlocal count
            count += 1
            if count == n:
                _pause(marker)
            return original_eval(self)

        search.MergeSearch.evaluate = evaluate
        original_group = search.MergeSearch.evaluate_group

        def evaluate_group(self, appliers, restore):
            # each candidate of a group counts as one evaluation, paused right after it is
            # written into the model (a wave re-applies a candidate: counted once)
            def counted(apply, seen=[]):  # noqa: B006 (one flag per candidate)
                def run():
                    nonlocal count
                    apply()
                    if not seen:
                        seen.append(True)
                        count += 1
                        if count == n:
                            _pause(marker)

                return run

            wrapped = [counted(a, []) for a in appliers]
            return original_group(self, wrapped, restore)

        search.MergeSearch.evaluate_group = evaluate_group
    else:
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    _install(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    sys.exit(main(sys.argv[4:]))
