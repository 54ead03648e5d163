"""Step 1 of the report: train on source clips only, every sample the mixup of two (150 epochs).

    python -m runners.stage1 [--config config.yml] [key.sub=value ...]
    python -m runners.stage1 --resume [RUN]      # finish an interrupted run

Prints the run folder (``runs/NNN-stage1``) as its last line.
"""

from __future__ import annotations

import math
from typing import Optional

from runners.common import Step, main as step_main


class Stage1(Step):
    """Pairs of source clips; an epoch is as many mixed samples as there are source training
    clips, rounded up to whole batches."""

    name = "stage1"
    domains = ("source", "source")

    def schedule(self) -> tuple[int, int, int]:
        steps = max(1, math.ceil(self.n_source / self.settings.batch_size))
        return self.settings.epochs, steps, self.settings.epochs * steps


def main(argv: Optional[list[str]] = None) -> int:
    return step_main(Stage1, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
