"""GlobalBatchNorm2d under DDP (two gloo processes on the CPU) gives the numbers of one
BatchNorm2d over the whole global batch, which is what nn.SyncBatchNorm computes (torch's has
no CPU forward): outputs, input and parameter gradients, running statistics; with no host wait."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from asd.method.model import GlobalBatchNorm2d, global_batch_norm

CHANNELS = 3


class HostWaits(TorchDispatchMode):
    """Counts the tensors read as Python numbers (a host wait on a GPU) while it is active."""

    count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def global_batch() -> tuple[torch.Tensor, torch.Tensor, nn.BatchNorm2d]:
    """Inputs (8, C, 5, 4) with a large mean, a weight on the outputs, and a trained-looking BN."""
    g = torch.Generator().manual_seed(0)
    x = 50.0 + 3.0 * torch.randn(8, CHANNELS, 5, 4, generator=g)
    weight = torch.randn(8, CHANNELS, 5, 4, generator=g)
    bn = nn.BatchNorm2d(CHANNELS)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(CHANNELS, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(CHANNELS, generator=g))
        bn.running_mean.fill_(49.0)
        bn.running_var.fill_(2.0)
    return x, weight, bn


def step(bn: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward and backward of ``bn`` on ``x``, loss sum(bn(x) * weight)."""
    x = x.clone().requires_grad_()
    y = bn.train()(x)
    (y * weight).sum().backward()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "weight_grad": bn.weight.grad,
        "bias_grad": bn.bias.grad,
        "running_mean": bn.running_mean,
        "running_var": bn.running_var,
    }


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, weight, bn = global_batch()
        bn = global_batch_norm(nn.Sequential(bn))[0]
        assert isinstance(bn, GlobalBatchNorm2d)
        with HostWaits() as waits:
            result = step(bn, x.chunk(2)[rank], weight.chunk(2)[rank])
        result["host_waits"] = torch.tensor(waits.count)
        torch.save(result, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_normalise_as_one_batch_norm_over_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    x, weight, bn = global_batch()
    whole = step(bn, x, weight)
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), whole["y"], **close)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), whole["x_grad"], **close)
    for name in ("weight_grad", "bias_grad"):  # DDP adds up (and averages) the processes' own
        torch.testing.assert_close(ranks[0][name] + ranks[1][name], whole[name], **close)
    for name in ("running_mean", "running_var"):
        for r in ranks:
            torch.testing.assert_close(r[name], whole[name], **close)
    assert [int(r["host_waits"]) for r in ranks] == [0, 0]
    x, weight, bn = global_batch()
    alone = step(bn, x.chunk(2)[0], weight.chunk(2)[0])  # a process's half on its own
    assert not torch.allclose(alone["y"], whole["y"].chunk(2)[0], **close)


def test_outside_ddp_it_is_batch_norm():
    x, weight, bn = global_batch()
    plain = step(bn, x, weight)
    x, weight, bn = global_batch()
    converted = step(global_batch_norm(nn.Sequential(bn))[0], x, weight)
    for name, value in plain.items():
        assert torch.equal(converted[name], value), name
