"""Step 1 under ``torch.cuda.set_sync_debug_mode("warn")``: how often the host waits for the GPU.

Trains Step 1 with the project's command (runners.stage1, any config and overrides, e.g.
``engine.name=amp stage1.epochs=3`` on the demo data) in this process, with CUDA's
synchronisation warnings on from the first batch, and counts them: per training step (from a
batch's start to its end, optimiser step included; docs/gpu.md says there are none) and outside
the steps (the epoch ends read the epoch's loss and accuracy once). Prints the counts, the
distinct places that waited, and the run folder as the command does. Needs a CUDA GPU.

    python -m bench.sync [--config configs/demo.yml] [key.sub=value ...]
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter

import torch

from runners import common, stage1

SYNC = "synchronizing CUDA operation"


class Counting(common.MixupRunner):
    """The project's runner, recording CUDA's synchronisation warnings step by step."""

    per_step: list[int] = []
    between = 0  # outside the steps: epoch starts and ends
    places: Counter = Counter()

    def on_experiment_start(self, runner):
        super().on_experiment_start(runner)
        self.recorder = warnings.catch_warnings(record=True)
        self.seen = self.recorder.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_batch_start(self, runner):
        Counting.between += self.take()
        super().on_batch_start(runner)

    def on_batch_end(self, runner):
        super().on_batch_end(runner)
        Counting.per_step.append(self.take())

    def on_experiment_end(self, runner):
        torch.cuda.set_sync_debug_mode("default")
        Counting.between += self.take()
        self.recorder.__exit__(None, None, None)
        super().on_experiment_end(runner)

    def take(self) -> int:
        """The synchronisation warnings since the last call; their places are counted."""
        waits = [w for w in self.seen if SYNC in str(w.message)]
        Counting.places.update(f"{w.filename}:{w.lineno}" for w in waits)
        self.seen.clear()
        return len(waits)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not torch.cuda.is_available():
        print("bench.sync: no CUDA GPU is visible; it counts waits for a GPU only", file=sys.stderr)
        return 1
    common.MixupRunner = Counting  # runners.common.main builds the runner by this name
    status = stage1.main([*argv, "--no-progress"])
    steps = Counting.per_step
    print(
        f"bench.sync: {len(steps)} training steps, host waits (CUDA sync warnings) a step: "
        f"max {max(steps, default=0)}, total {sum(steps)}; outside the steps: {Counting.between}"
    )
    for place, count in Counting.places.most_common(10):
        print(f"  {count:6d}  {place}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
