"""The training step never makes the host wait for the device: no tensor is read as a Python
number (``aten._local_scalar_dense``, what ``float()``, ``.item()`` and ``if tensor`` call)
between the start and the end of a batch, optimiser step included; only the epoch's end reads."""

from __future__ import annotations

import torch
from adamp import AdamP
from torch.utils._python_dispatch import TorchDispatchMode

from asd.infra.config import save_config
from asd.method.optim import MaskedAdamP
from runners import common, stage1


class HostWaits(TorchDispatchMode):
    """Counts the tensors read as Python numbers while it is active."""

    count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_a_read():
    with HostWaits() as waits:
        float(torch.ones(2).sum())
        bool(torch.ones(1) > 0)
    assert waits.count == 2


def test_optimizer_step_reads_nothing():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    )
    counts = []
    for kind in (AdamP, MaskedAdamP):
        opt = kind(model.parameters(), lr=1e-3, weight_decay=1e-5)
        model(torch.randn(2, 1, 6, 6)).square().mean().backward()
        with HostWaits() as waits:
            opt.step()
        counts.append(waits.count)
    assert counts[0] >= 2  # AdamP: a Python branch on each multi-dimensional weight
    assert counts[1] == 0


def test_training_steps_read_nothing(tiny_cfg, tmp_path, monkeypatch):
    per_batch = []

    class Counting(common.MixupRunner):
        """Counts from the runner's first batch event to its last (handle_batch and callbacks)."""

        def on_batch_start(self, runner):
            self.waits = HostWaits().__enter__()
            super().on_batch_start(runner)

        def on_batch_end(self, runner):
            super().on_batch_end(runner)
            self.waits.__exit__(None, None, None)
            per_batch.append(self.waits.count)

    monkeypatch.setattr(common, "MixupRunner", Counting)
    save_config(tiny_cfg.replace(**{"runs.dir": str(tmp_path / "runs")}), tmp_path / "c.yml")
    # with its progress bar (no --no-progress): the bar reads no tensor either
    assert stage1.main(["--config", str(tmp_path / "c.yml"), "stage1.epochs=2"]) == 0
    assert len(per_batch) == 12 and set(per_batch) == {0}  # 2 epochs of 6 batches
