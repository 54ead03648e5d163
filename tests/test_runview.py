"""Read-only views of a run folder for the notebooks (asd.runview), on the session's tiny run
(tests/conftest.py ``runs``) and on hand-written training logs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from asd import AsdError, runview
from asd import submit as sm
from asd.method.detectors import DetectorSet

LOG_HEADER = "step,accuracy,iteration,loss,lr,s,samples_per_s\n"


def write_log(run: Path, rows: list[tuple]) -> None:
    """logs/train.csv as Catalyst's CSV logger writes it: (step, iteration, loss) rows."""
    (run / "logs").mkdir(parents=True, exist_ok=True)
    (run / "logs" / "train.csv").write_text(
        LOG_HEADER
        + "".join(f"{step},0.5,{float(it)},{loss},0.001,5.0,100.0\n" for step, it, loss in rows)
    )


def test_run_chain_and_its_logs(runs):
    run1, run2 = runs.stage1, runs.stage2
    assert runview.open_run(None, runs.config)[0] == run2  # the latest stage2 run
    assert [p.resolve() for p in runview.run_chain(run2)] == [run1.resolve(), run2.resolve()]
    assert runview.run_chain(run1) == [run1]
    logs = [runview.read_log(r) for r in runview.run_chain(run2)]
    # Step 1: 3 epochs of 6 batches; Step 2: 4 iterations, a row after each (helpers.TINY)
    assert [log["iteration"].tolist() for log in logs] == [[6, 12, 18], [1, 2, 3, 4]]
    assert [log["loss"].tolist() for log in logs] == [
        [
            float(row["loss"])
            for row in csv.DictReader((r / "logs" / "train.csv").read_text().splitlines())
        ]
        for r in (run1, run2)
    ]
    assert {"s", "lr", "samples_per_s", "accuracy"} <= set(logs[0].columns)


@pytest.mark.parametrize("relative_to", ["run", "runs folder", "nothing"])
def test_run_chain_reads_a_relative_or_absolute_init_txt(runs, tmp_path, relative_to):
    run1, run2 = runs.stage1, runs.stage2
    moved = tmp_path / "runs"
    for run in (run1, run2):  # a moved runs folder: only relative names still hold
        (moved / run.name).mkdir(parents=True)
        for name in ("config.yml", "model.pth"):
            (moved / run.name / name).write_bytes((run / name).read_bytes())
    name = {
        "run": f"../{run1.name}/model.pth",
        "runs folder": f"{run1.name}/model.pth",
        "nothing": str(moved / run1.name / "model.pth"),
    }[relative_to]
    (moved / run2.name / "init.txt").write_text(name + "\n")
    chain = runview.run_chain(moved / run2.name)
    assert [p.resolve() for p in chain] == [moved / run1.name, moved / run2.name]
    if relative_to == "nothing":
        assert chain == [moved / run1.name, moved / run2.name]


def test_a_resumed_log_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    write_log(tmp_path, [(1, 2, 3.0), (2, 4, 2.0), (2, 4, 1.9), (3, 6, 1.0)])
    log = runview.read_log(tmp_path)
    assert log["step"].tolist() == [1, 2, 3] and log["loss"].tolist() == [3.0, 1.9, 1.0]


def test_missing_files_are_clear_errors(runs, tmp_path):
    run2 = runs.stage2
    broken = tmp_path / "009-stage2"
    broken.mkdir()
    (broken / "config.yml").write_text((run2 / "config.yml").read_text())
    (broken / "init.txt").write_text(f"{tmp_path / 'gone' / 'model.pth'}\n")
    with pytest.raises(runview.ViewError, match="init.txt names .*gone"):
        runview.run_chain(broken)
    (broken / "init.txt").unlink()
    with pytest.raises(runview.ViewError, match="logs/train.csv does not exist"):
        runview.read_log(broken)
    with pytest.raises(runview.ViewError, match="embeddings.npz does not exist.*asd.submit"):
        runview.embeddings(broken)
    with pytest.raises(runview.ViewError, match="scores.csv does not exist"):
        runview.scores(broken)
    with pytest.raises(AsdError, match="no such folder: .*nowhere"):
        runview.open_run(tmp_path / "nowhere")


def test_embeddings_come_with_their_clips(runs):
    run2 = runs.stage2
    emb = runview.embeddings(run2)
    with np.load(run2 / "embeddings.npz") as z:
        assert np.array_equal(emb.values, z["embeddings"])
        assert list(sm.clip_keys(emb.clips)) == list(z["clips"])
    assert emb.values.shape == (len(emb.clips), 16)
    test = emb.clips[emb.clips["split"] == "test"]
    # evaluation test names carry no label: it comes from eval_data/ground_truth/
    assert test["label"].isin(["normal", "anomaly"]).all()
    assert (emb.clips["class"] >= 0).all()


def test_scores_agree_with_the_submission(runs):
    run2 = runs.stage2
    table = runview.scores(run2)
    assert list(table.columns) == runview.SCORE_COLUMNS
    keys = ["machine", "section", "domain", "file"]
    # the challenge CSVs (scores at full precision) and the saved detectors' thresholds
    expected = sm.read_submission(run2 / "submission").sort_values(keys)
    assert len(table) == len(expected)
    got = table.sort_values(keys)
    assert got[keys].to_numpy().tolist() == expected[keys].to_numpy().tolist()
    assert np.allclose(got["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert got["decision"].tolist() == expected["decision"].tolist()
    dets = DetectorSet.load(run2 / "detectors")
    thresholds = [dets.lookup(*group).threshold for group in got[sm.GROUP].itertuples(index=False)]
    assert np.allclose(got["threshold"], thresholds)
    assert (table["decision"] == (table["score"] > table["threshold"])).all()
    dev = table[table["dataset"] == "dev_data"]
    assert (
        dev["label"] == np.where(dev["file"].str.contains("_anomaly_"), "anomaly", "normal")
    ).all()
    assert table["label"].notna().all() and all(Path(p).is_file() for p in table["path"])


def test_subcluster_centres_follow_the_class_table(runs):
    run2 = runs.stage2
    centres = runview.subcluster_centres(run2)
    classes = pd.read_csv(run2 / "classes.csv", dtype={"section": str})
    assert centres.values.shape == (4 * len(classes), 16)
    assert centres.table["class"].tolist() == [k // 4 for k in range(len(centres.values))]
    fan = classes.query("machine == 'fan' and section == '00' and domain == 'source'")
    rows = centres.table.eval("machine == 'fan' and section == '00' and domain == 'source'")
    fan = int(fan["class"].iloc[0])
    assert np.array_equal(centres.values[rows.to_numpy()], centres.values[4 * fan : 4 * fan + 4])
