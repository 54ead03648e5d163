"""A simple reference detector, so every results table shows what the learned system adds.

Per (machine, section), fitted on that section's training clips of *both* domains together
(one detector per section: the 3 target clips alone cannot carry a 256-d Gaussian, and pooling
is what a simple system would do), each clip is summarised by the mean and the standard
deviation over time of its unnormalised log-mel (2 x mels = 256 values). The summaries are
standardised with the training clips' per-dimension mean and std, and a Gaussian with a
Ledoit-Wolf shrunk full covariance is fitted; score = Mahalanobis distance to its mean (higher =
more anomalous). A section with a single training clip uses the identity covariance (Euclidean
distance). Works from the feature cache only: no model, no audio.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def clip_statistics(features, batch_size: int = 512) -> np.ndarray:
    """Per-clip mean and std over time of the log-mel.  # (N, T, F) -> float64 (N, 2F)"""
    out = []
    for i in range(0, len(features), batch_size):
        x = np.asarray(features[i:i + batch_size], dtype=np.float64)  # (B, T, F)
        out.append(np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1))
    if not out:
        return np.zeros((0, 2 * features.shape[-1]))
    return np.concatenate(out)


class ReferenceDetector:
    """Gaussian on standardised clip statistics; score = Mahalanobis distance."""

    def fit(self, stats: np.ndarray) -> "ReferenceDetector":
        from sklearn.covariance import ledoit_wolf

        stats = np.asarray(stats, dtype=np.float64)  # (N, 2F)
        if len(stats) == 0:
            raise ValueError("reference detector: no training clips")
        self.centre = stats.mean(axis=0)
        std = stats.std(axis=0)
        self.scale = np.where(std > 1e-6, std, 1.0)
        z = (stats - self.centre) / self.scale
        if len(stats) < 2:
            cov = np.eye(stats.shape[1])
        else:
            cov, _ = ledoit_wolf(z, assume_centered=True)
        # the shrunk covariance is positive definite (the jitter covers all-equal clips); its
        # Cholesky factor gives the distance
        cov = cov + 1e-6 * np.eye(len(cov))
        self.cholesky = np.linalg.cholesky(cov)  # (2F, 2F) lower
        return self

    def score(self, stats: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of clip statistics (N, 2F)."""
        from scipy.linalg import solve_triangular

        z = (np.asarray(stats, dtype=np.float64) - self.centre) / self.scale  # (N, 2F)
        y = solve_triangular(self.cholesky, z.T, lower=True)  # (2F, N)
        return np.sqrt((y * y).sum(axis=0))


def reference_scores(features, index: pd.DataFrame) -> np.ndarray:
    """Reference scores of every test clip (N,) for features (N, T, F) with their index rows.

    Training rows and test clips of sections without training clips get NaN.
    """
    if len(features) != len(index):
        raise ValueError(f"{len(features)} feature rows for {len(index)} index rows")
    stats = clip_statistics(features)  # (N, 2F)
    scores = np.full(len(index), np.nan)
    split = index["split"].to_numpy()
    keys = [k for k in ("dataset", "machine", "section") if k in index.columns]
    for key, pos in index.groupby(keys, sort=True).indices.items():
        machine, section = key[-2:]
        train = pos[split[pos] == "train"]
        test = pos[split[pos] == "test"]
        if len(test) == 0:
            continue
        if len(train) == 0:
            log.warning("reference detector: %s section %s has no training clips", machine,
                        section)
            continue
        scores[test] = ReferenceDetector().fit(stats[train]).score(stats[test])
    return scores
