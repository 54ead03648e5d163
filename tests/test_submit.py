"""Submission CSVs, detectors and embeddings of the session's tiny run (tests/conftest.py
``runs``: Step 1, Step 2 and ``python -m asd.submit``), read as the official evaluator reads them.
"""

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, copy_run, read_like_evaluator

from asd import submit as sm
from asd.infra.checkpoint import load_model
from asd.infra.config import load_config
from asd.infra.data import assign_classes, csv_name
from asd.infra.feature_cache import build_cache
from asd.method.detectors import DetectorSet, GMMDetector, l2_normalise


@pytest.fixture(scope="module")
def cfg(runs):
    """The shared run's config: tiny_data, the tiny model (helpers.TINY)."""
    return load_config(runs.config)


@pytest.fixture(scope="module")
def submitted(runs):
    """What ``python -m asd.submit`` left in the shared run: its folder and its scores.csv."""
    return sm.Submission(
        run=runs.stage2,
        scores=read_scores(runs.stage2),
        files=sorted((runs.stage2 / "submission").iterdir()),
        detectors=DetectorSet.load(runs.stage2 / "detectors"),
    )


def read_scores(run):
    """RUN/scores.csv as submit's table (score_test_clips) had it."""
    return pd.read_csv(run / "scores.csv", dtype={"section": str}, keep_default_na=False)


# ---------------------------------------------------------------------------- CSV format


def test_write_submission_format(tmp_path):
    scores = pd.DataFrame(
        {
            "machine": ["fan"] * 3 + ["pump"],
            "section": ["00"] * 3 + ["01"],
            "domain": ["source"] * 3 + ["target"],
            "file": [
                "section_00_source_test_normal_0001.wav",
                "section_00_source_test_anomaly_0000.wav",
                "section_00_source_test_normal_0000.wav",
                "section_01_target_test_0000.wav",
            ],
            "score": [0.5, 2.25, -1.0, 3.0],
            "decision": [0, 1, 0, 1],
        }
    )
    (tmp_path / "anomaly_score_gone_section_09_source_test.csv").write_text("x,1\n")
    written = sm.write_submission(scores, tmp_path)
    assert (
        sorted(p.name for p in tmp_path.iterdir())
        == sorted(p.name for p in written)
        == [
            "anomaly_score_fan_section_00_source_test.csv",
            "anomaly_score_pump_section_01_target_test.csv",
            "decision_result_fan_section_00_source_test.csv",
            "decision_result_pump_section_01_target_test.csv",
        ]
    )
    text = (tmp_path / "anomaly_score_fan_section_00_source_test.csv").read_text()
    assert text == (
        "section_00_source_test_anomaly_0000.wav,2.25\n"
        "section_00_source_test_normal_0000.wav,-1.0\n"
        "section_00_source_test_normal_0001.wav,0.5\n"
    )
    assert (tmp_path / "decision_result_fan_section_00_source_test.csv").read_text() == (
        "section_00_source_test_anomaly_0000.wav,1\n"
        "section_00_source_test_normal_0000.wav,0\n"
        "section_00_source_test_normal_0001.wav,0\n"
    )
    back = sm.read_submission(tmp_path)
    assert len(back) == 4 and back["score"].dtype.kind == "f"


def test_check_features_refuses_other_settings(cfg):
    other = cfg.replace(**{"features.n_mels": 64}).features
    with pytest.raises(sm.SubmitError, match="features.n_mels: run 128, config 64"):
        sm.check_features(other, cfg.features, "runs/001-stage2")
    sm.check_features(cfg.replace(**{"features.dtype": "float32"}).features, cfg.features)


# ---------------------------------------------------------------------------- submit


def test_submission_covers_every_test_group_with_exact_names(cfg, submitted):
    index = build_cache(cfg, progress=False).index
    test = index[index["split"] == "test"]
    folder = submitted.run / "submission"
    expected = set()
    for (machine, section, domain), rows in test.groupby(["machine", "section", "domain"]):
        score_name, decision_name = (
            csv_name(kind, machine, section, domain)
            for kind in ("anomaly_score", "decision_result")
        )
        expected |= {score_name, decision_name}
        names, scores = read_like_evaluator(folder / score_name)
        assert names == sorted(rows["file"])  # one row per clip, basename, sorted
        assert np.all(np.isfinite(scores))
        lines = (folder / score_name).read_text().splitlines()
        assert [ln.split(",")[0] for ln in lines] == names  # already in evaluator order
        assert all(ln.count(",") == 1 for ln in lines)  # no header, no extra columns
        d_names, decisions = read_like_evaluator(folder / decision_name)
        assert d_names == names and set(decisions) <= {0.0, 1.0}
    assert {p.name for p in folder.iterdir()} == expected
    assert {("fan", "00"), ("fan", "03"), ("valve", "00"), ("valve", "03")} == set(
        submitted.detectors.sections()
    )


def test_gmm_starts_at_the_run_class_centres(cfg, submitted):
    loaded = load_model(submitted.run / "model.pth")
    classes = pd.read_csv(submitted.run / "classes.csv", dtype=str)
    s = cfg.loss.n_subclusters
    dets = DetectorSet.load(submitted.run / "detectors")
    centres = loaded.head.centres.detach().numpy()
    for (machine, section, domain), det in dets.detectors.items():
        if domain != "source":
            continue
        assert isinstance(det, GMMDetector)
        c = int(
            classes[
                (classes.machine == machine)
                & (classes.section == section)
                & (classes.domain == "source")
            ]["class"].iloc[0]
        )
        assert np.allclose(det.means_init, l2_normalise(centres[c * s : (c + 1) * s]))


def test_saved_detectors_reproduce_the_csv_scores(submitted):
    dets = DetectorSet.load(submitted.run / "detectors")
    with np.load(submitted.run / "embeddings.npz") as z:
        emb, clips = z["embeddings"], list(z["clips"])
    assert emb.shape[1] == 16 and emb.dtype == np.float32
    info = json.loads((submitted.run / "detectors" / "detectors.json").read_text())
    assert {e["kind"] for e in info["detectors"]} == {"gmm", "ocsvm", "knn"}  # both back-ends
    s = submitted.scores
    assert set(s["detector"]) == {"gmm", "ocsvm"}
    assert ((s["score"] > s["threshold"]).astype(int) == s["decision"]).all()
    # the saved detectors score the saved embeddings of each test group as the CSVs say
    challenge = sm.read_submission(submitted.run / "submission").set_index([*sm.GROUP, "file"])
    for (machine, section, domain), rows in s.groupby(sm.GROUP):
        det = dets.lookup(machine, section, domain)
        assert set(rows["detector"]) == {det.kind}
        rows_of = [clips.index(key) for key in sm.clip_keys(rows)]
        again = det.score(emb[rows_of])
        np.testing.assert_allclose(again, rows["score"], rtol=1e-9, atol=1e-12)
        written = challenge.loc[[(machine, section, domain, f) for f in rows["file"]], "score"]
        np.testing.assert_allclose(again, written, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rows["threshold"], det.threshold, rtol=1e-9)


def test_parallel_fits_equal_serial_ones_and_warnings_name_their_section(
    cfg, submitted, monkeypatch, caplog
):
    loaded = load_model(submitted.run / "model.pth")
    index = assign_classes(build_cache(cfg, progress=False).index, loaded.classes)
    emb = np.load(submitted.run / "embeddings.npz")["embeddings"]
    args = (
        emb,
        index,
        loaded.head.centres.detach().numpy(),
        cfg.loss.n_subclusters,
        dataclasses.replace(cfg.detectors, gmm_max_iter=1),
    )
    # two worker processes, 4 sections (the other tests fit in one: tests/conftest.py)
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "2")
    with caplog.at_level(logging.WARNING):
        parallel = sm.fit_detectors(*args)
    assert "WARNING" in caplog.text and "fan section 00, gmm detector: " in caplog.text
    assert "did not converge" in caplog.text
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    serial = sm.fit_detectors(*args)
    assert list(serial.detectors) == list(parallel.detectors)
    for key, det in serial.detectors.items():
        other = parallel.detectors[key]
        assert other.threshold == det.threshold and other.info == det.info
        for f in dataclasses.fields(det):
            a, b = getattr(det, f.name), getattr(other, f.name)
            assert (
                np.array_equal(a, b)
                if isinstance(a, np.ndarray)
                else (a == b or f.name == "threshold")
            )


def test_embeddings_are_reused(cfg, submitted, monkeypatch, tmp_path):
    import asd.method.embed

    def fail(*a, **k):
        raise AssertionError("embeddings recomputed")

    monkeypatch.setattr(asd.method.embed, "embed", fail)
    run = copy_run(submitted.run, tmp_path)
    again = sm.submit(cfg, run, device="cpu")
    # the same table (scores.csv reads its text columns back as plain objects), the same files
    pd.testing.assert_frame_equal(again.scores, submitted.scores, check_dtype=False)
    assert (run / "scores.csv").read_bytes() == (submitted.run / "scores.csv").read_bytes()


def test_submit_cli_prints_run_last_and_refuses_other_features(
    cfg, submitted, capsys, tmp_path, repo
):
    run = copy_run(submitted.run, tmp_path)
    config = tmp_path / "c.yml"
    config.write_text(f"extends: {repo / 'config.yml'}\n")
    args = [
        "--config",
        str(config),
        "--from",
        str(run),
        f"data.root={cfg.data.root}",
        f"data.cache_dir={cfg.data.cache_dir}",
        f"runs.dir={cfg.runs.dir}",
        *TINY,
    ]
    assert sm.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(run)
    assert sm.main(args + ["features.fmax=7000.0"]) == 2
    assert "features.fmax" in capsys.readouterr().err
