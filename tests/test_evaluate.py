"""``asd.evaluate`` on copies of the session's tiny run: the AUC / pAUC tables and the files it
writes; what they say on their own (results.md names the data root, config and runs that
produced it, the published numbers (real development data) are labelled as such, machines
follow the report's order in every table and figure, the ROC figures keep dev and eval apart);
and eval sections without ground truth said loudly.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, cli, copy_run, read_like_evaluator, write_config

from asd import evaluate as ev
from asd.evaluate import missing_ground_truth
from asd.infra.config import load_config
from asd.infra.data import csv_name, ground_truth_dir
from asd.method import metrics

ORDER = ["fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve"]


@pytest.fixture(scope="module")
def cfg(runs):
    """The shared run's config: tiny_data, the tiny model (helpers.TINY)."""
    return load_config(runs.config)


def labelled_clips(machines=("valve", "ToyTrain", "fan", "ToyCar", "gearbox")) -> pd.DataFrame:
    """Labelled test clips of two datasets, both systems scored (random, seeded)."""
    rng = np.random.default_rng(0)
    rows = [
        (dataset, machine, section, domain, i % 2, rng.normal(i % 2), rng.normal())
        for dataset, section in (("dev_data", "00"), ("eval_data", "03"))
        for machine in machines
        for domain in ("source", "target")
        for i in range(8)
    ]
    return pd.DataFrame(
        rows, columns=["dataset", "machine", "section", "domain", "anomaly", "ours", "reference"]
    )


def test_machines_follow_the_reports_order_everywhere():
    assert list(ev.MACHINES) == ORDER and list(ev.PUBLISHED["report"]) == ORDER + ["all"]
    sections = ev.section_table(labelled_clips())
    results = pd.concat([sections, ev.summary_rows(sections)], ignore_index=True)
    expected = [m for m in ORDER if m in set(sections["machine"])]
    assert list(dict.fromkeys(sections["machine"])) == expected
    for dataset in ("dev_data", "eval_data"):
        assert ev.machine_table(results, dataset)["machine"].tolist() == expected + ["all"]
    fig = ev.roc_figure(labelled_clips().query("dataset == 'eval_data'"), "t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{m} section 03" for m in expected]


def test_published_numbers_are_labelled_and_in_their_own_table():
    sections = ev.section_table(labelled_clips())
    results = pd.concat([sections, ev.summary_rows(sections)], ignore_index=True)
    for dataset in ("dev_data", "eval_data"):
        assert list(ev.machine_table(results, dataset).columns) == [
            "machine",
            "ours",
            "simple reference",
        ]
    published = ev.published_table(["fan", "all"])
    assert list(published.columns) == ["machine", *ev.PUBLISHED]
    assert published["report"].tolist() == ["61.65 / 61.44", "66.12 / 58.18"]
    assert "REAL development data" in ev.PUBLISHED_NOTE
    assert "published" not in ev.official_line(results, "dev_data")
    assert "report ~61.90" in ev.published_line()
    blocks = ev.result_blocks(results)
    heads = [b for b in blocks if b.startswith("## ")]
    assert heads == [
        "## dev_data, measured on this data: harmonic means, AUC / pAUC (%)",
        "## Published, not measured here: harmonic means, AUC / pAUC (%)",
        "## eval_data, measured on this data: harmonic means, AUC / pAUC (%)",
    ]


def test_table_columns_are_separated():
    table = ev.text_table(pd.DataFrame({"machine": ["fan"], "ours": ["56.51 / 51.55"]}))
    assert table.splitlines() == [
        "machine | ours",
        "------- | -------------",
        "fan     | 56.51 / 51.55",
    ]


def test_roc_figure_is_one_panel_per_section_with_an_explained_style():
    clips = labelled_clips(machines=("fan", "valve"))
    clips = pd.concat([clips, clips.assign(section="01")])
    fig = ev.roc_figure(clips.query("dataset == 'dev_data'"), "dev")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4  # 2 machines x 2 sections
    assert all(len(ax.get_lines()) == 1 + 4 for ax in panels)  # chance line, 2 domains x 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [
        "source, ours",
        "source, simple reference",
        "target, ours",
        "target, simple reference",
        "pAUC region: FPR <= 0.1",
    ]


def test_results_md_names_what_produced_it(runs, tmp_path):
    # a moved runs folder whose Step 2 run names its Step 1 model relative to itself
    for run in (runs.stage1, runs.stage2):
        shutil.copytree(run, tmp_path / "runs" / run.name)
    run = tmp_path / "runs" / runs.stage2.name
    (run / "init.txt").write_text(f"../{runs.stage1.name}/model.pth\n")
    out = cli("asd.evaluate", "--from", run, check=True)
    assert ev.PUBLISHED_NOTE in out.stdout and "Published, not measured here" in out.stdout
    md = (run / "results.md").read_text().splitlines()
    root = Path(ev.load_config(run / "config.yml").data.root).resolve()
    assert md[2:7] == [
        f"- data root: `{root}`",
        f"- config: `{run / 'config.yml'}`",
        f"- runs, Step 1 first: [{runs.stage1.name}](../{runs.stage1.name}), [{run.name}](.)",
        "- figures: [roc_dev_data](figures/roc_dev_data.png), "
        "[roc_eval_data](figures/roc_eval_data.png)",
        f"- notebooks (`make notebooks FROM={run}` writes them): "
        "[01-training](notebooks/01-training.html), [02-embeddings](notebooks/02-embeddings.html), "
        "[03-scores](notebooks/03-scores.html), [04-errors](notebooks/04-errors.html)",
    ]
    assert all(
        (run / "figures" / name).is_file() for name in ("roc_dev_data.png", "roc_eval_data.png")
    )


def test_evaluate_tables_and_files(cfg, runs, tmp_path):
    run = copy_run(runs.stage2, tmp_path)
    result = ev.evaluate(cfg, run)
    r = result.results
    sec = r[r["level"] == "section"]
    # dev labels from the names and eval labels from the ground truth, both systems
    assert set(sec["dataset"]) == {"dev_data", "eval_data"}
    assert set(sec["system"]) == {"ours", "knn", "reference"}  # ours: the report's pair
    assert len(sec) == 2 * 2 * 2 * 3  # datasets x machines x domains x systems
    assert sec["auc"].between(0, 1).all() and sec["pauc"].between(0, 1).all()
    assert (sec["n_normal"] == 3).all() and (sec["n_anomaly"] == 3).all()
    all_ours = r[(r["level"] == "all") & (r["system"] == "ours") & (r["dataset"] == "dev_data")]
    dev = sec[(sec["system"] == "ours") & (sec["dataset"] == "dev_data")]
    assert all_ours["score"].iloc[0] == pytest.approx(
        metrics.official_score(dev["auc"], dev["pauc"])
    )
    assert all_ours["auc"].iloc[0] == pytest.approx(metrics.hmean(dev["auc"]))
    by_domain = r[(r["level"] == "domain") & (r["system"] == "ours") & (r["dataset"] == "dev_data")]
    assert sorted(by_domain["domain"]) == ["source", "target"]
    for row in by_domain.itertuples():
        own = dev[dev["domain"] == row.domain]
        assert (row.auc, row.pauc) == pytest.approx(
            (metrics.hmean(own["auc"]), metrics.hmean(own["pauc"]))
        )
    # the CSV agrees with the submission files
    clip = result.clips.iloc[0]
    names, scores = read_like_evaluator(
        run / "submission" / csv_name("anomaly_score", clip.machine, clip.section, clip.domain)
    )
    assert scores[names.index(clip.file)] == pytest.approx(clip.ours)
    saved = pd.read_csv(run / "results.csv", dtype={"section": str})
    assert list(saved.columns) == ev.RESULT_COLUMNS and len(saved) == len(r)
    md = (run / "results.md").read_text()
    assert re.search(r"^machine +\| ours +\| kNN +\| simple reference$", md, re.M)
    assert re.search(r"^machine +\| report +\| AE baseline +\| MobileNetV2 baseline$", md, re.M)
    assert ev.PUBLISHED_NOTE in md
    assert "66.12 / 58.18" in md and "### Per domain" in md
    assert "### Per domain, harmonic means over machines and sections" in ev.report(result)
    assert sorted(p.name for p in (run / "figures").iterdir()) == [
        "roc_dev_data.png",
        "roc_eval_data.png",
    ]
    assert "- figures: [roc_dev_data](figures/roc_dev_data.png)" in md


def test_evaluate_cli_prints_run_last(cfg, runs, capsys, repo, tmp_path):
    run = copy_run(runs.stage2, tmp_path)
    args = [
        "--config",
        str(repo / "config.yml"),
        "--from",
        str(run),
        "--no-figures",
        f"data.root={cfg.data.root}",
        f"data.cache_dir={cfg.data.cache_dir}",
        *TINY,
    ]
    assert ev.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(run)
    assert any(line.startswith("machine") and "| ours" in line for line in out)
    assert any(line.startswith("machine") and "| report" in line for line in out)
    assert not any("| ours" in line and "| report" in line for line in out)  # apart


def test_evaluate_needs_a_submission(cfg, runs, tmp_path):
    run = copy_run(runs.stage1, tmp_path)  # finished, never submitted
    with pytest.raises(ev.EvaluateError, match="run asd.submit"):
        ev.evaluate(cfg, run)


def test_missing_ground_truth_names_the_folder_and_the_command(tmp_path):
    assert missing_ground_truth(tmp_path) is None  # no eval data: nothing to say
    test = tmp_path / "eval_data" / "fan" / "source_test"
    test.mkdir(parents=True)
    (test / "section_03_source_test_0000.wav").write_bytes(b"")
    message = missing_ground_truth(tmp_path)
    assert str(ground_truth_dir(tmp_path)) in message and "make data" in message
    ground_truth_dir(tmp_path).mkdir()
    (ground_truth_dir(tmp_path) / "ground_truth_fan_section_03_source_test.csv").write_text("")
    assert missing_ground_truth(tmp_path) is None


def test_evaluate_without_eval_ground_truth(runs, tiny_cfg, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_cfg.data.root, root, ignore=shutil.ignore_patterns("ground_truth"))
    run = tmp_path / "run"
    shutil.copytree(runs.stage2, run)  # the shared run stays as it is
    config = write_config(
        load_config(runs.config),
        tmp_path / "config.yml",
        [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    out = cli("asd.evaluate", "--config", config, "--from", run, "--no-figures", check=True)
    warning = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and str(ground_truth_dir(root)) in warning[0]
    assert "make data" in warning[0]
    assert (
        "eval_data: absent" in out.stdout
        and "dev_data, measured on this data: harmonic means" in out.stdout
    )
    assert "absent: no evaluation ground truth" in (run / "results.md").read_text()
