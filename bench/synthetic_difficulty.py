"""How hard is the synthetic data set? AUC of simple detectors that need no training.

    python -m bench.synthetic_difficulty [--root DIR] [--n-source 50] [--n-test 40] [--workers 2]

Generates the development sections (into a temporary folder unless --root holds one), computes
log-mel spectrograms (the report's settings) and scores the test clips of each
(machine, section) with a Gaussian (Ledoit-Wolf covariance, Mahalanobis distance) fitted on
that section's training clips, source and target together, on two per-clip vectors:

- ``mean``: the mean log-mel vector of the clip (the trivial detector; it cannot see timing);
- ``mean+std+peak``: per band also the standard deviation over time and the 99th percentile
  minus the median (some of the temporal structure a learned embedding can pick up).

Prints AUC per machine and domain (harmonic mean over sections) and over everything. The
trivial detector should stay well below 1.0; a number near 1.0 means the faults are too loud.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
from scipy.stats import hmean
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from asd.infra.data import index_dataset
from asd.synthetic import MACHINES, generate


def clip_vectors(path: str) -> dict[str, np.ndarray]:
    wave, sr = sf.read(path, dtype="float32")
    mel = librosa.feature.melspectrogram(
        y=wave, sr=sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0
    )
    db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)  # (F, T)
    mean = db.mean(axis=1)
    peak = np.percentile(db, 99, axis=1) - np.median(db, axis=1)
    return {"mean": mean, "mean+std+peak": np.concatenate([mean, db.std(axis=1), peak])}


def section_aucs(df: pd.DataFrame, vectors: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for (machine, section), g in df.groupby(["machine", "section"]):
        train, test = g[g["split"] == "train"], g[g["split"] == "test"]
        for name, v in vectors.items():
            gauss = LedoitWolf().fit(v[train.index])
            score = gauss.mahalanobis(v[test.index])
            for domain in ("source", "target"):
                mask = (test["domain"] == domain).to_numpy()
                y = (test["label"][mask] == "anomaly").to_numpy()
                rows.append(
                    {
                        "detector": name,
                        "machine": machine,
                        "section": section,
                        "domain": domain,
                        "auc": roc_auc_score(y, score[mask]),
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="a generated data set (default: generate one)")
    p.add_argument("--machines", default=",".join(MACHINES))
    p.add_argument("--sections", default="00,01,02")
    p.add_argument("--n-source", type=int, default=50)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root or tmp)
        if not (root / "dev_data").is_dir():
            generate(
                root,
                machines=a.machines.split(","),
                dev_sections=a.sections.split(","),
                eval_sections=(),
                n_source=a.n_source,
                n_test=a.n_test,
                seed=a.seed,
                workers=a.workers,
                progress=True,
            )
        df = index_dataset(root)
        df = df[df["dataset"] == "dev_data"].reset_index(drop=True)
        per_clip = [clip_vectors(path) for path in df["path"]]
    vectors = {k: np.stack([c[k] for c in per_clip]) for k in per_clip[0]}
    aucs = section_aucs(df, vectors)
    table = aucs.groupby(["detector", "machine", "domain"])["auc"].apply(hmean).unstack("domain")
    print((100 * table).round(1).to_string())
    print((100 * aucs.groupby("detector")["auc"].apply(hmean)).round(1).to_string())
    print("per section:")
    print(
        (
            100
            * aucs.set_index(["detector", "machine", "section", "domain"])["auc"].unstack("domain")
        )
        .round(1)
        .to_string()
    )


if __name__ == "__main__":
    main()
