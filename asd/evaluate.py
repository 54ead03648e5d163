"""AUC / pAUC tables of a submitted run against the labels; prints the run folder last.

``python -m asd.evaluate [--config C] [--from RUN] [key.sub=value ...]``

Reads the run's challenge CSVs (``RUN/submission/``, as the official evaluator does; "ours"),
the other back-end's scores from ``RUN/scores.csv`` (kNN beside the report's GMM/OCSVM pair or
the other way round) and the labels of the test clips of ``data.root`` (names, or the
evaluation ground truth). Per (machine, section, domain): AUC and pAUC (p = 0.1) as the layout's
year's evaluator computes them (:func:`asd.method.metrics.section_values`: 2021 on each domain's
own clips; 2022-2026 AUC of each domain's normals against all the section's anomalies and one
pAUC per section); harmonic means per machine (the report's Table 2), per domain and over
everything, and that year's official score; the same for the simple reference detector
(:mod:`asd.method.reference`); the published numbers of the real 2021 development data follow
in a table of their own, and the intended and measured false-alarm rates of the decisions.
Machines follow the report's order (``MACHINES``) in every table and figure. Writes
``RUN/results.csv`` (long format), ``RUN/results.md`` and one ROC figure per dataset,
``RUN/figures/roc_<dataset>.png``. A run is evaluated only on the data root and
sections it was submitted for (other data would replace its results with another data set's).
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from asd import AsdError
from asd.infra.cli import load_run, make_parser, run_command
from asd.infra.config import Config, DetectorConfig, load_config
from asd.infra.data import (
    DOMAINS,
    ground_truth_dir,
    index_dataset,
    report_order,
    with_ground_truth,
)
from asd.infra.io import atomic_path, atomic_write_text
from asd.infra.runs import Run, submitted_data
from asd.method import metrics
from asd.submit import check_features, layout_rule, read_submission

# Named, not __name__: under python -m that would be "__main__".
log = logging.getLogger("asd.evaluate")

# The report's Table 2 order (alphabetical, case aside); every table and figure uses it.
MACHINES = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve")
# docs/reproduction.md "Reference numbers": the REAL development test data, harmonic means,
# AUC / pAUC in %.
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
# ours: the submitted CSVs; knn / gmm_ocsvm: the other back-end (scores.csv); reference:
# asd.method.reference.
SYSTEM_NAMES = {
    "ours": "ours",
    "gmm_ocsvm": "GMM/OCSVM",
    "knn": "kNN",
    "reference": "simple reference",
}
RULE_NAMES = {
    "2021": "the 2021 rule: harmonic mean of every section and domain's AUC and pAUC, each on "
    "that domain's test clips",
    "2022": "the 2022-2026 rule: one harmonic mean of every section's AUC(source) and "
    "AUC(target), each domain's normals against all the section's anomalies, and its pAUC on "
    "all its clips",
    "folders": "harmonic mean of every machine's AUC and pAUC on all its test clips",
}
PUBLISHED_NOTE = (
    "The report's Table 2 and the DCASE 2021 Task 2 AE and MobileNetV2 baselines, as "
    "published: measured on the REAL development data, not on this data; for orientation only."
)
# What a refusal to evaluate a run on other data than its submission's says to do instead.
ADVICE = "evaluate it with that data root (drop the data.root override), or submit a copy first"
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


class EvaluateError(AsdError):
    """A run or data root that cannot be evaluated; the message says which and why."""


class _PartKey(NamedTuple):
    """Which clips a part of a section holds (domain "": all of the section's)."""

    dataset: str
    machine: str
    section: str
    domain: str


def missing_ground_truth(root: str | Path) -> str | None:
    """The warning to print when ``root`` has evaluation test clips but no ground truth."""
    folder = ground_truth_dir(root)
    # Only a root with evaluation test clips needs their ground truth.
    tests = [p for p in Path(root, "eval_data").glob("*/*test") if any(p.glob("*.wav"))]
    if tests and not any(folder.glob("ground_truth_*.csv")):
        return (
            f"no evaluation ground truth in {folder}: the eval sections are not scored; "
            f"`make data` (python -m asd.download) fetches it"
        )


def _parts(rule: str, g: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The (domain, clips) parts of one section's labelled test clips ``g`` that the ``rule``
    scores apart, each with both labels: each domain (2021), the whole section (2022, folders: the
    domain "" for folders, whose test domains are unknown)."""
    if rule == "2021":
        return list(g.groupby("domain", sort=True))
    return [("", g)]


def _section_rows(rule: str, key: tuple, part: pd.DataFrame, systems: list) -> list[tuple]:
    """RESULT_COLUMNS rows of one section part: a row per domain and system; for 2022 each
    domain's AUC beside the section's one pAUC (n_anomaly: all the section's anomalies)."""
    y = part["anomaly"].to_numpy()
    # A 2021 part is one domain's clips, which the folders rule scores as a whole.
    part_rule = "folders" if rule == "2021" else rule
    rows = []
    for system in systems:
        values = metrics.section_values(part_rule, y, part[system], part["domain"])
        # 2022: a row per domain, its normals against all the section's anomalies.
        if rule == "2022":
            per_domain = [(d, values[f"auc_{d}"], part["domain"] == d) for d in DOMAINS]
        else:
            per_domain = [(key.domain, values["auc"], np.ones(len(part), bool))]
        for d, a, mine in per_domain:
            p = values["pauc"]
            n_anom = int(y.sum()) if rule == "2022" else int(y[mine].sum())
            n_normal = int((y[mine] == 0).sum())
            score = metrics.hmean([a, p])
            # In the order of RESULT_COLUMNS.
            row = (key.dataset, "section", key.machine, key.section, d, system, a, p, score)
            rows.append((*row, n_normal, n_anom))
    return rows


def section_table(clips: pd.DataFrame, rule: str = "2021") -> pd.DataFrame:
    """Result rows per (dataset, machine, section, domain) and system of labelled test ``clips``
    (``anomaly`` and a score column per system of SYSTEM_NAMES that it has), as the ``rule``
    (asd.method.metrics.LAYOUT_RULES) scores them; parts without both labels are skipped
    (warned)."""
    rows = []
    keys = ["dataset", "machine", "section"]
    for key, g in report_order(clips, keys).groupby(keys, sort=False):
        # A system with a clip unscored (an older run without both back-ends) is left out.
        systems = [name for name in SYSTEM_NAMES if name in g and g[name].notna().all()]
        for domain, part in _parts(rule, g):
            y = part["anomaly"].to_numpy()
            # An AUC needs both labels; 2022 needs the normals of both domains as well.
            wanted = 2 if rule == "2022" else 1
            has_normals = part.loc[y == 0, "domain"].nunique(dropna=False) >= wanted
            if int(y.sum()) in (0, len(y)) or not has_normals:
                log.warning(
                    "%s %s section %s %s: its test clips lack normal or anomalous ones "
                    "(of each domain, from 2022); skipped",
                    *key,
                    domain or "(all domains)",
                )
                continue
            rows += _section_rows(rule, _PartKey(*key, domain), part, systems)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _official(rule: str, rows: pd.DataFrame) -> float:
    """The rule's official score of section rows: for 2022, where both domains' rows repeat
    the section's one pAUC, that pAUC counts once."""
    paucs = rows.drop_duplicates(["machine", "section"]) if rule == "2022" else rows
    return metrics.official_score(rows["auc"], paucs["pauc"])


def summary_rows(sections: pd.DataFrame, rule: str = "2021") -> pd.DataFrame:
    """Harmonic means per (dataset, system) over each machine (level "machine"), each domain
    (level "domain", machine "all") and everything (level "all": ``score`` is the rule's
    official one)."""
    rows = []
    for (dataset, system), g in sections.groupby(["dataset", "system"], sort=True):
        parts = [("machine", m, "", gm) for m, gm in g.groupby("machine", sort=False)]
        parts += [("domain", "all", d, gd) for d, gd in g.groupby("domain", sort=True)]
        parts.append(("all", "all", "", g))
        for level, machine, domain, gm in parts:
            # 2022 rows repeat the section's anomalies under both domains: count them once.
            if rule == "2022":
                once = gm.drop_duplicates(["machine", "section"])
                n_anomaly = int(once["n_anomaly"].sum())
            else:
                n_anomaly = int(gm["n_anomaly"].sum())
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
                    _official(rule, gm),
                    int(gm["n_normal"].sum()),
                    n_anomaly,
                )
            )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _systems_table(results: pd.DataFrame, dataset: str, levels: list, by: list) -> pd.DataFrame:
    """Per ``by`` group of the ``levels`` rows of ``dataset``: each system's AUC / pAUC (%)."""
    table = []
    rows = results[(results["dataset"] == dataset) & results["level"].isin(levels)]
    present = [name for key, name in SYSTEM_NAMES.items() if key in set(rows["system"])]
    for key, group in rows.groupby(by, sort=False):
        # A system without a row in this group shows "-", so every row has every column.
        cells = dict.fromkeys(present, "-")
        for row in group.itertuples():
            cells[SYSTEM_NAMES[row.system]] = f"{100 * row.auc:.2f} / {100 * row.pauc:.2f}"
        table.append({**dict(zip(by, key)), **cells})
    # In the order of ``results``.
    return pd.DataFrame(table)


def with_published(dataset: str, rule: str = "2021") -> bool:
    """Whether the published 2021 numbers follow ``dataset``: 2021 development data only (they
    were measured on the real 2021 development data)."""
    return dataset == "dev_data" and rule == "2021"


def machine_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 2 layout for one dataset: machine rows ending with "all", AUC / pAUC (%) of the
    systems measured on this data (ours, the other back-end, the reference detector)."""
    return _systems_table(results, dataset, ["machine", "all"], ["machine"])


def published_table(machines: list[str]) -> pd.DataFrame:
    """The published AUC / pAUC (%) of the REAL development data (PUBLISHED) for ``machines``
    ("all" included): a table of its own, never in the rows of measured numbers."""
    table = pd.DataFrame({"machine": machines})
    for name, published in PUBLISHED.items():
        cells = []
        for m in machines:
            # Published numbers exist only for the 2021 machines; others show "-".
            if m in published:
                auc, pauc = published[m]
                cells.append(f"{auc:.2f} / {pauc:.2f}")
            else:
                cells.append("-")
        table[name] = cells
    return table


def official_line(results: pd.DataFrame, dataset: str, rule: str = "2021") -> str:
    """The official score (the layout's ``rule``) of each system measured on ``dataset``."""
    summ = results[(results["dataset"] == dataset) & (results["level"] == "all")]
    score = dict(zip(summ["system"], summ["score"]))
    # In the order of SYSTEM_NAMES, only the systems measured.
    parts = [f"{name} {100 * score[key]:.2f}" for key, name in SYSTEM_NAMES.items() if key in score]
    return f"official score ({RULE_NAMES[rule]}): " + ", ".join(parts)


def published_line() -> str:
    """The published systems' official scores, approximated from their two harmonic means."""
    # Only the two means were published, not each section's numbers the official score needs.
    approx = ", ".join(
        f"{name} ~{metrics.hmean(means['all']):.2f}" for name, means in PUBLISHED.items()
    )
    return f"official score, published (from their two means): {approx}"


def text_table(df: pd.DataFrame) -> str:
    """Every row of ``df`` with its columns padded and separated by " | " (also a Markdown
    table), so neighbouring cells of "AUC / pAUC" pairs cannot run together."""
    cells = [list(map(str, df.columns)), *[list(map(str, row)) for row in df.itertuples(False)]]
    # At least three dashes: what Markdown needs of a separator cell.
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(df.shape[1])]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, " | ".join("-" * w for w in widths))
    return "\n".join(lines)


def backend_line(backend: str) -> str:
    """What "ours" is, and which back-end stands beside it."""
    other = "knn" if backend == "gmm_ocsvm" else "gmm_ocsvm"
    return (
        f"ours: the submitted challenge CSVs, the {SYSTEM_NAMES[backend]} back-end "
        f"(detectors.backend); {SYSTEM_NAMES[other]}: the other back-end, fitted by the same "
        f"submit (its scores beside ours in the run's scores table)"
    )


def result_blocks(
    results: pd.DataFrame, markdown: bool = False, rule: str = "2021", backend: str | None = None
) -> list[str]:
    """Per dataset: the machine table, the official scores (the layout's ``rule``) and the per
    domain table of what was measured, and after the 2021 development data the published
    numbers in a table of their own; for results.md (``markdown``) with the per section table
    too; ``backend`` (the submitted one) adds a line saying what "ours" is."""
    out = [backend_line(backend)] if backend else []
    for dataset in sorted(results["dataset"].unique()):
        machines = machine_table(results, dataset)
        out += [
            f"## {dataset or 'data'}, measured on this data: harmonic means, AUC / pAUC (%)",
            text_table(machines),
            official_line(results, dataset, rule),
        ]
        # Plain folders' test clips have no domain.
        if rule != "folders":
            out += [
                "### Per domain, harmonic means over machines and sections",
                text_table(_systems_table(results, dataset, ["domain"], ["domain"])),
            ]
        # With each section's normal and anomalous test clip counts.
        if markdown:
            out += [
                "### Per section and domain",
                text_table(
                    _systems_table(
                        results,
                        dataset,
                        ["section"],
                        ["machine", "section", "domain", "n_normal", "n_anomaly"],
                    )
                ),
            ]
        if with_published(dataset, rule):
            out += [
                "## Published, not measured here: harmonic means, AUC / pAUC (%)",
                PUBLISHED_NOTE,
                text_table(published_table(machines["machine"].tolist())),
                published_line(),
            ]
    return out


def _roc_panel(ax, groups: dict, machine: str, section: str, left: float) -> None:
    """One section's ROC curves (FPR on a log axis from ``left``), its AUC / pAUC (%) per domain
    and system as coloured text, and the operating point of our thresholds' decisions."""
    from sklearn.metrics import roc_curve

    # y = x is a curve on the log axis, so it is drawn through points.
    chance = np.geomspace(left, 1, 50)
    ax.plot(chance, chance, color="grey", linewidth=0.5)
    lines = []
    for colour, domain in (("C0", "source"), ("C1", "target"), ("C2", UNKNOWN_DOMAIN)):
        g = groups.get((machine, section, domain))
        # A ROC curve needs both labels.
        if g is None or g["anomaly"].nunique() < 2:
            continue
        numbers = []
        for system, style in (("ours", "-"), ("reference", "--")):
            if g[system].notna().all():
                ax.plot(
                    *roc_curve(g["anomaly"], g[system])[:2],
                    color=colour,
                    ls=style,
                    label=f"{domain}, {SYSTEM_NAMES[system]}",
                )
                auc = metrics.auc(g["anomaly"], g[system])
                pauc = metrics.pauc(g["anomaly"], g[system])
                name = "ours" if system == "ours" else "ref."
                numbers.append(f"{name} {100 * auc:.1f}/{100 * pauc:.1f}")
        lines.append((colour, f"{domain}: {', '.join(numbers)}"))
        # Where the thresholds put ours: the FPR and TPR of its decisions.
        if "decision" in g:
            flagged = g.groupby("anomaly")["decision"].mean()
            ax.scatter(
                max(flagged[0], left),
                flagged[1],
                s=36,
                color=colour,
                edgecolor="black",
                zorder=3,
                label=f"{domain}, ours at its threshold",
            )
    # AUC / pAUC (%) per domain, lower right, the first domain on top.
    for i, (colour, text) in enumerate(lines):
        ax.text(
            0.98,
            0.03 + 0.09 * (len(lines) - 1 - i),
            text,
            color=colour,
            fontsize=6.5,
            ha="right",
            transform=ax.transAxes,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    # Drawn last, so it comes last in the legend.
    ax.axvspan(
        left,
        metrics.MAX_FPR,
        color="0.88",
        linewidth=0,
        zorder=0,
        label=f"pAUC region: FPR <= {metrics.MAX_FPR}",
    )


# The domain column's name for test clips of no known domain (plain folders).
UNKNOWN_DOMAIN = "unknown"


def roc_figure(clips: pd.DataFrame, title: str, intended: float | None = None):
    """ROC small multiples of labelled test ``clips`` (one dataset): a row per machine, a panel
    per section; colour = domain, solid = ours, dashed = the simple reference, dots = where our
    thresholds' decisions (``decision``, where given) operate, a dotted line at the
    ``intended`` false-alarm rate (where given). The FPR axis is logarithmic, so
    the pAUC region (FPR <= 0.1, shaded) takes half of each panel; the text gives AUC / pAUC
    (%) per domain and system. Returns a matplotlib Figure (no pyplot state)."""
    from matplotlib.figure import Figure

    keys = ["machine", "section", "domain"]
    # Plain folders' test clips have no domain: one curve of all a section's clips.
    clips = clips.fillna({"domain": UNKNOWN_DOMAIN})
    groups = dict(list(clips.groupby(keys)))
    # machine -> its sections, a row of panels each.
    rows = (
        report_order(clips[keys[:2]].drop_duplicates(), keys[:2])
        .groupby("machine", sort=False)["section"]
        .apply(list)
    )
    # The log axis starts at the power of ten below one normal clip's FPR, so every step of
    # every curve shows.
    normals = (clips["anomaly"] == 0).groupby([clips[k] for k in keys]).sum()
    most_normal = int(normals.max())
    left = min(0.01, 10.0 ** math.floor(math.log10(1 / max(most_normal, 1))))
    ncols = max(len(v) for v in rows)
    fig = Figure(figsize=(2.7 * ncols + 0.5, 2.4 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False, sharex=True, sharey=True)
    for row, (machine, sections) in zip(axes, rows.items()):
        # Machines with fewer sections than the widest row leave their last panels empty.
        for ax in row[len(sections) :]:
            ax.set_visible(False)
        for ax, section in zip(row, sections):
            _roc_panel(ax, groups, machine, section, left)
            if intended is not None:
                ax.axvline(
                    intended,
                    color="black",
                    linestyle=":",
                    linewidth=1,
                    label=f"intended false-alarm rate ({intended:g})",
                )
            ax.set_xscale("log", nonpositive="clip")
            ax.set(
                title=f"{machine} section {section}",
                xlim=(left, 1),
                ylim=(0, 1.01),
                xlabel="false positive rate (log)",
                ylabel="true positive rate",
            )
            ticks = [left, metrics.MAX_FPR, 1]
            ax.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
            # Axis labels on the outer panels only.
            ax.label_outer()
    # One legend for the figure: the panels' entries, each label once.
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles[label] = handle
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        ncols=3 if ncols > 2 else 2,
        fontsize=8,
    )
    note = (
        "AUC / pAUC (%) in each panel. Look at how high the curves climb inside the shaded band "
        "(pAUC) and where the dots (our decisions) sit against the intended false-alarm rate."
    )
    fig.suptitle(f"{title}\n{textwrap.fill(note, int(13 * fig.get_figwidth()))}", fontsize=9)
    return fig


# results.md warns where a measured rate is off by more than this factor.
FALSE_ALARM_FACTOR = 2.0


def false_alarm_table(clips: pd.DataFrame, quantile: float) -> pd.DataFrame:
    """Per (dataset, machine, section, domain) of labelled test ``clips`` (with ``decision``):
    the normal clips, the intended false-alarm rate (1 - ``quantile``: the threshold is that
    quantile of normal scores), the measured one (the share of normal clips decided anomalous)
    and ``off``: measured and intended differ by more than FALSE_ALARM_FACTOR."""
    keys = ["dataset", "machine", "section", "domain"]
    # Plain folders' test clips have no domain: one row per section.
    normal = report_order(clips[clips["anomaly"] == 0].fillna({"domain": UNKNOWN_DOMAIN}), keys)
    table = (
        normal.groupby(keys, sort=False)
        .agg(normal=("decision", "size"), measured=("decision", "mean"))
        .reset_index()
    )
    intended = 1 - quantile
    # Off in either direction: too many false alarms, or too few.
    ratio = table["measured"] / intended
    off = (ratio > FALSE_ALARM_FACTOR) | (ratio < 1 / FALSE_ALARM_FACTOR)
    return table.assign(intended=intended, off=off)


def chance_off(normal: int, intended: float) -> float:
    """The probability that a threshold flagging exactly ``intended`` of all normal clips is
    measured off by more than FALSE_ALARM_FACTOR on ``normal`` clips (binomial sampling)."""
    from scipy.stats import binom

    # The largest flagged count below the band, and the largest inside it.
    low = math.ceil(normal * intended / FALSE_ALARM_FACTOR) - 1
    high = math.floor(normal * intended * FALSE_ALARM_FACTOR)
    return float(binom.cdf(low, normal, intended) + binom.sf(high, normal, intended))


def threshold_rule(cfg: DetectorConfig) -> str:
    """The rule the decision thresholds were fitted with, in words."""
    scores = "out-of-fold" if cfg.threshold_scores == "out_of_fold" else "in-sample"
    target = (
        "its out-of-fold scores of its own target clips, pooled with the scores that One-Class "
        "SVMs fitted on as few source training clips of the section give its other source "
        "clips (`detectors.threshold_target: source_subsets`: how a detector fitted on that "
        "few clips scores new normal clips)"
        if cfg.threshold_target == "source_subsets"
        else "its own target training clips only (`detectors.threshold_target: own`)"
    )
    quantile = cfg.threshold_target_quantile or cfg.threshold_quantile
    return (
        f"Each detector's threshold is the {cfg.threshold_quantile} quantile of a gamma "
        f"distribution fitted to {scores} scores of training clips, so it is meant to flag "
        f"{100 * (1 - cfg.threshold_quantile):.0f} % of normal clips. Source (GMM): the "
        f"section's source training clips. Target (One-Class SVM, fitted on a few clips): "
        f"{target}; at the {quantile} quantile (`detectors.threshold_target_quantile`: new "
        f"normal target clips score above what these show)."
    )


def false_alarm_line(table: pd.DataFrame) -> str:
    """One line: the measured false-alarm rate per domain over all sections (and per dataset,
    where there are several), against the intended one, and how many (section, domain) rates
    are off by more than the factor."""
    intended = float(table["intended"].iloc[0])

    def rate(g: pd.DataFrame) -> str:
        # Rates over several sections weigh each section by its normal clips.
        return f"{100 * (g['measured'] * g['normal']).sum() / g['normal'].sum():.1f} %"

    parts = []
    for domain, g in table.groupby("domain", sort=True):
        datasets = list(g.groupby("dataset", sort=True))
        each = f" ({', '.join(f'{d} {rate(h)}' for d, h in datasets)})" if len(datasets) > 1 else ""
        parts.append(f"{domain} {rate(g)}{each}")
    # What an ideal threshold would show by chance, to judge the count of rates off.
    expected = sum(chance_off(int(n), intended) for n in table["normal"])
    return (
        f"decisions: normal test clips flagged: {', '.join(parts)} (intended {100 * intended:.0f} %); "
        f"{int(table['off'].sum())} of {len(table)} (section, domain) rates off by more than "
        f"a factor of {FALSE_ALARM_FACTOR:g} (about {expected:.0f} by chance with a threshold "
        f"at exactly the intended rate)"
    )


def false_alarm_blocks(table: pd.DataFrame, cfg: DetectorConfig) -> list[str]:
    """results.md's decisions section: the rule, the summary line, a warning naming the rates
    off by more than the factor, and the table per dataset, section and domain."""
    off = table[table["off"]]
    shown = table.assign(
        intended=(100 * table["intended"]).map("{:.0f} %".format),
        measured=(100 * table["measured"]).map("{:.1f} %".format),
        off=table["off"].map({True: "**off**", False: ""}),
    )
    warning = (
        f"**Warning**: {len(off)} of {len(table)} measured rates differ from the intended one "
        f"by more than a "
        f"factor of {FALSE_ALARM_FACTOR:g}: "
        + ", ".join(f"{r.machine} {r.section} {r.domain}" for r in off.itertuples())
        + ". Treat the `decision` column of those sections with care."
        if len(off)
        else f"No measured rate differs from the intended one by more than a factor of "
        f"{FALSE_ALARM_FACTOR:g}."
    )
    return [
        "## Decisions: intended and measured false-alarm rate on the normal test clips",
        threshold_rule(cfg),
        false_alarm_line(table),
        warning,
        text_table(shown),
    ]


@dataclass
class Evaluation:
    """What an evaluation measured and wrote, for results.md and the printed report."""

    run: Path
    # One row per labelled test clip: labels and both systems' scores.
    clips: pd.DataFrame
    # RESULT_COLUMNS.
    results: pd.DataFrame
    figures: list[Path]
    # Why the eval table is missing (missing_ground_truth).
    absent: str | None = None
    # false_alarm_table of the decisions.
    false_alarms: pd.DataFrame | None = None
    # The threshold settings it was measured against.
    detectors: DetectorConfig | None = None
    # The layout's scoring rule (asd.method.metrics.LAYOUT_RULES).
    rule: str = "2021"
    # The back-end of the submitted CSVs ("ours").
    backend: str | None = None


def other_backend(run: Run, clips: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The submitted back-end and ``clips`` with the other back-end's scores as a column named
    after it, from ``RUN/scores.csv``; (None, clips) for a run submitted before it held both."""
    path = run.scores
    keys = ["machine", "section", "file"]
    table = pd.read_csv(path, dtype={k: str for k in keys}) if path.is_file() else None
    # Runs submitted before scores.csv held both back-ends have only "ours".
    if table is None or "backend" not in table:
        return None, clips
    backend = str(table["backend"].iloc[0])
    other = "knn" if backend == "gmm_ocsvm" else "gmm_ocsvm"
    if f"{other}_score" not in table:
        return backend, clips
    scores = table[keys + [f"{other}_score"]].rename(columns={f"{other}_score": other})
    return backend, clips.merge(scores, on=keys, how="left")


def scored_clips(cfg: Config, run: str | Path) -> pd.DataFrame:
    """One row per labelled test clip of ``cfg.data.root``: its index row (``row``: position in
    the index), ``anomaly`` (0/1, from the name or the evaluation ground truth, which also
    gives the hidden domains of evaluation clips), ``ours`` and ``decision`` (the submission of
    ``run``), the other back-end's scores (``knn`` or ``gmm_ocsvm``, from ``RUN/scores.csv``)
    and ``reference`` (asd.method.reference's score). ``attrs["backend"]``: the submitted one."""
    from asd.infra.feature_cache import build_cache
    from asd.method.reference import reference_scores

    run = Run(run)
    if not run.submission.is_dir():
        raise EvaluateError(f"{run.submission} does not exist; run asd.submit (make submit) first")
    # Results of other data than the submission's are refused before the cache is built.
    data = submitted_data(cfg.data.root, index_dataset(cfg.data.root))
    run.check_same_data(data, "asd.evaluate", ADVICE)
    check_features(cfg.features, load_config(run.config).features, run)
    submission = read_submission(run.submission)
    # File names are unique within a section.
    keys = ["machine", "section", "file"]
    # A clip listed twice would count twice in its AUC.
    twice = submission.duplicated(keys)
    if twice.any():
        raise EvaluateError(
            "the submission lists a clip twice: " + " ".join(submission[twice].iloc[0][keys])
        )
    cache = build_cache(cfg, progress=False)
    # ``row`` keeps each clip's position in the cache, where its reference score is.
    rows = np.flatnonzero(cache.index["split"].to_numpy() == "test")
    test = with_ground_truth(cache.index, cfg.data.root).iloc[rows].assign(row=rows)
    test["anomaly"] = test["label"].map({"normal": 0, "anomaly": 1})
    # Evaluation clips without ground truth have no label, and no AUC can use them.
    missing = test["anomaly"].isna()
    if missing.any():
        log.info("%d test clips without labels are not evaluated", int(missing.sum()))
    ours = submission[[*keys, "score", "decision"]].rename(columns={"score": "ours"})
    labelled = test[~missing].astype({"anomaly": int}).reset_index(drop=True)
    clips = labelled.merge(ours, on=keys, how="left")
    # Every labelled clip must be scored, or the AUCs would be of fewer clips than the data's.
    lost = clips[clips["ours"].isna()]
    if len(lost):
        raise EvaluateError(
            f"the submission lacks {len(lost)} labelled test clips, e.g. "
            f"{' '.join(lost.iloc[0][keys])}; submit this data root again"
        )
    backend, clips = other_backend(run, clips)
    # The reference detector scores the same clips, as a yardstick for ours.
    ref = reference_scores(cache.features, cache.index)  # (N,) NaN for training rows
    clips = clips.assign(reference=ref[clips["row"].to_numpy()])
    clips.attrs["backend"] = backend
    return clips


def evaluate(
    cfg: Config, run: str | Path, figures: bool = True, config: str | None = None
) -> Evaluation:
    """Evaluate the submission of ``run`` against the labels of ``cfg.data.root``; ``config``
    says where ``cfg`` came from (results.md names it; default: the run's config.yml)."""
    run = Run(run)
    absent = missing_ground_truth(cfg.data.root)
    if absent:
        log.warning(absent)
    clips = scored_clips(cfg, run)
    rule = layout_rule(cfg)
    sections = section_table(clips, rule)
    # Without a single part that has both labels there is nothing to measure.
    if sections.empty:
        raise EvaluateError(
            f"{cfg.data.root}: no (machine, section, domain) has both normal and "
            f"anomalous labelled test clips (labels: dev_data names, "
            f"eval_data/ground_truth/)"
        )
    results = pd.concat([sections, summary_rows(sections, rule)], ignore_index=True)
    with atomic_path(run.results_csv) as tmp:
        results.to_csv(tmp, index=False, float_format="%.6f")
    written = []
    # ROC small multiples, dev and eval apart.
    for dataset, g in clips.groupby("dataset", sort=True) if figures else ():
        written.append(run.figures / f"roc_{dataset or 'data'}.png")
        title = f"{run.name}: ROC curves of the {dataset or 'data'} sections"
        figure = roc_figure(g, title, 1 - cfg.detectors.threshold_quantile)
        with atomic_path(written[-1]) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
    ev = Evaluation(
        run=run.path,
        clips=clips,
        results=results,
        figures=written,
        absent=absent,
        rule=rule,
        backend=clips.attrs.get("backend"),
        false_alarms=false_alarm_table(clips, cfg.detectors.threshold_quantile),
        detectors=cfg.detectors,
    )
    markdown = render_markdown(ev, cfg.data.root, config or str(run.config))
    atomic_write_text(run.results_md, markdown)
    return ev


def render_markdown(ev: Evaluation, root: str | Path, config: str) -> str:
    """results.md: what produced it (links relative to the run folder), then every table."""
    from asd.notebooks import find_notebooks

    # Links are relative to the run folder, where results.md is, so the folder can move.
    def link(path: Path) -> str:
        return Path(os.path.relpath(path, ev.run)).as_posix()

    try:
        runs = [f"[{r.name}]({link(r.path)})" for r in Run(ev.run).chain()]
    # A moved Step 1 run: results.md says so instead of failing.
    except AsdError as err:
        runs = [f"{ev.run.name} ({err})"]
    notebooks = Run(ev.run).notebooks
    pages = [f"[{p.stem}]({link(notebooks / f'{p.stem}.html')})" for p in find_notebooks()]
    header = [
        f"- data root: `{Path(root).resolve()}`",
        f"- config: `{config}`",
        f"- runs, Step 1 first: {', '.join(runs)}",
        f"- figures: {', '.join(f'[{p.stem}]({link(p)})' for p in ev.figures)}",
        f"- notebooks (`make notebooks FROM={ev.run}` writes them): {', '.join(pages)}",
    ]
    out = [
        f"# Results of {ev.run.name}",
        "\n".join(header),
        "AUC / pAUC (p = 0.1) in %, harmonic means over sections and domains; the official "
        f"score follows {RULE_NAMES[ev.rule]}. 'simple reference' is a Gaussian on per-clip "
        "log-mel mean and std (asd.method.reference) on the same clips.",
        *result_blocks(ev.results, markdown=True, rule=ev.rule, backend=ev.backend),
    ]
    if ev.false_alarms is not None and ev.detectors is not None:
        out += false_alarm_blocks(ev.false_alarms, ev.detectors)
    if ev.absent:
        out += ["## eval_data", f"absent: {ev.absent}"]
    return "\n\n".join(out) + "\n"


def report(ev: Evaluation) -> str:
    """The printed tables (:func:`result_blocks`), what is absent and the files written."""
    absent = [f"eval_data: absent ({ev.absent})"] if ev.absent else []
    decisions = [false_alarm_line(ev.false_alarms)] if ev.false_alarms is not None else []
    return "\n\n".join(
        [
            *result_blocks(ev.results, rule=ev.rule, backend=ev.backend),
            *absent,
            *decisions,
            f"results: {Run(ev.run).results_md}, {Run(ev.run).results_csv}; ROC "
            f"figures: {', '.join(str(p) for p in ev.figures) or 'none'}",
        ]
    )


def _main(args) -> None:
    run, cfg = load_run(args)
    config = " ".join([args.config or str(Run(run).config), *args.overrides])
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
