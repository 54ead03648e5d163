"""The run folder of a training step, new or resumed: everything that can be refused (a config
or Step 1 run that does not fit, a data root without the run's clips, a checkpoint written with
other settings) is refused before a run folder is made or changed. The loop is in ``runners/``.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch

from asd.infra.checkpoint import check_classes, load_checkpoint
from asd.infra.cli import load_args_config
from asd.infra.config import Config, ConfigError, load_config
from asd.infra.data import class_mode, class_table, load_classes, save_classes, warn_single_class
from asd.infra.feature_cache import build_cache
from asd.infra.runs import Run, latest_run
from asd.method.model import build_model
from asd.method.sampling import check_clips, training_rows
from asd.method.steps import TrainingStep

log = logging.getLogger(__name__)

# The share of a GPU's free memory the cache may take; the rest is the training's own.
DEVICE_SHARE = 0.6


class RunStart(NamedTuple):
    """What a new run starts with: its config, its class table (None: the data's) and the
    model it starts from (None: fresh weights)."""

    cfg: Config
    classes: pd.DataFrame | None
    init: Path | None


@dataclass
class TrainRun:
    """What a training process needs; small and picklable (spawned DDP processes get it).
    A subclass names the training step it runs in ``spec``."""

    spec: ClassVar[TrainingStep]  # the contract of the training step (asd.method.steps)
    cfg: Config
    run_dir: Path
    cache: Path  # the feature cache folder
    classes: dict  # the run's class table, as dict of lists
    n_source: int  # source training clips of the run's classes
    init: Path | None = None  # the model the step starts from (None: fresh weights)
    resume: bool = False  # continue from the run's last checkpoint where there is one
    progress: bool = True

    @property
    def run(self) -> Run:
        return Run(self.run_dir)

    @classmethod
    def start(cls, args) -> RunStart:
        """A new run's config, class table (None: the data's) and initial model (None: fresh)."""
        return RunStart(load_args_config(args), None, None)


def world_size(cfg: Config) -> int:
    """Training processes: ``engine.world_size`` for DDP (0: one per visible GPU), else 1."""
    if not cfg.engine.name.startswith("ddp"):
        return 1
    return cfg.engine.world_size or torch.cuda.device_count()


def check_config(cfg: Config, name: str) -> None:
    """What the config alone refuses, before any run folder is made or changed: a model it
    cannot build, an engine this machine cannot run, a batch that does not split over DDP.
    Nothing here creates a CUDA context (``check_device`` asks the GPU, in the training process)."""
    try:
        build_model(cfg, 1)
    except ValueError as err:
        raise ConfigError(f"the model settings do not make a model: {err}") from None
    engine = cfg.engine
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    ddp = engine.name.startswith("ddp")
    if engine.name in ("gpu", "amp") and not cuda:
        raise ConfigError(f"engine.name={engine.name} needs a CUDA GPU, and none is visible")
    if ddp and engine.world_size == 0 and gpus == 0:
        raise ConfigError(
            f"engine.name={engine.name} with engine.world_size=0 runs one process per visible "
            "GPU, and none is visible; on the CPU name the number of processes "
            "(e.g. engine.world_size=2)"
        )
    # Two processes on one GPU: NCCL refuses them, so the config is refused first.
    if ddp and gpus > 0 and engine.world_size > gpus:
        raise ConfigError(
            f"engine.world_size={engine.world_size}: DDP runs one process per GPU, and "
            f"{gpus} GPU(s) are visible; use at most {gpus} (0: all of them)"
        )
    # amp_dtype matters only to the engines that cast; fp16 autocast exists only on CUDA.
    amp = engine.amp_dtype if engine.name in ("amp", "ddp_amp") else None
    if amp == "fp16" and not cuda:
        raise ConfigError("engine.amp_dtype=fp16 needs a CUDA GPU; on the CPU use bf16")
    # Each DDP process draws an equal share of every batch.
    world = world_size(cfg)
    if getattr(cfg, name).batch_size % world:
        raise ConfigError(
            f"{name}.batch_size={getattr(cfg, name).batch_size} does not split "
            f"over engine.world_size={world} processes"
        )


def check_device(cfg: Config, device: torch.device) -> None:
    """What a training process refuses on its own device, once its cache rows are there (the
    parent of DDP processes never touches a GPU): bf16 autocast on a GPU without bf16."""
    amp = cfg.engine.amp_dtype if cfg.engine.name in ("amp", "ddp_amp") else None
    if amp != "bf16" or device.type != "cuda":
        return
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(
            f"engine.amp_dtype=bf16: the GPU ({torch.cuda.get_device_name(device)}) "
            "does not support bf16; use engine.amp_dtype=fp16"
        )


def use_device_cache(
    cfg: Config, features: np.ndarray, rows: np.ndarray, device: torch.device
) -> bool:
    """Whether a training process holds ``rows`` of the cache's ``features`` (N, T, F) in the
    memory of its own ``device``: asked for (``engine.cache_on_device``), on CUDA, and within
    DEVICE_SHARE of that GPU's free memory. Where they do not fit, a warning says so (the rows
    are then read from the memory-mapped cache)."""
    if not (cfg.engine.cache_on_device and device.type == "cuda"):
        return False
    # One row's bytes times the rows, against what the GPU has free now.
    need = len(rows) * features[:1].nbytes
    free, _ = torch.cuda.mem_get_info(device)
    if need <= DEVICE_SHARE * free:
        return True
    warnings.warn(
        f"engine.cache_on_device: the {need / 1e9:.1f} GB of training features do "
        f"not fit in the memory of {device} ({free / 1e9:.1f} GB free); they are read from "
        "the memory-mapped cache instead",
        stacklevel=2,
    )
    return False


def prepare(kind: type[TrainRun], args: argparse.Namespace) -> tuple[Path, TrainRun | None]:
    """The run folder and the ``kind`` of run to train there (a TrainRun of the training step
    ``kind.spec``), None when it is finished. A resumed run (``--resume`` names it, else the
    latest unfinished one) keeps its config, classes and initial model, and says where it goes
    on from."""
    step = kind.spec
    # A resumed run brings its own config, classes and initial model; a new one asks the step.
    if args.resume:
        run = _run_to_resume(step, args)
        cfg = load_config(run.config, args.overrides)
        if run.is_finished():
            log.info("%s has finished (its %s exists); nothing to resume", run, run.model.name)
            return run.path, None
        table = load_classes(run.classes)
        init = run.init()
    else:
        run = None
        begin = kind.start(args)
        cfg = begin.cfg
        table = begin.classes
        init = begin.init
    # Everything that can be refused is checked before a run folder is made or changed.
    check_config(cfg, step.name)
    if init is not None:
        check_classes(load_checkpoint(init), table, init)
    cache = build_cache(cfg, progress=not args.no_progress)
    # A new run without a table of its own takes the classes of the data (data.classes).
    if table is None:
        mode = class_mode(cfg.data.classes, cache.settings.get("layout", "dcase2021"))
        table = class_table(cache.index, mode)
        warn_single_class(table, cache.settings.get("root"))
    # The step's domains must have training clips of every class, or its mixup cannot draw.
    _, rows = training_rows(cache.index, table)
    check_clips(rows, sorted(set(step.domains)), table, cache.settings.get("root"), step.name)
    if run is None:
        run = Run.create(cfg, step.name)
        save_classes(table, run.classes)
        if init is not None:
            run.write_init(init)
    # A resumed run is changed only now that all is checked.
    else:
        progress = run.resume(cfg, step.name)
        log.info("%s: %s", run, resume_line(step, cfg, progress, run))
        # Every epoch was done: resume wrote the model from the checkpoint, nothing is left.
        if progress is not None and progress.get("done"):
            return run.path, None
    return run.path, kind(
        cfg=cfg,
        run_dir=run.path,
        cache=cache.path,
        init=init,
        classes=table.to_dict("list"),
        n_source=len(rows["source"]),
        resume=bool(args.resume),
        progress=not args.no_progress,
    )


def _run_to_resume(step: TrainingStep, args: argparse.Namespace) -> Run:
    """The run ``--resume`` names, else the latest unfinished run of ``step``."""
    if args.resume != "latest":
        return Run.open(args.resume)
    return Run.open(latest_run(load_args_config(args).runs.dir, step.name, finished=False))


def resume_line(step: TrainingStep, cfg: Config, progress: dict | None, run: Run) -> str:
    """Where a resumed run goes on from, in words: "resuming at epoch k of n" (Step 2: iteration
    k of n), "no checkpoint yet: starting again", or that all was done."""
    if progress is None:
        return "no checkpoint yet: starting again"
    done, total = step.position(cfg, progress)
    if progress.get("done"):
        return f"all {total} {step.unit}s were done; wrote {run.model.name}"
    return f"resuming at {step.unit} {done + 1} of {total}"
