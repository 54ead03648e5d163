"""Post-hoc anomaly detectors on embeddings (report 2.5, DESIGN.md "Detectors").

Per (machine, section), on L2-normalised embeddings (the detectors normalise themselves):
the source domain gets a :class:`GMMDetector` (S components, full covariance, ``reg_covar`` on
the diagonal, means started at that class's learned sub-cluster centres; score = minus the
largest per-component log-density, mixture weights ignored as in the method's original code),
the target domain a :class:`OCSVMDetector` (score = minus the signed distance to the
hyperplane). Higher score = more anomalous for both; the sign lives here, never in callers.
Both score with their own NumPy code from the fitted arrays, so a saved detector (``.npz``
arrays + ``detectors.json``, never pickle) scores bit for bit as the fitted one.

Decision threshold (:func:`fit_threshold`): the challenge baseline's gamma fit (shape,
location and scale free) of training-clip scores at ``threshold_quantile``; fewer than 3
clips, constant scores or a failed fit fall back to the empirical quantile.

Edge cases, each warned and recorded in ``info``: fewer training clips n than components (n
components, at the n centres nearest the data); one training clip (one Gaussian on it with
covariance ``reg_covar * I``, what EM gives); EM not converged (the last estimate is kept);
no centres for the section (k-means start); a section without training clips of one domain
(:meth:`DetectorSet.lookup` scores it with the other domain's detector).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import scipy.stats

from asd import AsdError
from asd.config import DetectorConfig
from asd.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "asd-detectors-v1"
DOMAINS = ("source", "target")
GMM_SEED = 0  # k-means start of the covariances (the means come from the centres)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64.  # (N, D) -> (N, D)"""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def gamma_threshold(scores: np.ndarray, quantile: float) -> tuple[float, str]:
    """Decision threshold from training scores: gamma fit (loc free) at ``quantile``.

    Returns (threshold, method) with method "gamma" or "quantile" (the fallback).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("threshold of no training scores")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"detectors.threshold_quantile must lie in (0, 1), got {quantile}")
    mean, std = float(scores.mean()), float(scores.std())
    if scores.size >= 3 and std > 0:
        z = (scores - mean) / std
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shape, loc, scale = scipy.stats.gamma.fit(z)
                value = float(scipy.stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
            if math.isfinite(value):
                return mean + std * value, "gamma"
        except (ValueError, RuntimeError, FloatingPointError) as err:
            log.warning("gamma fit of %d training scores failed (%s); using the empirical "
                        "quantile", scores.size, err)
    return float(np.quantile(scores, quantile)), "quantile"


def _to_full_cholesky(prec_chol: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """scikit-learn's precisions_cholesky_ of any covariance type as (K, D, D)."""
    if covariance_type == "full":
        return np.asarray(prec_chol, dtype=np.float64)
    if covariance_type == "tied":
        return np.repeat(np.asarray(prec_chol, dtype=np.float64)[None], k, axis=0)
    if covariance_type == "diag":
        return np.stack([np.diag(p) for p in np.asarray(prec_chol, dtype=np.float64)])
    if covariance_type == "spherical":
        return np.stack([p * np.eye(d) for p in np.asarray(prec_chol, dtype=np.float64)])
    raise ValueError(f"unknown covariance type {covariance_type!r}")


def fit_threshold(det: "Detector", emb: np.ndarray, cfg: DetectorConfig,
                  refit: Callable[[np.ndarray], "Detector"]) -> None:
    """Set ``det.threshold``: :func:`gamma_threshold` of scores of its training clips ``emb``.

    ``cfg.threshold_scores``: ``out_of_fold`` (default) scores clip i with a detector refitted
    (``refit(emb_subset)``) without fold i % ``cfg.threshold_folds`` (leave-one-out for fewer
    clips than folds); ``training`` scores them with ``det`` itself, the baseline's rule. A
    GMM with a component per few clips, or a One-Class SVM on three, scores its own training
    clips far below new normal ones, so in-sample thresholds flag most normal test clips
    (``make submit`` prints the share flagged). Fewer than 3 clips: ``training``.
    """
    n = len(emb)
    if cfg.threshold_scores == "training" or n < 3:
        scores, how = det.score(emb), "training"
    else:
        k = min(cfg.threshold_folds, n)
        fold = np.arange(n) % k
        scores = np.empty(n)
        quiet = log.disabled  # the refits repeat the fit's own warnings k times
        log.disabled = True
        try:
            for f in range(k):
                scores[fold == f] = refit(emb[fold != f]).score(emb[fold == f])
        finally:
            log.disabled = quiet
        how = f"{k}-fold"
    det.threshold, det.info["threshold_method"] = gamma_threshold(scores,
                                                                  cfg.threshold_quantile)
    det.info["threshold_scores"] = how


@dataclass
class GMMDetector:
    """Gaussian mixture on normalised embeddings; score = -max_k log N(x | mu_k, Sigma_k)."""

    kind: ClassVar[str] = "gmm"
    means: np.ndarray                 # (K, D)
    precisions_cholesky: np.ndarray   # (K, D, D), precision_k = L_k L_k^T
    weights: np.ndarray               # (K,) kept for inspection; not used in the score
    means_init: np.ndarray | None = None  # (K, D) the normalised centres EM started from
    threshold: float = math.nan
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, emb: np.ndarray, cfg: DetectorConfig, centres: np.ndarray | None = None,
            n_components: int | None = None) -> "GMMDetector":
        """Fit on training embeddings (N, D); ``centres`` (S, D) initialise the means.

        Without centres, ``n_components`` components start from k-means. The decision
        threshold comes from :func:`fit_threshold`.
        """
        det = cls._fit_model(emb, cfg, centres, n_components)
        fit_threshold(det, emb, cfg, lambda x: cls._fit_model(x, cfg, centres, n_components))
        return det

    @classmethod
    def _fit_model(cls, emb: np.ndarray, cfg: DetectorConfig, centres: np.ndarray | None,
                   n_components: int | None) -> "GMMDetector":
        from sklearn.mixture import GaussianMixture

        x = l2_normalise(emb)  # (N, D)
        n, d = x.shape
        if n == 0:
            raise ValueError("GMM detector: no training clips")
        info: dict = {"n_train": int(n)}
        means_init = None
        if centres is not None:
            c = l2_normalise(centres)  # (S, D)
            if c.shape[1] != d:
                raise ValueError(f"GMM detector: centres have dimension {c.shape[1]}, "
                                 f"embeddings {d}")
            if n < len(c):
                nearest = (x @ c.T).max(axis=0)  # (S,) best cosine to any training clip
                keep = np.sort(np.argsort(-nearest, kind="stable")[:n])
                log.warning("GMM detector: %d training clips for %d components; using the %d "
                            "centres nearest the data", n, len(c), n)
                info["centres_used"] = keep.tolist()
                c = c[keep]
            means_init = c
            k = len(c)
        else:
            if not n_components:
                raise ValueError("GMM detector: give centres or n_components")
            k = min(n, n_components)
            log.warning("GMM detector: no sub-cluster centres given; %d components from k-means",
                        k)
        info["n_components"] = int(k)
        if n == 1:
            # EM on one point: mean at the point, covariance reg_covar * I
            log.warning("GMM detector: a single training clip; one Gaussian centred on it")
            det = cls(means=x.copy(), weights=np.ones(1), means_init=means_init,
                      precisions_cholesky=np.eye(d)[None] / math.sqrt(cfg.gmm_reg_covar),
                      info={**info, "converged": True, "n_iter": 0})
        else:
            gmm = GaussianMixture(n_components=k, covariance_type=cfg.gmm_covariance,
                                  reg_covar=cfg.gmm_reg_covar, max_iter=cfg.gmm_max_iter,
                                  means_init=means_init, random_state=GMM_SEED)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                gmm.fit(x)
            for w in caught:
                log.warning("GMM detector: %s", w.message)
            if not gmm.converged_:
                log.warning("GMM detector: EM did not converge in %d iterations; keeping the "
                            "last estimate", cfg.gmm_max_iter)
            info.update(converged=bool(gmm.converged_), n_iter=int(gmm.n_iter_))
            det = cls(means=np.asarray(gmm.means_, dtype=np.float64), means_init=means_init,
                      weights=np.asarray(gmm.weights_, dtype=np.float64),
                      precisions_cholesky=_to_full_cholesky(gmm.precisions_cholesky_,
                                                            cfg.gmm_covariance, k, d),
                      info=info)
        det.info["means_init"] = "centres" if means_init is not None else "k-means"
        return det

    def log_densities(self, emb: np.ndarray) -> np.ndarray:
        """Per-component Gaussian log-density of each normalised embedding.  # (N, K)"""
        x = l2_normalise(emb)  # (N, D)
        d = x.shape[1]
        out = np.empty((len(x), len(self.means)))
        for k, (mu, chol) in enumerate(zip(self.means, self.precisions_cholesky)):
            y = (x - mu) @ chol  # (N, D), |y|^2 = Mahalanobis^2
            log_det = np.log(np.diag(chol)).sum()
            out[:, k] = -0.5 * (d * math.log(2 * math.pi) + (y * y).sum(axis=1)) + log_det
        return out

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,): minus the best component's log-density."""
        return -self.log_densities(emb).max(axis=1)



def _gamma_value(gamma: str) -> float | str:
    """Config's ocsvm_gamma ('scale', 'auto' or a number) as scikit-learn takes it."""
    if gamma in ("scale", "auto"):
        return gamma
    try:
        return float(gamma)
    except ValueError:
        raise ValueError(f"detectors.ocsvm_gamma: expected 'scale', 'auto' or a number, "
                         f"got {gamma!r}") from None


@dataclass
class OCSVMDetector:
    """One-Class SVM on normalised embeddings; score = -decision_function."""

    kind: ClassVar[str] = "ocsvm"
    support_vectors: np.ndarray   # (M, D)
    dual_coef: np.ndarray         # (M,)
    intercept: float
    kernel: str
    gamma: float                  # resolved value ('scale' -> 1 / (D * var))
    degree: int = 3
    coef0: float = 0.0
    threshold: float = math.nan
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, emb: np.ndarray, cfg: DetectorConfig) -> "OCSVMDetector":
        """Fit on training embeddings (N, D) with the config's kernel, nu and gamma; the
        decision threshold comes from :func:`fit_threshold`."""
        det = cls._fit_model(emb, cfg)
        fit_threshold(det, emb, cfg, lambda x: cls._fit_model(x, cfg))
        return det

    @classmethod
    def _fit_model(cls, emb: np.ndarray, cfg: DetectorConfig) -> "OCSVMDetector":
        from sklearn.svm import OneClassSVM

        x = l2_normalise(emb)  # (N, D)
        if len(x) == 0:
            raise ValueError("One-Class SVM detector: no training clips")
        svm = OneClassSVM(kernel=cfg.ocsvm_kernel, nu=cfg.ocsvm_nu,
                          gamma=_gamma_value(cfg.ocsvm_gamma))
        svm.fit(x)
        det = cls(support_vectors=np.asarray(svm.support_vectors_, dtype=np.float64),
                  dual_coef=np.asarray(svm.dual_coef_, dtype=np.float64).ravel(),
                  intercept=float(np.ravel(svm.intercept_)[0]), kernel=cfg.ocsvm_kernel,
                  gamma=float(svm._gamma), degree=int(svm.degree), coef0=float(svm.coef0),
                  info={"n_train": int(len(x)), "nu": cfg.ocsvm_nu})
        return det

    def _kernel(self, x: np.ndarray) -> np.ndarray:  # (N, D) -> (N, M)
        sv = self.support_vectors
        if self.kernel == "rbf":
            sq = (x * x).sum(1)[:, None] + (sv * sv).sum(1)[None] - 2 * x @ sv.T
            return np.exp(-self.gamma * np.maximum(sq, 0.0))
        dot = x @ sv.T
        if self.kernel == "linear":
            return dot
        if self.kernel == "poly":
            return (self.gamma * dot + self.coef0) ** self.degree
        if self.kernel == "sigmoid":
            return np.tanh(self.gamma * dot + self.coef0)
        raise ValueError(f"unknown kernel {self.kernel!r}")

    def decision_function(self, emb: np.ndarray) -> np.ndarray:
        """Signed distance to the hyperplane (positive inside), as scikit-learn's.  # (N,)"""
        return self._kernel(l2_normalise(emb)) @ self.dual_coef + self.intercept

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,): minus the decision function."""
        return -self.decision_function(emb)



Detector = GMMDetector | OCSVMDetector
_KINDS = {GMMDetector.kind: GMMDetector, OCSVMDetector.kind: OCSVMDetector}


def _split_fields(det: Detector) -> tuple[dict[str, np.ndarray], dict]:
    """A detector's fields as (arrays for its .npz, scalar parameters for detectors.json)."""
    values = {f.name: getattr(det, f.name) for f in dataclasses.fields(det)
              if f.name not in ("threshold", "info") and getattr(det, f.name) is not None}
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in values.items() if k not in arrays}


def fit_section(source: np.ndarray | None, target: np.ndarray | None,
                centres: np.ndarray | None, cfg: DetectorConfig,
                n_components: int | None = None) -> dict[str, Detector]:
    """Both detectors of one (machine, section) from its training embeddings.

    source (Ns, D), target (Nt, D): raw embeddings (None or empty when the domain has no
    training clips); centres (S, D): that section's source class's sub-cluster centres
    (None: ``n_components`` components from k-means).
    Returns {"source": GMMDetector, "target": OCSVMDetector} for the domains with clips.
    """
    out: dict[str, Detector] = {}
    if source is not None and len(source):
        out["source"] = GMMDetector.fit(source, cfg, centres, n_components)
    if target is not None and len(target):
        out["target"] = OCSVMDetector.fit(target, cfg)
    if not out:
        raise ValueError("no training clips in either domain")
    return out


def _stem(machine: str, section: str, domain: str) -> str:
    return f"{machine}_section_{section}_{domain}"


class DetectorSet:
    """Fitted detectors keyed by (machine, section, domain); saved as .npz + one JSON index."""

    def __init__(self, detectors: dict[tuple[str, str, str], Detector] | None = None):
        self.detectors: dict[tuple[str, str, str], Detector] = dict(detectors or {})

    def add(self, machine: str, section: str, fitted: dict[str, Detector]) -> None:
        for domain, det in fitted.items():
            self.detectors[(machine, section, domain)] = det

    def sections(self) -> list[tuple[str, str]]:
        """Sorted (machine, section) pairs that have at least one detector."""
        return sorted({(m, s) for m, s, _ in self.detectors})

    def lookup(self, machine: str, section: str, domain: str) -> tuple[Detector, str]:
        """The detector for test clips of (machine, section, domain) and the domain it was
        fitted on: the other domain's when this one had no training clips (warned)."""
        if (machine, section, domain) in self.detectors:
            return self.detectors[(machine, section, domain)], domain
        if domain not in DOMAINS:
            raise KeyError(f"unknown domain {domain!r} (expected source or target)")
        other = DOMAINS[1 - DOMAINS.index(domain)]
        if (machine, section, other) in self.detectors:
            log.warning("%s section %s has no %s training clips; scoring its %s clips with the "
                        "%s detector", machine, section, domain, domain, other)
            return self.detectors[(machine, section, other)], other
        known = ", ".join(f"{m} {s}" for m, s in self.sections()) or "none"
        raise KeyError(f"no detector for machine {machine!r} section {section!r} "
                       f"(known: {known})")

    def save(self, folder: str | Path) -> None:
        """Write ``<machine>_section_<XX>_<domain>.npz`` per detector and ``detectors.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for (machine, section, domain), det in sorted(self.detectors.items()):
            name = _stem(machine, section, domain) + ".npz"
            arrays, params = _split_fields(det)
            with atomic_path(folder / name) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
            entries.append({"machine": machine, "section": section, "domain": domain,
                            "kind": det.kind, "file": name, "threshold": det.threshold,
                            "params": params, "info": det.info})
        # the index goes last: a reader never sees it before the arrays it names
        atomic_write_text(folder / "detectors.json",
                          json.dumps({"format": FORMAT, "detectors": entries}, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> "DetectorSet":
        """Rebuild from :meth:`save`'s files (no pickle); errors name the file."""
        folder = Path(folder)
        index = folder / "detectors.json"
        if not index.is_file():
            raise FileNotFoundError(f"{index} does not exist; run asd.submit on this run first")
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as err:
            raise AsdError(f"{index} is not valid JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise AsdError(f"{index} is not an {FORMAT} file")
        out = cls()
        if not isinstance(meta.get("detectors"), list):
            raise AsdError(f"{index}: expected a list under 'detectors'")
        for e in meta["detectors"]:
            try:
                name, key, kind = e["file"], (e["machine"], e["section"], e["domain"]), e["kind"]
            except (KeyError, TypeError) as err:
                raise AsdError(f"{index}: a detector entry lacks {err}") from None
            if not isinstance(name, str) or Path(name).name != name:  # only files beside it
                raise AsdError(f"{index}: detector file {name!r} is not a file name")
            path = folder / name
            kind = _KINDS.get(kind) if isinstance(kind, str) else None
            if kind is None:
                raise AsdError(f"{index}: unknown detector kind {e['kind']!r}")
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as err:
                raise AsdError(f"cannot read detector file {path}: {err}") from None
            try:
                det = kind(**arrays, **e["params"], threshold=float(e["threshold"]),
                           info=e["info"])
            except (KeyError, TypeError, ValueError) as err:
                raise AsdError(f"detector file {path} or its entry in {index} is not usable "
                                 f"({type(err).__name__}: {err})") from None
            out.detectors[key] = det
        return out
