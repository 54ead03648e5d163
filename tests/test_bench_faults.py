"""bench.faults: the per-fault AUC table of a run on synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_clip_faults_follow_the_generator(tiny_data):
    from asd.infra.data import index_dataset
    from bench.faults import clip_faults

    faults = clip_faults(tiny_data)
    index = index_dataset(tiny_data).merge(
        faults, on=["dataset", "machine", "file"], how="left", validate="one_to_one"
    )
    assert index["fault"].notna().all()  # every clip on disk was planned
    normal = index["label"] == "normal"
    assert (index.loc[normal, "fault"] == "").all()
    anomalous = index[index["label"] == "anomaly"]
    assert len(anomalous) and (anomalous["fault"] != "").all()
    assert anomalous["severity"].between(0, 1).all()


def test_fault_aucs_per_fault_and_severity():
    from bench.faults import fault_aucs, fault_table

    # one group: 4 normal clips, "a" faults that ours ranks on top, "b" faults it ranks last
    clips = pd.DataFrame(
        {
            "dataset": "dev_data",
            "machine": "fan",
            "section": "00",
            "domain": "source",
            "anomaly": [0, 0, 0, 0, 1, 1, 1, 1],
            "fault": ["", "", "", "", "a", "a", "b", "b"],
            "severity": [0, 0, 0, 0, 0.2, 0.9, 0.3, 0.8],
            "ours": [1, 2, 3, 4, 10, 11, -1, -2],
            "reference": [1, 2, 3, 4, 0, 10, 0, 10],
        }
    )
    aucs = fault_aucs(clips).set_index(["fault", "band", "system"])["auc"]
    assert aucs[("a", "all", "ours")] == 1.0 and aucs[("b", "all", "ours")] == 0.0
    assert aucs[("a", "subtle", "reference")] == 0.0 and aucs[("a", "clear", "reference")] == 1.0
    table = fault_table(fault_aucs(clips))
    assert table.loc[("fan", "a"), "all ours"] == 100.0
    assert table.loc[("fan", "b"), "clips"] == 2


def test_bench_faults_prints_a_table_for_a_run(runs, capsys):
    from bench.faults import main

    assert main(["--config", str(runs.config), "--from", str(runs.stage2)]) == 0
    out = capsys.readouterr().out
    assert "all ours" in out and "mean over all: ours" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("fan ", "valve "))]
    assert len(rows) == 2  # each machine's first fault row carries the machine's name
    for row in rows:
        aucs = np.array([float(v) for v in row[2:-1]])  # NaN: no clip of that severity band
        assert ((aucs >= 0) & (aucs <= 100) | np.isnan(aucs)).all() and int(row[-1]) > 0
