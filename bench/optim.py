"""Speed of the optimiser step on this machine's CPU: the project's MaskedAdamP (multi-tensor
AdamP) against adamp.AdamP and torch.optim.Adam(foreach=True).

The three optimise the parameters of the report's model (Table 1, with the head of 42 classes x
32 sub-clusters) with the gradients of one training batch (``training_model``): AdamP's work
depends on them, as it projects the steps of weights whose gradients are orthogonal to them,
which training's are before batch norm and random ones are not. Each step starts from the
weights those gradients belong to (put back untimed). After a warm-up step, the steps are
timed round by round, the three interleaved. The time is this process's CPU time
(``time.process_time``) on one torch thread by default: on a shared machine the wall clock also
counts the time other processes hold the cores (``--clock wall`` for it; ``--threads 0`` for
torch's default, the threads a CPU training uses). It prints ms per step (median over rounds),
each one's speed against adamp.AdamP (the median over rounds of adamp.AdamP's time over its
time in the same round: a slow spell of the machine hits both), and the ATen operations of one
step (what a GPU would launch, about one kernel each).

    python -m bench.optim [--steps 20] [--rounds 9] [--threads 1] [--clock cpu|wall]
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
from asd.method.losses import kl_loss
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


def training_model() -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """The Table 1 model's parameters (with the head of 42 classes) with the gradients of one
    training batch (8 random log-mels, the KL loss of sub-cluster AdaCos), and a copy of the
    weights those gradients belong to. Real gradients matter: a weight before batch norm gets a
    gradient orthogonal to it, so AdamP's test projects its step; with random gradients it
    projects none and skips the projection's work, which training never does."""
    torch.manual_seed(0)
    net, head = build_model(load_config(REPO / "config.yml"), 42)
    log_mels = torch.randn(8, 1, 313, 128)
    target = torch.nn.functional.one_hot(torch.randint(0, 42, (8,)), 42).float()
    kl_loss(head(net(log_mels), target), target).backward()
    params = [*net.parameters(), *head.parameters()]
    return params, [p.detach().clone() for p in params]


def projected_by_adamp(opt: AdamP, params: list[torch.Tensor]) -> int:
    """How many weights AdamP's own test (``AdamP._projection``) projects at these gradients."""
    group = opt.param_groups[0]
    count = 0
    for p in (p for p in params if p.dim() > 1):
        args = (p, p.grad, torch.zeros_like(p), group["delta"], group["wd_ratio"], group["eps"])
        count += opt._projection(*args)[1] != 1  # its weight decay ratio: 1 where not projected
    return count


def make(kind) -> tuple[torch.optim.Optimizer, list[torch.Tensor], list[torch.Tensor]]:
    """An optimiser of a fresh copy of the model of ``training_model``, its state made; its
    parameters and the weights their gradients belong to."""
    params, weights = training_model()
    opt = kind(params, lr=1e-3, weight_decay=1e-5)
    opt.step()  # the state, made on the first step
    return opt, params, weights


def timed_steps(opt, params, weights, steps: int, clock) -> float:
    """Seconds a step, over ``steps`` steps, each from the weights its gradients belong to (put
    back before the step, untimed), so every step sees what a training step sees."""
    total = 0.0
    for _ in range(steps):
        with torch.no_grad():
            torch._foreach_copy_(params, weights)
        start = clock()
        opt.step()
        total += clock() - start
    return total / steps


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
        for name, (opt, params, weights) in optimisers.items():
            times[name].append(timed_steps(opt, params, weights, args.steps, clock))
    adamp, params, start = optimisers["adamp.AdamP"]
    with torch.no_grad():
        torch._foreach_copy_(params, start)  # the weights the gradients belong to
    projected = projected_by_adamp(adamp, params)
    weights = sum(p.dim() > 1 for p in params)
    print(
        f"optimiser step of the Table 1 model ({len(params)} tensors, "
        f"{sum(p.numel() for p in params):,} parameters, the gradients of one training batch: "
        f"AdamP projects {projected} of its {weights} weights) on the CPU "
        f"({torch.get_num_threads()} torch threads), {args.clock} time, median of {args.rounds} "
        f"rounds of {args.steps} steps"
    )
    print(f"{'optimiser':22s} {'ms/step':>8s} {'vs adamp.AdamP':>15s} {'ATen ops/step':>14s}")
    base = np.array(times["adamp.AdamP"])
    for name, (opt, _, _) in optimisers.items():
        ms = float(np.median(times[name]))
        speed = float(np.median(base / np.array(times[name])))
        with Operations() as ops:
            opt.step()
        print(f"{name:22s} {1e3 * ms:8.2f} {speed:14.2f}x {ops.count:14d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
