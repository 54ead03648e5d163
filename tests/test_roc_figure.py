"""The ROC panels answer the question: each carries its AUC / pAUC, the pAUC region is half of a
log false-positive axis, and the thresholds' operating points and the intended rate are marked."""

import numpy as np
import pandas as pd

from asd import evaluate as ev
from asd.method import metrics


def clips_with_decisions() -> pd.DataFrame:
    """Labelled test clips of fan 00 and 01, both domains, 30 normal and 30 anomalous each, with
    scores of both systems and the decisions of a threshold at score 1."""
    rng = np.random.default_rng(0)
    rows = []
    for section in ("00", "01"):
        for domain in ("source", "target"):
            for i in range(60):
                anomaly = int(i >= 30)
                ours = anomaly + rng.normal()
                rows.append(("dev_data", "fan", section, domain, anomaly, ours, rng.normal()))
    columns = ["dataset", "machine", "section", "domain", "anomaly", "ours", "reference"]
    clips = pd.DataFrame(rows, columns=columns)
    return clips.assign(decision=(clips["ours"] > 1.0).astype(int))


def test_each_panel_gives_auc_and_pauc_on_a_log_axis_with_the_operating_points():
    clips = clips_with_decisions()
    fig = ev.roc_figure(clips, "t", intended=0.1)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["fan section 00", "fan section 01"]
    for ax, section in zip(panels, ("00", "01")):
        assert ax.get_xscale() == "log" and ax.get_xlim() == (0.01, 1)
        texts = [t.get_text() for t in ax.texts]
        g = clips[(clips["section"] == section) & (clips["domain"] == "target")]
        auc, pauc = metrics.auc(g["anomaly"], g["ours"]), metrics.pauc(g["anomaly"], g["ours"])
        assert f"target: ours {100 * auc:.1f}/{100 * pauc:.1f}" in texts[1]
        assert texts[0].startswith("source: ours") and ", ref. " in texts[0]
        # one dot per domain, at the decisions' false alarm and detection rates
        dots = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
        flagged = g.groupby("anomaly")["decision"].mean()
        assert [flagged[0], flagged[1]] in dots.tolist()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "target, ours at its threshold" in labels
    assert "intended false-alarm rate (0.1)" in labels and "pAUC region: FPR <= 0.1" in labels


def test_the_log_axis_reaches_down_to_one_clip_of_the_largest_section():
    clips = pd.concat([clips_with_decisions()] * 5, ignore_index=True)  # 150 normal clips
    fig = ev.roc_figure(clips, "t")
    assert fig.axes[0].get_xlim() == (0.001, 1)


def test_clips_of_no_domain_get_one_curve_per_section():
    """Plain folders: test clips without a domain (None) are one group, drawn and measured."""
    clips = clips_with_decisions()
    clips = clips[clips["domain"] == "source"].assign(domain=None)
    fig = ev.roc_figure(clips, "t", intended=0.1)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    g = clips[clips["section"] == "00"]
    auc, pauc = metrics.auc(g["anomaly"], g["ours"]), metrics.pauc(g["anomaly"], g["ours"])
    assert [t.get_text() for t in panels[0].texts][0].startswith(
        f"unknown: ours {100 * auc:.1f}/{100 * pauc:.1f}"
    )
    assert fig.axes[0].get_xlim() == (0.01, 1)
