"""Run folders: numbered and named (``runs/003-stage1/``), found again by kind.

A run folder holds the resolved ``config.yml``, logs, checkpoints and, later, embeddings,
detectors, the submission CSVs and the results table.
"""

from __future__ import annotations

import re
from pathlib import Path

from asd.config import Config, ConfigError, save_config

_RUN = re.compile(r"^(\d{3,})-(.+)$")


def list_runs(runs_dir: str | Path, kind: str | None = None) -> list[Path]:
    """Run folders under ``runs_dir``, oldest first; only ``*-<kind>`` ones when kind is given."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for p in runs_dir.iterdir():
        m = _RUN.match(p.name)
        if p.is_dir() and m and (kind is None or m.group(2) == kind):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def new_run(cfg: Config, kind: str) -> Path:
    """Create the next numbered run folder ``<runs.dir>/NNN-<kind>`` and write the config."""
    runs_dir = Path(cfg.runs.dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    existing = [int(_RUN.match(p.name).group(1)) for p in runs_dir.iterdir() if _RUN.match(p.name)]
    number = max(existing, default=0) + 1
    while True:
        run = runs_dir / f"{number:03d}-{kind}"
        try:
            run.mkdir()
            break
        except FileExistsError:  # another process took this number
            number += 1
    save_config(cfg, run / "config.yml")
    return run


def latest_run(runs_dir: str | Path, kind: str) -> Path:
    """The newest ``*-<kind>`` run folder, or a clear error when there is none."""
    runs = list_runs(runs_dir, kind)
    if not runs:
        raise ConfigError(f"no '{kind}' run found in {runs_dir}; run that step first or pass FROM=")
    return runs[-1]
