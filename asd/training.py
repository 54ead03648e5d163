"""The run folder of a training step, new or resumed: everything that can be refused (a config
or Step 1 run that does not fit, a data root without the run's clips, a checkpoint written with
other settings) is refused before a run folder is made or changed. The loop is in ``runners/``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from asd.cache import build_cache
from asd.checkpoint import check_classes, load_checkpoint, resume_state
from asd.cli import load_args_config
from asd.config import Config, ConfigError, load_config
from asd.data import class_table, load_classes, save_classes
from asd.io import atomic_write_text
from asd.model import build_model
from asd.runs import latest_run, new_run
from asd.sampling import check_clips, training_rows


@dataclass
class TrainRun:
    """What a training process needs; small and picklable (spawned DDP processes get it)."""

    cfg: Config
    run_dir: Path
    cache: Path  # the feature cache folder
    classes: dict  # the run's class table, as dict of lists
    n_source: int  # source training clips of the run's classes
    init: Optional[Path] = None  # the model the step starts from (None: fresh weights)
    resume: bool = False  # continue from checkpoints/last.pth where there is one
    progress: bool = True

    @classmethod
    def start(cls, args) -> tuple[Config, Optional[pd.DataFrame], Optional[Path]]:
        """A new run's config, class table (None: the data's) and initial model (None: fresh)."""
        return load_args_config(args), None, None


def check_config(cfg: Config, name: str) -> None:
    """What the config alone refuses, before any run folder is made or changed: a model it
    cannot build, a GPU engine without a GPU, a batch that does not split over DDP processes."""
    try:
        build_model(cfg, 1)
    except ValueError as err:
        raise ConfigError(f"the model settings do not make a model: {err}") from None
    engine = cfg.engine
    if engine.name in ("gpu", "amp") and not torch.cuda.is_available():
        raise ConfigError(f"engine.name={engine.name} needs a CUDA GPU, and none is visible")
    world = engine.world_size if engine.name == "ddp" else 1
    if getattr(cfg, name).batch_size % world:
        raise ConfigError(f"{name}.batch_size={getattr(cfg, name).batch_size} does not split "
                          f"over engine.world_size={world} processes")


def prepare(kind: type[TrainRun], args: argparse.Namespace) -> tuple[Path, Optional[TrainRun]]:
    """The run folder and the ``kind`` of run (a TrainRun with a ``name`` and the ``domains``
    it draws pairs from) to train there, None when it is finished. A resumed run (``--resume``
    names it, else the latest unfinished one) keeps its config.yml, classes and initial model."""
    if args.resume:
        run_dir = Path(args.resume) if args.resume != "latest" else latest_run(
            load_args_config(args).runs.dir, kind.name, finished=False)
        if not (run_dir / "config.yml").is_file():
            raise ConfigError(f"{run_dir} is not a run folder (no config.yml)")
        cfg = load_config(run_dir / "config.yml", args.overrides)
        check_config(cfg, kind.name)
        if (run_dir / "model.pth").is_file():
            return run_dir, None  # finished
        table = load_classes(run_dir / "classes.csv")
        init_txt = run_dir / "init.txt"
        init = Path(init_txt.read_text().strip()) if init_txt.is_file() else None
    else:
        run_dir = None
        cfg, table, init = kind.start(args)
        check_config(cfg, kind.name)
    if init is not None:
        check_classes(load_checkpoint(init), table, init)
    cache = build_cache(cfg, progress=not args.no_progress)
    table = class_table(cache.index) if table is None else table
    _, rows = training_rows(cache.index, table)
    check_clips(rows, sorted(set(kind.domains)), table, cache.settings.get("root"), kind.name)
    if run_dir is None:
        run_dir = new_run(cfg, kind.name)
        save_classes(table, run_dir / "classes.csv")
        if init is not None:
            atomic_write_text(run_dir / "init.txt", f"{init.resolve()}\n")
    elif resume_state(run_dir, cfg, kind.name) is None:  # changes the run only once all is checked
        return run_dir, None  # every epoch was done: model.pth written from the last checkpoint
    return run_dir, kind(cfg=cfg, run_dir=run_dir, cache=cache.path, init=init,
                         classes=table.to_dict("list"), n_source=len(rows["source"]),
                         resume=bool(args.resume), progress=not args.no_progress)
