"""Scoring new recordings with a submitted run: same numbers as the submission, clear errors."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY

from asd import score as sc
from asd import submit as sm
from asd.infra.checkpoint import save_checkpoint
from asd.infra.config import load_config
from asd.infra.data import class_table, save_classes
from asd.infra.feature_cache import build_cache
from asd.infra.runs import Run
from asd.method.detectors import DetectorSet
from asd.method.model import build_model


def make_submitted_run(cfg):
    """A random tiny model saved as a finished stage2 run, then submitted."""
    cache = build_cache(cfg, progress=False)
    classes = class_table(cache.index)
    run = Run.create(cfg, "stage2").path
    save_classes(classes, run / "classes.csv")
    torch.manual_seed(0)
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
    return sm.submit(cfg, run, device="cpu")


@pytest.fixture(scope="module")
def data_root(tiny_data):
    return tiny_data


@pytest.fixture(scope="module")
def submitted(runs):
    """The session's submitted tiny run (tests/conftest.py ``runs``); read only."""
    return runs.stage2


def _clip(data_root, domain="source", label="anomaly"):
    return (
        data_root
        / "dev_data"
        / "fan"
        / f"{domain}_test"
        / f"section_00_{domain}_test_{label}_0000.wav"
    )


def test_scores_match_the_submission(submitted, data_root):
    files = [_clip(data_root, "source"), _clip(data_root, "target", "normal")]
    table = sc.score_files(submitted, files)
    assert list(table.columns) == sc.COLUMNS
    assert list(table["machine"]) == ["fan", "fan"] and list(table["section"]) == ["00", "00"]
    assert list(table["domain"]) == ["source", "target"]
    s = sm.read_submission(submitted / "submission").set_index(["machine", "domain", "file"])
    dets = DetectorSet.load(submitted / "detectors")
    for row in table.itertuples():
        ref = s.loc[(row.machine, row.domain, row.file.rsplit("/", 1)[1])]
        # the same features as the cache's (rounded to features.dtype), the same model
        assert row.score == pytest.approx(ref["score"], rel=1e-6, abs=1e-6)
        assert row.threshold == dets.lookup(row.machine, ref["section"], row.domain).threshold
        assert row.decision == int(row.score > row.threshold)


def test_options_score_recordings_named_any_way(submitted, data_root, tmp_path):
    odd = tmp_path / "my recording.wav"
    shutil.copy(_clip(data_root, "target", "normal"), odd)
    table = sc.score_files(submitted, [odd], machine="fan", section="00", domain="target")
    same = sc.score_files(submitted, [_clip(data_root, "target", "normal")])
    assert table["score"].iloc[0] == pytest.approx(same["score"].iloc[0])


def test_cli_table_and_csv(submitted, data_root, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert sc.main([str(submitted), str(_clip(data_root)), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "section_00_source_test_anomaly_0000.wav" in printed and "threshold" in printed
    df = pd.read_csv(out, dtype={"section": str})
    assert list(df.columns) == sc.COLUMNS and len(df) == 1
    assert df["decision"].iloc[0] in (0, 1)


def _cli_error(capsys, args):
    assert sc.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_machine_or_section(submitted, data_root, tmp_path, capsys):
    pump = tmp_path / "pump" / "test"
    pump.mkdir(parents=True)
    shutil.copy(_clip(data_root), pump / "section_00_source_test_0000.wav")
    err = _cli_error(capsys, [str(submitted), str(pump / "section_00_source_test_0000.wav")])
    assert "unknown machine type 'pump'" in err and "known: fan" in err
    err = _cli_error(capsys, [str(submitted), str(_clip(data_root)), "--section", "07"])
    assert "has no section '07' of fan (it has 00" in err


def test_unnamed_file_needs_options(submitted, tmp_path, capsys, data_root):
    odd = tmp_path / "fan" / "rec.wav"
    odd.parent.mkdir()
    shutil.copy(_clip(data_root), odd)
    err = _cli_error(capsys, [str(submitted), str(odd)])
    # fan has two sections here; the domain may stay unknown (scored without it)
    assert "rec.wav" in err and "give --section" in err


def test_unreadable_audio(submitted, tmp_path, capsys):
    bad = tmp_path / "fan" / "test" / "section_00_source_test_0000.wav"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a wav file at all")
    err = _cli_error(capsys, [str(submitted), str(bad)])
    assert str(bad) in err


def test_run_without_detectors(tmp_path, capsys, data_root):
    err = _cli_error(capsys, [str(tmp_path), str(_clip(data_root))])
    assert "asd.submit" in err


def test_real_recordings_through_submit_and_score(real_audio, repo, tmp_path, caplog):
    """DCASE 2023 names and layout, 12 s clips, no target training clips: scored by kNN (the
    back-end for layouts whose evaluation test clips hide their domain), the pair still fitted."""
    cfg = load_config(
        repo / "config.yml",
        [
            f"data.root={real_audio}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"runs.dir={tmp_path / 'runs'}",
            *TINY,
        ],
    )
    sub = make_submitted_run(cfg)
    assert (sub.scores["detector"] == "knn").all()
    assert ("bearing", "00") in sub.detectors.sections()
    # kNN pools a section's source and target clips, so no target clips need no fallback;
    # the GMM of a section with fewer clips than components says so.
    assert "training clips for 4 components" in caplog.text
    clip = (
        real_audio / "gearbox" / "test" / "section_00_target_test_anomaly_0040_volt_1.5_wt_130.wav"
    )
    table = sc.score_files(sub.run, [clip])
    assert table[["machine", "section", "domain"]].iloc[0].tolist() == ["gearbox", "00", "target"]
    assert np.isfinite(table["score"].iloc[0])
