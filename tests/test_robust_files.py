"""Untrusted files are read without running code, and a full disk never costs a good file.

Untrusted: checkpoints load with ``torch.load(weights_only=True)``, detectors, embeddings and
cache arrays with ``allow_pickle=False``, YAML with ``yaml.safe_load``. Each file below carries
a pickle or tag that would create a marker folder if executed: it is refused (or, for caches,
ignored and rebuilt) with a message naming the file, and the marker never appears. (Each
payload is first shown to work when loaded the unsafe way.)

A full disk is simulated with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so a write
fails with EFBIG): the command exits non-zero with a one-line message naming the file or
folder, the previous good files are unchanged and no temporary file is left behind.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, cli, file_size_limit, refused, snapshot, temp_files, write_config

from asd import score as score_cli
from asd import submit as submit_cli
from asd.infra.checkpoint import CheckpointError, load_checkpoint
from asd.infra.config import ConfigError, load_config
from asd.infra.feature_cache import CacheError, FeatureCache, build_cache, cache_folder


class Payload:
    """Unpickling it creates the folder ``marker``: what a malicious file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture
def run2(runs, tmp_path) -> Path:
    """A copy of the submitted Step 2 run that a test may spoil."""
    return Path(shutil.copytree(runs.stage2, tmp_path / "run2"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-was-run"


def call(main, argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, str(code) + capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Checkpoints


def evil_checkpoints(good: Path, folder: Path, marker: Path) -> list[Path]:
    """A real checkpoint with a payload inside (torch zip format), and a bare pickle."""
    data = torch.load(good, weights_only=True)
    data["progress"] = {**data["progress"], "note": Payload(marker)}
    zipped = folder / "zipped.pth"
    torch.save(data, zipped)
    bare = folder / "bare.pth"
    bare.write_bytes(pickle.dumps({"format": "asd-checkpoint-v1", "x": Payload(marker)}))
    return [zipped, bare]


def test_checkpoint_with_code_is_refused(runs, tmp_path, marker):
    for path in evil_checkpoints(runs.stage1 / "model.pth", tmp_path, marker):
        with pytest.raises(CheckpointError, match=rf"checkpoint {path} cannot be read"):
            load_checkpoint(path)
        assert not marker.exists()
        if path.name == "bare.pth":  # the payload is real
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)
        assert marker.is_dir()
        marker.rmdir()


def test_checkpoint_with_code_through_the_commands(runs, run2, tmp_path, marker, capsys):
    from runners import stage1, stage2

    zipped, _ = evil_checkpoints(run2 / "model.pth", tmp_path, marker)
    shutil.copy(zipped, run2 / "model.pth")
    refused(
        cli("asd.submit", "--config", runs.config, "--from", run2, "--device", "cpu"),
        f"checkpoint {run2 / 'model.pth'} cannot be read",
    )
    clip = tmp_path / "fan" / "test" / "section_00_source_test_0000.wav"  # never read
    code, err = call(score_cli.main, [run2, clip], capsys)
    assert code == 2 and f"checkpoint {run2 / 'model.pth'} cannot be read" in err

    # Step 2 from a Step 1 run whose model.pth carries code; a resume whose last.pth does
    run1 = Path(shutil.copytree(runs.stage1, tmp_path / "run1"))
    shutil.copy(zipped, run1 / "model.pth")
    config = write_config(
        load_config(runs.config), tmp_path / "c.yml", [f"runs.dir={tmp_path / 'runs'}"]
    )
    code, err = call(stage2.main, ["--config", config, "--from", run1, "--no-progress"], capsys)
    assert code != 0 and f"checkpoint {run1 / 'model.pth'} cannot be read" in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
    (run1 / "model.pth").unlink()
    shutil.copy(zipped, run1 / "checkpoints" / "last.pth")
    code, err = call(stage1.main, ["--resume", run1, "--no-progress"], capsys)
    assert code != 0 and f"checkpoint {run1 / 'checkpoints' / 'last.pth'} cannot be read" in err
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Arrays: detectors, embeddings, the feature cache


def test_tampered_detector_npz_is_refused(runs, run2, marker, capsys):
    target = run2 / "detectors" / "fan_section_00_source.npz"
    with open(target, "wb") as f:
        np.savez(f, means=np.array([Payload(marker)], dtype=object))
    clip = (
        Path(load_config(runs.config).data.root)
        / "dev_data"
        / "fan"
        / "source_test"
        / "section_00_source_test_normal_0000.wav"
    )
    code, err = call(score_cli.main, [run2, clip], capsys)
    assert code == 2 and f"cannot read detector file {target}" in err
    assert "allow_pickle=False" in err
    out = cli("asd.score", run2, clip)
    refused(out, f"cannot read detector file {target}")
    assert not marker.exists()
    np.load(target, allow_pickle=True)["means"]  # the payload is real
    assert marker.is_dir()


@pytest.mark.parametrize(
    "entry,words",
    [
        ({"file": "../../../etc/passwd"}, "is not a file name"),
        ({"file": None}, "is not a file name"),
        ({"kind": "pickle"}, "unknown detector kind"),
        ({"machine": None, "delete": "machine"}, "a detector entry lacks 'machine'"),
        ({"threshold": "high"}, "is not usable (ValueError"),
    ],
)
def test_tampered_detectors_json_is_refused(run2, entry, words):
    import json

    from asd.method.detectors import DetectorSet

    index = run2 / "detectors" / "detectors.json"
    meta = json.loads(index.read_text())
    e = meta["detectors"][0]
    e.update({k: v for k, v in entry.items() if k != "delete"})
    e.pop(entry.get("delete", ""), None)
    index.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        DetectorSet.load(run2 / "detectors")
    assert str(index) in str(info.value)


def test_tampered_embeddings_are_recomputed(runs, run2, marker, capsys, caplog):
    good = np.load(run2 / "embeddings.npz")["embeddings"]
    with open(run2 / "embeddings.npz", "wb") as f:
        np.savez(
            f,
            embeddings=good,
            clips=np.array([Payload(marker)], dtype=object),
            model_sha256=np.array([Payload(marker)], dtype=object),
        )
    code, err = call(
        submit_cli.main, ["--config", runs.config, "--from", run2, "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert "ignoring unreadable" in caplog.text and "embeddings.npz" in caplog.text
    assert not marker.exists()
    with np.load(run2 / "embeddings.npz", allow_pickle=False) as z:
        np.testing.assert_allclose(z["embeddings"], good, rtol=1e-4, atol=1e-5)  # threads


def test_truncated_embeddings_are_recomputed(runs, run2, capsys, caplog):
    path = run2 / "embeddings.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a disk that filled up
    code, err = call(
        submit_cli.main, ["--config", runs.config, "--from", run2, "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert "ignoring unreadable" in caplog.text
    with np.load(path, allow_pickle=False) as z:
        assert len(z["embeddings"]) == len(z["clips"])


def test_tampered_cache_files_are_rebuilt(runs, tmp_path, marker, caplog):
    cfg = load_config(runs.config).replace(**{"data.cache_dir": str(tmp_path / "cache")})
    good = build_cache(cfg, progress=False, workers=1)
    reference = np.array(good.features)
    folder = cache_folder(cfg)
    for name in ("stats.npz", "features.npy"):
        with open(folder / name, "wb") as f:
            if name == "stats.npz":
                np.savez(f, mean=np.array([Payload(marker)], dtype=object), std=good.std)
            else:
                np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)
        with pytest.raises(CacheError, match=rf"feature cache {folder}: cannot read"):
            FeatureCache.open(folder)
        rebuilt = build_cache(cfg, progress=False, workers=1)
        assert "rebuilding" in caplog.text
        np.testing.assert_array_equal(rebuilt.features, reference)
        assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# YAML


def test_yaml_tags_that_run_code_are_refused(runs, tmp_path, marker, capsys):
    from asd import index as index_cli
    from runners import stage1

    text = Path(runs.config).read_text()
    evil = tmp_path / "evil.yml"
    evil.write_text(
        text.replace("runs:\n", f"runs: !!python/object/apply:os.mkdir ['{marker}']\nignored:\n", 1)
    )
    with pytest.raises(ConfigError, match=rf"config file {evil} is not valid YAML"):
        load_config(evil)
    code, err = call(index_cli.main, ["--config", evil], capsys)
    assert code == 2 and f"config file {evil} is not valid YAML" in err
    refused(
        cli("runners.stage1", "--config", evil, "--no-progress"),
        f"config file {evil} is not valid YAML",
    )
    # a run folder's config.yml, read again by --resume
    run = Path(shutil.copytree(runs.stage1, tmp_path / "run1"))
    (run / "model.pth").unlink()
    shutil.copy(evil, run / "config.yml")
    code, err = call(stage1.main, ["--resume", run, "--no-progress"], capsys)
    assert code != 0 and f"config file {run / 'config.yml'} is not valid YAML" in err
    assert not marker.exists()
    import yaml

    yaml.unsafe_load(evil.read_text())  # the tag is real
    assert marker.is_dir()


# ----------------------------------------------------------------------------------------------
# A full disk


def test_full_disk_while_building_the_cache(runs, tmp_path):
    from asd.synthetic import generate

    root = generate(
        tmp_path / "data",
        machines=("fan",),
        dev_sections=("00",),
        eval_sections=(),
        n_source=4,
        n_target=1,
        n_test=2,
        duration=10.0,
        seed=0,
    )
    config = write_config(
        load_config(runs.config),
        tmp_path / "config.yml",
        [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    cfg = load_config(config)
    build_cache(cfg, progress=False, workers=1)
    folder = cache_folder(cfg)
    before = snapshot(folder)
    first, second = sorted((root / "dev_data" / "fan" / "source_test").iterdir())
    shutil.copy(second, first)  # the data changed: the cache must be rebuilt

    out = cli(
        "asd.cache", "--config", config, "--workers", "1", preexec_fn=file_size_limit(100_000)
    )  # features.npy needs 721 kB
    refused(out, f"feature cache {folder}: the build failed", "File too large")
    after = snapshot(folder)
    for name in ("features.npy", "index.csv", "stats.npz"):
        assert after[name] == before[name], name
    assert not temp_files(folder)
    with pytest.raises(CacheError, match="incomplete"):  # stale: its files changed since
        FeatureCache.open(folder)
    cli("asd.cache", "--config", config, "--workers", "1", check=True)
    assert len(FeatureCache.open(folder)) == 9


@pytest.mark.slow
def test_full_disk_while_saving_a_checkpoint(runs, tmp_path):
    run = Path(shutil.copytree(runs.stage1, tmp_path / "run1"))
    (run / "model.pth").unlink()
    last = run / "checkpoints" / "last.pth"
    data = load_checkpoint(last)  # made resumable after epoch 1 of 3
    data["progress"].update(epoch=1, iteration=6, samples=48, done=False)
    data["sampler"]["done"] = 6
    torch.save(data, last)
    good = last.read_bytes()

    out = cli(
        "runners.stage1", "--resume", run, "--no-progress", preexec_fn=file_size_limit(20_000)
    )  # the checkpoint needs 150 kB
    refused(out, f"stage1: error: cannot write checkpoint {last}", "unchanged")
    assert last.read_bytes() == good
    assert not temp_files(run) and not (run / "model.pth").exists()


def test_full_disk_while_submitting(runs, run2):
    before = snapshot(run2)
    out = cli(
        "asd.submit",
        "--config",
        runs.config,
        "--from",
        run2,
        "--device",
        "cpu",
        "detectors.threshold_quantile=0.5",
        preexec_fn=file_size_limit(2_000),
    )
    refused(out, "File too large", str(run2 / "detectors"))
    assert snapshot(run2) == before  # detectors, CSVs, scores.csv: all as they were


def test_full_disk_while_writing_the_submission_csvs(tmp_path):
    """One group's CSV does not fit: the earlier groups' new CSVs are not renamed either."""

    def table(n_valve: int, score: float) -> pd.DataFrame:
        rows = [("fan", "00", "source", f"section_00_source_test_{i:04d}.wav") for i in range(3)]
        rows += [
            ("valve", "00", "source", f"section_00_source_test_{i:04d}.wav") for i in range(n_valve)
        ]
        df = pd.DataFrame(rows, columns=["machine", "section", "domain", "file"])
        return df.assign(score=score, decision=1)

    folder = tmp_path / "submission"
    submit_cli.write_submission(table(3, 1.0), folder)
    before = snapshot(folder)
    table(200, 2.0).to_pickle(tmp_path / "new.pkl")  # valve's new CSVs are over 5 kB
    code = (
        "import sys, pandas as pd; from asd.submit import write_submission; "
        "write_submission(pd.read_pickle(sys.argv[1]), sys.argv[2])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tmp_path / "new.pkl", folder],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(1_000),
    )
    assert out.returncode != 0
    assert "File too large" in out.stderr and "anomaly_score_valve_section_00" in out.stderr
    assert snapshot(folder) == before  # fan's CSVs were written too, but never renamed


def test_full_disk_while_writing_results(runs, run2, capsys):
    from asd import evaluate

    code, err = call(
        evaluate.main, ["--config", runs.config, "--from", run2, "--no-figures"], capsys
    )
    assert code == 0, err
    before = snapshot(run2)
    out = cli(
        "asd.evaluate",
        "--config",
        runs.config,
        "--from",
        run2,
        "--no-figures",
        preexec_fn=file_size_limit(1_000),
    )  # results.csv needs a few kB
    refused(out, "File too large", str(run2 / "results.csv"))
    assert snapshot(run2) == before


def test_full_disk_while_writing_score_csv(runs, tmp_path, monkeypatch, capsys):
    clip = (
        Path(load_config(runs.config).data.root)
        / "dev_data"
        / "fan"
        / "source_test"
        / "section_00_source_test_normal_0000.wav"
    )
    out_csv = tmp_path / "scores.csv"
    out_csv.write_text("previous\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, err = call(score_cli.main, [runs.stage2, clip, "--csv", out_csv], capsys)
    assert code == 2 and "No space left on device" in err and str(out_csv) in err
    assert out_csv.read_text() == "previous\n" and not temp_files(tmp_path)
