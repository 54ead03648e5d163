"""What `make evaluate` writes reads on its own: results.md names the data root, config and runs
that produced it, the published numbers (real development data) are labelled as such, machines
follow the report's order in every table and figure, and the ROC figures keep dev and eval apart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from robust_helpers import cli

from asd import evaluate as ev

ORDER = ["fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve"]


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
