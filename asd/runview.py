"""Read-only views of a run folder for the notebooks, as plain pandas / NumPy objects: training
logs, embeddings with their clips, sub-cluster centres, scores with labels and thresholds.

A missing or foreign file raises :class:`ViewError` naming the file and the step that writes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from asd import AsdError
from asd.infra.checkpoint import load_checkpoint
from asd.infra.cli import load_run
from asd.infra.config import Config, load_config
from asd.infra.data import assign_classes, index_dataset, load_classes, with_ground_truth
from asd.infra.runs import Run
from asd.submit import clip_keys

SCORE_COLUMNS = [
    "dataset",
    "machine",
    "section",
    "domain",
    "file",
    "label",
    "score",
    "threshold",
    "decision",
    "path",
]


class ViewError(AsdError):
    """A run folder that lacks what a view needs; the message names the file."""


def open_run(
    run: str | Path | None = None, config: str | Path | None = None, overrides: Iterable[str] = ()
) -> tuple[Path, Config]:
    """The finished run (default: the latest ``*-stage2``) and the config to read its data with
    (default: its own ``config.yml``), as ``make submit FROM= CONFIG= ARGS=`` picks them."""
    return load_run(argparse.Namespace(from_run=run, config=config, overrides=list(overrides)))


def run_chain(run: str | Path) -> list[Path]:
    """The runs that led to ``run``, oldest first: ``[stage1 run, stage2 run]`` for Step 2,
    whose ``init.txt`` names the Step 1 model it started from (absolute, or relative to the run
    or to its runs folder)."""
    # An init.txt naming no run's model, or runs naming each other, is a ViewError here.
    try:
        return [r.path for r in Run(run).chain()]
    except AsdError as err:
        raise ViewError(str(err)) from None


def read_log(run: str | Path) -> pd.DataFrame:
    """One run's ``logs/train.csv`` (runners.common's CSV logger), a row per logged epoch: ``step``
    (epoch), ``iteration`` (mini-batches so far), loss, accuracy, s, lr and samples_per_s. Of an
    epoch logged twice (a resumed run), the last row wins."""
    path = Run(run).train_log
    if not path.is_file():
        raise ViewError(f"{path} does not exist; the run has not logged an epoch yet")
    # A row cut off by a kill has no numbers where they belong; it is dropped.
    df = pd.read_csv(path).apply(pd.to_numeric, errors="coerce")
    df = df.dropna(subset=["step", "iteration"])
    # A resumed run logs its later epochs again; their last rows are the ones that count.
    df = df.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return df.astype({"step": int, "iteration": int}).reset_index(drop=True)


def _clips(run: str | Path, root: str | Path | None) -> tuple[Path, pd.DataFrame]:
    """The data root (default: the run's ``data.root``) and its clips under the run's class ids,
    evaluation test clips labelled from ``eval_data/ground_truth/`` where it exists."""
    root = Path(root if root is not None else load_config(Run(run).config).data.root)
    # The run's own class table gives the ids, whatever the data root holds now.
    index = assign_classes(index_dataset(root), load_classes(Run(run).classes))
    return root, with_ground_truth(index, root)


@dataclass
class Embeddings:
    """Embeddings of a run and the clips they belong to (row i of both)."""

    values: np.ndarray  # (N, D) float32, as the model outputs them (not normalised)
    # The clips' index rows (asd.infra.data.COLUMNS) in the order of ``values``.
    clips: pd.DataFrame


def embeddings(run: str | Path, root: str | Path | None = None) -> Embeddings:
    """``RUN/embeddings.npz`` (from ``asd.submit``) with each clip's row of the data root."""
    path = Run(run).embeddings
    if not path.is_file():
        raise ViewError(f"{path} does not exist; run asd.submit (make submit) on this run")
    # Without pickles, a foreign file can only fail to read, not run code.
    try:
        with np.load(path, allow_pickle=False) as z:
            values = z["embeddings"]
            keys = z["clips"]
    except (OSError, ValueError, KeyError) as err:
        raise ViewError(f"{path}: not an embeddings file of asd.submit ({err})") from None
    root, index = _clips(run, root)
    # Each stored clip key's row in the index; a key the root lacks is a clip of other data.
    pos = pd.Series(np.arange(len(index)), index=clip_keys(index)).reindex(keys.astype(str))
    if pos.isna().any():
        raise ViewError(
            f"{path} holds clip {pos.index[pos.isna()][0]}, which is not under the "
            f"data root {root}; pass the root asd.submit used"
        )
    clips = index.iloc[pos.to_numpy(dtype=int)].reset_index(drop=True)
    return Embeddings(values=values.astype(np.float32, copy=False), clips=clips)


@dataclass
class Centres:
    """The sub-cluster AdaCos centres of a run; row k belongs to class ``k // S``."""

    values: np.ndarray  # (C*S, D) float32, as learned (not normalised)
    table: pd.DataFrame  # row k: class, machine, section, domain, subcluster


def subcluster_centres(run: str | Path) -> Centres:
    """The centres of ``RUN/model.pth`` with their classes (from the checkpoint's class table)."""
    ckpt = load_checkpoint(Run(run).model)
    centres = ckpt["head"]["centres"].float().cpu().numpy()  # (C*S, D)
    classes = pd.DataFrame(ckpt["classes"])
    # The head holds S centres per class, class by class, so each class row repeats S times.
    s = len(centres) // len(classes)
    table = classes.loc[classes.index.repeat(s)].reset_index(drop=True)
    table["subcluster"] = np.tile(np.arange(s), len(classes))
    return Centres(values=centres, table=table)


def scores(run: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """One row per scored test clip (SCORE_COLUMNS) of ``RUN/scores.csv`` (``asd.submit``: score,
    threshold, decision 1 = anomaly), with ``label`` (None: unknown) and ``path`` of the root."""
    path = Run(run).scores
    if not path.is_file():
        raise ViewError(f"{path} does not exist; run asd.submit (make submit) on this run")
    # File names are unique within a section; the index gives the domain, from the ground truth
    # where the names hide it (2022 on: scores.csv leaves it empty).
    keys = ["dataset", "machine", "section", "file"]
    sub = pd.read_csv(path, dtype={k: str for k in keys}, keep_default_na=False)
    root, index = _clips(run, root)
    test = index[index["split"] == "test"][["path", "label", "domain", *keys]]
    out = sub.drop(columns="domain").merge(test, on=keys, how="left")
    # A scored clip without a path was scored on another data root.
    lost = out[out["path"].isna()]
    if len(lost):
        raise ViewError(
            f"{path}: {len(lost)} scored clips are not test clips under the data "
            f"root {root}, e.g. {lost.iloc[0]['file']}; pass the root asd.submit used"
        )
    order = ["dataset", "machine", "section", "domain", "file"]
    return out.sort_values(order, kind="stable")[SCORE_COLUMNS].reset_index(drop=True)
