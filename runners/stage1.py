"""Step 1 of the report: train on source clips only, every sample the mixup of two (150 epochs).

    python -m runners.stage1 [--config config.yml] [key.sub=value ...]
    python -m runners.stage1 --resume [RUN]      # finish an interrupted run

Both print the run folder (``runs/NNN-stage1``) as their last line.
"""

from __future__ import annotations

import math

from runners.common import Step
from runners.common import main as step_main


class Stage1(Step):
    """Pairs of source clips; an epoch: a mixed sample per source clip, in whole batches."""

    name = "stage1"
    domains = ("source", "source")

    def schedule(self) -> tuple[int, int, int, int]:
        s = self.settings
        steps = max(1, math.ceil(self.n_source / s.batch_size))
        return s.epochs, steps, s.epochs * steps, s.checkpoint_every


def main(argv: list[str] | None = None) -> int:
    return step_main(Stage1, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
