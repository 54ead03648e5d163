"""AUC / pAUC tables of a submitted run against the labels; prints the run folder last.

``python -m asd.evaluate [--config C] [--from RUN] [key.sub=value ...]``

Reads the run's challenge CSVs (``RUN/submission/``, as the official evaluator does) and the
labels of the test clips of ``data.root`` (names, or ``eval_data/ground_truth/``). Per (machine,
section, domain), on that domain's test clips: AUC and pAUC (p = 0.1); harmonic means per
machine (the report's Table 2), per domain and over everything, and the official score; the
same for the simple reference detector (:mod:`asd.method.reference`), and beside them the published
numbers of the real development data. Machines follow the report's order (``MACHINES``) in every
table and figure. Writes ``RUN/results.csv`` (long format), ``RUN/results.md`` and one ROC figure
per dataset, ``RUN/figures/roc_<dataset>.png``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from asd import AsdError
from asd.infra.cli import load_run, make_parser, run_command
from asd.infra.config import Config, load_config
from asd.infra.data import ground_truth_dir, report_order, with_ground_truth
from asd.infra.io import atomic_path, atomic_write_text
from asd.method import metrics
from asd.submit import SUBMISSION, SubmitError, check_features, read_submission

log = logging.getLogger("asd.evaluate")  # not "__main__" under python -m

# the report's Table 2 order (alphabetical, case aside); every table and figure uses it
MACHINES = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve")
# docs/reproduction.md "Reference numbers": the REAL development test data, harmonic means,
# AUC / pAUC in %
PUBLISHED = {
    name: dict(zip(MACHINES + ("all",), values))
    for name, values in {
        "report": [
            (61.65, 61.44),
            (65.59, 53.09),
            (64.58, 57.40),
            (70.85, 58.78),
            (61.84, 55.79),
            (65.63, 56.02),
            (74.20, 67.47),
            (66.12, 58.18),
        ],
        "AE baseline": [
            (63.24, 53.38),
            (65.97, 52.76),
            (61.92, 54.41),
            (66.74, 55.94),
            (62.49, 52.36),
            (61.71, 53.81),
            (53.41, 50.54),
            (62.01, 53.43),
        ],
        "MobileNetV2 baseline": [
            (61.56, 63.02),
            (66.70, 59.16),
            (61.89, 57.37),
            (59.26, 56.00),
            (56.04, 56.37),
            (57.46, 51.61),
            (56.51, 52.64),
            (59.24, 55.95),
        ],
    }.items()
}
SYSTEM_NAMES = {"ours": "ours", "reference": "simple reference"}  # reference: asd.method.reference
PUBLISHED_NOTE = (
    "published: the report's Table 2 and the DCASE 2021 Task 2 AE and MobileNetV2 "
    "baselines, on the REAL development data; not measured on this data"
)
RESULT_COLUMNS = [
    "dataset",
    "level",
    "machine",
    "section",
    "domain",
    "system",
    "auc",
    "pauc",
    "score",
    "n_normal",
    "n_anomaly",
]


def missing_ground_truth(root: str | Path) -> str | None:
    """The warning to print when ``root`` has evaluation test clips but no ground truth."""
    folder = ground_truth_dir(root)
    tests = [p for p in Path(root, "eval_data").glob("*/*test") if any(p.glob("*.wav"))]
    if tests and not any(folder.glob("ground_truth_*.csv")):
        return (
            f"no evaluation ground truth in {folder}: the eval sections are not scored; "
            f"`make data` (python -m asd.download) fetches it"
        )


def section_table(clips: pd.DataFrame) -> pd.DataFrame:
    """Result rows per (dataset, machine, section, domain) and system of labelled test ``clips``
    (``anomaly`` and a score column per system of SYSTEM_NAMES that it has); one-label groups
    are skipped (warned)."""
    rows, keys = [], ["dataset", "machine", "section", "domain"]
    for key, g in report_order(clips, keys).groupby(keys, sort=False):
        y = g["anomaly"].to_numpy()
        n_anom = int(y.sum())
        if n_anom in (0, len(y)):
            log.warning(
                "%s %s section %s %s: only one label among its %d test clips; skipped", *key, len(y)
            )
            continue
        for system in [name for name in SYSTEM_NAMES if name in g and g[name].notna().all()]:
            a, p = metrics.auc(y, g[system]), metrics.pauc(y, g[system])
            rows.append(
                (
                    key[0],
                    "section",
                    *key[1:],
                    system,
                    a,
                    p,
                    metrics.hmean([a, p]),
                    len(y) - n_anom,
                    n_anom,
                )
            )  # RESULT_COLUMNS
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summary_rows(sections: pd.DataFrame) -> pd.DataFrame:
    """Harmonic means per (dataset, system) over each machine (level "machine"), each domain
    (level "domain", machine "all") and everything (level "all": ``score`` is the official one)."""
    rows = []
    for (dataset, system), g in sections.groupby(["dataset", "system"], sort=True):
        parts = [("machine", m, "", gm) for m, gm in g.groupby("machine", sort=False)]
        parts += [("domain", "all", d, gd) for d, gd in g.groupby("domain", sort=True)]
        parts.append(("all", "all", "", g))
        for level, machine, domain, gm in parts:
            rows.append(
                (
                    dataset,
                    level,
                    machine,
                    "",
                    domain,
                    system,
                    metrics.hmean(gm["auc"]),
                    metrics.hmean(gm["pauc"]),
                    metrics.official_score(gm["auc"], gm["pauc"]),
                    int(gm["n_normal"].sum()),
                    int(gm["n_anomaly"].sum()),
                )
            )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _systems_table(results: pd.DataFrame, dataset: str, levels: list, by: list) -> pd.DataFrame:
    """Per ``by`` group of the ``levels`` rows of ``dataset``: each system's AUC / pAUC (%)."""
    table = []
    rows = results[(results["dataset"] == dataset) & results["level"].isin(levels)]
    for key, group in rows.groupby(by, sort=False):
        cells = {name: "-" for name in SYSTEM_NAMES.values()}
        cells.update(
            {
                SYSTEM_NAMES[row.system]: f"{100 * row.auc:.2f} / {100 * row.pauc:.2f}"
                for row in group.itertuples()
            }
        )
        table.append({**dict(zip(by, key)), **cells})
    return pd.DataFrame(table)  # in the order of ``results``


def machine_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 2 layout for one dataset: machine rows ending with "all", AUC / pAUC (%) of ours,
    the reference detector and (development data only) the published systems."""
    table = _systems_table(results, dataset, ["machine", "all"], ["machine"])
    if dataset == "dev_data":
        for name, published in PUBLISHED.items():
            table[f"published: {name.split()[0]}"] = [
                f"{published[m][0]:.2f} / {published[m][1]:.2f}" if m in published else "-"
                for m in table["machine"]
            ]
    return table


def official_line(results: pd.DataFrame, dataset: str) -> str:
    summ = results[(results["dataset"] == dataset) & (results["level"] == "all")]
    parts = [f"{SYSTEM_NAMES[r.system]} {100 * r.score:.2f}" for r in summ.itertuples()]
    line = "official score (harmonic mean of all AUC and pAUC values): " + ", ".join(parts)
    if dataset == "dev_data":
        approx = ", ".join(
            f"{name} ~{metrics.hmean(means['all']):.2f}" for name, means in PUBLISHED.items()
        )
        line += f"; published, real development data (from their two means): {approx}"
    return line


def _markdown(df: pd.DataFrame) -> str:
    rows = [df.columns, ["---"] * df.shape[1], *df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def result_blocks(results: pd.DataFrame, markdown: bool = False) -> list[str]:
    """Per dataset: the machine table, the official scores and the per domain table, as printed
    (plain text tables), or for results.md (``markdown``) with the per section table too."""
    table = _markdown if markdown else (lambda df: df.to_string(index=False))  # every row
    out = []
    for dataset in sorted(results["dataset"].unique()):
        out += [
            f"## {dataset or 'data'}: harmonic means, AUC / pAUC (%)",
            table(machine_table(results, dataset)),
            *([PUBLISHED_NOTE] if dataset == "dev_data" else []),
            official_line(results, dataset),
            "### Per domain, harmonic means over machines and sections",
            table(_systems_table(results, dataset, ["domain"], ["domain"])),
        ]
        if markdown:  # with each section's normal and anomalous test clip counts
            out += [
                "### Per section and domain",
                table(
                    _systems_table(
                        results,
                        dataset,
                        ["section"],
                        ["machine", "section", "domain", "n_normal", "n_anomaly"],
                    )
                ),
            ]
    return out


def roc_figure(clips: pd.DataFrame, title: str):
    """ROC small multiples of labelled test ``clips`` (one dataset): a row per machine, a panel
    per section; colour = domain, solid = ours, dashed = the simple reference; the shaded band
    is the pAUC region (FPR <= 0.1). Returns a matplotlib Figure (no pyplot state)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    keys = ["machine", "section", "domain"]
    groups = dict(list(clips.groupby(keys)))
    rows = (
        report_order(clips[keys[:2]].drop_duplicates(), keys[:2])
        .groupby("machine", sort=False)["section"]
        .apply(list)
    )  # machine -> its sections
    ncols = max(len(v) for v in rows)
    fig = Figure(figsize=(2.5 * ncols + 0.5, 2.3 * len(rows) + 1.2), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False, sharex=True, sharey=True)
    for row, (machine, sections) in zip(axes, rows.items()):
        for ax in row[len(sections) :]:
            ax.set_visible(False)
        for ax, section in zip(row, sections):
            ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
            for colour, domain in (("C0", "source"), ("C1", "target")):
                g = groups.get((machine, section, domain))
                for system, style in (("ours", "-"), ("reference", "--")):
                    if g is not None and g["anomaly"].nunique() == 2 and g[system].notna().all():
                        ax.plot(
                            *roc_curve(g["anomaly"], g[system])[:2],
                            color=colour,
                            ls=style,
                            label=f"{domain}, {SYSTEM_NAMES[system]}",
                        )
            ax.axvspan(
                0,
                metrics.MAX_FPR,
                color="0.88",
                linewidth=0,
                zorder=0,
                label=f"pAUC region: FPR <= {metrics.MAX_FPR}",
            )  # last in the legend
            ax.set(
                title=f"{machine} section {section}",
                xlim=(0, 1),
                ylim=(0, 1),
                xticks=[metrics.MAX_FPR, 0.5, 1],
                xlabel="false positive rate",
                ylabel="true positive rate",
            )
            ax.label_outer()  # axis labels on the outer panels only
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, fontsize=9)
    fig.suptitle(title)
    return fig


@dataclass
class Evaluation:
    run: Path
    clips: pd.DataFrame  # one row per labelled test clip: labels and both systems' scores
    results: pd.DataFrame  # RESULT_COLUMNS
    figures: list[Path]
    absent: str | None = None  # why the eval table is missing (missing_ground_truth)


def scored_clips(cfg: Config, run: str | Path) -> pd.DataFrame:
    """One row per labelled test clip of ``cfg.data.root``: its index row (``row``: position in
    the index), ``anomaly`` (0/1, from the name or the evaluation ground truth), ``ours`` (the
    submission of ``run``) and ``reference`` (asd.method.reference's score)."""
    from asd.infra.feature_cache import build_cache
    from asd.method.reference import reference_scores

    run = Path(run)
    if not (run / SUBMISSION).is_dir():
        raise SubmitError(f"{run / SUBMISSION} does not exist; run asd.submit (make submit) first")
    check_features(cfg.features, load_config(run / "config.yml").features, run)
    submission = read_submission(run / SUBMISSION)
    keys = ["machine", "section", "domain", "file"]
    if submission.duplicated(keys).any():
        raise SubmitError(
            "the submission lists a clip twice: "
            + " ".join(submission[submission.duplicated(keys)].iloc[0][keys])
        )
    cache = build_cache(cfg, progress=False)
    rows = np.flatnonzero(cache.index["split"].to_numpy() == "test")
    test = with_ground_truth(cache.index, cfg.data.root).iloc[rows].assign(row=rows)
    test["anomaly"] = test["label"].map({"normal": 0, "anomaly": 1})
    missing = test["anomaly"].isna()
    if missing.any():
        log.info("%d test clips without labels are not evaluated", int(missing.sum()))
    clips = (
        test[~missing]
        .astype({"anomaly": int})
        .reset_index(drop=True)
        .merge(submission[keys + ["score"]].rename(columns={"score": "ours"}), on=keys, how="left")
    )
    lost = clips[clips["ours"].isna()]
    if len(lost):
        raise SubmitError(
            f"the submission lacks {len(lost)} labelled test clips, e.g. "
            f"{' '.join(lost.iloc[0][keys])}; submit this data root again"
        )
    ref = reference_scores(cache.features, cache.index)  # (N,) NaN for training rows
    return clips.assign(reference=ref[clips["row"].to_numpy()])


def evaluate(
    cfg: Config, run: str | Path, figures: bool = True, config: str | None = None
) -> Evaluation:
    """Evaluate the submission of ``run`` against the labels of ``cfg.data.root``; ``config``
    says where ``cfg`` came from (results.md names it; default: the run's config.yml)."""
    run = Path(run)
    absent = missing_ground_truth(cfg.data.root)
    if absent:
        log.warning(absent)
    clips = scored_clips(cfg, run)
    sections = section_table(clips)
    if sections.empty:
        raise SubmitError(
            f"{cfg.data.root}: no (machine, section, domain) has both normal and "
            f"anomalous labelled test clips (labels: dev_data names, "
            f"eval_data/ground_truth/)"
        )
    results = pd.concat([sections, summary_rows(sections)], ignore_index=True)
    with atomic_path(run / "results.csv") as tmp:
        results.to_csv(tmp, index=False, float_format="%.6f")
    written = []
    for dataset, g in clips.groupby("dataset", sort=True) if figures else ():
        written.append(run / "figures" / f"roc_{dataset or 'data'}.png")
        with atomic_path(written[-1]) as tmp:  # ROC small multiples, dev and eval apart
            roc_figure(g, f"{run.name}: ROC curves of the {dataset or 'data'} sections").savefig(
                tmp, format="png", dpi=100
            )
    ev = Evaluation(run=run, clips=clips, results=results, figures=written, absent=absent)
    atomic_write_text(
        run / "results.md", render_markdown(ev, cfg.data.root, config or str(run / "config.yml"))
    )
    return ev


def render_markdown(ev: Evaluation, root: str | Path, config: str) -> str:
    """results.md: what produced it (links relative to the run folder), then every table."""
    from asd.notebooks import find_notebooks
    from asd.runview import run_chain

    try:
        runs = [
            f"[{r.name}]({Path(os.path.relpath(r, ev.run)).as_posix()})" for r in run_chain(ev.run)
        ]
    except AsdError as err:  # a moved Step 1 run: results.md says so
        runs = [f"{ev.run.name} ({err})"]
    pages = [f"[{p.stem}](notebooks/{p.stem}.html)" for p in find_notebooks()]
    header = [
        f"- data root: `{Path(root).resolve()}`",
        f"- config: `{config}`",
        f"- runs, Step 1 first: {', '.join(runs)}",
        f"- figures: {', '.join(f'[{p.stem}](figures/{p.name})' for p in ev.figures)}",
        f"- notebooks (`make notebooks FROM={ev.run}` writes them): {', '.join(pages)}",
    ]
    out = [
        f"# Results of {ev.run.name}",
        "\n".join(header),
        "AUC / pAUC (p = 0.1) in %, harmonic means over sections and domains; each domain "
        "is scored on its own test clips. 'simple reference' is a Gaussian on per-clip "
        "log-mel mean and std (asd.method.reference) on the same clips.",
        *result_blocks(ev.results, markdown=True),
    ]
    if ev.absent:
        out += ["## eval_data", f"absent: {ev.absent}"]
    return "\n\n".join(out) + "\n"


def report(ev: Evaluation) -> str:
    """The printed tables (:func:`result_blocks`), what is absent and the files written."""
    absent = [f"eval_data: absent ({ev.absent})"] if ev.absent else []
    return "\n\n".join(
        [
            *result_blocks(ev.results),
            *absent,
            f"results: {ev.run / 'results.md'}, {ev.run / 'results.csv'}; ROC "
            f"figures: {', '.join(str(p) for p in ev.figures) or 'none'}",
        ]
    )


def _main(args) -> None:
    run, cfg = load_run(args)
    config = " ".join([args.config or str(run / "config.yml"), *args.overrides])
    ev = evaluate(cfg, run, figures=not args.no_figures, config=config)
    print(report(ev))
    print(ev.run)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "asd.evaluate", __doc__, from_help="run folder (default: the latest finished *-stage2 run)"
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the ROC figures")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
