"""Detectors on synthetic embeddings: direction, GMM initialisation, edge cases, save/load."""

import dataclasses
import logging

import numpy as np
import pytest
import scipy.stats
import sklearn.mixture
from sklearn.svm import OneClassSVM

from asd.infra.config import load_config
from asd.method.detectors import (
    DetectorSet,
    GMMDetector,
    OCSVMDetector,
    fit_section,
    gamma_threshold,
    l2_normalise,
)

D, S = 16, 4


@pytest.fixture(scope="module")
def cfg(repo):
    return load_config(repo / "config.yml").detectors


@pytest.fixture(scope="module")
def blobs():
    """Centres (S, D) and clips around them: source train/test, target train, one outlier."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(S, D))
    unit = l2_normalise(centres)

    def around(n, spread=0.05):
        return unit[rng.integers(0, S, n)] + spread * rng.normal(size=(n, D))

    far = -unit.mean(0, keepdims=True) + 0.3 * rng.normal(size=(1, D))
    return {
        "centres": 3.0 * centres,  # unnormalised, as the loss holds them
        "source": around(60),
        "test": around(20),
        "target": around(3),
        "far": far,
    }


def test_gmm_scores_far_clip_above_normal_ones(cfg, blobs):
    det = GMMDetector.fit(blobs["source"], cfg, blobs["centres"])
    assert det.score(blobs["far"])[0] > det.score(blobs["test"]).max()
    # invariant to the embedding's length: the detector normalises
    assert np.allclose(det.score(5 * blobs["test"]), det.score(blobs["test"]))


def test_ocsvm_scores_far_clip_above_normal_ones(cfg, blobs):
    det = OCSVMDetector.fit(blobs["target"], cfg)
    assert det.score(blobs["far"])[0] > det.score(blobs["target"]).max()


def test_gmm_means_start_at_normalised_centres(cfg, blobs, monkeypatch):
    seen = {}

    class Spy(sklearn.mixture.GaussianMixture):
        def fit(self, X, y=None):
            seen["means_init"] = np.array(self.means_init)
            seen["n_components"] = self.n_components
            seen["reg_covar"] = self.reg_covar
            seen["covariance_type"] = self.covariance_type
            return super().fit(X, y)

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", Spy)
    det = GMMDetector.fit(blobs["source"], cfg, blobs["centres"])
    expected = blobs["centres"] / np.linalg.norm(blobs["centres"], axis=1, keepdims=True)
    assert np.allclose(seen["means_init"], expected)
    assert np.allclose(det.means_init, expected)
    assert (seen["n_components"], seen["reg_covar"], seen["covariance_type"]) == (S, 1e-3, "full")


def test_gmm_log_density_matches_scipy(cfg, blobs):
    det = GMMDetector.fit(blobs["source"], cfg, blobs["centres"])
    x = l2_normalise(blobs["test"][:5])
    for k in range(S):
        chol = det.precisions_cholesky[k]
        cov = np.linalg.inv(chol @ chol.T)
        ref = scipy.stats.multivariate_normal(det.means[k], cov).logpdf(x)
        assert np.allclose(det.log_densities(x)[:, k], ref, rtol=1e-6)
    # score ignores the weights: minus the best component
    assert np.allclose(det.score(x), -det.log_densities(x).max(1))


@pytest.mark.parametrize("covariance", ["diag", "spherical", "tied"])
def test_gmm_other_covariance_types_match_sklearn(cfg, blobs, covariance):
    c = cfg.__class__(**{**cfg.__dict__, "gmm_covariance": covariance})
    det = GMMDetector.fit(blobs["source"], c, blobs["centres"])
    ref = sklearn.mixture.GaussianMixture(
        S,
        covariance_type=covariance,
        reg_covar=1e-3,
        means_init=l2_normalise(blobs["centres"]),
        random_state=0,
    ).fit(l2_normalise(blobs["source"]))
    x = l2_normalise(blobs["test"])
    ll = ref._estimate_log_prob(x)  # per-component log-density, weights excluded
    assert np.allclose(det.score(x), -ll.max(1))


def test_ocsvm_matches_sklearn_decision_function(cfg, blobs):
    det = OCSVMDetector.fit(blobs["source"], cfg)
    ref = OneClassSVM(kernel="rbf", nu=0.5, gamma="scale").fit(l2_normalise(blobs["source"]))
    x = l2_normalise(blobs["test"])
    assert np.allclose(det.score(x), -ref.decision_function(x), atol=1e-10)


def test_fewer_clips_than_components_uses_nearest_centres(cfg, blobs):
    unit = l2_normalise(blobs["centres"])
    clips = unit[[3, 1]] + 0.01
    det = GMMDetector.fit(clips, cfg, blobs["centres"])
    assert det.info["warnings"] == [
        "2 training clips for 4 components; using the 2 centres nearest the data"
    ]  # once: the refits' are dropped
    assert det.info["n_components"] == 2 and det.info["centres_used"] == [1, 3]
    assert np.allclose(det.means_init, unit[[1, 3]])
    assert np.isfinite(det.threshold)


def test_single_training_clip(cfg, blobs):
    one = blobs["source"][:1]
    gmm = GMMDetector.fit(one, cfg, blobs["centres"])
    svm = OCSVMDetector.fit(one, cfg)
    for det in (gmm, svm):
        assert det.score(one)[0] < det.score(blobs["far"])[0]
        assert np.isfinite(det.threshold)
        assert det.info["threshold_method"] == "quantile"
    assert np.allclose(gmm.means[0], l2_normalise(one)[0])


def test_gmm_not_converged_is_kept_with_warning(cfg, blobs):
    c = cfg.__class__(**{**cfg.__dict__, "gmm_max_iter": 1})
    det = GMMDetector.fit(blobs["source"], c, blobs["centres"])
    assert det.info["converged"] is False
    assert len(det.info["warnings"]) == 1 and "did not converge" in det.info["warnings"][0]
    assert np.all(np.isfinite(det.score(blobs["test"])))


def test_gamma_threshold():
    rng = np.random.default_rng(1)
    s = rng.gamma(2.0, 3.0, 2000) - 300.0  # negative scores
    t, method = gamma_threshold(s, 0.9)
    assert method == "gamma"
    assert t == pytest.approx(scipy.stats.gamma.ppf(0.9, 2.0, scale=3.0) - 300.0, abs=0.5)
    # same answer after a shift and a positive scaling (loc free, standardised fit)
    t2, _ = gamma_threshold(2.0 * s + 1000.0, 0.9)
    assert t2 == pytest.approx(2.0 * t + 1000.0, rel=1e-6)
    assert gamma_threshold([4.0], 0.9) == (4.0, "quantile")
    assert gamma_threshold([1.0, 1.0, 1.0], 0.9) == (1.0, "quantile")


def test_threshold_flags_about_the_quantile_of_new_normal_clips(cfg):
    """Out-of-fold training scores put the threshold where about 1 - quantile of new normal
    clips lie above it; a GMM's scores of its own training clips put it far lower."""
    rng = np.random.default_rng(1)
    unit = l2_normalise(rng.normal(size=(S, D)))

    def normal(n):
        return unit[rng.integers(0, S, n)] + 0.3 * rng.normal(size=(n, D))

    train, new = normal(200), normal(2000)
    det = GMMDetector.fit(train, cfg, 3.0 * unit)
    assert det.info["threshold_scores"] == "5-fold"
    assert 0.02 < (det.score(new) > det.threshold).mean() < 0.25  # 0.05 here
    own = GMMDetector.fit(train, dataclasses.replace(cfg, threshold_scores="training"), 3.0 * unit)
    assert own.info["threshold_scores"] == "training"
    assert own.threshold < det.threshold
    assert (own.score(new) > own.threshold).mean() > 0.4  # in-sample: half the normals (0.53)
    assert np.array_equal(own.score(new), det.score(new))  # the same model, another threshold


def test_threshold_folds_and_small_sections(cfg, blobs):
    three = OCSVMDetector.fit(blobs["target"], cfg)  # 3 clips: leave-one-out
    assert three.info["threshold_scores"] == "3-fold" and np.isfinite(three.threshold)
    two = OCSVMDetector.fit(blobs["target"][:2], cfg)
    assert two.info["threshold_scores"] == "training"
    folds = GMMDetector.fit(
        blobs["source"], dataclasses.replace(cfg, threshold_folds=2), blobs["centres"]
    )
    assert folds.info["threshold_scores"] == "2-fold"


def test_save_load_round_trip_is_identical(cfg, blobs, tmp_path):
    dets = DetectorSet()
    dets.add("fan", "00", fit_section(blobs["source"], blobs["target"], blobs["centres"], cfg))
    dets.add("pump", "01", fit_section(blobs["source"][:10], None, blobs["centres"], cfg))
    dets.save(tmp_path / "detectors")
    assert not list((tmp_path / "detectors").glob("*.pkl"))
    back = DetectorSet.load(tmp_path / "detectors")
    assert set(back.detectors) == set(dets.detectors)
    x = np.concatenate([blobs["test"], blobs["far"]])
    for key, det in dets.detectors.items():
        other = back.detectors[key]
        arrays = [v for v in vars(det).values() if isinstance(v, np.ndarray)]
        assert arrays and all(v.dtype == np.float32 for v in arrays)  # stored in float32 ...
        assert det.score(x).dtype == np.float64  # ... scored in float64
        assert type(other) is type(det) and other.threshold == det.threshold
        assert np.array_equal(other.score(x), det.score(x))
        assert other.info == det.info


def test_lookup_falls_back_to_other_domain(cfg, blobs, caplog):
    dets = DetectorSet()
    dets.add("pump", "01", fit_section(blobs["source"], None, blobs["centres"], cfg))
    with caplog.at_level(logging.WARNING):
        det = dets.lookup("pump", "01", "target")
    assert det is dets.detectors["pump", "01", "source"] and isinstance(det, GMMDetector)
    assert "no target training clips" in caplog.text
    with pytest.raises(KeyError):
        dets.lookup("fan", "00", "source")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="detectors.json"):
        DetectorSet.load(tmp_path)
    (tmp_path / "detectors.json").write_text("{not json")
    with pytest.raises(ValueError, match="detectors.json"):
        DetectorSet.load(tmp_path)
