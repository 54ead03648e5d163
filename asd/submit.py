"""Challenge submission of a trained run: embeddings, detectors and the CSV files.

``python -m asd.submit [--config C] [--from RUN] [key.sub=value ...]``

Rebuilds the run (``--from``, else the latest ``*-stage2`` run) from its ``model.pth`` and
embeds every clip of ``data.root`` of the config (its feature settings must be the run's) into
``RUN/embeddings.npz``. Fits both back-ends of :mod:`asd.method.detectors` per (machine, section)
into ``RUN/detectors/``: the report's GMM/OCSVM pair and kNN. The back-end of
``detectors.backend`` writes the challenge CSVs of the test clips into ``RUN/submission/`` in the
layout's year's form (:func:`write_submission`); ``RUN/scores.csv`` holds its scores with their
context and both back-ends' scores beside them, for evaluation and notebooks. Prints a summary
and the run folder as the last line.

A submitted run is never rewritten for other data: a data root or a set of sections other than
the ones its submission was made from is refused (asd.infra.runs.Run.check_same_data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
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
from asd.infra.data import index_dataset, read_csvs, report_order
from asd.infra.io import atomic_path
from asd.infra.runs import Run, submitted_data
from asd.method.detectors import BACKENDS, DetectorSet, fit_knn, fit_section, resolve_backend
from asd.method.metrics import LAYOUT_RULES

# Named, not __name__: under python -m that would be "__main__".
log = logging.getLogger("asd.submit")

# One pair of challenge CSVs each (2021).
GROUP = ["machine", "section", "domain"]
# One pair each from 2022 on, both domains in it.
SECTION = ["machine", "section"]


# What a refusal to submit a run for other data than its submission's says to do instead.
ADVICE = (
    "submit it with the data root it was submitted for, or submit a copy of its training "
    "files (docs/robustness.md, 'Configs and run folders')"
)


class SubmitError(AsdError):
    """A run or data root that cannot be submitted; the message says which and why."""


def check_features(wanted: FeatureConfig, run: FeatureConfig, run_dir: Path | str = "run") -> None:
    """Refuse feature settings that differ from the run's (the storage dtype may differ)."""
    # The model saw features of the run's settings; the storage dtype only rounds them.
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
    # Stored embeddings stay valid while the model, the clip files and the feature settings do.
    model_sha = hashlib.sha256(Run(run).model.read_bytes()).hexdigest()
    feature_settings = [cache.settings[k] for k in ("features", "files")]
    feat_sha = hashlib.sha256(json.dumps(feature_settings, sort_keys=True).encode()).hexdigest()
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
        # A damaged file costs only the time to embed again.
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


def section_centres(
    source_classes: np.ndarray, centres: np.ndarray, n_subclusters: int
) -> np.ndarray | None:
    """The sub-cluster centres (S, D) the section's GMM starts from: those of its one source
    class (the report); None where it has several (attribute classes, 2023 on: the GMM's S
    components start from k-means) or none of the run's."""
    classes = np.unique(source_classes)
    # Class -1: source clips of no class of the run, so no centres of its own.
    if len(classes) != 1 or classes[0] < 0:
        return None
    c = int(classes[0])
    return centres[c * n_subclusters : (c + 1) * n_subclusters]


def fit_detectors(
    emb: np.ndarray,
    index: pd.DataFrame,
    centres: np.ndarray,
    n_subclusters: int,
    cfg,
    progress: bool = False,
) -> DetectorSet:
    """Both back-ends' detectors per (machine, section) of the training clips, one process per
    usable core (the same detectors as one after another); emb (N, D): rows of ``index``,
    whose ``class`` column holds the run's class ids; centres (C*S, D): the run's AdaCos ones."""
    from joblib import Parallel, cpu_count, delayed, parallel_config

    # After reset_index the row labels are positions, which index ``emb``.
    train = index.reset_index(drop=True).query("split == 'train'")
    jobs = {}
    for (machine, section), rows in train.groupby(["machine", "section"]):
        source = rows.index[rows["domain"] == "source"].to_numpy()
        target = rows.index[rows["domain"] == "target"].to_numpy()
        classes = rows.loc[source, "class"].to_numpy()
        sub = section_centres(classes, centres, n_subclusters)
        # Without the report's centres the GMM starts from k-means; say why, once a section.
        if sub is None and len(source) and (classes < 0).all():
            log.warning(
                "%s section %s: its source clips are of no class of the run; its GMM starts "
                "from k-means with S = %d components",
                machine,
                section,
                n_subclusters,
            )
        elif sub is None and len(source):
            log.info(
                "%s section %s: %d source classes; its GMM starts from k-means with S = %d "
                "components (docs/reproduction.md)",
                machine,
                section,
                len(np.unique(classes)),
                n_subclusters,
            )
        # Both back-ends are fitted, so scores.csv can show them side by side.
        jobs[machine, section, "gmm_ocsvm"] = delayed(fit_section)(
            emb[source], emb[target], sub, cfg, n_subclusters
        )
        jobs[machine, section, "knn"] = delayed(fit_knn)(emb[source], emb[target], cfg)
    dets = DetectorSet()
    # Many small (D x D) factorisations: more BLAS threads than one cost more than they give.
    # Idle workers leave within a second, so none outlives (with our stderr) a killed submit.
    # joblib's count of the usable cores also heeds a container's CPU quota and
    # LOKY_MAX_CPU_COUNT.
    workers = min(len(jobs), cpu_count()) or 1
    with (
        threadpool_limits(1),
        logging_redirect_tqdm(),
        parallel_config("loky", inner_max_num_threads=1, idle_worker_timeout=1),
    ):
        fits = Parallel(n_jobs=workers, return_as="generator")(jobs.values())
        for machine, section, _ in tqdm(
            jobs, desc="detectors", unit="fit", file=sys.stderr, disable=not progress
        ):
            # The generator yields the fits in the order of ``jobs``.
            try:
                dets.add(machine, section, next(fits))
            # For example a detectors setting scikit-learn refuses.
            except ValueError as err:
                raise SubmitError(f"{machine} section {section}: {err}") from None
    return dets


def layout_rule(cfg: Config) -> str:
    """The scoring rule of the data root's layout (asd.method.metrics.LAYOUT_RULES): "2021"
    (test domains known, one CSV pair per section and domain), "2022" (2022-2026) or
    "folders" (test domains unknown, one CSV pair per section)."""
    from asd.infra.data import detect_layout

    return LAYOUT_RULES[detect_layout(cfg.data.root, cfg.data.layout).name]


def score_test_clips(
    emb: np.ndarray, index: pd.DataFrame, dets: DetectorSet, backend: str, domains_known: bool
) -> pd.DataFrame:
    """One row per test clip: dataset, machine, section, domain, file, score, threshold,
    decision (1: score above the threshold) and detector (the kind that scored it: gmm, ocsvm,
    knn, gmm_ocsvm_min) of ``backend``. Without ``domains_known`` (2022 on, folders) no clip's
    domain is used, as the challenge's rules ask, dev clips included."""
    test = np.flatnonzero(index["split"].to_numpy() == "test")
    out = index.iloc[test][["dataset", *GROUP, "file"]].reset_index(drop=True)
    # Where the rules hide the test domains, every clip is scored as one of unknown domain.
    used = out["domain"] if domains_known else pd.Series(None, index=out.index, dtype=object)
    score = np.empty(len(out))
    threshold = np.empty(len(out))
    detector = np.empty(len(out), object)
    # dropna=False keeps the clips of unknown domain, which would otherwise go unscored.
    by = out[SECTION].assign(used=used).groupby([*SECTION, "used"], dropna=False)
    for (machine, section, domain), pos in by.indices.items():
        try:
            det = dets.lookup(machine, section, None if pd.isna(domain) else domain, backend)
        except KeyError:
            raise SubmitError(
                f"test clips of {machine} section {section}: the data root has no "
                f"training clips of that section"
            ) from None
        score[pos] = det.score(emb[test[pos]])
        threshold[pos] = det.threshold
        detector[pos] = det.kind
    out = out.assign(
        score=score,
        threshold=threshold,
        decision=(score > threshold).astype(int),
        detector=detector,
    )
    return out.sort_values(["dataset", *GROUP, "file"], kind="stable").reset_index(drop=True)


def submission_name(kind: str, machine: str, section: str, domain: str | None = None) -> str:
    """A challenge CSV name: ``<kind>_<machine>_section_<XX>_<domain>_test.csv`` (2021, one per
    domain) or ``<kind>_<machine>_section_<XX>_test.csv`` (2022 on: ``domain`` None); kind is
    ``anomaly_score`` or ``decision_result``."""
    part = "" if domain is None else f"_{domain}"
    return f"{kind}_{machine}_section_{section}{part}_test.csv"


def write_submission(
    scores: pd.DataFrame, folder: str | Path, per_domain: bool = True
) -> list[Path]:
    """Write the challenge CSVs (:func:`submission_name`) of ``scores`` (score_test_clips' table)
    into ``folder``, a pair per section and domain (``per_domain``, 2021) or per section (2022
    on): ``file name,score`` / ``file name,0|1`` rows sorted by file name, no header (the
    official evaluators sort both and match them by position). All are renamed into place once
    all are complete; stale ones are removed."""
    # atomic_path makes the folder.
    folder = Path(folder)
    written = []
    by = GROUP if per_domain else SECTION
    # Each atomic_path renames its file on a clean exit of the stack: all files or none.
    with contextlib.ExitStack() as stack:
        for key, rows in scores.groupby(by):
            # The official evaluators sort both files and match their rows by position.
            rows = rows.sort_values("file", kind="stable")
            # repr keeps every digit of a score, so the CSVs rank clips as the scores do.
            for kind, values in (
                ("anomaly_score", [repr(float(s)) for s in rows["score"]]),
                ("decision_result", [str(int(d)) for d in rows["decision"]]),
            ):
                written.append(folder / submission_name(kind, *key))
                stack.enter_context(atomic_path(written[-1])).write_text(
                    "".join(f"{f},{v}\n" for f, v in zip(rows["file"], values))
                )
    # CSVs of groups an earlier submit had, and temporary files of one killed while writing.
    for old in sorted(set(folder.glob("*_test.csv*")) - set(written)):
        log.info("removing %s", old)
        old.unlink()
    return written


def read_submission(folder: str | Path) -> pd.DataFrame:
    """Read the submission back: DataFrame[machine, section, domain, file, score, decision]
    (domain None where the files are per section)."""
    folder = Path(folder)
    # File names are unique within a section, so the domain is not needed to match them.
    keys = [*SECTION, "file"]
    scores = read_csvs(folder, "anomaly_score", "score")
    decisions = read_csvs(folder, "decision_result", "decision", [0, 1])
    out = scores.merge(decisions.drop(columns="domain"), on=keys, how="left")
    # A score without its decision is an incomplete submission.
    lost = out[out["decision"].isna()]
    if len(lost):
        raise SubmitError(f"{folder}: {' '.join(lost.iloc[0][keys])} has no decision")
    return out.astype({"decision": int})


def both_backends(tables: dict[str, pd.DataFrame], backend: str) -> pd.DataFrame:
    """scores.csv: the submitted ``backend``'s table (score_test_clips) with ``backend`` and
    every back-end's ``<name>_score``, ``<name>_threshold``, ``<name>_decision`` beside it."""
    out = tables[backend].assign(backend=backend)
    keys = ["dataset", *SECTION, "file"]
    for name, table in tables.items():
        cols = {c: f"{name}_{c}" for c in ("score", "threshold", "decision")}
        out = out.merge(table[keys + list(cols)].rename(columns=cols), on=keys, how="left")
    return out


@dataclass
class Submission:
    """What a submission wrote, for the summary and the callers that go on from it."""

    run: Path
    # both_backends' table.
    scores: pd.DataFrame
    files: list[Path]
    detectors: DetectorSet
    # The back-end of the challenge CSVs.
    backend: str = "gmm_ocsvm"
    # The layout's scoring rule (LAYOUT_RULES).
    rule: str = "2021"


def submit(
    cfg: Config, run: str | Path, device: str | None = None, progress: bool = False
) -> Submission:
    """Embeddings, detectors, scores and CSVs of ``run`` on the data root of ``cfg``."""
    import torch

    from asd.infra.checkpoint import load_model
    from asd.infra.data import assign_classes
    from asd.infra.feature_cache import build_cache

    run = Run(run)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # A run submitted for other data keeps its submission: refused before any file is written.
    data = submitted_data(cfg.data.root, index_dataset(cfg.data.root))
    run.check_same_data(data, "asd.submit", ADVICE)
    loaded = load_model(run.model, device=device)
    check_features(cfg.features, loaded.cfg.features, run)
    cache = build_cache(cfg, progress=progress)
    # The run's class ids, whatever classes the data root would give now.
    index = assign_classes(cache.index, loaded.classes)
    # Challenge file names carry no dataset, so a section in two datasets would share them.
    pairs = index.groupby(["machine", "section"])["dataset"].nunique()
    if (pairs > 1).any():
        raise SubmitError(
            "{} section {} appears in more than one dataset; the challenge file "
            "names would clash".format(*pairs[pairs > 1].index[0])
        )
    batch_size = cfg.detectors.batch_size
    emb = run_embeddings(run.path, loaded, cache, index, batch_size, device, progress)
    centres = loaded.head.centres.detach().float().cpu().numpy()  # (C*S, D)
    n_subclusters = loaded.head.n_subclusters
    dets = fit_detectors(emb, index, centres, n_subclusters, cfg.detectors, progress)
    dets.save(run.detectors)
    rule = layout_rule(cfg)
    # Only the 2021 rules let a detector know a test clip's domain.
    known = rule == "2021"
    backend = resolve_backend(cfg.detectors.backend, known)
    tables = {name: score_test_clips(emb, index, dets, name, known) for name in BACKENDS}
    files = write_submission(tables[backend], run.submission, per_domain=known)
    scores = both_backends(tables, backend)
    with atomic_path(run.scores) as tmp:
        scores.to_csv(tmp, index=False, float_format="%.10g")
    # Recorded only once the submission is complete, so the record describes files that exist.
    run.write_submitted_data(data)
    return Submission(
        run=run.path, scores=scores, files=files, detectors=dets, backend=backend, rule=rule
    )


def summary(sub: Submission) -> str:
    """Counts, and the share of test clips flagged per (dataset, machine, domain)."""
    # Clips of unknown domain (2022 on) are counted under a name of their own.
    by_domain = sub.scores.fillna({"domain": "unknown"}).groupby(["dataset", "machine", "domain"])
    counts = by_domain.agg(clips=("file", "size"), flagged=("decision", "mean")).reset_index()
    table = report_order(counts, ["dataset", "machine"])
    table["flagged"] = (100 * table["flagged"]).round(1).astype(str) + " %"
    head = (
        f"{len(sub.detectors.sections())} (machine, section) pairs, "
        f"{len(sub.detectors.detectors)} detectors ({', '.join(sub.detectors.backends())}), "
        f"{len(sub.scores)} test clips, {len(sub.files)} CSV files of the {sub.backend} "
        f"back-end in {Run(sub.run).submission}"
    )
    # to_string prints all rows, unwrapped, where printing the frame would elide some.
    return f"{head}\n{table.to_string(index=False)}" if len(table) else head


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
