"""Challenge submission of a trained run: embeddings, detectors and the CSV files.

``python -m asd.submit [--config C] [--from RUN] [key.sub=value ...]``

Rebuilds the run (``--from``, else the latest ``*-stage2`` run) from its ``model.pth`` and
embeds every clip of ``data.root`` of the config (its feature settings must be the run's) into
``RUN/embeddings.npz``. Fits the detectors of :mod:`asd.method.detectors` per (machine, section) into
``RUN/detectors/``, writes the challenge CSVs of the test clips into ``RUN/submission/``
(:func:`write_submission`) and the same scores with their context into ``RUN/scores.csv`` for
notebooks. Prints a summary and the run folder as the last line.

A submitted run is never rewritten for other data: a data root or a set of sections other than
the ones its submission was made from is refused (asd.infra.runs.Run.check_same_data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from asd import AsdError
from asd.infra.cli import load_run, make_parser, run_command
from asd.infra.config import Config, FeatureConfig, config_diffs
from asd.infra.data import csv_name, index_dataset, read_csvs, report_order
from asd.infra.io import atomic_path
from asd.infra.runs import Run, submitted_data
from asd.method.detectors import DetectorSet, fit_section

log = logging.getLogger("asd.submit")  # not "__main__" under python -m

GROUP = ["machine", "section", "domain"]  # one pair of challenge CSVs each


# what a refusal to submit a run for other data than its submission's says to do instead
ADVICE = (
    "submit it with the data root it was submitted for, or submit a copy of its training "
    "files (docs/robustness.md, 'Configs and run folders')"
)


class SubmitError(AsdError):
    """A run or data root that cannot be submitted; the message says which and why."""


def check_features(wanted: FeatureConfig, run: FeatureConfig, run_dir: Path | str = "run") -> None:
    """Refuse feature settings that differ from the run's (the storage dtype may differ)."""
    diffs = config_diffs(
        {"features": asdict(run)},
        {"features": asdict(wanted)},
        ["features"],
        "run",
        "config",
        skip=["features.dtype"],
    )
    if diffs:
        raise SubmitError(
            f"the config's feature settings differ from those {run_dir} was "
            f"trained with (its {Run(run_dir).config.name}): {'; '.join(diffs)}"
        )


def clip_keys(index: pd.DataFrame) -> np.ndarray:
    """Stable names of the clips: ``dataset/machine/file`` (unique within a data root)."""
    return (index["dataset"] + "/" + index["machine"] + "/" + index["file"]).to_numpy(dtype=str)


def run_embeddings(
    run: Path,
    loaded,
    cache,
    index: pd.DataFrame,
    batch_size: int,
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Embeddings (N, D) of every clip of ``cache``, reusing ``RUN/embeddings.npz`` while its
    model and its cache's clip files and feature settings are the same."""
    from asd.method.embed import embed, inference_batch

    path = Run(run).embeddings
    keys = clip_keys(index)
    model_sha = hashlib.sha256(Run(run).model.read_bytes()).hexdigest()
    feat_sha = hashlib.sha256(
        json.dumps([cache.settings[k] for k in ("features", "files")], sort_keys=True).encode()
    ).hexdigest()
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if (
                    str(z["model_sha256"]) == model_sha
                    and str(z["features_sha256"]) == feat_sha
                    and np.array_equal(z["clips"], keys)
                ):
                    log.info("reusing %s", path)
                    return z["embeddings"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("ignoring unreadable %s (%s)", path, err)
    emb = embed(
        loaded.model,
        cache.features,
        loaded.mean,
        loaded.std,
        inference_batch(batch_size, device),
        device,
        wrap=lambda s: tqdm(
            s, desc="embeddings", unit="batch", file=sys.stderr, disable=not progress
        ),
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            embeddings=emb,
            clips=keys,
            model_sha256=np.array(model_sha),
            features_sha256=np.array(feat_sha),
        )
    return emb


def fit_detectors(
    emb: np.ndarray,
    index: pd.DataFrame,
    centres: np.ndarray,
    n_subclusters: int,
    cfg,
    progress: bool = False,
) -> DetectorSet:
    """Detectors per (machine, section) of the training clips, one process per usable core (the
    same detectors as one after another); emb (N, D): rows of ``index``, whose ``class`` column
    holds the run's class ids; centres (C*S, D): the run's AdaCos ones."""
    from joblib import Parallel, delayed, parallel_config

    train = index.reset_index(drop=True).query("split == 'train'")  # row labels = positions
    jobs = {}
    for (machine, section), rows in train.groupby(["machine", "section"]):
        source = rows.index[rows["domain"] == "source"].to_numpy()
        c = int(rows.loc[source, "class"].max()) if len(source) else -1  # -1: not the run's
        sub = None if c < 0 else centres[c * n_subclusters : (c + 1) * n_subclusters]
        jobs[machine, section] = delayed(fit_section)(
            emb[source], emb[rows.index[rows["domain"] == "target"]], sub, cfg, n_subclusters
        )
    dets = DetectorSet()
    # many small (D x D) factorisations: more BLAS threads than one cost more than they give;
    # idle workers leave within a second, so none outlives (with our stderr) a killed submit
    with (
        threadpool_limits(1),
        logging_redirect_tqdm(),
        parallel_config("loky", inner_max_num_threads=1, idle_worker_timeout=1),
    ):
        fits = Parallel(
            n_jobs=min(len(jobs), len(os.sched_getaffinity(0))) or 1, return_as="generator"
        )(jobs.values())
        for machine, section in tqdm(
            jobs, desc="detectors", unit="section", file=sys.stderr, disable=not progress
        ):
            try:
                dets.add(machine, section, next(fits))  # in the order of ``jobs``
            except ValueError as err:  # e.g. a detectors setting scikit-learn refuses
                raise SubmitError(f"{machine} section {section}: {err}") from None
    return dets


def score_test_clips(emb: np.ndarray, index: pd.DataFrame, dets: DetectorSet) -> pd.DataFrame:
    """One row per test clip: dataset, machine, section, domain, file, score, threshold,
    decision (1: score above the threshold) and detector (the kind that scored it: gmm, ocsvm)."""
    test = np.flatnonzero(index["split"].to_numpy() == "test")
    out = index.iloc[test][["dataset", *GROUP, "file"]].reset_index(drop=True)
    score, threshold, detector = np.empty(len(out)), np.empty(len(out)), np.empty(len(out), object)
    for (machine, section, domain), pos in out.groupby(GROUP).indices.items():
        try:
            det = dets.lookup(machine, section, domain)
        except KeyError:
            raise SubmitError(
                f"test clips of {machine} section {section} {domain}: the data "
                f"root has no training clips of that section"
            ) from None
        score[pos], threshold[pos], detector[pos] = (
            det.score(emb[test[pos]]),
            det.threshold,
            det.kind,
        )
    out = out.assign(
        score=score,
        threshold=threshold,
        decision=(score > threshold).astype(int),
        detector=detector,
    )
    return out.sort_values(["dataset", *GROUP, "file"], kind="stable").reset_index(drop=True)


def write_submission(scores: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Write the challenge CSVs (``asd.infra.data.csv_name``) of ``scores`` (score_test_clips' table)
    into ``folder``: ``file name,score`` / ``file name,0|1`` rows sorted by file name, no header
    (the official evaluator matches them by position). All are renamed into place once all are
    complete; stale ones are removed."""
    folder, written = Path(folder), []  # atomic_path makes the folder
    with contextlib.ExitStack() as stack:  # each atomic_path renames its file on a clean exit
        for (machine, section, domain), rows in scores.groupby(GROUP):
            rows = rows.sort_values("file", kind="stable")
            for kind, values in (
                ("anomaly_score", [repr(float(s)) for s in rows["score"]]),
                ("decision_result", [str(int(d)) for d in rows["decision"]]),
            ):
                written.append(folder / csv_name(kind, machine, section, domain))
                stack.enter_context(atomic_path(written[-1])).write_text(
                    "".join(f"{f},{v}\n" for f, v in zip(rows["file"], values))
                )
    # CSVs of groups an earlier submit had, temporary files of one killed while writing
    for old in sorted(set(folder.glob("*_test.csv*")) - set(written)):
        log.info("removing %s", old)
        old.unlink()
    return written


def read_submission(folder: str | Path) -> pd.DataFrame:
    """Read the submission back: DataFrame[machine, section, domain, file, score, decision]."""
    out = read_csvs(folder, "anomaly_score", "score").merge(
        read_csvs(folder, "decision_result", "decision", [0, 1]), on=[*GROUP, "file"], how="left"
    )
    lost = out[out["decision"].isna()]
    if len(lost):
        raise SubmitError(f"{folder}: {' '.join(lost.iloc[0][[*GROUP, 'file']])} has no decision")
    return out.astype({"decision": int})


@dataclass
class Submission:
    run: Path
    scores: pd.DataFrame  # score_test_clips' table
    files: list[Path]
    detectors: DetectorSet


def submit(
    cfg: Config, run: str | Path, device: str | None = None, progress: bool = False
) -> Submission:
    """Embeddings, detectors, scores and CSVs of ``run`` on the data root of ``cfg``."""
    import torch

    from asd.infra.checkpoint import load_model
    from asd.infra.data import assign_classes
    from asd.infra.feature_cache import build_cache

    run, device = Run(run), device or ("cuda" if torch.cuda.is_available() else "cpu")
    # a run submitted for other data keeps its submission: refused before any file is written
    data = submitted_data(cfg.data.root, index_dataset(cfg.data.root))
    run.check_same_data(data, "asd.submit", ADVICE)
    loaded = load_model(run.model, device=device)
    check_features(cfg.features, loaded.cfg.features, run)
    cache = build_cache(cfg, progress=progress)
    index = assign_classes(cache.index, loaded.classes)  # the run's class ids
    pairs = index.groupby(["machine", "section"])["dataset"].nunique()
    if (pairs > 1).any():
        raise SubmitError(
            "{} section {} appears in more than one dataset; the challenge file "
            "names would clash".format(*pairs[pairs > 1].index[0])
        )
    emb = run_embeddings(run.path, loaded, cache, index, cfg.detectors.batch_size, device, progress)
    centres = loaded.head.centres.detach().float().cpu().numpy()  # (C*S, D)
    dets = fit_detectors(emb, index, centres, loaded.head.n_subclusters, cfg.detectors, progress)
    dets.save(run.detectors)
    scores = score_test_clips(emb, index, dets)
    files = write_submission(scores, run.submission)
    with atomic_path(run.scores) as tmp:
        scores.to_csv(tmp, index=False, float_format="%.10g")
    run.write_submitted_data(data)
    return Submission(run=run.path, scores=scores, files=files, detectors=dets)


def summary(sub: Submission) -> str:
    """Counts, and the share of test clips flagged per (dataset, machine, domain)."""
    table = report_order(
        sub.scores.groupby(["dataset", "machine", "domain"])
        .agg(clips=("file", "size"), flagged=("decision", "mean"))
        .reset_index(),
        ["dataset", "machine"],
    )
    table["flagged"] = (100 * table["flagged"]).round(1).astype(str) + " %"
    head = (
        f"{len(sub.detectors.sections())} (machine, section) pairs, "
        f"{len(sub.detectors.detectors)} detectors, {len(sub.scores)} test clips, "
        f"{len(sub.files)} CSV files in {Run(sub.run).submission}"
    )
    return f"{head}\n{table.to_string(index=False)}" if len(table) else head  # all rows, unwrapped


def _main(args) -> None:
    run, cfg = load_run(args)
    sub = submit(cfg, run, device=args.device, progress=True)
    print(summary(sub))
    print(sub.run)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "asd.submit", __doc__, from_help="run folder (default: the latest finished *-stage2 run)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
