"""Submit and evaluate on the 2022-2026 layouts: one CSV pair per section named as the year's
evaluator reads them, scored without the test clips' domains, and make evaluate's official score
equal to one computed the evaluator's way from the CSV files and the ground truth files."""

import csv

import numpy as np
import pandas as pd
import pytest
from helpers import TINY
from test_official_score import flat_hmean
from test_score import make_submitted_run

from asd import evaluate as ev
from asd.infra.config import load_config
from asd.infra.data import ground_truth_dir, ground_truth_domain_dir
from asd.infra.runs import Run
from asd.method import metrics


@pytest.fixture(scope="module")
def submitted_2023(repo, tmp_path_factory):
    from asd.synthetic import generate

    tmp = tmp_path_factory.mktemp("y2023")
    root = generate(
        tmp / "data",
        machines=("fan", "valve"),
        dev_sections=("00",),
        eval_sections=("03",),  # another design; named section 00 of <machine>Eval
        n_source=12,
        n_target=4,
        n_test=6,
        layout="dcase2023",
    )
    cfg = load_config(
        repo / "config.yml",
        [
            f"data.root={root}",
            f"data.cache_dir={tmp / 'cache'}",
            f"runs.dir={tmp / 'runs'}",
            *TINY,
        ],
    )
    return cfg, make_submitted_run(cfg)


def _rows(path):
    """A CSV's rows sorted by file name, as the evaluators read them."""
    with open(path) as f:
        return sorted(csv.reader(f))


def test_one_pair_per_section_with_the_years_names(submitted_2023):
    cfg, sub = submitted_2023
    assert sub.rule == "2022" and sub.backend == "knn"  # auto: domains unknown
    names = sorted(p.name for p in Run(sub.run).submission.iterdir())
    machines = sorted(sub.scores["machine"].unique())
    assert names == sorted(
        f"{kind}_{m}_section_00_test.csv"
        for kind in ("anomaly_score", "decision_result")
        for m in machines
    )
    scores = pd.read_csv(Run(sub.run).scores, dtype={"section": str})
    for name in ("gmm_ocsvm", "knn"):
        assert scores[f"{name}_score"].notna().all()
    assert set(scores["detector"]) == {"knn"}
    # the pair's scores of test clips whose domain the names give (dev) ignore it too
    assert set(sub.scores["gmm_ocsvm_threshold"]) == {0.0}


def test_official_score_as_the_evaluator_computes_it(submitted_2023):
    cfg, sub = submitted_2023
    result = ev.evaluate(cfg, sub.run, figures=False)
    ours = result.results.query("dataset == 'eval_data' and level == 'all' and system == 'ours'")
    # the evaluator's way: sorted CSV rows paired by position with the sorted ground truth
    values = []
    for truth in sorted(ground_truth_dir(cfg.data.root).glob("ground_truth_*_test.csv")):
        name = truth.name.removeprefix("ground_truth_")
        y = np.array([int(v) for _, v in _rows(truth)])
        target = np.array(
            [int(v) for _, v in _rows(ground_truth_domain_dir(cfg.data.root) / truth.name)]
        )
        submitted = _rows(Run(sub.run).submission / f"anomaly_score_{name}")
        assert [f for f, _ in submitted] == [f for f, _ in _rows(truth)]
        score = np.array([float(v) for _, v in submitted])
        domain = np.where(target == 1, "target", "source")
        values.append(metrics.section_values("2022", y, score, domain))
    assert len(values) == 2
    assert ours["score"].item() == pytest.approx(flat_hmean(values))
    assert "the 2022-2026 rule" in ev.report(result)


@pytest.fixture(scope="module")
def submitted_folders(repo, tmp_path_factory):
    from asd.synthetic import generate

    tmp = tmp_path_factory.mktemp("folders")
    root = generate(
        tmp / "data",
        machines=("fan", "valve"),
        dev_sections=("00",),
        eval_sections=(),
        n_source=12,
        n_target=4,
        n_test=6,
        layout="folders",
    )
    cfg = load_config(
        repo / "config.yml",
        [
            f"data.root={root}",
            f"data.cache_dir={tmp / 'cache'}",
            f"runs.dir={tmp / 'runs'}",
            *TINY,
        ],
    )
    return cfg, make_submitted_run(cfg)


def test_folders_auc_and_pauc_per_machine(submitted_folders):
    cfg, sub = submitted_folders
    assert sub.rule == "folders" and sub.backend == "knn"
    result = ev.evaluate(cfg, sub.run, figures=False)
    sections = result.results.query("level == 'section' and system == 'ours'")
    assert sorted(sections["machine"]) == ["fan", "valve"]  # one row per machine
    for row in sections.itertuples():
        rows = _rows(Run(sub.run).submission / f"anomaly_score_{row.machine}_section_00_test.csv")
        y = np.array([f.startswith("anomaly/") for f, _ in rows], dtype=int)
        score = np.array([float(v) for _, v in rows])
        assert row.auc == pytest.approx(metrics.auc(y, score))
        assert row.pauc == pytest.approx(metrics.pauc(y, score))
        assert row.n_normal + row.n_anomaly == len(rows)
