"""Step 1 and Step 2 as Catalyst runners on the tiny data set, on CPU: the session's tiny run
(tests/conftest.py ``runs``) read, and runs of their own where a test trains differently.

A Step 1 run killed with SIGKILL and resumed: tests/test_robust_interrupt.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from asd.infra.checkpoint import load_checkpoint, load_model
from asd.infra.config import load_config
from asd.method.optim import MaskedAdamP
from runners import stage1, stage2
from runners.common import MixupRunner


def cli(tiny_cfg, tmp_path):
    """Write tiny_cfg (with fresh runs.dir) to a file and return the CLI args for it."""
    from asd.infra.config import save_config

    cfg = tiny_cfg.replace(**{"runs.dir": str(tmp_path / "runs")})
    save_config(cfg, tmp_path / "config.yml")
    return ["--config", str(tmp_path / "config.yml"), "--no-progress"]


def test_both_steps_end_to_end(runs):
    run1, run2 = runs.stage1, runs.stage2
    for run in (run1, run2):
        assert (run / "config.yml").is_file() and (run / "classes.csv").is_file()
        loaded = load_model(run / "model.pth")
        assert loaded.head.s.isfinite()
        log = pd.read_csv(run / "logs" / "train.csv")
        assert {"loss", "accuracy", "s", "lr", "samples_per_s"} <= set(log.columns)
        assert (run / "logs" / "tensorboard").is_dir()
    # Step 1: a row per epoch (3); Step 2: a row per stage2.log_every (1) of 4 iterations
    assert len(pd.read_csv(run1 / "logs" / "train.csv")) == 3
    assert len(pd.read_csv(run2 / "logs" / "train.csv")) == 4
    assert load_checkpoint(run2 / "model.pth")["progress"]["iteration"] == 4


def test_stage2_freezes_all_but_last_stage(runs):
    run1, run2 = runs.stage1, runs.stage2
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


def test_same_seed_same_first_losses(runs, tiny_cfg, tmp_path):
    run1 = runs.stage1
    assert stage1.main(cli(tiny_cfg, tmp_path) + ["stage1.epochs=1"]) == 0
    (again,) = (tmp_path / "runs").glob("*-stage1")
    first = pd.read_csv(run1 / "logs" / "train.csv")["loss"].iloc[0]
    second = pd.read_csv(again / "logs" / "train.csv")["loss"].iloc[0]
    assert first == second


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
