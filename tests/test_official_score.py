"""Each year's official score against hand-computed cases (never the evaluators' code).

One section of 10 normal clips (5 per domain) and 2 anomalous ones (one per domain):

    source normals 0.1 0.2 0.3 0.4 0.5   source anomaly 1.0
    target normals 0.6 0.15 0.25 0.35 0.45   target anomaly 0.55

and a second section whose anomalies score above all its normals (every value 1).
"""

import numpy as np
import pandas as pd
import pytest

from asd import evaluate as ev
from asd.method import metrics

SOURCE_NORMAL = [0.1, 0.2, 0.3, 0.4, 0.5]
TARGET_NORMAL = [0.6, 0.15, 0.25, 0.35, 0.45]
Y = np.array([0] * 10 + [1, 1])
SCORE = np.array(SOURCE_NORMAL + TARGET_NORMAL + [1.0, 0.55])
DOMAIN = np.array(["source"] * 5 + ["target"] * 5 + ["source", "target"])
PERFECT = np.where(Y == 1, 2.0, 0.0) + np.arange(12) / 100  # anomalies above every normal


def flat_hmean(sections):
    """The official score of 2022 on: one harmonic mean of every value of every section."""
    return metrics.hmean([v for section in sections for v in section.values()])


def test_2021_each_domain_on_its_own_clips():
    values = metrics.section_values("2021", Y, SCORE, DOMAIN)
    # source: 1.0 above all five source normals
    assert values["auc_source"] == pytest.approx(1.0)
    assert values["pauc_source"] == pytest.approx(1.0)
    # target: 0.55 above 4 of 5 target normals (not 0.6)
    assert values["auc_target"] == pytest.approx(4 / 5)
    # target ROC: the top clip (0.6) is normal, FPR 0.2 before any TPR: partial area 0,
    # McClish 0.5 * (1 - 0.005 / 0.095) = 9 / 19
    assert values["pauc_target"] == pytest.approx(9 / 19)
    # 4 / (1 + 1 + 5/4 + 19/9) = 144 / 193
    assert flat_hmean([values]) == pytest.approx(144 / 193)


def test_2022_to_2026_source_and_target_normals_against_all_anomalies():
    values = metrics.section_values("2022", Y, SCORE, DOMAIN)
    assert set(values) == {"auc_source", "auc_target", "pauc"}
    # source normals (0.1 .. 0.5) against both anomalies (1.0, 0.55): 10 of 10 pairs
    assert values["auc_source"] == pytest.approx(1.0)
    # target normals against both anomalies: 1.0 beats 5, 0.55 beats 4: 9 of 10
    assert values["auc_target"] == pytest.approx(9 / 10)
    # one pAUC on all 12 clips: 1.0 (A), 0.6 (N: FPR 0.1), 0.55 (A): TPR 0.5 over FPR
    # [0, 0.1], partial area 0.05, McClish 0.5 * (1 + 0.045 / 0.095) = 14 / 19
    assert values["pauc"] == pytest.approx(14 / 19)
    # 3 / (1 + 10/9 + 19/14) = 378 / 437
    assert flat_hmean([values]) == pytest.approx(378 / 437)


def test_2022_is_one_flat_mean_over_all_sections():
    first = metrics.section_values("2022", Y, SCORE, DOMAIN)
    second = metrics.section_values("2022", Y, PERFECT, DOMAIN)
    assert list(second.values()) == pytest.approx([1.0, 1.0, 1.0])
    # 6 / (437/126 + 3) = 756 / 815, not the mean of the two sections' means
    assert flat_hmean([first, second]) == pytest.approx(756 / 815)


def test_folders_one_auc_and_pauc_on_all_clips():
    values = metrics.section_values("folders", Y, SCORE, [None] * 12)
    # 1.0 beats 10 normals, 0.55 beats 9: 19 of 20
    assert values["auc"] == pytest.approx(19 / 20)
    assert values["pauc"] == pytest.approx(14 / 19)
    # 2 / (20/19 + 19/14) = 532 / 641
    assert flat_hmean([values]) == pytest.approx(532 / 641)


def test_a_zero_value_is_floored_not_an_error():
    reversed_ = metrics.section_values("2022", Y, -PERFECT, DOMAIN)
    assert reversed_["auc_source"] == 0.0
    assert 0 < flat_hmean([reversed_]) < 1e-10


def test_every_layout_has_a_rule():
    assert metrics.LAYOUT_RULES == {
        "dcase2021": "2021",
        "dcase2022": "2022",
        "dcase2023": "2022",
        "folders": "folders",
    }
    with pytest.raises(ValueError, match="unknown scoring rule"):
        metrics.section_values("2020", Y, SCORE, DOMAIN)


def _clips(score: np.ndarray, section: str = "00") -> pd.DataFrame:
    """The module's section as asd.evaluate's labelled test clips, both back-ends scored."""
    return pd.DataFrame(
        {
            "dataset": "eval_data",
            "machine": "fan",
            "section": section,
            "domain": DOMAIN,
            "anomaly": Y,
            "ours": score,
            "knn": -score,
        }
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # 8 values: 1, 1, 4/5, 9/19 and four 1s: 8 / (193/36 + 4)
        ("2021", 288 / 337),
        # 6 values: 1, 9/10, 14/19 and three 1s
        ("2022", 756 / 815),
        # 4 values: 19/20, 14/19 and two 1s: 4 / (641/266 + 2)
        ("folders", 1064 / 1173),
    ],
)
def test_evaluate_prints_the_hand_computed_official_score(rule, expected):
    """asd.evaluate's tables reach the hand-computed official score of the two sections."""
    clips = pd.concat([_clips(SCORE), _clips(PERFECT, "01")], ignore_index=True)
    sections = ev.section_table(clips, rule)
    summary = ev.summary_rows(sections, rule)
    ours = summary.query("level == 'all' and system == 'ours'")["score"].item()
    assert ours == pytest.approx(expected)
    assert set(sections["system"]) == {"ours", "knn"}  # both back-ends side by side
    line = ev.official_line(pd.concat([sections, summary]), "eval_data", rule)
    assert f"ours {100 * expected:.2f}" in line and "kNN" in line


def test_published_2021_numbers_only_after_2021_development_data():
    clips = pd.concat([_clips(SCORE), _clips(PERFECT, "01")], ignore_index=True)
    clips["dataset"] = "dev_data"
    for rule, shown in (("2021", True), ("2022", False), ("folders", False)):
        sections = ev.section_table(clips, rule)
        results = pd.concat([sections, ev.summary_rows(sections, rule)])
        text = "\n".join(ev.result_blocks(results, rule=rule, backend="knn"))
        assert (ev.PUBLISHED_NOTE in text) == shown
        assert "ours: the submitted challenge CSVs, the kNN back-end" in text
        assert ("Per domain" in text) == (rule != "folders")
