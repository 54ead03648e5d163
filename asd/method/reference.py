"""A simple reference detector, so every results table shows what the learned system adds.

Per (machine, section), fitted on that section's training clips of both domains together (the
3 target clips alone cannot carry a 256-d Gaussian; pooling is what a simple system would do),
each clip is summarised by the mean and the standard deviation over time of its unnormalised
log-mel (2 x mels values), standardised with the training clips' per-dimension mean and std.
Score = Mahalanobis distance to a Gaussian with a Ledoit-Wolf shrunk covariance (Euclidean for
a single training clip); higher = more anomalous. Works from the feature cache only.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def clip_statistics(features, batch_size: int = 512) -> np.ndarray:
    """Per-clip mean and std over time of the log-mel.  # (N, T, F) -> float64 (N, 2F)"""
    out = [np.zeros((0, 2 * features.shape[-1]))]
    for i in range(0, len(features), batch_size):
        x = np.asarray(features[i : i + batch_size], dtype=np.float64)  # (B, T, F)
        out.append(np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1))
    return np.concatenate(out)


class ReferenceDetector:
    """Gaussian on standardised clip statistics; score = Mahalanobis distance."""

    def fit(self, stats: np.ndarray) -> ReferenceDetector:
        from sklearn.covariance import ledoit_wolf

        stats = np.asarray(stats, dtype=np.float64)  # (N, 2F)
        self.centre = stats.mean(axis=0)
        std = stats.std(axis=0)
        # A dimension that does not vary is left unscaled instead of divided by zero.
        self.scale = np.where(std > 1e-6, std, 1.0)
        z = (stats - self.centre) / self.scale
        # Ledoit-Wolf shrinkage: far fewer clips than dimensions give no usable sample
        # covariance; a single clip gives none, and the distance is Euclidean.
        if len(z) > 1:
            cov, _shrinkage = ledoit_wolf(z, assume_centered=True)
        else:
            cov = np.eye(z.shape[1])
        # The jitter keeps the covariance positive definite when all clips are equal.
        self.cholesky = np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov)))  # (2F, 2F) lower
        return self

    def score(self, stats: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of clip statistics (N, 2F)."""
        from scipy.linalg import solve_triangular

        z = (np.asarray(stats, dtype=np.float64) - self.centre) / self.scale  # (N, 2F)
        # With cov = L L^T, the Mahalanobis distance of z is the length of L^-1 z.
        whitened = solve_triangular(self.cholesky, z.T, lower=True)  # (2F, N)
        return np.linalg.norm(whitened, axis=0)


def reference_scores(features, index: pd.DataFrame) -> np.ndarray:
    """Reference scores (N,) of the test clips among features (N, T, F) with their index rows;
    NaN for training rows and for sections without training clips."""
    stats = clip_statistics(features)  # (N, 2F)
    scores = np.full(len(index), np.nan)
    split = index["split"].to_numpy()
    sections = index.groupby(["dataset", "machine", "section"]).indices
    for (_, machine, section), pos in sections.items():
        train = pos[split[pos] == "train"]
        test = pos[split[pos] == "test"]
        if len(train) == 0:
            log.warning(
                "reference detector: %s section %s has no training clips",
                machine,
                section,
            )
            continue
        scores[test] = ReferenceDetector().fit(stats[train]).score(stats[test])
    return scores
