"""Decision thresholds a user can trust: the target threshold is calibrated on One-Class SVMs
fitted on as few source clips (config default, pinned), and results.md reports the intended and
the measured false-alarm rate per section and domain, warning where they differ by more than a
factor of 2."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from asd import evaluate as ev
from asd.infra.config import load_config
from asd.method.detectors import (
    MAX_SUBSETS,
    OCSVMDetector,
    fit_section,
    gamma_threshold,
    l2_normalise,
    source_subset_scores,
)

D, S = 16, 4


@pytest.fixture(scope="module")
def cfg(repo):
    return load_config(repo / "config.yml").detectors


@pytest.fixture(scope="module")
def section():
    """One section's embeddings: 40 source and 3 target training clips around the same
    sub-clusters, the target ones shifted a little (a domain shift)."""
    rng = np.random.default_rng(3)
    unit = l2_normalise(rng.normal(size=(S, D)))
    shift = 0.15 * rng.normal(size=(1, D))

    def clips(n, shifted):
        return unit[rng.integers(0, S, n)] + shifted * shift + 0.3 * rng.normal(size=(n, D))

    return {"centres": 3.0 * unit, "source": clips(40, False), "target": clips(3, True)}


def test_the_source_subsets_rule_is_the_default(cfg):
    assert cfg.threshold_target == "source_subsets"


def test_source_subsets_are_disjoint_strided_and_score_the_other_clips(cfg, section):
    scores, what = source_subset_scores(section["source"], 3, cfg)
    assert what == "481 scores of 13 3-clip source stand-ins" and scores.shape == (13 * 37,)
    inside = np.zeros(40, dtype=bool)
    inside[[0, 13, 26]] = True  # the first subset: every 13th clip
    first = OCSVMDetector._fit_model(section["source"][inside], cfg)
    assert np.array_equal(scores[:37], first.score(section["source"][~inside]))
    many = np.concatenate([section["source"]] * 3)  # 120 clips: at most MAX_SUBSETS subsets
    assert len(source_subset_scores(many, 3, cfg)[0]) == MAX_SUBSETS * 117
    assert source_subset_scores(section["source"][:3], 3, cfg) is None  # nothing left to score


def test_target_threshold_fits_own_and_source_subset_scores(cfg, section):
    fitted = fit_section(section["source"], section["target"], section["centres"], cfg)
    target = fitted["target"]
    assert target.info["threshold_scores"] == "3-fold and 481 scores of 13 3-clip source stand-ins"
    folds = np.arange(3)
    out_of_fold = [
        OCSVMDetector._fit_model(section["target"][folds != f], cfg).score(
            section["target"][folds == f]
        )[0]
        for f in folds
    ]
    subsets, _ = source_subset_scores(section["source"], 3, cfg)
    quantile = cfg.threshold_target_quantile  # a target threshold's own quantile
    expected = gamma_threshold(np.concatenate([out_of_fold, subsets]), quantile)
    assert target.threshold == pytest.approx(expected[0])
    own = fit_section(
        section["source"],
        section["target"],
        section["centres"],
        dataclasses.replace(cfg, threshold_target="own"),
    )
    assert own["target"].info["threshold_scores"] == "3-fold"
    assert own["target"].threshold == pytest.approx(gamma_threshold(out_of_fold, quantile)[0])
    # only the target threshold depends on the rule: the same scores, the same source detector
    probe = section["source"][:5]
    assert np.array_equal(target.score(probe), own["target"].score(probe))
    assert own["source"].threshold == fitted["source"].threshold


def test_the_target_quantile_is_the_default_and_old_configs_keep_one_quantile(cfg, section):
    assert cfg.threshold_target_quantile == 0.97
    old = dataclasses.replace(cfg, threshold_target_quantile=None)  # a config before the key
    same = dataclasses.replace(cfg, threshold_target_quantile=cfg.threshold_quantile)
    fitted = [fit_section(section["source"], section["target"], None, c, 4) for c in (old, same)]
    assert fitted[0]["target"].threshold == fitted[1]["target"].threshold
    assert fitted[0]["source"].threshold == fitted[1]["source"].threshold
    higher = fit_section(section["source"], section["target"], None, cfg, 4)
    assert higher["target"].threshold > fitted[0]["target"].threshold
    assert higher["source"].threshold == fitted[0]["source"].threshold  # the GMM's stays


def test_source_subsets_bring_the_target_false_alarm_rate_near_the_intended_one(cfg):
    """Twelve simulated sections, each with 40 source and 3 target training clips and 300 new
    normal target clips (the target domain a little shifted): the three clips alone put the
    threshold far too low; with the source stand-ins it flags near 10 % of the new clips. Both
    rules at the one quantile 0.9: new clips here are drawn like the training ones (nothing
    was trained on them), the case the calibration itself is for."""
    cfg = dataclasses.replace(cfg, threshold_target_quantile=None)
    rng = np.random.default_rng(7)
    rates = {"own": [], "source_subsets": []}
    for _ in range(12):
        unit = l2_normalise(rng.normal(size=(S, D)))
        shift = 0.2 * rng.normal(size=(1, D))

        def clips(n, shifted, unit=unit, shift=shift):
            return unit[rng.integers(0, S, n)] + shifted * shift + 0.3 * rng.normal(size=(n, D))

        source, target, new = clips(40, False), clips(3, True), clips(300, True)
        for rule in rates:
            det = fit_section(
                source, target, None, dataclasses.replace(cfg, threshold_target=rule), 4
            )
            rates[rule].append((det["target"].score(new) > det["target"].threshold).mean())
    own, subsets = np.mean(rates["own"]), np.mean(rates["source_subsets"])
    assert own > 0.25  # a gamma fit of three scores: far from 10 %
    assert 0.03 < subsets < 0.2 and abs(subsets - 0.1) < abs(own - 0.1) / 2


def _clips(flagged_normal: dict) -> pd.DataFrame:
    """Labelled test clips of dev fan 00: 30 normal clips per domain of which the given number
    are decided anomalous, and 30 anomalous ones all decided anomalous."""
    rows = []
    for domain, flagged in flagged_normal.items():
        rows += [("dev_data", "fan", "00", domain, 0, int(i < flagged)) for i in range(30)]
        rows += [("dev_data", "fan", "00", domain, 1, 1)] * 30
    columns = ["dataset", "machine", "section", "domain", "anomaly", "decision"]
    return pd.DataFrame(rows, columns=columns)


def test_false_alarm_table_flags_rates_off_by_more_than_a_factor_of_two(cfg):
    table = ev.false_alarm_table(_clips({"source": 3, "target": 9}), 0.9)
    assert table[["domain", "normal"]].values.tolist() == [["source", 30], ["target", 30]]
    assert table["measured"].tolist() == pytest.approx([0.1, 0.3])
    assert table["intended"].tolist() == pytest.approx([0.1, 0.1])
    assert table["off"].tolist() == [False, True]  # 30 % is three times 10 %
    assert ev.false_alarm_table(_clips({"source": 1}), 0.9)["off"].tolist() == [True]  # 3.3 %
    assert ev.false_alarm_table(_clips({"source": 2}), 0.9)["off"].tolist() == [False]  # 6.7 %
    line = ev.false_alarm_line(table)
    assert line.startswith("decisions: normal test clips flagged: source 10.0 %, target 30.0 %")
    assert "(intended 10 %); 1 of 2 (section, domain) rates off by more than a factor of 2" in line


def test_the_false_alarm_line_gives_each_datasets_rate_where_there_are_several():
    dev = _clips({"source": 3, "target": 9})
    both = pd.concat([dev, _clips({"source": 3, "target": 3}).assign(dataset="eval_data")])
    line = ev.false_alarm_line(ev.false_alarm_table(both, 0.9))
    assert line.startswith(
        "decisions: normal test clips flagged: source 10.0 % (dev_data 10.0 %, eval_data 10.0 %), "
        "target 20.0 % (dev_data 30.0 %, eval_data 10.0 %) (intended 10 %)"
    )


def test_chance_off_is_the_binomial_tail_outside_the_band():
    # 30 clips at 10 %: fewer than 1.5 (0 or 1) or more than 6 flagged
    from scipy.stats import binom

    expected = binom.cdf(1, 30, 0.1) + binom.sf(6, 30, 0.1)
    assert ev.chance_off(30, 0.1) == pytest.approx(expected)
    assert 0.15 < ev.chance_off(30, 0.1) < 0.25
    assert ev.chance_off(1000, 0.1) < 1e-6  # many clips: a good threshold is never off


def test_results_md_states_the_rule_and_warns_where_off(cfg):
    table = ev.false_alarm_table(_clips({"source": 3, "target": 9}), 0.9)
    text = "\n\n".join(ev.false_alarm_blocks(table, cfg))
    assert "0.9 quantile of a gamma distribution fitted to out-of-fold scores" in text
    assert "`detectors.threshold_target: source_subsets`" in text
    assert "at the 0.97 quantile (`detectors.threshold_target_quantile`" in text
    assert "**Warning**: 1 of 2 measured rates differ" in text and "fan 00 target" in text
    assert "| **off**" in text
    calm = "\n\n".join(ev.false_alarm_blocks(ev.false_alarm_table(_clips({"source": 3}), 0.9), cfg))
    assert "No measured rate differs" in calm
