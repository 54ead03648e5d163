"""Step 1 and Step 2 as Catalyst runners on a tiny generated data set, on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from asd.infra.checkpoint import load_checkpoint, load_model
from asd.infra.config import load_config
from asd.method.optim import MaskedAdamP
from runners import stage1, stage2
from runners.common import MixupRunner

SMALL = [
    "stage1.epochs=2",
    "stage1.batch_size=8",
    "stage2.iterations=4",
    "stage2.batch_size=8",
    "stage2.log_every=2",
    "stage2.checkpoint_every=2",
]


def cli(tiny_cfg, tmp_path):
    """Write tiny_cfg (with fresh runs.dir) to a file and return the CLI args for it."""
    from asd.infra.config import save_config

    cfg = tiny_cfg.replace(**{"runs.dir": str(tmp_path / "runs")})
    save_config(cfg, tmp_path / "config.yml")
    return ["--config", str(tmp_path / "config.yml"), "--no-progress", *SMALL]


@pytest.fixture(scope="module")
def trained(tiny_cfg, tmp_path_factory):
    """A finished tiny Step 1 and Step 2 (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("trained")
    args = cli(tiny_cfg, tmp)
    assert stage1.main(args) == 0
    run1 = sorted((tmp / "runs").glob("*-stage1"))[-1]
    assert stage2.main(args + ["--from", str(run1)]) == 0
    run2 = sorted((tmp / "runs").glob("*-stage2"))[-1]
    return args, run1, run2


def test_both_steps_end_to_end(trained):
    _, run1, run2 = trained
    for run in (run1, run2):
        assert (run / "config.yml").is_file() and (run / "classes.csv").is_file()
        loaded = load_model(run / "model.pth")
        assert loaded.head.s.isfinite()
        log = pd.read_csv(run / "logs" / "train.csv")
        assert {"loss", "accuracy", "s", "lr", "samples_per_s"} <= set(log.columns)
        assert len(log) == 2  # stage1: 2 epochs; stage2: 4 iterations / log_every 2
        assert (run / "logs" / "tensorboard").is_dir()
    assert load_checkpoint(run2 / "model.pth")["progress"]["iteration"] == 4


def test_stage2_freezes_all_but_last_stage(trained):
    _, run1, run2 = trained
    before, after = load_checkpoint(run1 / "model.pth"), load_checkpoint(run2 / "model.pth")
    changed = {k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])}
    assert changed, "nothing trained in Step 2"
    assert all(k.startswith("stage4.") for k in changed), sorted(changed)
    assert any(k.startswith("stage4.") and "running_mean" in k for k in changed)  # stage4 BN trains
    assert not torch.equal(before["head"]["centres"], after["head"]["centres"])


def test_optimizer_is_the_reports(tiny_cfg):
    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yml")
    for kind in (stage1.Stage1, stage2.Stage2):
        runner = MixupRunner(kind(cfg=cfg, run_dir=Path(), cache=Path(), classes={}, n_source=0))
        opt = runner.get_optimizer(torch.nn.Linear(2, 2))
        assert isinstance(opt, MaskedAdamP)
        group = opt.param_groups[0]
        assert group["lr"] == 1e-3 and group["weight_decay"] == 1e-5


def test_same_seed_same_first_losses(trained, tiny_cfg, tmp_path):
    _, run1, _ = trained
    assert stage1.main(cli(tiny_cfg, tmp_path) + ["stage1.epochs=1"]) == 0
    (again,) = (tmp_path / "runs").glob("*-stage1")
    first = pd.read_csv(run1 / "logs" / "train.csv")["loss"].iloc[0]
    second = pd.read_csv(again / "logs" / "train.csv")["loss"].iloc[0]
    assert first == second


@pytest.mark.slow
def test_kill_and_resume(tiny_cfg, tmp_path):
    args = cli(tiny_cfg, tmp_path)
    args = [a for a in args if not a.startswith("stage1.epochs")] + ["stage1.epochs=6"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.stage1", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    runs = tmp_path / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*-stage1/checkpoints/last.pth")):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = runs.glob("*-stage1")
    assert not (run / "model.pth").exists()
    interrupted_at = load_checkpoint(run / "checkpoints" / "last.pth")["progress"]["epoch"]
    assert 1 <= interrupted_at < 6
    out = subprocess.run(
        [sys.executable, "-m", "runners.stage1", "--resume", str(run), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(run)
    final = load_checkpoint(run / "model.pth")
    assert final["progress"]["epoch"] == 6 and final["progress"]["done"]
    log = pd.read_csv(run / "logs" / "train.csv")
    assert log["step"].tolist()[-1] == 6 and "step" not in log["loss"].astype(str).tolist()


@pytest.mark.slow
def test_ddp_on_cpu_two_processes(tiny_cfg, tmp_path):
    args = cli(tiny_cfg, tmp_path) + ["engine.name=ddp", "engine.world_size=2", "stage1.epochs=1"]
    out = subprocess.run(
        [sys.executable, "-m", "runners.stage1", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = Path(out.stdout.strip().splitlines()[-1])
    loaded = load_model(run / "model.pth")
    assert isinstance(loaded.model, torch.nn.Module)
    ckpt = load_checkpoint(run / "model.pth")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["progress"]["world_size"] == 2  # two processes really trained together
    assert ckpt["progress"]["samples"] == ckpt["progress"]["iteration"] * 8  # 2 x 4 per step


@pytest.mark.parametrize("name", ["gpu", "amp"])
def test_gpu_engines_refuse_without_cuda(tiny_cfg, name, monkeypatch):
    from asd.infra.config import ConfigError
    from asd.infra.training import check_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"engine.name={name} needs a CUDA GPU"):
        check_config(tiny_cfg.replace(**{"engine.name": name}), "stage1")


def test_engines_are_catalysts(tiny_cfg):
    from catalyst import dl

    from runners.common import make_engine

    assert isinstance(make_engine(tiny_cfg), dl.CPUEngine)
    ddp = make_engine(tiny_cfg.replace(**{"engine.name": "ddp", "engine.world_size": 2}))
    assert isinstance(ddp, dl.DistributedDataParallelEngine)


def test_another_backbone_through_both_steps_and_submit(tiny_cfg, tmp_path, monkeypatch):
    """A backbone is one function in asd.method.model.BACKBONES and one config line; stage2.trainable names its
    parts; Step 1, Step 2 and submit run with it."""
    from collections import OrderedDict

    from asd import submit
    from asd.method import model

    def tiny(cfg):  # (B, 1, T, F) -> (B, D)
        return torch.nn.Sequential(
            OrderedDict(
                conv=torch.nn.Sequential(
                    torch.nn.Conv2d(1, 4, 3, stride=2, padding=1),
                    torch.nn.BatchNorm2d(4),
                    torch.nn.ReLU(),
                ),
                pool=torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten()),
                head=torch.nn.Linear(4, cfg.model.embedding_dim),
            )
        )

    monkeypatch.setitem(model.BACKBONES, "tiny", tiny)  # removed again afterwards
    args = cli(tiny_cfg, tmp_path) + ["model.backbone=tiny", "stage2.trainable=[head]"]
    assert stage1.main(args) == 0
    (run1,) = (tmp_path / "runs").glob("*-stage1")
    assert stage2.main(args + ["--from", str(run1)]) == 0
    (run2,) = (tmp_path / "runs").glob("*-stage2")
    before, after = load_checkpoint(run1 / "model.pth"), load_checkpoint(run2 / "model.pth")
    assert set(before["model"]) == set(tiny(tiny_cfg).state_dict())
    changed = {k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])}
    assert changed == {"head.weight", "head.bias"}
    assert (
        submit.main(
            ["--config", str(tmp_path / "config.yml"), "--from", str(run2), "--device", "cpu"]
        )
        == 0
    )
    assert list((run2 / "submission").glob("anomaly_score_*.csv"))
