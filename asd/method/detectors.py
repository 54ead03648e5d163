"""Post-hoc anomaly detectors on embeddings (report 2.5, docs/reproduction.md "Detectors").

Per (machine, section), on L2-normalised embeddings, two back-ends: the report's pair, a
:class:`GMMDetector` for source clips and an :class:`OCSVMDetector` for target clips, and a
:class:`KNNDetector` on the source and target training clips pooled (the later challenge
systems'). Higher score = more anomalous. All score from their arrays, so a saved detector
(``.npz`` + ``detectors.json``, no pickle) scores bit for bit as the fitted one. Edge cases are
warned and recorded in ``info``; a domain without training clips is scored by the other domain's
detector, a clip of unknown domain by :class:`EitherDomainDetector` (:meth:`DetectorSet.lookup`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.stats

from asd import AsdError
from asd.infra.config import DetectorConfig
from asd.infra.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "asd-detectors-v1"
Calibration = tuple[np.ndarray, str] | None  # scores that join a threshold's, and what they are


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64.  # (N, D) -> (N, D)"""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gamma_threshold(scores: np.ndarray, quantile: float) -> tuple[float, str]:
    """(threshold, "gamma"): the challenge baseline's gamma fit (shape, location and scale free)
    of standardised scores at ``quantile``; (empirical quantile, "quantile") for < 3 scores,
    constant ones or a failed fit."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    mean = float(scores.mean())
    std = float(scores.std())
    # The fit needs a spread to fit, and at least as many scores as the gamma has parameters.
    if scores.size >= 3 and std > 0:
        # Standardised first, so that the fit sees one scale whatever the detector's scores.
        try:
            with warnings.catch_warnings(action="ignore"):
                fitted = scipy.stats.gamma(*scipy.stats.gamma.fit((scores - mean) / std))
                value = float(fitted.ppf(quantile))
            if math.isfinite(value):
                return mean + std * value, "gamma"
        except (ValueError, RuntimeError, FloatingPointError) as err:
            log.warning("gamma fit failed (%s); using the empirical quantile", err)
    return float(np.quantile(scores, quantile)), "quantile"


class Detector:
    """A fitted detector with its decision threshold: the fitting both kinds share."""

    @classmethod
    def fit(cls, emb: np.ndarray, cfg: DetectorConfig, *args, calibration: Calibration = None):
        """Fit on training embeddings (N, D); threshold: :func:`gamma_threshold` of their
        scores. ``out_of_fold`` scores clip i with a refit without fold i % ``threshold_folds``:
        a detector scores its own few training clips far below new normal ones, so an in-sample
        threshold flags most normal test clips. ``training`` (< 3 clips too) scores in-sample.
        ``calibration``: (scores (M,), what they are) of other normal clips that join the
        threshold's sample (:func:`fit_section` says why). The fit's edge cases go to
        ``info["warnings"]`` (the refits' are dropped). Arrays are kept in float32 (scores
        upcast them); the threshold comes from the float64 fits."""
        det = cls._fit_model(emb, cfg, *args)
        n = len(emb)
        if cfg.threshold_scores == "training" or n < 3:
            # The challenge baseline's rule: the detector scores its own training clips.
            scores = det.score(emb)
            how = "training"
        else:
            # Out of fold: each clip is scored by a detector that has not seen it, as a new
            # normal clip would be.
            k = min(cfg.threshold_folds, n)
            fold = np.arange(n) % k
            scores = np.empty(n)
            for f in range(k):
                held_out = fold == f
                refit = cls._fit_model(emb[~held_out], cfg, *args)
                scores[held_out] = refit.score(emb[held_out])
            how = f"{k}-fold"
        if calibration is not None:
            scores = np.concatenate([scores, calibration[0]])
            how += f" and {calibration[1]}"
        det.threshold, method = gamma_threshold(scores, cfg.threshold_quantile)
        # the spread of the scores the threshold saw puts detectors of different scales on one
        # (EitherDomainDetector)
        det.info.update(
            threshold_method=method, threshold_scores=how, score_std=float(scores.std())
        )
        # Stored in float32 (half the size on disk); the scores upcast them again.
        arrays = {
            k: v.astype(np.float32) for k, v in vars(det).items() if isinstance(v, np.ndarray)
        }
        return replace(det, **arrays)


@dataclass
class GMMDetector(Detector):
    """Gaussian mixture on normalised embeddings; score = -max_k log N(x | mu_k, Sigma_k), the
    weights ignored as in the method's original code."""

    kind: ClassVar[str] = "gmm"
    means: np.ndarray  # (K, D)
    precisions_cholesky: np.ndarray  # (K, D, D), precision_k = L_k L_k^T
    weights: np.ndarray  # (K,) kept for inspection; not used in the score
    means_init: np.ndarray | None = None  # (K, D) the normalised centres EM started from
    threshold: float = math.nan
    info: dict = field(default_factory=dict)

    @classmethod
    def _fit_model(
        cls,
        emb: np.ndarray,
        cfg: DetectorConfig,
        centres: np.ndarray | None = None,
        n_components: int | None = None,
    ) -> GMMDetector:
        """Means started at ``centres`` (S, D) or, without them, ``n_components`` k-means."""
        from sklearn.mixture import GaussianMixture

        # The embeddings live on the unit sphere, where the AdaCos head compared them.
        x = l2_normalise(emb)  # (N, D)
        n, d = x.shape
        # Edge cases go to "warnings", which the caller logs with the section's name.
        info: dict = {"n_train": int(n), "warnings": []}
        # EM starts from the class's learned sub-cluster centres (report 2.5), normalised like
        # the embeddings; one component per centre.
        means_init = None if centres is None else l2_normalise(centres)  # (S, D)
        k = min(n, n_components if means_init is None else len(means_init))
        if means_init is None:
            # the caller says why there are none (asd.submit: several source classes)
            info["means_init_note"] = f"no sub-cluster centres given; {k} components from k-means"
        elif k < len(means_init):
            # Fewer clips than centres: EM needs a clip per component, so the centres nearest
            # the data are kept.
            nearest = (x @ means_init.T).max(axis=0)  # (S,) best cosine to a training clip
            keep = np.sort(np.argsort(-nearest, kind="stable")[:k])
            info["warnings"].append(
                f"{n} training clips for {len(means_init)} components; "
                f"using the {n} centres nearest the data"
            )
            info["centres_used"] = keep.tolist()
            means_init = means_init[keep]
        if n == 1:
            # A single clip has no covariance to fit: the regularisation alone is its variance.
            info["warnings"].append("a single training clip; one Gaussian centred on it")
            means = x
            weights = np.ones(1)
            converged = True
            n_iter = 0
            prec_chol = np.eye(d)[None] / math.sqrt(cfg.gmm_reg_covar)  # (1, D, D)
        else:
            # reg_covar is added to the covariances' diagonal, as in the method's original code.
            gmm = GaussianMixture(
                n_components=k,
                covariance_type=cfg.gmm_covariance,
                reg_covar=cfg.gmm_reg_covar,
                max_iter=cfg.gmm_max_iter,
                means_init=means_init,
                random_state=0,
            )
            with warnings.catch_warnings(record=True, action="always") as caught:
                gmm.fit(x)
            # scikit-learn's warnings (e.g. EM did not converge) go to info and the log too.
            info["warnings"] += [str(w.message) for w in caught]
            means = gmm.means_
            weights = gmm.weights_
            converged = gmm.converged_
            n_iter = gmm.n_iter_
            # Every covariance type is stored as (K, D, D) Cholesky factors of the precisions,
            # so one scoring formula serves all: diag (K, D) and spherical (K,) become diagonal
            # matrices, tied (D, D) is repeated K times.
            prec_chol = gmm.precisions_cholesky_
            if cfg.gmm_covariance in ("diag", "spherical"):
                prec_chol = prec_chol.reshape(k, -1, 1) * np.eye(d)
            prec_chol = np.broadcast_to(prec_chol, (k, d, d))
        info.update(
            n_components=int(k),
            converged=bool(converged),
            n_iter=int(n_iter),
            means_init="k-means" if means_init is None else "centres",
        )
        return cls(
            means=means,
            precisions_cholesky=prec_chol,
            weights=weights,
            means_init=means_init,
            info=info,
        )

    def log_densities(self, emb: np.ndarray) -> np.ndarray:
        """Per-component Gaussian log-density of each normalised embedding.  # (N, K)"""
        x = l2_normalise(emb)  # (N, D)
        d_log_2pi = x.shape[1] * math.log(2 * math.pi)
        columns = []
        for mu, chol in zip(self.means, self.precisions_cholesky):
            # With the precision's Cholesky factor L, the squared Mahalanobis distance is
            # |(x - mu) L|^2, and half the log-determinant of the precision is sum(log diag L).
            squared = np.square((x - mu) @ chol).sum(axis=1)  # (N,)
            # The stored arrays are float32: the log-determinant is summed in float64.
            half_log_det = np.log(np.diag(chol), dtype=np.float64).sum()
            columns.append(-0.5 * (d_log_2pi + squared) + half_log_det)
        return np.stack(columns, axis=1)

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,): minus the best component's log-density."""
        # The nearest sub-cluster decides, the mixture weights aside (the original code's rule):
        # a clip near any one normal sub-cluster is normal. The minus makes higher more anomalous.
        return -self.log_densities(emb).max(axis=1)


@dataclass
class OCSVMDetector(Detector):
    """One-Class SVM on normalised embeddings."""

    kind: ClassVar[str] = "ocsvm"
    support_vectors: np.ndarray  # (M, D)
    dual_coef: np.ndarray  # (M,)
    intercept: float
    kernel: str
    gamma: float  # resolved value ('scale' -> 1 / (D * var))
    degree: int = 3
    coef0: float = 0.0
    threshold: float = math.nan
    info: dict = field(default_factory=dict)

    @classmethod
    def _fit_model(cls, emb: np.ndarray, cfg: DetectorConfig) -> OCSVMDetector:
        """The config's kernel, nu and gamma."""
        from sklearn.svm import OneClassSVM

        # The config holds gamma as a string: scikit-learn's "scale" or "auto", or a number.
        gamma = cfg.ocsvm_gamma
        try:
            gamma = gamma if gamma in ("scale", "auto") else float(gamma)
        except ValueError:
            raise ValueError(
                f"detectors.ocsvm_gamma: expected 'scale', 'auto' or a number, got {gamma!r}"
            ) from None
        x = l2_normalise(emb)  # (N, D)
        svm = OneClassSVM(kernel=cfg.ocsvm_kernel, nu=cfg.ocsvm_nu, gamma=gamma).fit(x)
        # Only what the decision function needs is kept, with gamma resolved to its number, so
        # the detector scores without scikit-learn's fitted object (and without pickle).
        return cls(
            support_vectors=svm.support_vectors_,
            dual_coef=svm.dual_coef_.ravel(),
            intercept=float(np.ravel(svm.intercept_)[0]),
            kernel=cfg.ocsvm_kernel,
            gamma=float(svm._gamma),
            degree=int(svm.degree),
            coef0=float(svm.coef0),
            info={"n_train": int(len(x)), "nu": cfg.ocsvm_nu},
        )

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,): minus scikit-learn's decision_function (the signed distance to
        the hyperplane, positive inside)."""
        from sklearn.metrics.pairwise import pairwise_kernels

        # scikit-learn's decision function: sum_m alpha_m K(x, sv_m) + intercept.
        kernel = pairwise_kernels(
            l2_normalise(emb),
            self.support_vectors.astype(np.float64),
            metric=self.kernel,
            filter_params=True,
            gamma=self.gamma,
            degree=self.degree,
            coef0=self.coef0,
        )  # (N, M)
        distance = kernel @ self.dual_coef.astype(np.float64) + self.intercept  # (N,)
        # Positive inside the learned region of normal clips: the minus makes higher more
        # anomalous.
        return -distance


@dataclass
class KNNDetector(Detector):
    """k nearest neighbours among the section's training clips, source and target pooled; score =
    the mean cosine distance of a clip's normalised embedding to its k nearest training ones.
    ``outlier_distance``: the largest distance of a training clip to its nearest other training
    clip; a new clip farther than that from every training clip lies outside what the run was
    trained on (:meth:`outside`)."""

    kind: ClassVar[str] = "knn"
    train: np.ndarray  # (N, D) normalised training embeddings
    k: int = 1
    outlier_distance: float = math.nan
    threshold: float = math.nan
    info: dict = field(default_factory=dict)

    @classmethod
    def _fit_model(cls, emb: np.ndarray, cfg: DetectorConfig) -> KNNDetector:
        """Keep the normalised training embeddings; k = ``cfg.knn_k`` (at most N)."""
        x = l2_normalise(emb)  # (N, D)
        k = min(cfg.knn_k, len(x))
        return cls(train=x, k=k, info={"n_train": int(len(x)), "distance": "cosine", "k": k})

    @classmethod
    def fit(cls, emb: np.ndarray, cfg: DetectorConfig) -> KNNDetector:
        """:meth:`Detector.fit`, then the training clips' leave-one-out nearest distances."""
        det = super().fit(emb, cfg)
        if len(det.train) > 1:
            # the nearest neighbour of a training clip among all of them is itself (distance 0),
            # so the second nearest is its nearest other clip; from the stored float32 rows, as
            # asd.score measures new clips against them
            nearest_other = det._neighbours(det.train, 2)[:, 1]  # (N,)
            det.outlier_distance = float(nearest_other.max())
        return det

    def _neighbours(self, emb: np.ndarray, k: int) -> np.ndarray:
        """Cosine distances of each clip to its k nearest training clips, nearest first.
        # (N, D) -> (N, k)"""
        from sklearn.neighbors import NearestNeighbors

        # brute force: exact, and the same distances whichever machine builds the index
        index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
        index.fit(self.train.astype(np.float64))
        distances, _ = index.kneighbors(l2_normalise(emb))
        return distances

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,): the mean cosine distance to the k nearest training clips."""
        # cosine distance = 1 - cos on unit vectors: the angle AdaCos trained the embeddings on
        distances = self._neighbours(emb, self.k)  # (N, k)
        # the mean of k distances (k = 1: the nearest one) is small inside the normal clusters
        return distances.mean(axis=1)

    def outside(self, emb: np.ndarray) -> np.ndarray:
        """(N,) bool: farther from every training clip than any training clip is from its
        nearest other one (never, for a detector of a single training clip)."""
        nearest = self._neighbours(emb, 1)[:, 0]  # (N,)
        return nearest > self.outlier_distance  # NaN compares False


@dataclass
class EitherDomainDetector:
    """The report's pair on a clip whose domain is unknown (eval test clips from 2022): each
    detector's margin above its own threshold in units of the spread of its training scores
    (the out-of-fold scores the threshold was fitted on), and the lower of the two. The
    threshold is 0: a clip is anomalous when both detectors call it anomalous. Not saved: built
    from the saved pair by :meth:`DetectorSet.lookup`."""

    kind: ClassVar[str] = "gmm_ocsvm_min"
    source: Detector
    target: Detector
    threshold: float = 0.0

    @staticmethod
    def _margin(det: Detector, emb: np.ndarray) -> np.ndarray:
        """(N,) the detector's score minus its threshold, over its training scores' spread."""
        # a spread of 0 (a single or constant training score) leaves the margin unscaled
        spread = det.info.get("score_std") or 1.0
        return (det.score(emb) - det.threshold) / spread

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,): the lower standardised margin of the two domains' detectors."""
        # a GMM log-density and an SVM distance have unrelated scales: standardise each first
        source = self._margin(self.source, emb)
        target = self._margin(self.target, emb)
        # a normal clip of either domain fits that domain's detector: the better fit decides
        return np.minimum(source, target)


_KINDS = {
    GMMDetector.kind: GMMDetector,
    OCSVMDetector.kind: OCSVMDetector,
    KNNDetector.kind: KNNDetector,
}
BACKENDS = ("gmm_ocsvm", "knn")
POOLED = "pooled"  # the domain key of the kNN detector: source and target training clips pooled
MAX_SUBSETS = 20  # source subsets that calibrate a target threshold (source_subset_scores)


def source_subset_scores(source: np.ndarray, n: int, cfg: DetectorConfig) -> Calibration:
    """(scores, what they are) of a target detector's stand-ins: One-Class SVMs fitted on ``n``
    source training clips at a time (at most MAX_SUBSETS disjoint subsets, clips taken with a
    stride so each subset spans the section's list), each scoring the section's other source
    clips (Ns, D); None where there are not more than ``n`` source clips."""
    n_subsets = min(MAX_SUBSETS, len(source) // n) if n else 0
    if n_subsets == 0 or len(source) <= n:
        return None
    scores = []
    for subset in range(n_subsets):
        inside = np.zeros(len(source), dtype=bool)
        inside[np.arange(subset, len(source), n_subsets)[:n]] = True
        fitted = OCSVMDetector._fit_model(source[inside], cfg)
        scores.append(fitted.score(source[~inside]))
    what = f"{sum(map(len, scores))} scores of {n_subsets} {n}-clip source stand-ins"
    return np.concatenate(scores), what


def fit_section(
    source: np.ndarray | None,
    target: np.ndarray | None,
    centres: np.ndarray | None,
    cfg: DetectorConfig,
    n_components: int | None = None,
) -> dict[str, Detector]:
    """{"source": GMMDetector, "target": OCSVMDetector} of one (machine, section), for the
    domains with training embeddings (Ns, D) / (Nt, D); centres (S, D) of its source class.

    A gamma fit of the three out-of-fold scores a section's target detector has of its own
    clips puts the threshold almost anywhere, far from the intended false-alarm rate
    (docs/results.md "Decisions" has the measurements). The source clips' scores under it are
    those of another domain, far above the target test clips', so pooling them sets it far
    too high. What can be measured is how a One-Class SVM fitted on that few clips scores new
    normal clips of the same section: so with
    ``threshold_target: source_subsets`` (the default) the threshold is fitted on the scores of
    :func:`source_subset_scores` as well as on its own out-of-fold ones. ``own``: these three
    only. New normal target test clips still score above what either shows (the three clips
    were trained on many times in Step 2, and they are all the target domain shows), so the
    target threshold takes its own gamma quantile, ``threshold_target_quantile``, chosen on the
    demo's development data (docs/results.md "Decisions"). The source detector's threshold and
    every score stay as they are."""
    out: dict[str, Detector] = {}
    if source is not None and len(source):
        out["source"] = GMMDetector.fit(source, cfg, centres, n_components)
    if target is not None and len(target):
        calibration = None
        if cfg.threshold_target == "source_subsets" and source is not None:
            calibration = source_subset_scores(source, len(target), cfg)
        target_cfg = cfg
        if cfg.threshold_target_quantile is not None:
            target_cfg = replace(cfg, threshold_quantile=cfg.threshold_target_quantile)
        out["target"] = OCSVMDetector.fit(target, target_cfg, calibration=calibration)
    return out


def fit_knn(
    source: np.ndarray | None, target: np.ndarray | None, cfg: DetectorConfig
) -> dict[str, Detector]:
    """{POOLED: KNNDetector} of one (machine, section) on its source and target training
    embeddings pooled, (Ns, D) and (Nt, D); target clips are not weighted up (with k = 1 a
    target-like clip finds its nearest target clip however few there are)."""
    parts = [x for x in (source, target) if x is not None and len(x)]
    return {POOLED: KNNDetector.fit(np.concatenate(parts), cfg)} if parts else {}


def resolve_backend(backend: str, domains_known: bool) -> str:
    """The back-end of ``detectors.backend``: ``auto`` is the report's pair where test domains
    are known (2021 layout) and kNN where they are not (2022 on, plain folders)."""
    if backend != "auto":
        return backend
    return "gmm_ocsvm" if domains_known else "knn"


@dataclass
class DetectorSet:
    """Fitted detectors keyed by (machine, section, domain); saved as .npz + one JSON index."""

    detectors: dict[tuple[str, str, str], Detector] = field(default_factory=dict)

    def add(self, machine: str, section: str, fitted: dict[str, Detector]) -> None:
        """Add fit_section's detectors; their fits' warnings are logged with their section."""
        for domain, det in fitted.items():
            for note in det.info.get("warnings", ()):
                log.warning("%s section %s, %s detector: %s", machine, section, det.kind, note)
            self.detectors[(machine, section, domain)] = det

    def sections(self) -> list[tuple[str, str]]:
        """Sorted (machine, section) pairs that have at least one detector."""
        return sorted({(m, s) for m, s, _ in self.detectors})

    def backends(self) -> list[str]:
        """The back-ends (BACKENDS) that have detectors in this set."""
        pooled = any(d == POOLED for _, _, d in self.detectors)
        pair = any(d != POOLED for _, _, d in self.detectors)
        return [b for b, has in zip(BACKENDS, (pair, pooled)) if has]

    def lookup(
        self, machine: str, section: str, domain: str | None, backend: str = "gmm_ocsvm"
    ) -> Detector | EitherDomainDetector:
        """The detector of ``backend`` for test clips of (machine, section, domain): kNN's
        pooled one whatever the domain; for the report's pair the domain's own, the other
        domain's when this one had no training clips (warned), an :class:`EitherDomainDetector`
        when the domain is unknown (None). KeyError when the section has none."""
        if backend == "knn":
            return self.detectors[machine, section, POOLED]
        if domain is None:
            pair = [self.detectors.get((machine, section, d)) for d in ("source", "target")]
            if None not in pair:
                return EitherDomainDetector(*pair)
            domain = "source" if pair[0] is not None else "target"
        det = self.detectors.get((machine, section, domain))
        if det is None:
            other = "target" if domain == "source" else "source"
            det = self.detectors[machine, section, other]
            log.warning(
                "%s section %s has no %s training clips; scoring its %s clips with the %s detector",
                machine,
                section,
                domain,
                domain,
                other,
            )
        return det

    def save(self, folder: str | Path) -> None:
        """Write ``<machine>_section_<XX>_<domain>.npz`` per detector (its array fields) and
        ``detectors.json`` (kind, file, threshold, scalar fields as ``params``, ``info``)."""
        folder = Path(folder)
        entries = []
        for (machine, section, domain), det in sorted(self.detectors.items()):
            name = f"{machine}_section_{section}_{domain}.npz"
            fields = {
                k: v
                for k, v in vars(det).items()
                if k not in ("threshold", "info") and v is not None
            }
            # Arrays go to the .npz file, everything else to the JSON index.
            arrays = {k: v for k, v in fields.items() if isinstance(v, np.ndarray)}
            params = {k: v for k, v in fields.items() if not isinstance(v, np.ndarray)}
            with atomic_path(folder / name) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
            entries.append(
                {
                    "machine": machine,
                    "section": section,
                    "domain": domain,
                    "kind": det.kind,
                    "file": name,
                    "threshold": det.threshold,
                    "params": params,
                    "info": det.info,
                }
            )
        # the index goes last: a reader never sees it before the arrays it names
        atomic_write_text(
            folder / "detectors.json",
            json.dumps({"format": FORMAT, "detectors": entries}, indent=1),
        )

    @classmethod
    def load(cls, folder: str | Path) -> DetectorSet:
        """Rebuild from :meth:`save`'s files (no pickle); errors name the file."""
        index = Path(folder) / "detectors.json"
        if not index.is_file():
            raise FileNotFoundError(f"{index} does not exist; run asd.submit on this run first")
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as err:
            raise AsdError(f"{index} is not valid JSON: {err}") from None
        if not (
            isinstance(meta, dict)
            and meta.get("format") == FORMAT
            and isinstance(meta.get("detectors"), list)
        ):
            raise AsdError(f"{index} is not an {FORMAT} file")
        out = cls()
        for e in meta["detectors"]:
            try:
                name = e["file"]
                key = (e["machine"], e["section"], e["domain"])
                kind = e["kind"]
            except (KeyError, TypeError) as err:
                raise AsdError(f"{index}: a detector entry lacks {err}") from None
            if not isinstance(name, str) or Path(name).name != name:  # only files beside it
                raise AsdError(f"{index}: detector file {name!r} is not a file name")
            if not isinstance(kind, str) or kind not in _KINDS:
                raise AsdError(f"{index}: unknown detector kind {kind!r}")
            path = index.parent / name
            try:
                with np.load(path, allow_pickle=False) as z:  # **z reads the arrays: inside
                    out.detectors[key] = _KINDS[kind](
                        **z, **e["params"], info=e["info"], threshold=float(e["threshold"])
                    )
            except (OSError, EOFError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as err:
                raise AsdError(
                    f"cannot read detector file {path}, or its entry in {index} is not "
                    f"usable ({type(err).__name__}: {err})"
                ) from None
        return out
