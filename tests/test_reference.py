"""The simple reference system (asd.method.reference): per-clip log-mel statistics scored by
their Mahalanobis distance to the section's training clips."""

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import ledoit_wolf

from asd.method.reference import ReferenceDetector, clip_statistics, reference_scores


def test_reference_detector_direction_and_distance():
    rng = np.random.default_rng(2)
    feats = rng.normal(-40, 3, size=(30, 20, 8)).astype(np.float16)  # (N, T, F)
    feats[-1] += 25  # a loud test clip
    stats = clip_statistics(feats, batch_size=7)
    assert stats.shape == (30, 16)
    x = feats.astype(np.float64)
    assert np.allclose(stats, np.concatenate([x.mean(1), x.std(1)], 1))
    index = pd.DataFrame(
        {
            "dataset": "dev_data",
            "machine": "fan",
            "section": "00",
            "domain": ["source"] * 18 + ["target"] * 2 + ["source"] * 10,
            "split": ["train"] * 20 + ["test"] * 10,
        }
    )
    scores = reference_scores(feats, index)
    assert np.isnan(scores[:20]).all() and np.isfinite(scores[20:]).all()
    assert scores[-1] > scores[20:-1].max()
    # Mahalanobis distance under the shrunk covariance of the standardised training stats
    train = stats[:20]
    z = (train - train.mean(0)) / train.std(0)
    cov, _ = ledoit_wolf(z, assume_centered=True)
    t = (stats[20:] - train.mean(0)) / train.std(0)
    ref = np.sqrt(np.einsum("nd,de,ne->n", t, np.linalg.inv(cov + 1e-6 * np.eye(16)), t))
    assert np.allclose(scores[20:], ref)
    one = ReferenceDetector().fit(stats[:1])  # a single clip: Euclidean distance
    assert one.score(stats[:1])[0] == pytest.approx(0.0, abs=1e-6)
