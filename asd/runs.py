"""Run folders: numbered and named (``runs/003-stage1/``), found again by kind.

A run folder holds the resolved ``config.yml``, logs, checkpoints and, once its step has
finished, ``model.pth``; later embeddings, detectors, the submission CSVs and the results.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from asd.config import Config, ConfigError, save_config

log = logging.getLogger(__name__)

_RUN = re.compile(r"^(\d{3,})-(.+)$")


def list_runs(runs_dir: str | Path, kind: str | None = None) -> list[Path]:
    """Run folders under ``runs_dir``, oldest first; only ``*-<kind>`` ones when kind is given."""
    found = [(int(m[1]), p) for p in Path(runs_dir).glob("*")
             if (m := _RUN.match(p.name)) and p.is_dir() and kind in (None, m[2])]
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
    """The newest ``*-<kind>`` run folder (the newest finished one unless ``finished=False``);
    newer unfinished runs are named in a warning. A clear error when there is none."""
    runs = list_runs(runs_dir, kind)
    done = [r for r in runs if (r / "model.pth").is_file()] if finished else runs  # step ended
    if not done:
        what = "finished " if finished and runs else ""
        raise ConfigError(f"no {what}'{kind}' run found in {runs_dir}; run that step first "
                          f"or pass FROM=")
    skipped = [r.name for r in runs[runs.index(done[-1]) + 1:]]
    if skipped:
        log.warning("skipping unfinished run(s) %s (resume them with RESUME=); using %s",
                    ", ".join(skipped), done[-1])
    return done[-1]


def finished_run(run: str | Path) -> Path:
    """``run`` if it is a finished run folder, else a ConfigError saying what it lacks."""
    run = Path(run)
    if not (run / "config.yml").is_file():
        raise ConfigError(f"{run} is not a run folder (no config.yml)")
    if not (run / "model.pth").is_file():
        raise ConfigError(f"{run / 'model.pth'} does not exist; the run has not finished "
                          f"(finish it with RESUME={run})")
    return run
