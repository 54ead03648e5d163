"""The run folder of a training step, new or resumed, checked before any training starts.

Everything that can be refused is refused here, before a run folder is made or changed: a
config or Step 1 run that does not fit, a data root without clips of the run's classes, a
checkpoint written with other settings. The training loop itself is in ``runners/``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from asd.cache import build_cache
from asd.checkpoint import check_classes, load_checkpoint, resume_state
from asd.cli import load_args_config
from asd.config import Config, ConfigError, load_config
from asd.data import class_table, load_classes, save_classes
from asd.io import atomic_write_text
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
    def start(cls, args: argparse.Namespace,
              ) -> tuple[Config, Optional[pd.DataFrame], Optional[Path]]:
        """A new run's config, class table (None: the data's) and initial model (None: fresh
        weights), checked before its folder is made."""
        return load_args_config(args), None, None


def resume_dir(args: argparse.Namespace, name: str) -> Path:
    """The run folder ``--resume`` names, or the latest ``*-<name>`` run, finished or not."""
    if args.resume == "latest":
        return latest_run(load_args_config(args).runs.dir, name, finished=False)
    if not (Path(args.resume) / "config.yml").is_file():
        raise ConfigError(f"{args.resume} is not a run folder (no config.yml)")
    return Path(args.resume)


def prepare(kind: type[TrainRun], args: argparse.Namespace) -> tuple[Path, Optional[TrainRun]]:
    """The run folder and the ``kind`` of run (a TrainRun with a ``name`` and the ``domains``
    it draws pairs from) to train there; None when the run is finished.

    A resumed run keeps its own config.yml (overrides apply on top), classes and initial model.
    """
    if args.resume:
        run_dir = resume_dir(args, kind.name)
        cfg = load_config(run_dir / "config.yml", args.overrides)
        if resume_state(run_dir, cfg, kind.name) is None:
            return run_dir, None
        table = load_classes(run_dir / "classes.csv")
        init_txt = run_dir / "init.txt"
        init = Path(init_txt.read_text().strip()) if init_txt.is_file() else None
    else:
        run_dir = None
        cfg, table, init = kind.start(args)
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
    return run_dir, kind(cfg=cfg, run_dir=run_dir, cache=cache.path, init=init,
                         classes=table.to_dict("list"), n_source=len(rows["source"]),
                         resume=bool(args.resume), progress=not args.no_progress)
