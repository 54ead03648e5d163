"""Submission CSVs and the submit -> evaluate path on a tiny data set with a fake run.

The fake run is a randomly initialised tiny model saved with asd.infra.checkpoint.save_checkpoint,
plus classes.csv and config.yml, as the Step 2 runner leaves them.
"""

import csv
import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from asd import evaluate as ev
from asd import submit as sm
from asd.infra.checkpoint import load_model, save_checkpoint
from asd.infra.data import assign_classes, class_table, csv_name, save_classes
from asd.infra.feature_cache import build_cache
from asd.infra.runs import new_run
from asd.method.detectors import DetectorSet, GMMDetector, l2_normalise
from asd.method.model import build_model

TINY_MODEL = [
    "model.stem_channels=4",
    "model.stage_channels=[4,4,4,8]",
    "model.embedding_dim=16",
    "loss.n_subclusters=4",
]


def make_run(cfg, seed=0):
    """A finished-looking stage2 run with a random model; returns its folder."""
    cache = build_cache(cfg, progress=False)
    classes = class_table(cache.index)
    run = new_run(cfg, "stage2")
    save_classes(classes, run / "classes.csv")
    torch.manual_seed(seed)
    model, head = build_model(cfg, len(classes))
    save_checkpoint(
        run / "model.pth",
        model=model,
        head=head,
        cfg=cfg,
        classes=classes,
        mean=cache.mean,
        std=cache.std,
        progress={"iteration": 0},
    )
    return run


@pytest.fixture(scope="module")
def cfg(tiny_cfg, tmp_path_factory):
    """The shared tiny data set (fan, valve; dev 00, eval 03) with a tiny model."""
    runs = tmp_path_factory.mktemp("runs")
    return tiny_cfg.replace(
        **{
            "runs.dir": str(runs),
            "model.stem_channels": 4,
            "model.stage_channels": [4, 4, 4, 8],
            "model.embedding_dim": 16,
            "loss.n_subclusters": 4,
        }
    )


@pytest.fixture(scope="module")
def submitted(cfg):
    run = make_run(cfg)
    return sm.submit(cfg, run, device="cpu")


# ---------------------------------------------------------------------------- CSV format


def test_csv_names():
    assert csv_name("anomaly_score", "ToyCar", "03", "target") == (
        "anomaly_score_ToyCar_section_03_target_test.csv"
    )


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


def _read_like_evaluator(path):
    """What the official evaluator does: csv.reader, rows sorted, float of column 1."""
    with open(path) as f:
        rows = list(csv.reader(f))
    return [r[0] for r in sorted(rows)], [float(r[1]) for r in sorted(rows)]


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
        names, scores = _read_like_evaluator(folder / score_name)
        assert names == sorted(rows["file"])  # one row per clip, basename, sorted
        assert np.all(np.isfinite(scores))
        lines = (folder / score_name).read_text().splitlines()
        assert [ln.split(",")[0] for ln in lines] == names  # already in evaluator order
        assert all(ln.count(",") == 1 for ln in lines)  # no header, no extra columns
        d_names, decisions = _read_like_evaluator(folder / decision_name)
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
    emb = np.load(submitted.run / "embeddings.npz")["embeddings"]
    assert emb.shape[1] == 16 and emb.dtype == np.float32
    info = json.loads((submitted.run / "detectors" / "detectors.json").read_text())
    assert {e["kind"] for e in info["detectors"]} == {"gmm", "ocsvm"}
    s = submitted.scores
    assert set(s["detector"]) == {"gmm", "ocsvm"}
    assert ((s["score"] > s["threshold"]).astype(int) == s["decision"]).all()


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
    with caplog.at_level(logging.WARNING):
        parallel = sm.fit_detectors(*args)  # one process per core: 2 here, 4 sections
    assert "WARNING" in caplog.text and "fan section 00, gmm detector: " in caplog.text
    assert "did not converge" in caplog.text
    monkeypatch.setattr(sm.os, "sched_getaffinity", lambda pid: {0})
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


def test_embeddings_are_reused(cfg, submitted, monkeypatch):
    import asd.method.embed

    def fail(*a, **k):
        raise AssertionError("embeddings recomputed")

    monkeypatch.setattr(asd.method.embed, "embed", fail)
    again = sm.submit(cfg, submitted.run, device="cpu")
    pd.testing.assert_frame_equal(again.scores, submitted.scores)


def test_submit_cli_prints_run_last_and_refuses_other_features(
    cfg, submitted, capsys, tmp_path, repo
):
    config = tmp_path / "c.yml"
    config.write_text(f"extends: {repo / 'config.yml'}\n")
    args = [
        "--config",
        str(config),
        "--from",
        str(submitted.run),
        f"data.root={cfg.data.root}",
        f"data.cache_dir={cfg.data.cache_dir}",
        f"runs.dir={cfg.runs.dir}",
    ] + TINY_MODEL
    assert sm.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(submitted.run)
    assert sm.main(args + ["features.fmax=7000.0"]) == 2
    assert "features.fmax" in capsys.readouterr().err


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_tables_and_files(cfg, submitted, capsys):
    result = ev.evaluate(cfg, submitted.run)
    r = result.results
    sec = r[r["level"] == "section"]
    # dev labels from the names and eval labels from the ground truth, both systems
    assert set(sec["dataset"]) == {"dev_data", "eval_data"}
    assert set(sec["system"]) == {"ours", "reference"}
    assert len(sec) == 2 * 2 * 2 * 2  # datasets x machines x domains x systems
    assert sec["auc"].between(0, 1).all() and sec["pauc"].between(0, 1).all()
    assert (sec["n_normal"] == 3).all() and (sec["n_anomaly"] == 3).all()
    all_ours = r[(r["level"] == "all") & (r["system"] == "ours") & (r["dataset"] == "dev_data")]
    dev = sec[(sec["system"] == "ours") & (sec["dataset"] == "dev_data")]
    from asd.method import metrics

    assert all_ours["score"].iloc[0] == pytest.approx(
        metrics.official_score(dev["auc"], dev["pauc"])
    )
    assert all_ours["auc"].iloc[0] == pytest.approx(metrics.hmean(dev["auc"]))
    by_domain = r[(r["level"] == "domain") & (r["system"] == "ours") & (r["dataset"] == "dev_data")]
    assert sorted(by_domain["domain"]) == ["source", "target"]
    for row in by_domain.itertuples():
        own = dev[dev["domain"] == row.domain]
        assert (row.auc, row.pauc) == pytest.approx(
            (metrics.hmean(own["auc"]), metrics.hmean(own["pauc"]))
        )
    # the CSV agrees with the submission files
    clip = result.clips.iloc[0]
    names, scores = _read_like_evaluator(
        submitted.run
        / "submission"
        / csv_name("anomaly_score", clip.machine, clip.section, clip.domain)
    )
    assert scores[names.index(clip.file)] == pytest.approx(clip.ours)
    saved = pd.read_csv(submitted.run / "results.csv", dtype={"section": str})
    assert list(saved.columns) == ev.RESULT_COLUMNS and len(saved) == len(r)
    md = (submitted.run / "results.md").read_text()
    assert (
        "| machine | ours | simple reference | published: report | published: AE | "
        "published: MobileNetV2 |"
    ) in md and ev.PUBLISHED_NOTE in md
    assert "66.12 / 58.18" in md and "### Per domain" in md
    assert "### Per domain, harmonic means over machines and sections" in ev.report(result)
    assert sorted(p.name for p in (submitted.run / "figures").iterdir()) == [
        "roc_dev_data.png",
        "roc_eval_data.png",
    ]
    assert "- figures: [roc_dev_data](figures/roc_dev_data.png)" in md


def test_evaluate_cli_prints_run_last(cfg, submitted, capsys, repo):
    args = [
        "--config",
        str(repo / "config.yml"),
        "--from",
        str(submitted.run),
        "--no-figures",
        f"data.root={cfg.data.root}",
        f"data.cache_dir={cfg.data.cache_dir}",
    ] + TINY_MODEL
    assert ev.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(submitted.run)
    assert any("report" in line and "ours" in line for line in out)


def test_evaluate_needs_a_submission(cfg):
    run = make_run(cfg, seed=1)
    with pytest.raises(ev.EvaluateError, match="run asd.submit"):
        ev.evaluate(cfg, run)


def test_embed_streams_batches_in_eval_mode(cfg):
    from asd.method.embed import embed

    torch.manual_seed(0)
    model, _ = build_model(cfg, 2)
    model.train()
    rng = np.random.default_rng(0)
    feats = rng.normal(-40, 5, size=(5, 313, 128)).astype(np.float16)  # (N, T, F)
    mean, std = np.full(128, -40, np.float32), np.full(128, 5, np.float32)
    out = embed(model, feats, mean, std, batch_size=2)
    assert out.shape == (5, 16) and out.dtype == np.float32
    assert model.training  # mode restored
    for p in model.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(), "embed left the caller's weights channels_last"
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy((feats.astype(np.float32) - mean) / std)[:, None]
        assert np.allclose(out, model(x).numpy(), atol=1e-5)
