"""Metrics against hand-computed cases."""

import math
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from asd.method import metrics

Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def test_auc_hand_computed():
    # anomaly pairs above normal: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 -> 3 of 4
    assert metrics.auc(Y, S) == pytest.approx(0.75)


def test_pauc_hand_computed():
    # ROC: TPR 0.5 on FPR [0, 0.5] -> partial area 0.05 up to FPR 0.1; McClish:
    # 0.5 * (1 + (0.05 - 0.005) / (0.1 - 0.005)) = 14 / 19
    assert metrics.pauc(Y, S) == pytest.approx(14 / 19)
    assert metrics.pauc(Y, S) == pytest.approx(roc_auc_score(Y, S, max_fpr=0.1))


def test_perfect_and_reversed():
    y = np.array([0] * 10 + [1] * 5)
    s = np.arange(15, dtype=float)
    assert metrics.auc(y, s) == 1.0 and metrics.pauc(y, s) == 1.0
    assert metrics.auc(y, -s) == 0.0
    # reversed: partial area 0, McClish -> 0.5 * (1 - 0.005 / 0.095) = 9 / 19
    assert metrics.pauc(y, -s) == pytest.approx(9 / 19)


def test_ties_give_half():
    assert metrics.auc([0, 1], [1.0, 1.0]) == pytest.approx(0.5)


def test_pauc_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    assert metrics.pauc(y, s) == roc_auc_score(y, s, max_fpr=0.1)


def test_harmonic_means():
    assert metrics.hmean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.official_score([0.5], [1.0]) == pytest.approx(2 / 3)
    assert metrics.official_score([0.6, 0.6], [0.4, 0.4]) == pytest.approx(0.48)
    # a zero is floored at epsilon like the official evaluator: tiny, not an error
    assert 0 < metrics.hmean([0.0, 1.0]) < 3 * sys.float_info.epsilon
    assert math.isclose(metrics.hmean([0.7]), 0.7)


def test_bad_input_is_clear():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        metrics.auc([0, 0], [1, 2])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        metrics.auc([0, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([0, 1], [np.nan, 1])
    with pytest.raises(ValueError, match="no values"):
        metrics.hmean([])
