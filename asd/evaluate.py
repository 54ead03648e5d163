"""AUC / pAUC tables of a submitted run against the labels; prints the run folder last.

``python -m asd.evaluate [--config C] [--from RUN] [key.sub=value ...]``

Reads the run's challenge CSVs (``RUN/submission/``, as the official evaluator does) and the
labels of the test clips of ``data.root`` (names, or ``eval_data/ground_truth/``). Per (machine,
section, domain), on that domain's test clips: AUC and pAUC (p = 0.1); harmonic means per
machine (the report's Table 2), per domain and over everything, and the official score; the
same for the simple reference detector (:mod:`asd.reference`), published numbers beside them.
Writes ``RUN/results.csv`` (long format), ``RUN/results.md`` and ``RUN/figures/roc_*.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from asd import metrics
from asd.cli import load_run, make_parser, run_command
from asd.config import Config, load_config
from asd.data import ground_truth_dir, with_ground_truth
from asd.io import atomic_path, atomic_write_text
from asd.submit import SUBMISSION, SubmitError, check_features, read_submission

log = logging.getLogger("asd.evaluate")  # not "__main__" under python -m

# DESIGN.md "Reference numbers": development test data, harmonic means, AUC / pAUC in %
_MACHINES = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve", "all")
PUBLISHED = {name: dict(zip(_MACHINES, values)) for name, values in {
    "report": [(61.65, 61.44), (65.59, 53.09), (64.58, 57.40), (70.85, 58.78), (61.84, 55.79),
               (65.63, 56.02), (74.20, 67.47), (66.12, 58.18)],
    "AE baseline": [(63.24, 53.38), (65.97, 52.76), (61.92, 54.41), (66.74, 55.94),
                    (62.49, 52.36), (61.71, 53.81), (53.41, 50.54), (62.01, 53.43)],
    "MobileNetV2 baseline": [(61.56, 63.02), (66.70, 59.16), (61.89, 57.37), (59.26, 56.00),
                             (56.04, 56.37), (57.46, 51.61), (56.51, 52.64), (59.24, 55.95)],
}.items()}
SYSTEM_NAMES = {"ours": "ours", "reference": "simple reference"}  # reference: asd.reference
RESULT_COLUMNS = ["dataset", "level", "machine", "section", "domain", "system", "auc", "pauc",
                  "score", "n_normal", "n_anomaly"]


def missing_ground_truth(root: str | Path) -> str | None:
    """The warning to print when ``root`` has evaluation test clips but no ground truth."""
    folder = ground_truth_dir(root)
    tests = [p for p in Path(root, "eval_data").glob("*/*test") if any(p.glob("*.wav"))]
    if tests and not any(folder.glob("ground_truth_*.csv")):
        return (f"no evaluation ground truth in {folder}: the eval sections are not scored; "
                f"`make data` (python -m asd.download) fetches it")
    return None


def section_table(clips: pd.DataFrame, systems=tuple(SYSTEM_NAMES)) -> pd.DataFrame:
    """Result rows per (dataset, machine, section, domain) and system of labelled test ``clips``
    (``anomaly`` and a score column per system); one-label groups are skipped (warned)."""
    rows = []
    for key, g in clips.groupby(["dataset", "machine", "section", "domain"], sort=True):
        dataset, machine, section, domain = key
        y = g["anomaly"].to_numpy()
        n_anom = int(y.sum())
        if n_anom in (0, len(y)):
            log.warning("%s %s section %s %s: only one label among its %d test clips; skipped",
                        *key, len(y))
            continue
        for system in [name for name in systems if not g[name].isna().any()]:
            a, p = metrics.auc(y, g[system]), metrics.pauc(y, g[system])
            rows.append((dataset, "section", machine, section, domain, system, a, p,
                         metrics.hmean([a, p]), len(y) - n_anom, n_anom))  # RESULT_COLUMNS
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summary_rows(sections: pd.DataFrame) -> pd.DataFrame:
    """Harmonic means per (dataset, system) over each machine (level "machine"), each domain
    (level "domain", machine "all") and everything (level "all": ``score`` is the official one)."""
    rows = []
    for (dataset, system), g in sections.groupby(["dataset", "system"], sort=True):
        parts = [("machine", m, "", gm) for m, gm in g.groupby("machine", sort=True)]
        parts += [("domain", "all", d, gd) for d, gd in g.groupby("domain", sort=True)]
        parts.append(("all", "all", "", g))
        for level, machine, domain, gm in parts:
            rows.append((dataset, level, machine, "", domain, system, metrics.hmean(gm["auc"]),
                         metrics.hmean(gm["pauc"]), metrics.official_score(gm["auc"], gm["pauc"]),
                         int(gm["n_normal"].sum()), int(gm["n_anomaly"].sum())))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _systems_table(results: pd.DataFrame, dataset: str, levels: list, by: list) -> pd.DataFrame:
    """Per ``by`` group of the ``levels`` rows of ``dataset``: each system's AUC / pAUC (%)."""
    table = []
    rows = results[(results["dataset"] == dataset) & results["level"].isin(levels)]
    for key, group in rows.groupby(by, sort=True):
        cells = {name: "-" for name in SYSTEM_NAMES.values()}
        cells.update({SYSTEM_NAMES[row.system]: f"{100 * row.auc:.2f} / {100 * row.pauc:.2f}"
                      for row in group.itertuples()})
        table.append({**dict(zip(by, key)), **cells})
    return pd.DataFrame(table)


def machine_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 2 layout for one dataset: machine rows, AUC / pAUC (%) of ours, the reference
    detector and (development data only) the published systems."""
    table = _systems_table(results, dataset, ["machine", "all"], ["machine"]).set_index("machine")
    # the report's order: fan, gearbox, pump, slider, ToyCar, ToyTrain, valve, all
    table = table.loc[sorted(table.index.drop("all"), key=str.lower) + ["all"]].reset_index()
    if dataset == "dev_data":
        for name, published in PUBLISHED.items():
            table[name] = [f"{published[m][0]:.2f} / {published[m][1]:.2f}"
                           if m in published else "-" for m in table["machine"]]
    return table


def official_line(results: pd.DataFrame, dataset: str) -> str:
    summ = results[(results["dataset"] == dataset) & (results["level"] == "all")]
    parts = [f"{SYSTEM_NAMES[r.system]} {100 * r.score:.2f}" for r in summ.itertuples()]
    line = "official score (harmonic mean of all AUC and pAUC values): " + ", ".join(parts)
    if dataset == "dev_data":
        approx = ", ".join(f"{name} ~{metrics.hmean(means['all']):.2f}"
                           for name, means in PUBLISHED.items())
        line += f"; published (from their two means): {approx}"
    return line


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule] + body)


def render_markdown(results: pd.DataFrame, run: Path) -> str:
    out = [f"# Results of {run.name}", "",
           "AUC / pAUC (p = 0.1) in %, harmonic means over sections and domains; each domain "
           "is scored on its own test clips. 'simple reference' is a Gaussian on per-clip "
           "log-mel mean and std (asd.reference) on the same clips.", ""]
    for dataset in sorted(results["dataset"].unique()):
        out += [f"## {dataset or 'data'}", "", _markdown(machine_table(results, dataset)), "",
                official_line(results, dataset), "", "### Per domain", "",
                _markdown(_systems_table(results, dataset, ["domain"], ["domain"])), "",
                "### Per section and domain", ""]
        detail = _systems_table(results, dataset, ["section"],
                                ["machine", "section", "domain", "n_normal", "n_anomaly"])
        counts = detail.pop("n_normal").astype(str) + "/" + detail.pop("n_anomaly").astype(str)
        detail.insert(3, "clips (normal/anomaly)", counts)
        out += [_markdown(detail), ""]
    return "\n".join(out)


def roc_figures(clips: pd.DataFrame, folder: Path) -> list[Path]:
    """One ROC figure per machine: a curve per (section, domain), ours solid, reference dashed."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global figure state
    from sklearn.metrics import roc_curve

    written = []
    for machine, g in clips.groupby("machine", sort=True):
        ax = Figure(figsize=(5.5, 5), layout="tight").subplots()
        for i, ((_, section, domain), gs) in enumerate(g.groupby(["dataset", "section", "domain"])):
            y = gs["anomaly"].to_numpy()
            if y.min() == y.max():
                continue
            colour = f"C{i % 10}"
            ax.plot(*roc_curve(y, gs["ours"])[:2], color=colour, label=f"{section} {domain} "
                    f"(AUC {100 * metrics.auc(y, gs['ours']):.1f})")
            if not gs["reference"].isna().any():
                ax.plot(*roc_curve(y, gs["reference"])[:2], color=colour, linestyle="--",
                        linewidth=0.8)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.axvline(metrics.MAX_FPR, color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
               ylim=(0, 1), title=f"{machine}: ours (solid), simple reference (dashed)")
        ax.legend(fontsize=7, loc="lower right")
        written.append(folder / f"roc_{machine}.png")
        with atomic_path(written[-1]) as tmp:
            ax.figure.savefig(tmp, format="png", dpi=100)
    return written


@dataclass
class Evaluation:
    run: Path
    clips: pd.DataFrame    # one row per labelled test clip: labels and both systems' scores
    results: pd.DataFrame  # RESULT_COLUMNS
    figures: list[Path]
    absent: str | None = None  # why the eval table is missing (missing_ground_truth)


def scored_clips(cfg: Config, run: str | Path) -> pd.DataFrame:
    """One row per labelled test clip of ``cfg.data.root``: its index row (``row``: position in
    the index), ``anomaly`` (0/1, from the name or the evaluation ground truth), ``ours`` (the
    submission of ``run``) and ``reference`` (asd.reference's score)."""
    from asd.cache import build_cache
    from asd.reference import reference_scores

    run = Path(run)
    if not (run / SUBMISSION).is_dir():
        raise SubmitError(f"{run / SUBMISSION} does not exist; run asd.submit (make submit) first")
    if (run / "config.yml").is_file():
        check_features(cfg.features, load_config(run / "config.yml").features, run)
    submission = read_submission(run / SUBMISSION)
    keys = ["machine", "section", "domain", "file"]
    if submission.duplicated(keys).any():
        raise SubmitError("the submission lists a clip twice: "
                          + " ".join(submission[submission.duplicated(keys)].iloc[0][keys]))
    cache = build_cache(cfg, progress=False)
    rows = np.flatnonzero(cache.index["split"].to_numpy() == "test")
    test = with_ground_truth(cache.index, cfg.data.root).iloc[rows].assign(row=rows)
    test["anomaly"] = test["label"].map({"normal": 0, "anomaly": 1})
    missing = test["anomaly"].isna()
    if missing.any():
        log.info("%d test clips without labels are not evaluated", int(missing.sum()))
    if missing.all():
        raise SubmitError(f"{cfg.data.root}: no labelled test clips (no dev_data labels and no "
                          f"eval_data/ground_truth/)")
    clips = test[~missing].astype({"anomaly": int}).reset_index(drop=True).merge(
        submission[keys + ["score"]].rename(columns={"score": "ours"}), on=keys, how="left")
    lost = clips[clips["ours"].isna()]
    if len(lost):
        raise SubmitError(f"the submission lacks {len(lost)} labelled test clips, e.g. "
                          f"{' '.join(lost.iloc[0][keys])}; submit this data root again")
    ref = reference_scores(cache.features, cache.index)  # (N,) NaN for training rows
    return clips.assign(reference=ref[clips["row"].to_numpy()])


def evaluate(cfg: Config, run: str | Path, figures: bool = True) -> Evaluation:
    """Evaluate the submission of ``run`` against the labels of ``cfg.data.root``."""
    run = Path(run)
    absent = missing_ground_truth(cfg.data.root)
    if absent:
        log.warning(absent)
    clips = scored_clips(cfg, run)
    sections = section_table(clips)
    if sections.empty:
        raise SubmitError("no (machine, section, domain) has both normal and anomalous labelled "
                          "test clips")
    results = pd.concat([sections, summary_rows(sections)], ignore_index=True)
    with atomic_path(run / "results.csv") as tmp:
        results.to_csv(tmp, index=False, float_format="%.6f")
    atomic_write_text(run / "results.md", render_markdown(results, run)
                      + (f"\n## eval_data\n\nabsent: {absent}\n" if absent else ""))
    written = roc_figures(clips, run / "figures") if figures else []
    return Evaluation(run=run, clips=clips, results=results, figures=written, absent=absent)


def report(ev: Evaluation) -> str:
    """The printed tables: per dataset the machine table and the official scores."""
    out = []
    with pd.option_context("display.max_rows", None, "display.width", 250,
                           "display.max_columns", None):
        for dataset in sorted(ev.results["dataset"].unique()):
            out += [f"{dataset or 'data'}: harmonic means, AUC / pAUC (%)",
                    machine_table(ev.results, dataset).to_string(index=False),
                    official_line(ev.results, dataset),
                    "per domain, harmonic means over machines and sections:",
                    _systems_table(ev.results, dataset, ["domain"], ["domain"])
                    .to_string(index=False), ""]
    if ev.absent:
        out += [f"eval_data: absent ({ev.absent})", ""]
    out.append(f"results: {ev.run / 'results.md'}, {ev.run / 'results.csv'}; "
               f"{len(ev.figures)} ROC figures in {ev.run / 'figures'}")
    return "\n".join(out)


def _main(args) -> None:
    run, cfg = load_run(args)
    ev = evaluate(cfg, run, figures=not args.no_figures)
    print(report(ev))
    print(ev.run)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("asd.evaluate", __doc__,
                         from_help="run folder (default: the latest finished *-stage2 run)")
    parser.add_argument("--no-figures", action="store_true", help="skip the ROC figures")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
