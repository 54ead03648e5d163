"""Run folders: numbered and named (``runs/003-stage1/``), found again by kind.

A run folder holds the resolved ``config.yml``, logs, checkpoints and, once its step has
finished, ``model.pth``; later embeddings, detectors, the submission CSVs and the results.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from asd.infra.config import Config, ConfigError, save_config

_RUN = re.compile(r"^(\d{3,})-(.+)$")


def list_runs(runs_dir: str | Path, kind: str | None = None) -> list[Path]:
    """Run folders under ``runs_dir``, oldest first; only ``*-<kind>`` ones when kind is given."""
    found = [
        (int(m[1]), p)
        for p in Path(runs_dir).glob("*")
        if (m := _RUN.match(p.name)) and p.is_dir() and kind in (None, m[2])
    ]
    return [p for _, p in sorted(found)]


def new_run(cfg: Config, kind: str) -> Path:
    """Create the next numbered run folder ``<runs.dir>/NNN-<kind>`` and write the config."""
    runs_dir = Path(cfg.runs.dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    number = max((int(_RUN.match(p.name)[1]) for p in list_runs(runs_dir)), default=0) + 1
    while True:
        run = runs_dir / f"{number:03d}-{kind}"
        try:
            run.mkdir()
            break
        except FileExistsError:  # another process took this number
            number += 1
    save_config(cfg, run / "config.yml")
    return run


def latest_run(runs_dir: str | Path, kind: str, finished: bool = True) -> Path:
    """The newest finished ``*-<kind>`` run (its step wrote ``model.pth``), naming newer
    unfinished ones in a warning; with ``finished=False`` the newest unfinished one (to resume).
    A clear error when there is none."""
    runs = list_runs(runs_dir, kind)
    found = [r for r in runs if (r / "model.pth").is_file() == finished]
    if not found:
        raise ConfigError(
            f"no {'' if finished else 'un'}finished '{kind}' run found in "
            f"{runs_dir}; "
            + ("run that step first or pass FROM=" if finished else "pass the run to resume")
        )
    skipped = [r.name for r in runs[runs.index(found[-1]) + 1 :]]
    if skipped and finished:
        logging.getLogger(__name__).warning(
            "skipping unfinished run(s) %s (resume them with RESUME=); using %s",
            ", ".join(skipped),
            found[-1],
        )
    return found[-1]


def finished_run(run: str | Path) -> Path:
    """``run`` if it is a finished run folder, else a ConfigError saying what it lacks."""
    run = Path(run)
    if not run.exists():
        raise ConfigError(f"run folder {run} does not exist")
    if not (run / "config.yml").is_file():
        raise ConfigError(f"{run} is not a run folder (no config.yml)")
    if not (run / "model.pth").is_file():
        raise ConfigError(
            f"{run / 'model.pth'} does not exist; the run has not finished "
            f"(finish it with make {run.name.split('-', 1)[-1]} RESUME={run})"
        )
    return run
