"""Which simulated faults does a run detect? AUC per machine type and fault, ours and the reference.

    python -m bench.faults [--config configs/demo.yml] [--from RUN] [key.sub=value ...]

For a run submitted on a data root written by ``asd.synthetic``: the data set is planned again
from its ``synthetic.json`` (which fault, at which severity, each anomalous test clip carries),
the run's submission and the simple reference detector's scores are read as ``make evaluate``
reads them (``asd.evaluate.scored_clips``), and for every labelled (dataset, machine, section,
domain) the AUC of its normal clips against the clips of each fault is computed. Prints, per
machine type and fault, the mean of those AUCs (in %) for ours and for the reference, over all
clips and over the subtle (severity < 0.5) and the clear (>= 0.5) halves, and how many
anomalous clips each row holds.

This is the per-fault view behind the README's demo section: it shows which kinds of faults
the learned embedding picks up and which the reference's per-band mean and spread do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from asd.method import metrics

SEVERITY = (("all", 0.0, 1.1), ("subtle", 0.0, 0.5), ("clear", 0.5, 1.1))


def clip_faults(root: str | Path) -> pd.DataFrame:
    """(dataset, machine, file, fault, severity) of every clip the generator planned for root."""
    from asd.infra.data import DataError
    from asd.synthetic import FORMAT, MARKER, plan

    marker = Path(root) / MARKER
    if not marker.is_file():
        raise DataError(
            f"{root}: no {MARKER}; bench.faults needs a data root written by "
            f"asd.synthetic (make synth)"
        )
    settings = dict(json.loads(marker.read_text())["settings"])
    if settings.pop("format", None) != FORMAT:
        raise DataError(
            f"{marker}: written by another version of asd.synthetic (format "
            f"{FORMAT} expected); generate the data again"
        )
    settings.pop("duration", None)
    clips = plan(**settings)
    return pd.DataFrame(
        {
            "dataset": [c.dataset for c in clips],
            "machine": [c.machine for c in clips],
            "file": [c.relpath.rsplit("/", 1)[-1] for c in clips],
            "fault": [c.fault or "" for c in clips],
            "severity": [c.severity for c in clips],
        }
    )


def fault_aucs(
    clips: pd.DataFrame, systems: tuple[str, ...] = ("ours", "reference")
) -> pd.DataFrame:
    """One row per (dataset, machine, section, domain, fault, severity band, system): the AUC of
    that group's normal clips against its anomalous clips of that fault and band."""
    rows = []
    for key, g in clips.groupby(["dataset", "machine", "section", "domain"]):
        normal = g[g["anomaly"] == 0]
        for fault, a in g[g["anomaly"] == 1].groupby("fault"):
            for band, lo, hi in SEVERITY:
                sel = a[(a["severity"] >= lo) & (a["severity"] < hi)]
                if normal.empty or sel.empty:
                    continue
                y = np.r_[np.zeros(len(normal)), np.ones(len(sel))]
                for system in systems:
                    auc = metrics.auc(y, np.r_[normal[system], sel[system]])
                    rows.append(
                        dict(
                            zip(["dataset", "machine", "section", "domain"], key),
                            fault=fault,
                            band=band,
                            system=system,
                            auc=auc,
                            n=len(sel),
                        )
                    )
    return pd.DataFrame(rows)


def fault_table(aucs: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC (%) per machine and fault, a column per (band, system), plus clip counts."""
    table = (
        100
        * aucs.pivot_table(
            index=["machine", "fault"], columns=["band", "system"], values="auc", aggfunc="mean"
        )
    ).round(1)
    table = table.reindex(columns=[(b, s) for b, _, _ in SEVERITY for s in ("ours", "reference")])
    table.columns = [f"{b} {'ref' if s == 'reference' else s}" for b, s in table.columns]
    counts = aucs[(aucs["band"] == "all") & (aucs["system"] == "ours")]
    table["clips"] = counts.groupby(["machine", "fault"])["n"].sum()
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults", description=__doc__.splitlines()[0]
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--config", default="configs/demo.yml")
    parser.add_argument(
        "--from",
        dest="from_run",
        default=None,
        help="run folder (default: the latest *-stage2 run in runs.dir)",
    )
    ns = parser.parse_args(argv)

    from asd.evaluate import scored_clips
    from asd.infra.cli import load_run

    run, cfg = load_run(ns)
    clips = scored_clips(cfg, run).merge(
        clip_faults(cfg.data.root),
        on=["dataset", "machine", "file"],
        how="left",
        validate="one_to_one",
    )
    aucs = fault_aucs(clips)
    print(f"{run}: AUC (%) of normal against each fault's clips, mean over sections and domains")
    print(fault_table(aucs).to_string())
    overall = 100 * aucs[aucs["band"] == "all"].groupby("system")["auc"].mean()
    print(f"mean over all: ours {overall['ours']:.1f}, reference {overall['reference']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
