"""AUC / pAUC tables of a submitted run against the labels (DESIGN.md "Evaluation").

``python -m asd.evaluate [--config C] [--from RUN] [key.sub=value ...]``

Reads the run's challenge CSVs (``RUN/submission/``, as the official evaluator does) and the
labels of the test clips of ``data.root``: in the names for the development sections, and in
``eval_data/ground_truth/*.csv`` (the official evaluator's format) for evaluation sections when
that folder exists. Per (machine, section, domain), with only that domain's test clips: AUC and
pAUC (p = 0.1). Summaries are harmonic means: per machine over its sections and domains (the
report's Table 2), over everything for AUC and for pAUC, and the official score (all AUC and
pAUC values together). The same is computed for the simple reference detector
(:mod:`asd.reference`) on the same clips, and the tables show the report's and both challenge
baselines' published numbers beside ours.

Writes ``RUN/results.csv`` (long format), ``RUN/results.md`` and ``RUN/figures/roc_<machine>.png``
(all atomically); prints the tables and the run folder as the last line.
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
from asd.data import with_ground_truth
from asd.io import atomic_path, atomic_write_text
from asd.submit import SUBMISSION, SubmitError, check_features, read_submission

log = logging.getLogger("asd.evaluate")  # not "__main__" under python -m

# DESIGN.md "Reference numbers": development test data, harmonic means, AUC / pAUC in %
PUBLISHED = {
    "report": {
        "fan": (61.65, 61.44), "gearbox": (65.59, 53.09), "pump": (64.58, 57.40),
        "slider": (70.85, 58.78), "ToyCar": (61.84, 55.79), "ToyTrain": (65.63, 56.02),
        "valve": (74.20, 67.47), "all": (66.12, 58.18)},
    "AE baseline": {
        "fan": (63.24, 53.38), "gearbox": (65.97, 52.76), "pump": (61.92, 54.41),
        "slider": (66.74, 55.94), "ToyCar": (62.49, 52.36), "ToyTrain": (61.71, 53.81),
        "valve": (53.41, 50.54), "all": (62.01, 53.43)},
    "MobileNetV2 baseline": {
        "fan": (61.56, 63.02), "gearbox": (66.70, 59.16), "pump": (61.89, 57.37),
        "slider": (59.26, 56.00), "ToyCar": (56.04, 56.37), "ToyTrain": (57.46, 51.61),
        "valve": (56.51, 52.64), "all": (59.24, 55.95)},
}
SYSTEMS = ("ours", "reference")  # reference = asd.reference's simple detector
SYSTEM_NAMES = {"ours": "ours", "reference": "simple reference"}
RESULT_COLUMNS = ["dataset", "level", "machine", "section", "domain", "system", "auc", "pauc",
                  "score", "n_normal", "n_anomaly"]


# ----------------------------------------------------------------------------------------------
# Labels and scores


def test_labels(index: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Labelled test clips of ``index``: its test rows (``row``: position in ``index``) with
    ``anomaly`` (0/1) from the name or from the evaluation ground truth of ``root``."""
    rows = np.flatnonzero(index["split"].to_numpy() == "test")
    test = with_ground_truth(index, root).iloc[rows].assign(row=rows)
    test["anomaly"] = test["label"].map({"normal": 0, "anomaly": 1})
    missing = test["anomaly"].isna()
    if missing.any():
        log.info("%d test clips without labels are not evaluated", int(missing.sum()))
    return test[~missing].astype({"anomaly": int}).reset_index(drop=True)


def missing_ground_truth(root: str | Path) -> str | None:
    """The warning to print when ``root`` has evaluation test clips but no ground truth."""
    from asd.data import ground_truth_dir

    folder = ground_truth_dir(root)
    tests = [p for p in Path(root, "eval_data").glob("*/*test") if any(p.glob("*.wav"))]
    if tests and not any(folder.glob("ground_truth_*.csv")):
        return (f"no evaluation ground truth in {folder}: the eval sections are not scored; "
                f"`make data` (python -m asd.download) fetches it")
    return None


def attach_scores(labels: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """``labels`` with the submission's ``score``; a labelled clip without a score is an error."""
    keys = ["machine", "section", "domain", "file"]
    if submission.duplicated(keys).any():
        raise SubmitError("the submission lists a clip twice: "
                          + " ".join(submission[submission.duplicated(keys)].iloc[0][keys]))
    out = labels.merge(submission[keys + ["score"]], on=keys, how="left")
    lost = out[out["score"].isna()]
    if len(lost):
        m, s, d = lost.iloc[0][["machine", "section", "domain"]]
        raise SubmitError(f"the submission lacks {len(lost)} labelled test clips, e.g. "
                          f"{lost.iloc[0]['file']} of {m} section {s} {d}; submit this data "
                          f"root again")
    return out


# ----------------------------------------------------------------------------------------------
# Tables


def section_table(clips: pd.DataFrame, systems=SYSTEMS) -> pd.DataFrame:
    """Per (dataset, machine, section, domain) and system: AUC, pAUC and clip counts.

    ``clips`` holds one row per labelled test clip with ``anomaly`` and one score column per
    system. Groups with only normal or only anomalous clips are skipped with a warning.
    """
    rows = []
    for (dataset, machine, section, domain), g in clips.groupby(
            ["dataset", "machine", "section", "domain"], sort=True):
        y = g["anomaly"].to_numpy()
        n_anom = int(y.sum())
        if n_anom in (0, len(y)):
            log.warning("%s %s section %s %s: only one label among its %d test clips; skipped",
                        dataset, machine, section, domain, len(y))
            continue
        for system in systems:
            s = g[system].to_numpy()
            if np.isnan(s).any():
                continue
            a, p = metrics.auc(y, s), metrics.pauc(y, s)
            rows.append({"dataset": dataset, "level": "section", "machine": machine,
                         "section": section, "domain": domain, "system": system, "auc": a,
                         "pauc": p, "score": metrics.hmean([a, p]),
                         "n_normal": len(y) - n_anom, "n_anomaly": n_anom})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summary_rows(sections: pd.DataFrame) -> pd.DataFrame:
    """Harmonic means per (dataset, system): per machine (level "machine"), per domain over all
    machines (level "domain", machine "all") and over everything (level "all", whose ``score``
    is the official score: all AUC and pAUC values together)."""
    rows = []
    for (dataset, system), g in sections.groupby(["dataset", "system"], sort=True):
        parts = [("machine", m, "", gm) for m, gm in g.groupby("machine", sort=True)]
        parts += [("domain", "all", d, gd) for d, gd in g.groupby("domain", sort=True)]
        parts.append(("all", "all", "", g))
        for level, machine, domain, gm in parts:
            rows.append({"dataset": dataset, "level": level,
                         "machine": machine, "section": "", "domain": domain, "system": system,
                         "auc": metrics.hmean(gm["auc"]), "pauc": metrics.hmean(gm["pauc"]),
                         "score": metrics.official_score(gm["auc"], gm["pauc"]),
                         "n_normal": int(gm["n_normal"].sum()),
                         "n_anomaly": int(gm["n_anomaly"].sum())})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _pct(a: float, p: float) -> str:
    return f"{100 * a:.2f} / {100 * p:.2f}"


def machine_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 2 layout for one dataset: machine rows, AUC / pAUC (%) of ours, the reference
    detector and (development data only) the published systems."""
    summ = results[(results["dataset"] == dataset) & results["level"].isin(["machine", "all"])]
    machines = sorted((m for m in summ["machine"].unique() if m != "all"), key=str.lower)
    machines.append("all")  # the report's order: fan, gearbox, pump, slider, ToyCar, ...
    rows = []
    for machine in machines:
        row = {"machine": machine}
        for system in SYSTEMS:
            r = summ[(summ["machine"] == machine) & (summ["system"] == system)]
            row[SYSTEM_NAMES[system]] = _pct(r["auc"].iloc[0], r["pauc"].iloc[0]) if len(r) else "-"
        if dataset == "dev_data":
            for name, table in PUBLISHED.items():
                row[name] = (f"{table[machine][0]:.2f} / {table[machine][1]:.2f}"
                             if machine in table else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def domain_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Source and target rows: AUC / pAUC (%) over all machines and sections of that domain."""
    summ = results[(results["dataset"] == dataset) & (results["level"] == "domain")]
    rows = []
    for domain, g in summ.groupby("domain", sort=True):
        row = {"domain": domain}
        for system in SYSTEMS:
            r = g[g["system"] == system]
            row[SYSTEM_NAMES[system]] = _pct(r["auc"].iloc[0], r["pauc"].iloc[0]) if len(r) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def official_line(results: pd.DataFrame, dataset: str) -> str:
    summ = results[(results["dataset"] == dataset) & (results["level"] == "all")]
    parts = [f"{SYSTEM_NAMES[r.system]} {100 * r.score:.2f}" for r in summ.itertuples()]
    line = "official score (harmonic mean of all AUC and pAUC values): " + ", ".join(parts)
    if dataset == "dev_data":
        approx = ", ".join(f"{name} ~{metrics.hmean(t['all']):.2f}"
                           for name, t in PUBLISHED.items())
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
                _markdown(domain_table(results, dataset)), "", "### Per section and domain", ""]
        sec = results[(results["dataset"] == dataset) & (results["level"] == "section")]
        wide = sec.pivot_table(index=["machine", "section", "domain", "n_normal", "n_anomaly"],
                               columns="system", values=["auc", "pauc"]).reset_index()
        counts = [f"{a}/{b}" for a, b in zip(wide["n_normal"], wide["n_anomaly"])]
        detail = pd.DataFrame({"machine": wide["machine"], "section": wide["section"],
                               "domain": wide["domain"], "clips (normal/anomaly)": counts})
        for system in SYSTEMS:
            if ("auc", system) in wide.columns:
                detail[SYSTEM_NAMES[system]] = [_pct(a, p) for a, p in
                                                zip(wide[("auc", system)], wide[("pauc", system)])]
        out += [_markdown(detail), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Figures


def roc_figures(clips: pd.DataFrame, folder: Path) -> list[Path]:
    """One ROC figure per machine: a curve per (section, domain), ours solid, reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    written = []
    for machine, g in clips.groupby("machine", sort=True):
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for i, ((dataset, section, domain), gs) in enumerate(
                g.groupby(["dataset", "section", "domain"], sort=True)):
            y = gs["anomaly"].to_numpy()
            if y.min() == y.max():
                continue
            colour = f"C{i % 10}"
            fpr, tpr, _ = roc_curve(y, gs["ours"].to_numpy())
            ax.plot(fpr, tpr, color=colour, label=f"{section} {domain} "
                    f"(AUC {100 * metrics.auc(y, gs['ours']):.1f})")
            if "reference" in gs and not gs["reference"].isna().any():
                fpr, tpr, _ = roc_curve(y, gs["reference"].to_numpy())
                ax.plot(fpr, tpr, color=colour, linestyle="--", linewidth=0.8)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.axvline(metrics.MAX_FPR, color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
               ylim=(0, 1), title=f"{machine}: ours (solid), simple reference (dashed)")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = folder / f"roc_{machine}.png"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# The whole step


@dataclass
class Evaluation:
    run: Path
    clips: pd.DataFrame    # one row per labelled test clip: labels and both systems' scores
    results: pd.DataFrame  # RESULT_COLUMNS
    figures: list[Path]
    absent: str | None = None  # why the eval table is missing (missing_ground_truth)


def scored_clips(cfg: Config, run: str | Path) -> pd.DataFrame:
    """One row per labelled test clip of ``cfg.data.root``: test_labels' columns, ``ours`` (the
    submission of ``run``) and ``reference`` (asd.reference's score)."""
    from asd.cache import build_cache
    from asd.reference import reference_scores

    run = Path(run)
    if not (run / SUBMISSION).is_dir():
        raise SubmitError(f"{run / SUBMISSION} does not exist; run asd.submit (make submit) first")
    if (run / "config.yml").is_file():
        check_features(cfg.features, load_config(run / "config.yml").features, run)
    submission = read_submission(run / SUBMISSION)
    cache = build_cache(cfg, progress=False)
    labels = test_labels(cache.index, cfg.data.root)
    if labels.empty:
        raise SubmitError(f"{cfg.data.root}: no labelled test clips (no dev_data labels and no "
                          f"eval_data/ground_truth/)")
    clips = attach_scores(labels, submission).rename(columns={"score": "ours"})
    ref = reference_scores(cache.features, cache.index)  # (N,) NaN for training rows
    clips["reference"] = ref[clips["row"].to_numpy()]
    return clips


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
                    domain_table(ev.results, dataset).to_string(index=False), ""]
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
    parser = make_parser("asd.evaluate", "AUC / pAUC tables of a submitted run; prints the run "
                         "folder last.",
                         from_help="run folder (default: the latest finished *-stage2 run)")
    parser.add_argument("--no-figures", action="store_true", help="skip the ROC figures")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
