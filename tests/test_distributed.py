"""Multi-process training on the CPU (gloo) and the checks a GPU machine needs, with torch.cuda
monkeypatched: DDP estimates the AdaCos scale from the whole global batch, a killed DDP run
resumes to the uninterrupted one's result, the fp16 loss scaler survives a resume, and configs
this machine cannot run are refused in one line before any run folder is made."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import ENV, REPO, cli, write_config
from torch import nn

from asd.infra.checkpoint import load_checkpoint
from asd.infra.config import ConfigError
from asd.infra.training import check_config, check_device, use_device_cache, world_size
from asd.method.losses import SubClusterAdaCos
from runners.common import epoch_means

N_CLASSES, N_SUB, DIM, BATCH = 3, 4, 8, 12  # BATCH: the global batch of two processes


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (BATCH, DIM) and mixed labels (BATCH, N_CLASSES), the same in every process."""
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(BATCH, 1, generator=g)
    a, b = torch.randint(N_CLASSES, (2, BATCH), generator=g)
    eye = torch.eye(N_CLASSES)
    return torch.randn(BATCH, DIM, generator=g), lam * eye[a] + (1 - lam) * eye[b]


def scale_after_one_step(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # the same centres everywhere
    head = SubClusterAdaCos(N_CLASSES, N_SUB, DIM).train()
    head(emb, target)
    return head.s


def _rank(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        emb, target = (t.chunk(world)[rank] for t in global_batch())
        torch.save(scale_after_one_step(emb, target), os.path.join(out, f"s{rank}.pt"))
        sums = torch.tensor([rank + 1.0, rank], dtype=torch.float64)  # loss and hits of a rank
        means = torch.tensor(epoch_means(sums, 10), dtype=torch.float64)
        torch.save(means, os.path.join(out, f"m{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_estimates_the_scale_and_metrics_of_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"s{r}.pt") for r in (0, 1))
    whole = scale_after_one_step(*global_batch())
    assert torch.equal(s0, s1)
    torch.testing.assert_close(s0, whole, rtol=1e-6, atol=0)
    half = scale_after_one_step(*(t.chunk(2)[0] for t in global_batch()))
    assert not torch.allclose(half, whole, rtol=1e-4)  # a rank's share alone would differ
    for r in (0, 1):  # logged loss and accuracy: the means over both ranks' samples
        torch.testing.assert_close(
            torch.load(tmp_path / f"m{r}.pt"), torch.tensor([0.3, 0.1], dtype=torch.float64)
        )


# -- the checks a GPU machine needs, with torch.cuda monkeypatched --------------------------


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n, free=..., bf16=...)``: torch.cuda sees n GPUs with ``free`` bytes each."""

    def fake(n: int, free: int = 10**10, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (free, 2 * free))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Tesla T4")

    return fake


def engine(cfg, **settings):
    return cfg.replace(**{f"engine.{k}": v for k, v in settings.items()})


@pytest.mark.parametrize(
    "n,settings,words",
    [
        (
            1,
            dict(name="ddp", world_size=2),
            "engine.world_size=2: DDP runs one process per GPU, and 1 GPU(s) are visible; "
            "use at most 1",
        ),
        (
            0,
            dict(name="ddp", world_size=0),
            "engine.world_size=0 runs one process per visible GPU, and none is visible; on the "
            "CPU name the number of processes",
        ),
        (0, dict(name="ddp_amp", amp_dtype="fp16", world_size=2), "fp16 needs a CUDA GPU"),
        (0, dict(name="gpu"), "engine.name=gpu needs a CUDA GPU"),
        (0, dict(name="amp"), "engine.name=amp needs a CUDA GPU"),
        (
            3,
            dict(name="ddp", world_size=0),
            "stage1.batch_size=8 does not split over engine.world_size=3",
        ),
    ],
)
def test_engines_this_machine_cannot_run_are_refused(tiny_cfg, gpus, n, settings, words):
    gpus(n, bf16=False)
    with pytest.raises(ConfigError) as err:
        check_config(engine(tiny_cfg, **settings).replace(**{"stage1.batch_size": 8}), "stage1")
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["amp", "ddp_amp"])
def test_bf16_on_a_gpu_without_it_is_refused_by_the_training_process(tiny_cfg, gpus, name):
    """The parent never asks a GPU (no CUDA context there); each process asks its own."""
    gpus(2, bf16=False)
    cfg = engine(tiny_cfg, name=name, amp_dtype="bf16", world_size=2)
    check_config(cfg, "stage1")  # the parent: no probe
    with pytest.raises(ConfigError, match=r"the GPU \(Tesla T4\) does not support bf16; use "):
        check_device(cfg, torch.device("cuda", 1))
    check_device(cfg, torch.device("cpu"))
    check_device(engine(cfg, amp_dtype="fp16"), torch.device("cuda", 1))
    gpus(2, bf16=True)
    check_device(cfg, torch.device("cuda", 0))


def test_engines_this_machine_can_run(tiny_cfg, gpus):
    gpus(4)
    for settings in (
        dict(name="ddp", world_size=0),
        dict(name="ddp_amp", world_size=2),
        dict(name="amp", amp_dtype="bf16"),
        dict(name="gpu"),
    ):
        check_config(engine(tiny_cfg, **settings), "stage1")
    assert world_size(engine(tiny_cfg, name="ddp", world_size=0)) == 4  # 0: every GPU
    assert world_size(engine(tiny_cfg, name="amp", world_size=3)) == 1
    gpus(0)
    check_config(engine(tiny_cfg, name="ddp_amp", amp_dtype="bf16", world_size=2), "stage1")


def test_cache_on_device_only_where_the_training_rows_fit(tiny_cfg, gpus):
    """Each training process asks its own device (the parent asks none)."""
    features = np.zeros((100, 10, 4), np.float16)  # 80 bytes a row
    rows = np.arange(50)  # the training rows: 4,000 bytes
    gpu = torch.device("cuda", 1)
    gpus(2, free=10_000)
    assert use_device_cache(engine(tiny_cfg, name="gpu"), features, rows, gpu)
    off = engine(tiny_cfg, name="gpu", cache_on_device=False)
    assert not use_device_cache(off, features, rows, gpu)
    assert not use_device_cache(tiny_cfg, features, rows, torch.device("cpu"))
    gpus(2, free=7_000)  # room for the training rows, not for the whole cache (8,000 bytes)
    assert use_device_cache(engine(tiny_cfg, name="ddp", world_size=2), features, rows, gpu)
    gpus(2, free=5_000)
    with pytest.warns(UserWarning, match="do not fit in the memory of cuda:1 .* memory-mapped"):
        assert not use_device_cache(engine(tiny_cfg, name="ddp"), features, rows, gpu)


def test_ddp_engine_gets_the_precision_and_one_process_per_gpu(tiny_cfg, gpus):
    from catalyst import dl

    from runners.common import make_engine

    gpus(3)
    ddp = make_engine(engine(tiny_cfg, name="ddp_amp", amp_dtype="fp16", world_size=0))
    assert isinstance(ddp, dl.DistributedDataParallelEngine)
    assert ddp._world_size == ddp._num_local_workers == 3
    assert ddp._kwargs["mixed_precision"] == "fp16"
    plain = make_engine(engine(tiny_cfg, name="ddp", world_size=2))
    assert plain._kwargs["mixed_precision"] is None


@pytest.mark.parametrize("sync_bn", [True, False])
def test_global_batch_norm_under_ddp(tiny_cfg, sync_bn):
    from asd.method.model import GlobalBatchNorm2d
    from runners.common import MixupRunner
    from runners.stage1 import Stage1

    cfg = engine(tiny_cfg, name="ddp", sync_bn=sync_bn)
    runner = MixupRunner(
        Stage1(cfg=cfg, run_dir=Path(), cache=Path(), classes={"class": [0, 1]}, n_source=0)
    )
    for device, is_ddp, synced in [
        ("cuda", True, sync_bn),
        ("cuda", False, False),
        ("cpu", True, sync_bn),  # gloo too
    ]:
        runner.engine = SimpleNamespace(device=torch.device(device), is_ddp=is_ddp)
        kinds = {type(m) for m in runner.get_model().modules()}
        assert (GlobalBatchNorm2d in kinds) == synced and (nn.BatchNorm2d in kinds) != synced


# -- training runs --------------------------------------------------------------------------


def test_fp16_loss_scale_survives_a_resume(tiny_cfg, tmp_path, monkeypatch):
    """The engine's GradScaler (a CPU one here, doubling its scale every step) is saved in
    last.pth and restored on --resume: the scale goes on from where the killed run left it."""
    from catalyst import dl

    from runners import common, stage1

    def engine_with_scaler(cfg):
        eng = dl.CPUEngine()
        eng.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1)
        return eng

    def stop_after_first_checkpoint(self, runner, epoch, final=False):
        save(self, runner, epoch, final)
        raise KeyboardInterrupt

    save = common.Checkpoints.save
    monkeypatch.setattr(common, "make_engine", engine_with_scaler)
    monkeypatch.setattr(common.Checkpoints, "save", stop_after_first_checkpoint)
    config = write_config(
        tiny_cfg,
        tmp_path / "config.yml",
        [f"runs.dir={tmp_path / 'runs'}", "stage1.epochs=2"],
    )
    assert stage1.main(["--config", str(config), "--no-progress"]) == 130
    (run,) = (tmp_path / "runs").glob("*-stage1")
    killed = load_checkpoint(run / "checkpoints" / "last.pth")
    assert killed["progress"]["epoch"] == 1
    assert killed["scaler"]["scale"] == 2.0 ** killed["progress"]["iteration"]
    monkeypatch.setattr(common.Checkpoints, "save", save)
    assert stage1.main(["--resume", str(run), "--no-progress"]) == 0
    final = load_checkpoint(run / "checkpoints" / "last.pth")
    assert final["progress"]["epoch"] == 2
    assert final["progress"]["iteration"] > killed["progress"]["iteration"]
    assert final["scaler"]["scale"] == 2.0 ** final["progress"]["iteration"]  # not restarted at 1


@pytest.mark.slow
def test_ddp_amp_killed_then_resumed_equals_uninterrupted(tiny_cfg, tmp_path):
    """Two gloo processes with bf16 autocast on the CPU: the whole process group is killed
    after a checkpoint; --resume ends with the uninterrupted run's weights, scale and log."""
    from test_robust_interrupt import assert_same_log, assert_same_model

    ddp = ["engine.name=ddp_amp", "engine.amp_dtype=bf16", "engine.world_size=2"]
    configs = {
        name: write_config(
            tiny_cfg, tmp_path / f"{name}.yml", [f"runs.dir={tmp_path / name}", *ddp]
        )
        for name in ("reference", "killed")
    }
    cli("runners.stage1", "--config", configs["reference"], "--no-progress", check=True)
    (reference,) = (tmp_path / "reference").glob("*-stage1")

    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.stage1", "--config", configs["killed"], "--no-progress"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # its own group: the workers die with it
    deadline = time.time() + 300
    while not list((tmp_path / "killed").glob("*-stage1/checkpoints/last.pth")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = (tmp_path / "killed").glob("*-stage1")
    assert not (run / "model.pth").exists(), "finished before it was killed"

    cli("runners.stage1", "--resume", run, "--no-progress", check=True)
    assert_same_model(run / "model.pth", reference / "model.pth")
    assert_same_log(run, reference)
    assert load_checkpoint(run / "model.pth")["progress"]["world_size"] == 2
