"""Challenge metrics: AUC, pAUC (p = 0.1) and their harmonic means.

Labels: 1 anomalous, 0 normal; higher scores = more anomalous. pAUC is exactly
``sklearn.metrics.roc_auc_score(y, score, max_fpr=0.1)``, the challenge definition, which is
McClish-standardised: perfect 1.0, random about 0.5, fully reversed 0.5 * (1 - p / (2 - p)) =
9 / 19 = 0.4737 for p = 0.1 (not 0). Harmonic means floor every value at machine epsilon first,
as the official evaluator does, so a single 0 gives a tiny mean instead of an error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

MAX_FPR = 0.1


def _check(y, score) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores as flat arrays; ValueError unless both labels are present."""
    # scikit-learn itself refuses scores of another length, NaN or inf.
    y = np.asarray(y).astype(int).ravel()
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("AUC needs both normal and anomalous clips, labelled 0 and 1")
    return y, np.asarray(score, dtype=np.float64).ravel()


def auc(y, score) -> float:
    """Area under the ROC curve (1 = anomaly ranked above every normal clip)."""
    return float(roc_auc_score(*_check(y, score)))


def pauc(y, score, max_fpr: float = MAX_FPR) -> float:
    """The challenge's pAUC: standardised partial AUC over false-positive rates [0, max_fpr]."""
    return float(roc_auc_score(*_check(y, score), max_fpr=max_fpr))


def hmean(values: Iterable[float]) -> float:
    """Harmonic mean, every value floored at machine epsilon first (the evaluator's rule)."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("harmonic mean of no values")
    # The floor turns a 0 (a fully reversed ranking) into a tiny mean instead of an error.
    return float(scipy.stats.hmean(np.maximum(values, sys.float_info.epsilon)))


def official_score(aucs: Iterable[float], paucs: Iterable[float]) -> float:
    """The challenge's single score: harmonic mean of all AUC and pAUC values together."""
    return hmean(list(aucs) + list(paucs))


# Which official score a data layout gets: "2021" for its own layout, "2022" for 2022-2026 (the
# 2023 layout also reads 2024-2026), "folders" for plain folders of one's own recordings.
LAYOUT_RULES = {"dcase2021": "2021", "dcase2022": "2022", "dcase2023": "2022", "folders": "folders"}


def section_values(rule: str, y, score, domain) -> dict[str, float]:
    """The values one (machine, section) adds to the official score of ``rule`` (LAYOUT_RULES),
    from its test clips' labels ``y`` (1 anomalous), scores and domains ("source"/"target").

    - "2021": per domain, AUC and pAUC of that domain's clips (its normals against its own
      anomalies): ``auc_source``, ``pauc_source``, ``auc_target``, ``pauc_target``.
    - "2022" (2022-2026): ``auc_source`` = the source normals against ALL anomalies of the
      section, ``auc_target`` likewise, and one ``pauc`` on all clips of the section.
    - "folders": ``auc`` and ``pauc`` on all clips (domains unknown).
    """
    y = np.asarray(y).astype(int).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    domain = np.asarray(domain, dtype=object).ravel()
    if rule == "folders":
        return {"auc": auc(y, score), "pauc": pauc(y, score)}
    out = {}
    for d in ("source", "target"):
        if rule == "2021":
            mine = domain == d
            out[f"auc_{d}"] = auc(y[mine], score[mine])
            out[f"pauc_{d}"] = pauc(y[mine], score[mine])
        elif rule == "2022":
            # the anomalies of both domains: a detector must rank them above this domain's normals
            mine = (domain == d) | (y == 1)
            out[f"auc_{d}"] = auc(y[mine], score[mine])
        else:
            raise ValueError(f"unknown scoring rule {rule!r}; expected one of 2021, 2022, folders")
    if rule == "2022":
        out["pauc"] = pauc(y, score)
    return out
