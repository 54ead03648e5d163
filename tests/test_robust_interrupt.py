"""SIGKILL during the cache build, Step 1, Step 2 and submit; the rerun (or --resume) finishes.
Ctrl-C (SIGINT) during training: one line saying how to finish, exit status 130.

Killed at precise moments: as soon as a file appears (polled), or from inside the process in
the middle of writing a file (tests/helpers.DYING). Outcomes:

- cache: the half-built temporary folder is never used; the rerun removes it and rebuilds, and
  its arrays equal an uninterrupted build's, byte for byte;
- Step 1 / Step 2: the checkpoint being written when the process died is never read (the
  previous one is, and the leftover temporary file is removed); ``--resume`` finishes and the
  final weights, the AdaCos scale and the training log equal the uninterrupted run's exactly
  (CPU, same seed, one thread); a run killed after its last checkpoint but before model.pth gets
  model.pth from that checkpoint;
- submit: the CSVs are all written under temporary names before any is renamed, so a kill
  while writing leaves the previous submission exactly as it was, and a kill while renaming
  leaves every file complete (old or new); the rerun writes the new submission.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    cli,
    cli_killed,
    copy_run,
    kill_when,
    popen,
    snapshot,
    temp_files,
    write_config,
)

from asd.infra.checkpoint import load_checkpoint
from asd.infra.config import load_config
from asd.infra.feature_cache import CacheError, FeatureCache, cache_folder
from asd.runview import read_log

pytestmark = pytest.mark.slow


def assert_same_model(path: Path, reference: Path) -> None:
    a, b = load_checkpoint(path), load_checkpoint(reference)
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        differ = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differ, f"{part}: {differ}"
    assert a["progress"] == b["progress"]


def assert_same_log(run: Path, reference: Path) -> None:
    cols = ["step", "iteration", "loss", "accuracy", "s", "lr"]
    a, b = read_log(run)[cols], read_log(reference)[cols]
    assert a.equals(b), (a, b)
    lines = (run / "logs" / "train.csv").read_text().splitlines()
    assert len(lines) == len(b) + 1  # one row per epoch: none twice, none lost
    # and TensorBoard shows each epoch once, with the values of the uninterrupted run
    assert board_points(run, "loss/epoch") == board_points(reference, "loss/epoch")


def board_points(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar as TensorBoard reads the run's train/ event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs" / "tensorboard" / "train"))
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def test_cache_build_killed_then_rebuilt(runs, tmp_path):
    config = write_config(
        load_config(runs.config), tmp_path / "config.yml", [f"data.cache_dir={tmp_path / 'cache'}"]
    )
    cfg = load_config(config)
    folder = cache_folder(cfg)
    proc = popen("asd.cache", "--config", config, "--workers", "1")
    kill_when(proc, Path(cfg.data.cache_dir), ".*.tmp/features.npy")  # the build's own folder
    with pytest.raises(CacheError, match="does not exist"):  # the half-built one is not it
        FeatureCache.open(folder)
    out = cli("asd.cache", "--config", config, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(folder)
    assert not temp_files(folder) and not list(folder.parent.glob(".*.tmp"))
    rebuilt = FeatureCache.open(folder)
    reference = FeatureCache.open(cache_folder(load_config(runs.config)))  # built in one go
    assert np.array_equal(rebuilt.features, reference.features)
    assert np.array_equal(rebuilt.mean, reference.mean)
    assert np.array_equal(rebuilt.std, reference.std)
    assert rebuilt.index.equals(reference.index)


def test_step1_killed_while_writing_a_checkpoint(runs, config):
    # Three epochs, a checkpoint after each: die halfway through writing the second one.
    cli_killed("write:last.pth:2", "runners.stage1", "--config", config, "--no-progress")
    (run,) = (Path(load_config(config).runs.dir)).glob("*-stage1")
    last = run / "checkpoints" / "last.pth"
    assert load_checkpoint(last)["progress"]["epoch"] == 1  # the previous complete one
    assert temp_files(run / "checkpoints")  # the half-written one, under its temporary name
    assert not (run / "model.pth").exists()

    out = cli("runners.stage1", "--resume", run, "--no-progress", check=True)
    assert out.stdout.strip().splitlines()[-1] == str(run)
    assert not temp_files(run)
    assert_same_model(run / "model.pth", runs.stage1 / "model.pth")
    assert_same_model(last, runs.stage1 / "checkpoints" / "last.pth")
    assert_same_log(run, runs.stage1)


def test_step2_killed_then_resumed(runs, config):
    proc = popen("runners.stage2", "--config", config, "--no-progress", "--from", runs.stage1)
    kill_when(proc, Path(load_config(config).runs.dir), "*-stage2/checkpoints/last.pth")
    (run,) = Path(load_config(config).runs.dir).glob("*-stage2")
    assert not (run / "model.pth").exists(), "finished before it was killed"
    assert load_checkpoint(run / "checkpoints" / "last.pth")["progress"]["iteration"] < 4

    out = cli("runners.stage2", "--resume", run, "--no-progress", check=True)
    assert out.stdout.strip().splitlines()[-1] == str(run)
    assert_same_model(run / "model.pth", runs.stage2 / "model.pth")
    assert_same_log(run, runs.stage2)


def test_step1_ctrl_c_then_resumed(runs, config):
    EPOCHS = 8  # Ctrl-C comes after the first checkpoint, seven epochs before the end
    proc = popen("runners.stage1", "--config", config, "--no-progress", f"stage1.epochs={EPOCHS}")
    runs_dir = Path(load_config(config).runs.dir)
    deadline = time.time() + 300
    while not list(runs_dir.glob("*-stage1/checkpoints/last.pth")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    (run,) = runs_dir.glob("*-stage1")
    assert proc.returncode == 130 and "Traceback" not in err, err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0] == err.strip().splitlines()[-1]
    assert said[0].startswith("python -m runners.stage1: interrupted at epoch ")
    assert said[0].endswith(f"; finish with make stage1 RESUME={run}")
    epoch = load_checkpoint(run / "checkpoints" / "last.pth")["progress"]["epoch"]
    assert 1 <= epoch < EPOCHS and not (run / "model.pth").exists()

    out = cli("runners.stage1", "--resume", run, "--no-progress", check=True)
    assert out.stdout.strip().splitlines()[-1] == str(run)
    assert load_checkpoint(run / "model.pth")["progress"]["epoch"] == EPOCHS
    assert read_log(run)["step"].tolist() == list(range(1, EPOCHS + 1))
    assert len((run / "logs" / "train.csv").read_text().splitlines()) == EPOCHS + 1


@pytest.mark.parametrize("step", ["stage1", "stage2"])
def test_killed_after_the_last_checkpoint_before_model_pth(runs, tmp_path, step, capsys):
    """Every epoch done, model.pth not yet written: --resume writes it, without training."""
    from runners import stage1, stage2

    run = copy_run(getattr(runs, step), tmp_path)  # Step 2: beside its Step 1 run
    (run / "model.pth").unlink()
    for p in list(run.glob("submission")) + list(run.glob("detectors")):
        shutil.rmtree(p)
    (stage1 if step == "stage1" else stage2).main(["--resume", str(run), "--no-progress"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)
    assert_same_model(run / "model.pth", getattr(runs, step) / "model.pth")


@pytest.mark.parametrize("moment", ["write", "replace"])
def test_submit_killed_while_writing_csvs(runs, tmp_path, moment):
    run = tmp_path / "run"
    shutil.copytree(runs.stage2, run)
    before = snapshot(run / "submission")
    # another threshold quantile: new decision CSVs (the scores stay the same)
    args = [
        "--config",
        runs.config,
        "--from",
        run,
        "--device",
        "cpu",
        "detectors.threshold_quantile=0.5",
    ]
    # "write": the first file to be completed is cut and the process dies before its rename;
    # write_submission completes every file before it renames any, so nothing is renamed yet.
    # "replace": the process dies before the third rename, after two files took their place.
    nth = 1 if moment == "write" else 3
    cli_killed(f"{moment}:submission:{nth}", "asd.submit", *args)
    killed = snapshot(run / "submission")
    assert not [p for p in killed if not p.startswith(".") and p not in before]

    cli("asd.submit", *args, check=True)
    after = snapshot(run / "submission")
    assert after.keys() == before.keys() and after != before
    assert not temp_files(run / "submission")
    for name, data in killed.items():
        if name.startswith("."):  # a temporary file of the killed writer: never read
            assert name.endswith(".tmp")
            continue
        assert data in (before[name], after[name]), name  # complete, old or new
        if moment == "write":
            assert data == before[name], name  # nothing renamed before every file was written
