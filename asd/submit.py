"""Challenge submission of a trained run: embeddings, detectors and the CSV files.

``python -m asd.submit [--config C] [--from RUN] [key.sub=value ...]``

1. the run: ``--from`` or the latest ``*-stage2`` run in ``runs.dir``; its ``model.pth`` is
   rebuilt with :func:`asd.checkpoint.load_model` (its own config defines model and features);
2. the feature cache of ``data.root`` of ``--config`` (the user may point it at other data);
   its feature settings must equal the run's (only the cache's storage ``dtype`` may differ);
3. embeddings of every clip (train and test, dev_data and eval_data), normalised with the run's
   training statistics; cached in ``RUN/embeddings.npz`` and reused while the clip list, the
   features and the checkpoint are unchanged;
4. per (machine, section) a GMM (source) and a One-Class SVM (target) detector, see
   :mod:`asd.detectors`; the GMM starts at the sub-cluster centres of the run's class
   (machine, section, source), rows ``class*S:(class+1)*S`` of the AdaCos centres; saved in
   ``RUN/detectors/``;
5. per (machine, section, domain) of the test clips ``anomaly_score_<machine>_section_<XX>_
   <domain>_test.csv`` (``file name,score``) and ``decision_result_..._test.csv``
   (``file name,0|1``) in ``RUN/submission/``: no header, one row per test clip, rows sorted by
   file name (the official evaluator sorts rows and matches them to its ground truth by
   position), all written under temporary names and renamed only once every one is complete;
   CSVs of an earlier submit that this one does not write again are removed. ``RUN/scores.csv``
   holds the same scores with their context (dataset, machine, section, domain, threshold, the
   detector's domain) for notebooks.

Prints a summary and the run folder as the last line.
"""

from __future__ import annotations

from asd import AsdError

import contextlib
import dataclasses
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from asd.cli import load_run, make_parser, run_command
from asd.config import Config, FeatureConfig, config_diffs
from asd.data import csv_name, read_csvs
from asd.detectors import DetectorSet, fit_section
from asd.io import atomic_path

log = logging.getLogger("asd.submit")  # not "__main__" under python -m

EMBEDDINGS = "embeddings.npz"
DETECTORS = "detectors"
SUBMISSION = "submission"
SCORES = "scores.csv"


class SubmitError(AsdError):
    """A run or data root that cannot be submitted; the message says which and why."""


# ----------------------------------------------------------------------------------------------
# Run and features


def check_features(wanted: FeatureConfig, run: FeatureConfig, run_dir: Path | str = "run") -> None:
    """Refuse feature settings that differ from the run's (the storage dtype may differ)."""
    diffs = config_diffs({"features": dataclasses.asdict(run)},
                         {"features": dataclasses.asdict(wanted)}, ["features"], "run", "config",
                         skip=["features.dtype"])
    if diffs:
        raise SubmitError(f"the feature settings of the config differ from those {run_dir} was "
                          f"trained with ({'; '.join(diffs)}); use the run's settings "
                          f"(its config.yml) for the features")


def clip_keys(index: pd.DataFrame) -> np.ndarray:
    """Stable names of the clips: ``dataset/machine/file`` (unique within a data root)."""
    return np.array([f"{d}/{m}/{f}" for d, m, f in
                     zip(index["dataset"], index["machine"], index["file"])], dtype=str)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def features_digest(features, samples: int = 64) -> str:
    """Cheap fingerprint of a feature array: its shape and up to ``samples`` spread-out clips."""
    h = hashlib.sha256(repr(tuple(features.shape)).encode())
    n = len(features)
    for i in np.unique(np.linspace(0, n - 1, min(n, samples)).astype(int)):
        h.update(np.ascontiguousarray(features[i]).tobytes())
    return h.hexdigest()


def run_embeddings(run: Path, loaded, features, index: pd.DataFrame, batch_size: int,
                   device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Embeddings (N, D) of every clip, reusing ``RUN/embeddings.npz`` while it still fits."""
    from asd.embed import embed, inference_batch

    path = run / EMBEDDINGS
    keys = clip_keys(index)
    model_sha = file_digest(run / "model.pth")
    feat_sha = features_digest(features)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if (str(z["model_sha256"]) == model_sha and str(z["features_sha256"]) == feat_sha
                        and np.array_equal(z["clips"], keys)):
                    log.info("reusing %s", path)
                    return z["embeddings"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable %s (%s)", path, err)
    wrap = None
    if progress:
        from tqdm import tqdm

        wrap = lambda s: tqdm(s, desc="embeddings", unit="batch", file=sys.stderr)  # noqa: E731
    emb = embed(loaded.model, features, loaded.mean, loaded.std,
                inference_batch(batch_size, device), device, wrap=wrap)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, embeddings=emb, clips=keys, model_sha256=np.array(model_sha),
                 features_sha256=np.array(feat_sha))
    return emb


# ----------------------------------------------------------------------------------------------
# Detectors and scores


def _check_unique_sections(index: pd.DataFrame) -> None:
    pairs = index.groupby(["machine", "section"])["dataset"].nunique()
    clash = pairs[pairs > 1]
    if len(clash):
        machine, section = clash.index[0]
        raise SubmitError(f"{machine} section {section} appears in more than one dataset; the "
                          f"challenge file names (machine, section, domain) would clash")


def fit_detectors(emb: np.ndarray, index: pd.DataFrame, centres: np.ndarray,
                  classes: pd.DataFrame, n_subclusters: int, cfg) -> DetectorSet:
    """Detectors per (machine, section) of the training clips.

    emb (N, D) rows of ``index``; centres (C*S, D) the AdaCos centres of the run whose class
    table is ``classes``; cfg: DetectorConfig.
    """
    class_of = {(m, s, d): int(c) for c, m, s, d in zip(classes["class"], classes["machine"],
                                                       classes["section"], classes["domain"])}
    train = index["split"].to_numpy() == "train"
    dets = DetectorSet()
    # Many small (D x D) factorisations: BLAS threads cost more than they give.
    with threadpool_limits(1):
        _fit_all(emb, index, centres, n_subclusters, cfg, class_of, train, dets)
    return dets


def _fit_all(emb, index, centres, n_subclusters, cfg, class_of, train, dets) -> None:
    for (machine, section), pos in index[train].groupby(["machine", "section"]).indices.items():
        rows = np.flatnonzero(train)[pos]
        domain = index["domain"].to_numpy()[rows]
        c = class_of.get((machine, section, "source"))
        sub = None
        if c is not None:
            sub = centres[c * n_subclusters:(c + 1) * n_subclusters]  # (S, D)
        elif (domain == "source").any():
            log.warning("%s section %s: the run has no class for its source clips; GMM means "
                        "start from k-means", machine, section)
        log.info("fitting detectors of %s section %s (%d source, %d target clips)", machine,
                 section, (domain == "source").sum(), (domain == "target").sum())
        try:
            fitted = fit_section(emb[rows[domain == "source"]], emb[rows[domain == "target"]],
                                 sub, cfg, n_components=n_subclusters)
        except ValueError as err:
            raise SubmitError(f"{machine} section {section}: {err}") from None
        dets.add(machine, section, fitted)


def score_test_clips(emb: np.ndarray, index: pd.DataFrame, dets: DetectorSet) -> pd.DataFrame:
    """One row per test clip: dataset, machine, section, domain, file, score, threshold,
    decision (1 = anomaly: score above the threshold) and detector (the domain it was fitted on).
    """
    test = np.flatnonzero(index["split"].to_numpy() == "test")
    groups = index.iloc[test].groupby(["machine", "section", "domain"]).indices
    parts = []
    for (machine, section, domain), pos in groups.items():
        try:
            det, used = dets.lookup(machine, section, domain)
        except KeyError as err:
            raise SubmitError(f"test clips of {machine} section {section} {domain}: "
                              f"{err.args[0]}; the data root has no training clips there") from None
        pos = test[pos]
        rows = index.iloc[pos]
        score = det.score(emb[pos])
        parts.append(pd.DataFrame({
            "dataset": rows["dataset"].to_numpy(), "machine": machine, "section": section,
            "domain": domain, "file": rows["file"].to_numpy(), "score": score,
            "threshold": det.threshold, "decision": (score > det.threshold).astype(int),
            "detector": used}))
    cols = ["dataset", "machine", "section", "domain", "file", "score", "threshold", "decision",
            "detector"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["dataset", "machine", "section", "domain", "file"],
                           kind="stable").reset_index(drop=True)[cols]


# ----------------------------------------------------------------------------------------------
# Challenge CSVs


def csv_names(machine: str, section: str, domain: str) -> tuple[str, str]:
    """(anomaly score file, decision result file) names of one (machine, section, domain)."""
    return (csv_name("anomaly_score", machine, section, domain),
            csv_name("decision_result", machine, section, domain))


def write_submission(scores: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Write the challenge CSVs of ``scores`` (score_test_clips' table) into ``folder``.

    Returns the written paths; stale ``anomaly_score_*``/``decision_result_*`` CSVs are removed.
    Every file is written under a temporary name first and all are renamed only once all are
    complete: a failure on the way (a full disk) leaves the previous CSVs as they were.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with contextlib.ExitStack() as stack:  # each atomic_path renames its file on a clean exit
        for (machine, section, domain), rows in scores.groupby(["machine", "section", "domain"]):
            rows = rows.sort_values("file", kind="stable")
            if rows["file"].duplicated().any():
                dup = rows["file"][rows["file"].duplicated()].iloc[0]
                raise SubmitError(f"{machine} section {section} {domain}: file name {dup} twice")
            score_name, decision_name = csv_names(machine, section, domain)
            stack.enter_context(atomic_path(folder / score_name)).write_text("".join(
                f"{f},{float(s)!r}\n" for f, s in zip(rows["file"], rows["score"])))
            stack.enter_context(atomic_path(folder / decision_name)).write_text("".join(
                f"{f},{int(d)}\n" for f, d in zip(rows["file"], rows["decision"])))
            written += [folder / score_name, folder / decision_name]
    keep = set(written)
    for old in sorted(folder.glob("*_test.csv")):
        if old.name.startswith(("anomaly_score_", "decision_result_")) and old not in keep:
            log.info("removing %s from an earlier submit", old)
            old.unlink()
    for tmp in folder.glob(".*_test.csv.*.tmp"):  # left by a submit killed while writing
        tmp.unlink()
    return written


def read_submission(folder: str | Path) -> pd.DataFrame:
    """Read the submission back: DataFrame[machine, section, domain, file, score, decision]."""
    scores = read_csvs(folder, "anomaly_score", "score")
    decisions = read_csvs(folder, "decision_result", "decision", [0, 1])
    keys = ["machine", "section", "domain", "file"]
    out = scores.merge(decisions, on=keys, how="left")
    if out["decision"].isna().any():
        lost = out[out["decision"].isna()].iloc[0]
        raise SubmitError(f"{folder}: {lost['file']} ({lost['machine']} section "
                          f"{lost['section']} {lost['domain']}) has a score but no decision")
    return out.astype({"decision": int})


# ----------------------------------------------------------------------------------------------
# The whole step


@dataclass
class Submission:
    run: Path
    scores: pd.DataFrame  # score_test_clips' table
    files: list[Path]
    detectors: DetectorSet


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def submit(cfg: Config, run: str | Path, device: str | None = None,
           progress: bool = False) -> Submission:
    """Embeddings, detectors, scores and CSVs of ``run`` on the data root of ``cfg``."""
    from asd.cache import build_cache
    from asd.checkpoint import load_model
    from asd.data import assign_classes, load_classes

    run = Path(run)
    device = device or default_device()
    loaded = load_model(run / "model.pth", device=device)
    check_features(cfg.features, loaded.cfg.features, run)
    classes = (load_classes(run / "classes.csv") if (run / "classes.csv").is_file()
               else loaded.classes)
    cache = build_cache(cfg, progress=progress)
    index = assign_classes(cache.index, classes)
    _check_unique_sections(index)
    emb = run_embeddings(run, loaded, cache.features, index, cfg.detectors.batch_size, device,
                         progress)
    centres = loaded.head.centres.detach().float().cpu().numpy()  # (C*S, D)
    dets = fit_detectors(emb, index, centres, classes, loaded.head.n_subclusters, cfg.detectors)
    dets.save(run / DETECTORS)
    scores = score_test_clips(emb, index, dets)
    files = write_submission(scores, run / SUBMISSION)
    with atomic_path(run / SCORES) as tmp:
        scores.to_csv(tmp, index=False, float_format="%.10g")
    return Submission(run=run, scores=scores, files=files, detectors=dets)


def summary(sub: Submission) -> str:
    s = sub.scores
    lines = [f"{len(sub.detectors.sections())} (machine, section) pairs, "
             f"{len(sub.detectors.detectors)} detectors, {len(s)} test clips, "
             f"{len(sub.files)} CSV files in {sub.run / SUBMISSION}"]
    if len(s):
        table = (s.groupby(["dataset", "machine", "domain"])
                 .agg(clips=("file", "size"), flagged=("decision", "mean"))
                 .reset_index())
        table["flagged"] = (100 * table["flagged"]).round(1).astype(str) + " %"
        with pd.option_context("display.max_rows", None, "display.width", 200):
            lines.append(table.to_string(index=False))
    return "\n".join(lines)


def _main(args) -> None:
    run, cfg = load_run(args)
    sub = submit(cfg, run, device=args.device, progress=True)
    print(summary(sub))
    print(sub.run)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("asd.submit", "Fit the detectors of a trained run and write the "
                         "challenge CSVs; prints the run folder last.",
                         from_help="run folder (default: the latest finished *-stage2 run)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
