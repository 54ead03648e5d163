"""The kNN back-end, the report's pair on unknown domains, and the out-of-training rule,
against hand-computed cases."""

import math
from dataclasses import replace

import numpy as np
import pytest

from asd.infra.config import load_config
from asd.method import detectors as dt
from asd.submit import section_centres


@pytest.fixture(scope="module")
def cfg(repo):
    return load_config(repo / "config.yml").detectors


def unit(degrees: float, z: float = 0.0) -> np.ndarray:
    """A vector at ``degrees`` in the x-y plane (with a z part), any length: detectors
    normalise."""
    a = math.radians(degrees)
    return np.array([3 * math.cos(a), 3 * math.sin(a), z])


TRAIN = np.stack([unit(0), unit(30), unit(60)])  # (3, 3)


def test_score_is_the_cosine_distance_to_the_nearest_training_clip(cfg):
    det = dt.KNNDetector.fit(TRAIN, cfg)
    assert det.k == 1 and det.info["distance"] == "cosine"
    # 45 degrees: nearest 30 or 60, distance 1 - cos 15
    # 90 degrees: nearest 60, 1 - cos 30; (0, 0, 1): 1 - 0 from every clip
    scores = det.score(np.stack([unit(45), unit(90), np.array([0.0, 0.0, 1.0])]))
    expected = [1 - math.cos(math.radians(15)), 1 - math.cos(math.radians(30)), 1.0]
    assert scores == pytest.approx(expected, abs=1e-6)


def test_k_neighbours_are_averaged(cfg):
    det = dt.KNNDetector.fit(TRAIN, replace(cfg, knn_k=2))
    # 90 degrees: the nearest two are 60 and 30: (1 - cos 30 + 1 - cos 60) / 2
    expected = (2 - math.cos(math.radians(30)) - math.cos(math.radians(60))) / 2
    assert det.score(unit(90)[None]) == pytest.approx([expected], abs=1e-6)


def test_source_and_target_are_pooled(cfg):
    source = np.stack([unit(a) for a in range(0, 40, 2)])  # 20 source clips near 0-40 degrees
    target = unit(180)[None]  # one target clip opposite
    fitted = dt.fit_knn(source, target, cfg)
    assert list(fitted) == [dt.POOLED]
    det = fitted[dt.POOLED]
    assert det.info["n_train"] == 21
    # a target-like clip finds its one target neighbour: as normal as a source-like clip
    assert det.score(unit(180)[None])[0] == pytest.approx(0.0, abs=1e-6)
    assert det.score(unit(90)[None])[0] > det.score(unit(21)[None])[0]


def test_outside_beyond_the_largest_nearest_neighbour_distance(cfg):
    det = dt.KNNDetector.fit(TRAIN, cfg)
    # each training clip's nearest other one lies 30 degrees away
    assert det.outlier_distance == pytest.approx(1 - math.cos(math.radians(30)), abs=1e-6)
    clips = np.stack([unit(45), unit(75), np.array([0.0, 0.0, 1.0]), unit(150)])
    # 45: 15 degrees from 30 and 60; 75: 15 from 60; (0, 0, 1) and 150: 90 from every clip
    assert det.outside(clips).tolist() == [False, False, True, True]


def test_saved_knn_scores_bit_for_bit(cfg, tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8))
    dets = dt.DetectorSet()
    dets.add("fan", "00", dt.fit_knn(emb[:30], emb[30:], cfg))
    dets.save(tmp_path)
    with np.load(tmp_path / f"fan_section_00_{dt.POOLED}.npz", allow_pickle=False) as z:
        assert set(z.files) == {"train"}
    loaded = dt.DetectorSet.load(tmp_path)
    new = rng.normal(size=(5, 8))
    before = dets.lookup("fan", "00", None, "knn")
    after = loaded.lookup("fan", "00", "target", "knn")  # any domain: the pooled one
    assert np.array_equal(before.score(new), after.score(new))
    assert after.threshold == before.threshold
    assert after.outlier_distance == before.outlier_distance
    assert np.array_equal(before.outside(new), after.outside(new))


def test_unknown_domain_takes_the_lower_standardised_margin(cfg):
    source = replace(dt.KNNDetector.fit(TRAIN, cfg), threshold=0.1)
    source.info["score_std"] = 0.2
    target = replace(dt.KNNDetector.fit(np.stack([unit(180)]), cfg), threshold=0.5)
    target.info["score_std"] = 0.5
    either = dt.EitherDomainDetector(source, target)
    assert either.threshold == 0.0
    # unit(45): source distance 1 - cos 15 = 0.03407; target 1 - cos 135 = 1.70711
    # margins: (0.03407 - 0.1) / 0.2 = -0.3296, (1.70711 - 0.5) / 0.5 = 2.4142 -> the lower
    d_source = 1 - math.cos(math.radians(15))
    assert either.score(unit(45)[None])[0] == pytest.approx((d_source - 0.1) / 0.2, abs=1e-6)
    # 180: source 1 - cos 120 = 1.5 -> 7.0; target 0 -> -1.0
    assert either.score(unit(180)[None])[0] == pytest.approx(-1.0, abs=1e-6)
    # 120: source 1 - cos 60 = 0.5 -> 2.0; target 1 - cos 60 = 0.5 -> 0.0: both at or
    # above their thresholds, so not below zero
    assert either.score(unit(120)[None])[0] == pytest.approx(0.0, abs=1e-6)


def test_lookup_by_backend_and_unknown_domain(cfg):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(30, 8))
    dets = dt.DetectorSet()
    dets.add("fan", "00", dt.fit_section(emb[:25], emb[25:], None, cfg, 2))
    dets.add("fan", "00", dt.fit_knn(emb[:25], emb[25:], cfg))
    assert dets.backends() == ["gmm_ocsvm", "knn"]
    assert dets.lookup("fan", "00", "source").kind == "gmm"
    assert dets.lookup("fan", "00", "target").kind == "ocsvm"
    assert dets.lookup("fan", "00", None).kind == "gmm_ocsvm_min"
    assert dets.lookup("fan", "00", "source", "knn").kind == "knn"
    # the fitted pair records the spread of the scores its threshold was fitted on
    assert dets.lookup("fan", "00", "source").info["score_std"] > 0


def test_auto_backend_is_the_pair_where_domains_are_known():
    assert dt.resolve_backend("auto", domains_known=True) == "gmm_ocsvm"
    assert dt.resolve_backend("auto", domains_known=False) == "knn"
    assert dt.resolve_backend("gmm_ocsvm", domains_known=False) == "gmm_ocsvm"


def test_gmm_means_start_at_the_one_source_class_or_k_means():
    centres = np.arange(4 * 3 * 2, dtype=float).reshape(4 * 3, 2)  # 4 classes x S = 3
    # one source class (2021, 2022): its S centres
    assert np.array_equal(section_centres(np.array([2, 2, 2]), centres, 3), centres[6:9])
    # several attribute classes (2023 on): None, so the GMM's S components start from k-means
    assert section_centres(np.array([0, 1, 1]), centres, 3) is None
    assert section_centres(np.array([-1]), centres, 3) is None
