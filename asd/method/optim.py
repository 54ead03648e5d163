"""The optimiser of both steps (AdamP, lr 1e-3, weight decay 1e-5 in the report) and the parts
of the embedding net it updates."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from adamp import AdamP
from torch import nn

from asd.infra.config import ConfigError


@dataclass
class _Layout:
    """The weights (two or more dimensions) of one update laid end to end in one buffer (N,),
    each weight's output channels (its rows along dim 0) one after the other and the weights in
    the order of their channels' length, so that channels of equal length form blocks (n, L) of
    consecutive elements. The buffer and its views are kept from step to step: one copy fills
    them, and fresh host memory is slow on the CPU."""

    order: list[int]  # the weights' positions in the update, in the buffer's order
    rows: list[int]  # output channels of each weight, in the buffer's order
    owner: torch.Tensor  # (R,) the weight of each channel, 0..W-1 in the buffer's order
    sqrt_channel: torch.Tensor  # (W,) sqrt of the elements of one channel of each weight
    sqrt_numel: torch.Tensor  # (W,) sqrt of the elements of each weight
    buffer: torch.Tensor  # (3, N) the gradients, the weights and the step directions
    views: list[list[torch.Tensor]]  # the three rows of buffer as the weights' shapes
    blocks: list[torch.Tensor]  # (n, 3, L) views of buffer: the blocks of channels
    block_channels: list[int]  # n of each block
    work: torch.Tensor  # (2, N) room for w / (|w| + eps) and a product
    work_blocks: list[torch.Tensor]  # (2, n, L) views of work
    work_views: list[torch.Tensor]  # the second row of work as the weights' shapes
    scale: torch.Tensor  # (R,) |w| + eps of each channel, or of its weight
    along: torch.Tensor  # (R,) <u, d> of each channel, or of its weight
    scale_blocks: list[torch.Tensor]  # (n, 1) views of scale, block by block
    along_blocks: list[torch.Tensor]  # (n, 1) views of along, block by block

    @classmethod
    def of(cls, weights: list[torch.Tensor]) -> _Layout:
        order = sorted(range(len(weights)), key=lambda i: weights[i][0].numel())
        shapes = [weights[i].shape for i in order]
        rows = [shape[0] for shape in shapes]
        lengths = [math.prod(shape[1:]) for shape in shapes]
        sizes = [n * length for n, length in zip(rows, lengths)]
        buffer = weights[0].new_empty(3, sum(sizes))
        blocks = []  # (first element, channels, elements a channel)
        start = 0
        for n, length in zip(rows, lengths):
            if blocks and blocks[-1][2] == length:
                blocks[-1] = (blocks[-1][0], blocks[-1][1] + n, length)
            else:
                blocks.append((start, n, length))
            start += n * length
        work = weights[0].new_empty(2, sum(sizes))
        scale = weights[0].new_empty(sum(rows))
        along = weights[0].new_empty(sum(rows))
        block_channels = [n for _, n, _ in blocks]
        device = weights[0].device
        return cls(
            order=order,
            rows=rows,
            owner=torch.arange(len(rows)).repeat_interleave(torch.tensor(rows)).to(device),
            sqrt_channel=torch.tensor(lengths, dtype=torch.float64).sqrt().float().to(device),
            sqrt_numel=torch.tensor(sizes, dtype=torch.float64).sqrt().float().to(device),
            buffer=buffer,
            views=[[x.view(shape) for x, shape in zip(row.split(sizes), shapes)] for row in buffer],
            blocks=[
                buffer[:, first : first + n * length].view(3, n, length).transpose(0, 1)
                for first, n, length in blocks
            ],
            block_channels=block_channels,
            work=work,
            work_blocks=[
                work[:, first : first + n * length].view(2, n, length)
                for first, n, length in blocks
            ],
            work_views=list(work[1].split(sizes)),
            scale=scale,
            along=along,
            scale_blocks=[x.view(-1, 1) for x in scale.split(block_channels)],
            along_blocks=[x.view(-1, 1) for x in along.split(block_channels)],
        )


def _changes(factor: float, dtype: torch.dtype) -> bool:
    """Whether multiplying by ``factor`` can change a number of ``dtype``: not where the factor
    rounds to 1 there (the report's weight decay in float32), so that multiply is skipped."""
    if dtype == torch.float32:
        return np.float32(factor) != 1
    return factor != 1


class MaskedAdamP(AdamP):
    """``adamp.AdamP`` (Heo et al., 2021), its steps to the last bit on the CPU, in multi-tensor
    form: Adam's moments of every parameter in a few ``torch._foreach_*`` operations, and
    AdamP's projection of all the weights at once, chosen by tensor masks instead of Python
    branches on tensor values, so the host never waits for the device. The state is AdamP's
    (``step``, ``exp_avg``, ``exp_avg_sq`` of each parameter): checkpoints load in both."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._layouts: dict[tuple, _Layout] = {}  # by the weights' shapes and device

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamP step of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # parameters that have taken equally many steps share their bias corrections
            together = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                together[(p.device, p.dtype, state["step"])].append(p)
            for (_, _, steps), params in together.items():
                self._update(group, params, steps)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], steps: int) -> None:
        """AdamP's step of ``params`` (one device and dtype, ``steps`` steps taken each)."""
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        # Adam's moments: running means of the gradient and of its square
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        # The step direction is exp_avg / (sqrt(exp_avg_sq / bias correction 2) + eps), as
        # AdamP has it (with Nesterov: beta1 exp_avg + (1 - beta1) grad for exp_avg); bias
        # correction 1 goes into the step size.
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, math.sqrt(1 - beta2**steps))
        torch._foreach_add_(denoms, group["eps"])
        step_size = group["lr"] / (1 - beta1**steps)
        lr_wd = group["lr"] * group["weight_decay"]
        # Biases and batch-norm scales (one dimension) take Adam's step with weight decay.
        vectors = [i for i, p in enumerate(params) if p.dim() <= 1]
        if vectors:
            taking = [params[i] for i in vectors]
            directions = self._directions(group, vectors, exp_avgs, grads, denoms)
            if _changes(1 - lr_wd, params[0].dtype):
                torch._foreach_mul_(taking, 1 - lr_wd)
            torch._foreach_add_(taking, directions, alpha=-step_size)
        # Weights take AdamP's step, all of them at once.
        weights = [i for i, p in enumerate(params) if p.dim() > 1]
        if weights:
            key = (params[0].device, *(tuple(params[i].shape) for i in weights))
            if key not in self._layouts:
                self._layouts[key] = _Layout.of([params[i] for i in weights])
            layout = self._layouts[key]
            weights = [weights[i] for i in layout.order]
            grad_views, weight_views, directions = layout.views
            torch._foreach_copy_(grad_views, [grads[i] for i in weights])
            torch._foreach_copy_(weight_views, [params[i] for i in weights])
            self._directions(group, weights, exp_avgs, grads, denoms, out=directions)
            ratio = self._project(group, layout)
            taking = [params[i] for i in weights]
            decays = (1 - lr_wd * group["wd_ratio"], 1 - lr_wd)  # projected or not
            if any(_changes(decay, params[0].dtype) for decay in decays):
                torch._foreach_mul_(taking, (1 - lr_wd * ratio).unbind())  # (W,) float64
            torch._foreach_add_(taking, directions, alpha=-step_size)

    @staticmethod
    def _directions(group, which, exp_avgs, grads, denoms, out=None) -> list[torch.Tensor]:
        """The step directions of the parameters at positions ``which`` (into ``out`` if given),
        exp_avg / denom, or with Nesterov (beta1 exp_avg + (1 - beta1) grad) / denom."""
        beta1 = group["betas"][0]
        numerators = [exp_avgs[i] for i in which]
        if group["nesterov"]:
            numerators = torch._foreach_mul(numerators, beta1)
            torch._foreach_add_(
                numerators, torch._foreach_mul([grads[i] for i in which], 1 - beta1)
            )
        if out is None:
            return torch._foreach_div(numerators, [denoms[i] for i in which])
        torch._foreach_copy_(out, numerators)
        torch._foreach_div_(out, [denoms[i] for i in which])
        return out

    @staticmethod
    def _project(group: dict, layout: _Layout) -> torch.Tensor:
        """AdamP's projection of the step directions (the third row of ``layout.buffer``), in
        place, and each weight's factor of weight decay (W,) float64. A weight whose gradient
        is nearly orthogonal to it in every output channel (|cos| < delta / sqrt(elements of a
        channel), as before batch norm, where the weight's scale does not matter) steps without
        the direction's part along it per channel; else, if nearly orthogonal as a whole
        (delta / sqrt(its elements)), without the part along it as a whole; else as in Adam.
        A projected weight decays by weight_decay * wd_ratio only. The arithmetic is AdamP's,
        step for step, on the same rows: the steps are AdamP's to the last bit on the CPU."""
        eps = group["eps"]
        delta = group["delta"]
        weights = len(layout.rows)
        g, w, d = layout.buffer  # (N,) each
        # AdamP's two tests, from <g, w>, |g|^2 and |w|^2 of each channel and weight (in each
        # block the products of the channels' (g, w) with their (g, w))
        dots = [
            torch.bmm(x[:, :2], x[:, :2].transpose(1, 2)).view(len(x), 4) for x in layout.blocks
        ]
        per_channel = torch.cat(dots)  # (R, 4): <g, g>, <g, w>, <w, g>, <w, w>
        whole = per_channel.new_zeros(weights, 4).index_add_(0, layout.owner, per_channel)
        gg, gw, _, ww = torch.cat([per_channel, whole]).t()  # (R + W,) each
        cosine = gw.abs() / (gg.sqrt().clamp_min(eps) * ww.sqrt().clamp_min(eps))
        cos_channel, cos_whole = cosine.split([len(layout.owner), weights])
        worst = cos_whole.new_zeros(weights).scatter_reduce_(0, layout.owner, cos_channel, "amax")
        by_channel = worst < delta / layout.sqrt_channel  # (W,)
        as_whole = ~by_channel & (cos_whole < delta / layout.sqrt_numel)  # (W,)
        projected = by_channel | as_whole
        # the unit vector u = w / (|w| + eps) of each channel, or of each weight taken whole
        norm_channel = torch.cat([x[:, 1].norm(dim=1) for x in layout.blocks])  # (R,)
        norm_whole = torch.stack(torch._foreach_norm(layout.views[1]))  # (W,)
        norm = torch.where(by_channel[layout.owner], norm_channel, norm_whole[layout.owner])
        torch.add(norm, eps, out=layout.scale)
        for x, room, scale in zip(layout.blocks, layout.work_blocks, layout.scale_blocks):
            torch.div(x[:, 1], scale, out=room[0])  # u
            torch.mul(room[0], x[:, 2], out=room[1])  # u * d
        # <u, d> per channel or whole weight, zero where the weight is not projected
        along_channel = torch.cat([room[1].sum(dim=1) for room in layout.work_blocks])  # (R,)
        along_whole = torch.stack([x.sum() for x in layout.work_views])  # (W,)
        along = torch.where(by_channel[layout.owner], along_channel, along_whole[layout.owner])
        layout.along.copy_(torch.where(projected[layout.owner], along, 0.0))
        # d - u <u, d>
        for room, along in zip(layout.work_blocks, layout.along_blocks):
            torch.mul(room[0], along, out=room[1])
        d.sub_(layout.work[1])
        wd_ratio = projected.new_full((), group["wd_ratio"], dtype=torch.float64)
        return torch.where(projected, wd_ratio, 1.0)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``name``: ``adamp`` (the report's), ``adam`` or ``sgd`` (momentum 0.9), as in the config."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return {"adamp": MaskedAdamP, "adam": torch.optim.Adam}[name](
        params, lr=lr, weight_decay=weight_decay
    )


def set_trainable(net: nn.Module, trainable: Iterable[str]) -> None:
    """Only the named parts (direct children) of ``net`` keep gradients; ConfigError else."""
    parts = dict(net.named_children())
    if unknown := [t for t in trainable if t not in parts]:
        raise ConfigError(
            f"stage2.trainable names {unknown}, not a part of the model (parts: {', '.join(parts)})"
        )
    for name, part in parts.items():
        part.requires_grad_(name in trainable)
