"""Step 1 of the report: train on source clips only, every sample the mixup of two (150 epochs).

    python -m runners.stage1 [--config config.yml] [key.sub=value ...]
    python -m runners.stage1 --resume [RUN]      # finish an interrupted run

Both print the run folder (``runs/NNN-stage1``) as their last line.
"""

from __future__ import annotations

from asd.method.steps import STEP1
from runners.common import Step
from runners.common import main as step_main


class Stage1(Step):
    """Step 1: fresh weights, everything trains (asd.method.steps.STEP1 has its schedule)."""

    spec = STEP1


def main(argv: list[str] | None = None) -> int:
    return step_main(Stage1, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
