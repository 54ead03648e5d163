"""The two training steps of the report, declared once for both sides: the run setup
(``asd.infra.training``) and the Catalyst runner (``runners/``) read them from here.

A training step ("Step 1", "Step 2") is named by its config group (``stage1``, ``stage2``), which
also names its run folders (``runs/NNN-stage1``). It draws mixup pairs from two domains, trains
all of the model or a part of it, and runs for a schedule of logged epochs of optimiser
iterations. "Step" means only this here; an optimiser step is an "iteration".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from asd.infra.config import Config, StepConfig


class Schedule(NamedTuple):
    """How long a training step runs, in the units Catalyst's loop counts."""

    epochs: int  # logged epochs (Step 2: blocks of stage2.log_every iterations)
    iterations_per_epoch: int  # optimiser iterations of a full epoch
    iterations: int  # optimiser iterations in all (the last epoch may be shorter)
    checkpoint_every: int  # epochs between two checkpoints


@dataclass(frozen=True)
class TrainingStep:
    """The contract of a training step: what both the run setup and the runner rely on."""

    name: str  # the config group and the run folder's kind: "stage1" or "stage2"
    domains: tuple[str, str]  # where the first and the second clip of a mixup pair come from
    starts_from: str | None  # the step whose finished run it starts from (None: fresh weights)
    unit: str  # what its progress is counted in on the console: "epoch" or "iteration"

    def settings(self, cfg: Config) -> StepConfig:
        """The config group of this step."""
        return getattr(cfg, self.name)

    def trainable(self, cfg: Config) -> tuple[str, ...] | None:
        """The parts of the embedding net that train (None: all of it); the head always trains."""
        return None

    def schedule(self, cfg: Config, n_source: int) -> Schedule:
        """The schedule of this step for a run with ``n_source`` source training clips."""
        raise NotImplementedError

    def position(self, cfg: Config, progress: dict) -> tuple[int, int]:
        """How far a checkpoint's progress dict got: (done, total), counted in ``unit``."""
        raise NotImplementedError


class _Step1(TrainingStep):
    """Pairs of source clips; an epoch: a mixed sample per source clip, in whole batches."""

    def schedule(self, cfg: Config, n_source: int) -> Schedule:
        settings = cfg.stage1
        # Every source clip is the first clip of one mixed sample per epoch, in whole batches;
        # an epoch is never empty.
        iterations_per_epoch = max(1, math.ceil(n_source / settings.batch_size))
        return Schedule(
            epochs=settings.epochs,
            iterations_per_epoch=iterations_per_epoch,
            iterations=settings.epochs * iterations_per_epoch,
            checkpoint_every=settings.checkpoint_every,
        )

    def position(self, cfg: Config, progress: dict) -> tuple[int, int]:
        return int(progress["epoch"]), cfg.stage1.epochs


class _Step2(TrainingStep):
    """Pairs of one source and one target clip; an "epoch" is ``stage2.log_every`` iterations."""

    def trainable(self, cfg: Config) -> tuple[str, ...] | None:
        return cfg.stage2.trainable

    def schedule(self, cfg: Config, n_source: int) -> Schedule:
        settings = cfg.stage2
        # Step 2 counts iterations, not passes over the data; Catalyst's epochs are blocks of
        # log_every iterations, so logs and checkpoints fall on whole blocks.
        return Schedule(
            epochs=math.ceil(settings.iterations / settings.log_every),
            iterations_per_epoch=settings.log_every,
            iterations=settings.iterations,
            checkpoint_every=max(1, settings.checkpoint_every // settings.log_every),
        )

    def position(self, cfg: Config, progress: dict) -> tuple[int, int]:
        return int(progress["iteration"]), cfg.stage2.iterations


STEP1 = _Step1(
    name="stage1",
    domains=("source", "source"),
    starts_from=None,
    unit="epoch",
)
STEP2 = _Step2(
    name="stage2",
    domains=("source", "target"),
    starts_from="stage1",
    unit="iteration",
)
