"""Speed of the optimiser step on this machine's CPU: the project's MaskedAdamP (multi-tensor
AdamP) against adamp.AdamP and torch.optim.Adam(foreach=True).

The three optimise the parameters of the report's model (Table 1, with the head of 42 classes x
32 sub-clusters) with random gradients (speed does not depend on their values); after a warm-up
step, the steps are timed round by round, the three interleaved. The time is this process's
CPU time (``time.process_time``) on one torch thread by default: on a shared machine the wall
clock also counts the time other processes hold the cores (``--clock wall`` for it). It prints
ms per step (median over rounds), each one's speed against adamp.AdamP (the median over rounds
of adamp.AdamP's time over its time in the same round: a slow spell of the machine hits both),
and the ATen operations of one step (what a GPU would launch, about one kernel each).

    python -m bench.optim [--steps 20] [--rounds 5] [--threads 1] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from adamp import AdamP
from torch.utils._python_dispatch import TorchDispatchMode

from asd.infra.config import load_config
from asd.method.model import build_model
from asd.method.optim import MaskedAdamP

REPO = Path(__file__).resolve().parents[1]
OPTIMISERS = {
    "MaskedAdamP (ours)": MaskedAdamP,
    "adamp.AdamP": AdamP,
    "torch Adam(foreach)": lambda params, **kw: torch.optim.Adam(params, foreach=True, **kw),
}


class Operations(TorchDispatchMode):
    """Counts the ATen operations run while it is active."""

    count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def make(kind) -> torch.optim.Optimizer:
    """An optimiser of a fresh copy of the Table 1 model's parameters, its state made."""
    torch.manual_seed(0)
    net, head = build_model(load_config(REPO / "config.yml"), 42)
    params = [*net.parameters(), *head.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = kind(params, lr=1e-3, weight_decay=1e-5)
    opt.step()  # the state, made on the first step
    return opt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.optim", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="steps timed in a round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's default")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    optimisers = {name: make(kind) for name, kind in OPTIMISERS.items()}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in optimisers}
    for _ in range(args.rounds):
        for name, opt in optimisers.items():
            start = clock()
            for _ in range(args.steps):
                opt.step()
            times[name].append((clock() - start) / args.steps)
    n = sum(p.numel() for p in optimisers["adamp.AdamP"].param_groups[0]["params"])
    tensors = len(optimisers["adamp.AdamP"].param_groups[0]["params"])
    print(
        f"optimiser step of the Table 1 model ({tensors} tensors, {n:,} parameters) on the CPU "
        f"({torch.get_num_threads()} torch threads), {args.clock} time, median of {args.rounds} "
        f"rounds of {args.steps} steps"
    )
    print(f"{'optimiser':22s} {'ms/step':>8s} {'vs adamp.AdamP':>15s} {'ATen ops/step':>14s}")
    base = np.array(times["adamp.AdamP"])
    for name, opt in optimisers.items():
        ms = float(np.median(times[name]))
        speed = float(np.median(base / np.array(times[name])))
        with Operations() as ops:
            opt.step()
        print(f"{name:22s} {1e3 * ms:8.2f} {speed:14.2f}x {ops.count:14d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
