"""Run folders: numbered and named (``runs/003-stage1/``), found again by kind.

:class:`Run` owns a run folder: it is the one place that names the files a run holds (the
resolved config, the class table, the logs, the checkpoints and, once its training step has
finished, the model; later the embeddings, detectors, submission CSVs, scores and results), the
run it started from (Step 2 -> Step 1), whether it has finished, and where an interrupted run
resumes. Every other module asks a ``Run`` for a path; none spells a file name of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from asd.infra.config import Config, ConfigError, config_diffs, load_config, save_config
from asd.infra.io import atomic_write_text

log = logging.getLogger(__name__)

# asd.infra.checkpoint (and with it torch) is imported where a checkpoint is read, so that the
# commands that never read one (index, download) start without torch.

# A run folder's name: its number (three digits or more) and its kind, "003-stage1".
_RUN = re.compile(r"^(\d{3,})-(.+)$")


@dataclass(frozen=True)
class SubmittedData:
    """What a run's submission was made from: the test clips it scored, and where they were.
    Two data roots with the same test clips (a moved or copied data folder) are the same data."""

    root: str | None  # the resolved data root (None: submitted before runs recorded it)
    sections: tuple[tuple[str, str, str], ...]  # sorted (dataset, machine, section)
    clips: int  # test clips
    digest: str  # sha256 of the sorted test clip names (dataset/machine/file)

    def describe(self) -> str:
        """The root, the machines and the clips, as a refusal names them."""
        root = f"data root {self.root}" if self.root else "its data root"
        machines = sorted({machine for _, machine, _ in self.sections})
        return (
            f"{root} ({len(self.sections)} sections of {', '.join(machines) or 'no machine'}, "
            f"{self.clips} test clips)"
        )


@dataclass(frozen=True)
class Run:
    """A run folder, and the name of everything it holds."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # What the folder's name says: runs/003-stage2 is run number 3, of the kind "stage2".
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """The training step that made the run ("stage1", "stage2"): the name after NNN-."""
        return self.name.split("-", 1)[-1]

    # What a training step writes.
    @property
    def config(self) -> Path:
        """The resolved config the run was made with."""
        return self.path / "config.yml"

    @property
    def classes(self) -> Path:
        """The class table: one class per (machine, section, domain) of the training data."""
        return self.path / "classes.csv"

    @property
    def init_file(self) -> Path:
        """The name of the model the run started from (Step 2: its Step 1 run's model)."""
        return self.path / "init.txt"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def train_log(self) -> Path:
        """Catalyst's CSV log, named after the loader ("train"): a row per epoch."""
        return self.logs / "train.csv"

    @property
    def tensorboard(self) -> Path:
        return self.logs / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The latest checkpoint, with the resume state (optimiser, sampler, loss scale)."""
        return self.checkpoints / "last.pth"

    @property
    def model(self) -> Path:
        """The trained model, written once the training step has finished."""
        return self.path / "model.pth"

    # What asd.submit writes.
    @property
    def embeddings(self) -> Path:
        return self.path / "embeddings.npz"

    @property
    def detectors(self) -> Path:
        return self.path / "detectors"

    @property
    def submission(self) -> Path:
        """The challenge CSVs, as the official evaluator reads them."""
        return self.path / "submission"

    @property
    def scores(self) -> Path:
        """The submission's scores with their context (threshold, decision, detector)."""
        return self.path / "scores.csv"

    @property
    def submitted_data(self) -> Path:
        """The data root and sections the submission was made from (SubmittedData)."""
        return self.path / "submitted.json"

    # What asd.evaluate and asd.notebooks write.
    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def results_md(self) -> Path:
        return self.path / "results.md"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def notebooks(self) -> Path:
        return self.path / "notebooks"

    # What the run is.
    def is_finished(self) -> bool:
        """Whether its training step has finished (it wrote the model)."""
        return self.model.is_file()

    def init(self) -> Path | None:
        """The model the run started from (None: fresh weights). ``init.txt`` names it relative
        to the run (older runs: absolute, or relative to the runs folder)."""
        if not self.init_file.is_file():
            return None
        name = self.init_file.read_text().strip()
        # Relative to the run first (what write_init writes), then to the runs folder (older runs).
        for candidate in (self.path / name, self.path.parent / name):
            if candidate.is_file():
                return candidate
        # A missing model is returned all the same: the caller names it in its own message.
        return self.path / name

    def write_init(self, model: Path) -> None:
        """Name ``model`` as the one the run started from, relative: the runs folder may move."""
        relative = os.path.relpath(Path(model).resolve(), self.path.resolve())
        atomic_write_text(self.init_file, f"{relative}\n")

    def chain(self) -> list[Run]:
        """The runs that led to this one, oldest first: ``[Step 1 run, Step 2 run]`` for Step 2."""
        chain = [self]
        # Follow init.txt back until a run started from fresh weights.
        while (init := chain[0].init()) is not None:
            before = Run(init.parent)
            if not init.is_file() or not before.config.is_file():
                raise ConfigError(
                    f"{chain[0].init_file} names {init}, which is not the model of a run "
                    f"folder (moved or deleted?)"
                )
            # Hand-edited init.txt files could point back at a later run; stop rather than loop.
            if any(before.path.resolve() == r.path.resolve() for r in chain):
                raise ConfigError(f"{chain[0].init_file}: the runs name each other in a loop")
            chain.insert(0, before)
        return chain

    # Finding and making run folders.
    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run folder ``path``; ConfigError if there is no such folder or it is not a run."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise ConfigError(f"no such folder: {run.path}")
        if not run.config.is_file():
            raise ConfigError(f"{run.path} is not a run folder (no {run.config.name})")
        return run

    @classmethod
    def open_finished(cls, path: str | Path) -> Run:
        """The run folder ``path`` if its training step has finished; ConfigError else."""
        run = cls.open(path)
        if not run.is_finished():
            raise ConfigError(
                f"{run.model} does not exist; the run has not finished "
                f"(finish it with make {run.kind} RESUME={run.path})"
            )
        return run

    @classmethod
    def create(cls, cfg: Config, kind: str) -> Run:
        """The next numbered run folder ``<runs.dir>/NNN-<kind>``, made, with the config in it."""
        runs_dir = Path(cfg.runs.dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        # Numbers count across kinds, so the folders sort in the order they were made.
        number = max((run_number(p) for p in list_runs(runs_dir)), default=0) + 1
        # mkdir claims a number atomically; where another process took it first, take the next.
        while True:
            run = cls(runs_dir / f"{number:03d}-{kind}")
            try:
                run.path.mkdir()
                break
            except FileExistsError:
                number += 1
        save_config(cfg, run.config)
        return run

    # Resuming an interrupted training step.
    def resume(self, cfg: Config, step: str) -> dict | None:
        """Make the run ready to go on after its last checkpoint and return that checkpoint's
        progress (None: no checkpoint yet). Removes a killed writer's temporary files, refuses
        a checkpoint written with other settings than ``cfg`` (the run's config.yml now), drops
        the log rows of later epochs (they are logged again); where every epoch was done,
        writes the model as the finished run would have."""
        from asd.infra.checkpoint import MODEL_GROUPS, load_checkpoint, save_checkpoint

        last = self.last_checkpoint
        # A writer killed mid-write leaves its temporary file; the checkpoint itself is whole.
        for stale in last.parent.glob(f".{last.name}.*.tmp"):
            stale.unlink()
        # Without a checkpoint the run starts again, so no logged epoch stays.
        if not last.is_file():
            trim_log(self.train_log, 0)
            return None
        ckpt = load_checkpoint(last)
        # Only the settings that shape the model and this step's training must be unchanged.
        groups = (*MODEL_GROUPS, step)
        diffs = config_diffs(ckpt["config"], cfg.to_dict(), groups, "checkpoint", self.config.name)
        if diffs:
            raise ConfigError(
                f"{self.config} differs from the settings {last} was "
                f"trained with ({'; '.join(diffs)}); put them back or start a new run"
            )
        progress = ckpt["progress"]
        # Epochs after the checkpoint are trained and logged again.
        trim_log(self.train_log, int(progress["epoch"]))
        # Killed after the last checkpoint but before the model was written: write it now.
        if progress.get("done"):
            save_checkpoint(
                self.model,
                cfg=cfg,
                progress=progress,
                classes=ckpt["classes"],
                model=ckpt["model"],
                head=ckpt["head"],
                **ckpt["feature_stats"],
            )
        return progress

    def resume_checkpoint(self) -> dict | None:
        """The last checkpoint with its resume state, for the training loop (None: none yet)."""
        from asd.infra.checkpoint import load_checkpoint

        return load_checkpoint(self.last_checkpoint) if self.last_checkpoint.is_file() else None

    def step1_model(self, cfg: Config) -> Path:
        """The model of this finished Step 1 run, if it was trained with the features, model
        and loss settings of ``cfg``; ConfigError else (Step 2 starts from it)."""
        from asd.infra.checkpoint import MODEL_GROUPS, load_checkpoint

        # Step 2 builds the same model on the same features, so those settings must agree.
        step1_config = load_config(self.config).to_dict()
        diffs = config_diffs(step1_config, cfg.to_dict(), MODEL_GROUPS, "Step 1 run", "config")
        if diffs:
            raise ConfigError(
                f"the config differs from the Step 1 run {self.path} ({'; '.join(diffs)}); "
                "Step 2 must use the same features, model and loss"
            )
        # The model's own progress says which step wrote it, whatever the folder is called.
        stage = load_checkpoint(self.model)["progress"].get("stage")
        if stage != "stage1":
            raise ConfigError(
                f"{self.path} is not a Step 1 run (its {self.model.name} is from {stage}); "
                "Step 2 starts from a finished Step 1 run"
            )
        return self.model

    # The data a submission was made from: a submitted run is never rewritten for other data.
    def read_submitted_data(self) -> SubmittedData | None:
        """What the run's submission was made from (None: not submitted). Runs submitted before
        the record existed give their test clips from the scores, and no root."""
        if self.submitted_data.is_file():
            record = json.loads(self.submitted_data.read_text())
            sections = tuple(tuple(section) for section in record["sections"])
            return SubmittedData(record["root"], sections, record["clips"], record["digest"])
        if self.scores.is_file():
            keys = ["dataset", "machine", "section", "file"]
            scores = pd.read_csv(self.scores, dtype=str, keep_default_na=False, usecols=keys)
            return _test_clips(None, scores)
        return None

    def write_submitted_data(self, data: SubmittedData) -> None:
        record = {
            "root": data.root,
            "sections": [list(section) for section in data.sections],
            "clips": data.clips,
            "digest": data.digest,
        }
        atomic_write_text(self.submitted_data, json.dumps(record, indent=1) + "\n")

    def check_same_data(self, data: SubmittedData, command: str, advice: str) -> None:
        """ConfigError, in one line ending with ``advice``, where the run was submitted for
        other test clips than ``data``'s (``command`` would replace what the run holds)."""
        before = self.read_submitted_data()
        # The same test clips under another root (a moved data folder) are the same data.
        same = before is None or (before.sections, before.digest) == (data.sections, data.digest)
        if not same:
            raise ConfigError(
                f"{self.path} was submitted for {before.describe()}; {command} does not "
                f"rewrite it for {data.describe()}: {advice}"
            )


def submitted_data(root: str | Path, index: pd.DataFrame) -> SubmittedData:
    """The SubmittedData of a data root from its index (asd.infra.data.index_dataset)."""
    return _test_clips(str(Path(root).resolve()), index[index["split"] == "test"])


def _test_clips(root: str | None, test: pd.DataFrame) -> SubmittedData:
    """SubmittedData of the test clips ``test`` (dataset, machine, section and file columns)."""
    keys = test[["dataset", "machine", "section"]].astype(str).drop_duplicates()
    # The digest is of the names alone, so the same clips give the same digest on any root.
    names = sorted(test["dataset"] + "/" + test["machine"] + "/" + test["file"])
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    sections = tuple(sorted(keys.itertuples(index=False, name=None)))
    return SubmittedData(root=root, sections=sections, clips=len(names), digest=digest)


def run_number(path: Path) -> int:
    """The number of a run folder's name (``003-stage1``: 3)."""
    return int(_RUN.match(Path(path).name)[1])


def list_runs(runs_dir: str | Path, kind: str | None = None) -> list[Path]:
    """Run folders under ``runs_dir``, oldest first; only ``*-<kind>`` ones when kind is given."""
    found = [
        (int(m[1]), p)
        for p in Path(runs_dir).glob("*")
        if (m := _RUN.match(p.name)) and p.is_dir() and kind in (None, m[2])
    ]
    return [p for _, p in sorted(found)]


def latest_run(runs_dir: str | Path, kind: str, finished: bool = True) -> Path:
    """The newest finished ``*-<kind>`` run (its step wrote the model), naming newer
    unfinished ones in a warning; with ``finished=False`` the newest unfinished one (to resume).
    A clear error when there is none."""
    runs = list_runs(runs_dir, kind)
    found = [r for r in runs if Run(r).is_finished() == finished]
    if not found:
        raise ConfigError(
            f"no {'' if finished else 'un'}finished '{kind}' run found in "
            f"{runs_dir}; "
            + ("run that step first or pass FROM=" if finished else "pass the run to resume")
        )
    # Newer runs that were passed over are named, so an unfinished one is not forgotten.
    skipped = [r.name for r in runs[runs.index(found[-1]) + 1 :]]
    if skipped and finished:
        log.warning(
            "skipping unfinished run(s) %s (resume them with RESUME=); using %s",
            ", ".join(skipped),
            found[-1],
        )
    return found[-1]


def trim_log(path: Path, epoch: int) -> None:
    """Keep the header and the complete rows of epochs up to ``epoch`` of a CSV log."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    # A row without its newline was cut off mid-write by a kill, so it is dropped too.
    keep = lines[:1] + [
        line
        for line in lines[1:]
        if line.split(",", 1)[0].isdigit()
        and int(line.split(",", 1)[0]) <= epoch
        and line.endswith("\n")
    ]
    if keep != lines:
        atomic_write_text(path, "".join(keep))
