"""The run folder of a training step, new or resumed: everything that can be refused (a config
or Step 1 run that does not fit, a data root without the run's clips, a checkpoint written with
other settings) is refused before a run folder is made or changed. The loop is in ``runners/``.
"""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asd.infra.checkpoint import check_classes, load_checkpoint, resume_state
from asd.infra.cli import load_args_config
from asd.infra.config import Config, ConfigError, load_config
from asd.infra.data import class_mode, class_table, load_classes, save_classes, warn_single_class
from asd.infra.feature_cache import build_cache
from asd.infra.io import atomic_write_text
from asd.infra.runs import latest_run, new_run
from asd.method.model import build_model
from asd.method.sampling import check_clips, training_rows

DEVICE_SHARE = 0.6  # of a GPU's free memory the cache may take; the rest is the training's own


@dataclass
class TrainRun:
    """What a training process needs; small and picklable (spawned DDP processes get it)."""

    cfg: Config
    run_dir: Path
    cache: Path  # the feature cache folder
    classes: dict  # the run's class table, as dict of lists
    n_source: int  # source training clips of the run's classes
    init: Path | None = None  # the model the step starts from (None: fresh weights)
    cache_on_device: bool = False  # hold the training rows in GPU memory (use_device_cache)
    resume: bool = False  # continue from checkpoints/last.pth where there is one
    progress: bool = True

    @classmethod
    def start(cls, args) -> tuple[Config, pd.DataFrame | None, Path | None]:
        """A new run's config, class table (None: the data's) and initial model (None: fresh)."""
        return load_args_config(args), None, None


def world_size(cfg: Config) -> int:
    """Training processes: ``engine.world_size`` for DDP (0: one per visible GPU), else 1."""
    ddp = cfg.engine.name.startswith("ddp")
    return (cfg.engine.world_size or torch.cuda.device_count()) if ddp else 1


def check_config(cfg: Config, name: str) -> None:
    """What the config alone refuses, before any run folder is made or changed: a model it
    cannot build, an engine this machine cannot run, a batch that does not split over DDP."""
    try:
        build_model(cfg, 1)
    except ValueError as err:
        raise ConfigError(f"the model settings do not make a model: {err}") from None
    engine, cuda, world = cfg.engine, torch.cuda.is_available(), world_size(cfg)
    gpus = torch.cuda.device_count() if cuda else 0
    if engine.name in ("gpu", "amp") and not cuda:
        raise ConfigError(f"engine.name={engine.name} needs a CUDA GPU, and none is visible")
    if world == 0 or gpus and world > gpus:  # two processes on one GPU: NCCL refuses
        raise ConfigError(
            f"engine.world_size={engine.world_size}: DDP takes one GPU a process "
            f"(0: all), and {gpus} GPU(s) are visible (CPU: name the number)"
        )
    amp = engine.amp_dtype if engine.name in ("amp", "ddp_amp") else None
    if amp == "fp16" and not cuda:
        raise ConfigError("engine.amp_dtype=fp16 needs a CUDA GPU; on the CPU use bf16")
    if amp == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(
            f"engine.amp_dtype=bf16: the GPU ({torch.cuda.get_device_name()}) "
            "does not support bf16; use engine.amp_dtype=fp16"
        )
    if getattr(cfg, name).batch_size % world:
        raise ConfigError(
            f"{name}.batch_size={getattr(cfg, name).batch_size} does not split "
            f"over engine.world_size={world} processes"
        )


def use_device_cache(cfg: Config, features: np.ndarray, rows: np.ndarray) -> bool:
    """Whether the training processes hold ``rows`` of the cache's ``features`` (N, T, F) in
    GPU memory: asked for, on CUDA, and within DEVICE_SHARE of the free memory of every GPU the
    run uses. Where they do not fit, a warning says so (the rows are then memory-mapped)."""
    if not (cfg.engine.cache_on_device and cfg.engine.name != "cpu" and torch.cuda.is_available()):
        return False
    need = len(rows) * features[:1].nbytes
    free = min(torch.cuda.mem_get_info(i)[0] for i in range(world_size(cfg)))
    if need <= DEVICE_SHARE * free:
        return True
    warnings.warn(
        f"engine.cache_on_device: the {need / 1e9:.1f} GB of training features do "
        f"not fit in GPU memory ({free / 1e9:.1f} GB free); they are read from the "
        "memory-mapped cache instead",
        stacklevel=2,
    )
    return False


def prepare(kind: type[TrainRun], args: argparse.Namespace) -> tuple[Path, TrainRun | None]:
    """The run folder and the ``kind`` of run (a TrainRun with a ``name`` and the ``domains``
    it draws pairs from) to train there, None when it is finished. A resumed run (``--resume``
    names it, else the latest unfinished one) keeps its config.yml, classes and initial model."""
    if args.resume:
        run_dir = (
            Path(args.resume)
            if args.resume != "latest"
            else latest_run(load_args_config(args).runs.dir, kind.name, finished=False)
        )
        if not (run_dir / "config.yml").is_file():
            raise ConfigError(f"{run_dir} is not a run folder (no config.yml)")
        cfg = load_config(run_dir / "config.yml", args.overrides)
        if (run_dir / "model.pth").is_file():
            return run_dir, None  # finished
        table = load_classes(run_dir / "classes.csv")
        init_txt = run_dir / "init.txt"  # relative to the run (absolute in older runs)
        init = run_dir / init_txt.read_text().strip() if init_txt.is_file() else None
    else:
        run_dir = None
        cfg, table, init = kind.start(args)
    check_config(cfg, kind.name)
    if init is not None:
        check_classes(load_checkpoint(init), table, init)
    cache = build_cache(cfg, progress=not args.no_progress)
    if table is None:  # a new run: the classes of the data (data.classes)
        mode = class_mode(cfg.data.classes, cache.settings.get("layout", "dcase2021"))
        table = class_table(cache.index, mode)
        warn_single_class(table, cache.settings.get("root"))
    _, rows = training_rows(cache.index, table)
    check_clips(rows, sorted(set(kind.domains)), table, cache.settings.get("root"), kind.name)
    on_device = use_device_cache(cfg, cache.features, np.union1d(*(rows[d] for d in kind.domains)))
    if run_dir is None:
        run_dir = new_run(cfg, kind.name)
        save_classes(table, run_dir / "classes.csv")
        if init is not None:  # relative: the runs folder may move
            init_txt = os.path.relpath(init.resolve(), run_dir.resolve())
            atomic_write_text(run_dir / "init.txt", f"{init_txt}\n")
    elif resume_state(run_dir, cfg, kind.name) is None:  # changes the run only once all is checked
        return run_dir, None  # every epoch was done: model.pth written from the last checkpoint
    return run_dir, kind(
        cfg=cfg,
        run_dir=run_dir,
        cache=cache.path,
        init=init,
        classes=table.to_dict("list"),
        n_source=len(rows["source"]),
        cache_on_device=on_device,
        resume=bool(args.resume),
        progress=not args.no_progress,
    )
