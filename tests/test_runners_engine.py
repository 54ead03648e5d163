"""The engine side of the runner: the head in float32 under autocast, a non-finite epoch loss
stops the run in one line, an error the user can fix in a DDP process reaches the parent as one
line, and the run's first line names its processes and devices."""

from __future__ import annotations

import math

import pytest
import torch
from catalyst import dl

from asd.infra.checkpoint import load_checkpoint
from asd.infra.config import ConfigError, save_config
from asd.infra.runs import Run
from asd.method.model import build_model
from runners import common, stage1


def test_the_head_runs_in_float32_under_autocast(tiny_cfg):
    torch.manual_seed(0)
    model = common.Classifier(*build_model(tiny_cfg, 3))
    seen = []
    model.head.register_forward_pre_hook(lambda m, args: seen.append(torch.is_autocast_enabled()))
    x, target = torch.randn(2, 1, 313, 128), torch.eye(3)[[0, 2]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_p = model(x, target)
    assert seen == [False] and log_p.dtype == torch.float32


def test_a_non_finite_epoch_loss_stops_the_run_and_keeps_the_last_checkpoint(
    tiny_cfg, tmp_path, monkeypatch, capsys
):
    def loss_gone_after_the_first_epoch(log_p, y):
        calls.append(1)
        loss = kl_loss(log_p, y)
        return loss * math.nan if len(calls) > 6 else loss  # 6 batches an epoch

    calls = []
    kl_loss = common.kl_loss
    monkeypatch.setattr(common, "kl_loss", loss_gone_after_the_first_epoch)
    save_config(tiny_cfg.replace(**{"runs.dir": str(tmp_path / "runs")}), tmp_path / "c.yml")
    args = ["--config", str(tmp_path / "c.yml"), "--no-progress", "stage1.epochs=3"]
    assert stage1.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "python -m runners.stage1: error: epoch 2: the mean loss is nan under engine.name=cpu; "
        "training stopped, and the run's last checkpoint stays as it was"
    )
    (run,) = (tmp_path / "runs").glob("*-stage1")
    assert load_checkpoint(Run(run).last_checkpoint)["progress"]["epoch"] == 1
    assert not Run(run).model.exists()


def test_the_loss_check_names_the_engine(tiny_cfg):
    common.check_loss(1.5, 3, tiny_cfg)
    fp16 = tiny_cfg.replace(**{"engine.name": "amp", "engine.amp_dtype": "fp16"})
    with pytest.raises(common.NonFiniteLoss, match=r"^epoch 7: the mean loss is inf under "):
        common.check_loss(math.inf, 7, fp16)
    with pytest.raises(common.NonFiniteLoss, match="engine.name=amp, engine.amp_dtype=fp16;"):
        common.check_loss(math.nan, 7, fp16)


def process_error(last_line: str) -> torch.multiprocessing.ProcessRaisedException:
    trace = f'Traceback (most recent call last):\n  File "x.py", line 1, in f\n{last_line}\n'
    return torch.multiprocessing.ProcessRaisedException(
        f"\n\n-- Process 1 terminated with the following error:\n{trace}", 1, 123
    )


@pytest.mark.parametrize(
    "last_line,raised",
    [
        ("asd.infra.config.ConfigError: engine.amp_dtype=bf16: no bf16", ConfigError),
        ("runners.common.NonFiniteLoss: epoch 2: the mean loss is nan", common.NonFiniteLoss),
    ],
)
def test_a_user_error_in_a_ddp_process_reaches_the_parent_as_itself(monkeypatch, last_line, raised):
    def fail(self, fn, *args, **kwargs):
        raise process_error(last_line)

    monkeypatch.setattr(dl.DistributedDataParallelEngine, "spawn", fail)
    engine = common.DistributedEngine(world_size=2, num_node_workers=2, cpu=True)
    with pytest.raises(raised) as err:
        engine.spawn(print)
    assert str(err.value) == last_line.partition(": ")[2]


def test_other_errors_in_a_ddp_process_keep_their_traceback(monkeypatch):
    def fail(self, fn, *args, **kwargs):
        raise process_error("RuntimeError: NCCL error")

    monkeypatch.setattr(dl.DistributedDataParallelEngine, "spawn", fail)
    engine = common.DistributedEngine(world_size=2, num_node_workers=2, cpu=True)
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="NCCL error"):
        engine.spawn(print)


def test_the_first_line_names_processes_and_devices(tiny_cfg):
    class Engine:
        num_processes, device, is_ddp = 1, torch.device("cpu"), False

    line = common.describe_processes(tiny_cfg, Engine())
    threads = torch.get_num_threads()
    assert line == f"training cpu: 1 process(es) on the CPU ({threads} torch thread(s) each)"
