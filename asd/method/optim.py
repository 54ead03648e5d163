"""The optimiser of both steps (AdamP, lr 1e-3, weight decay 1e-5 in the report) and the parts
of the embedding net it updates."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from adamp import AdamP
from torch import nn

from asd.infra.config import ConfigError


class _Span(NamedTuple):
    """A run of consecutive channels of equal length in a _Layout's buffer."""

    first: int  # the first element
    first_channel: int
    channels: int
    length: int  # the elements of a channel


class _Views(NamedTuple):
    """A _Layout's flat tensors as the parameters' shapes, one list of views per tensor."""

    grads: list[torch.Tensor]
    weights: list[torch.Tensor]  # the weights only (two or more dimensions)
    directions: list[torch.Tensor]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]


@dataclass
class _Block:
    """Views of one block of channels of equal length L (n channels) in a _Layout's buffers."""

    w: torch.Tensor  # (n, L) the weights
    d: torch.Tensor  # (n, L) the step directions
    g_w: torch.Tensor  # (n, 2, L) each channel's gradient and weight
    g_w_t: torch.Tensor  # (n, L, 2) the same, transposed
    unit: torch.Tensor  # (n, L) room for w / (|w| + eps)
    product: torch.Tensor  # (n, L) room for a product
    dots: torch.Tensor  # (n, 2, 2) room for <g, g>, <g, w>, <w, g>, <w, w>
    norm: torch.Tensor  # (n,) room for |w|
    along_sum: torch.Tensor  # (n,) room for <u, d>
    scale: torch.Tensor  # (n, 1) view of _Layout.scale
    along: torch.Tensor  # (n, 1) view of _Layout.along


@dataclass
class _Layout:
    """The parameters of one update laid end to end in flat tensors (N,): first the weights (two
    or more dimensions), each weight's output channels (its rows along dim 0) one after the
    other and the weights in the order of their channels' length, so that channels of equal
    length form blocks (n, L) of consecutive elements; then the vectors (biases, batch-norm
    scales). Adam's moments are flat too: the parameters' ``exp_avg`` and ``exp_avg_sq`` are
    views of them, so each of Adam's operations is one over all parameters. The tensors and
    their views are kept from step to step: fresh host memory is slow on the CPU."""

    order: list[int]  # the parameters' positions in the update, in the flat order
    owner: torch.Tensor  # (R,) the weight of each channel, 0..W-1 in the flat order
    sqrt_channel: torch.Tensor  # (W,) sqrt of the elements of one channel of each weight
    sqrt_numel: torch.Tensor  # (W,) sqrt of the elements of each weight
    views: _Views  # the flat tensors as the parameters' shapes
    products: list[torch.Tensor]  # room for a product of each weight (its elements)
    grad: torch.Tensor  # (N,) the gradients
    direction: torch.Tensor  # (N,) the step directions
    exp_avg: torch.Tensor  # (N,) Adam's first moment
    exp_avg_sq: torch.Tensor  # (N,) Adam's second moment
    denom: torch.Tensor  # (N,) room for sqrt(exp_avg_sq / bias correction 2) + eps
    weight_direction: torch.Tensor  # (N_w,) the weights' part of ``direction``
    product: torch.Tensor  # (N_w,) room for a product
    dots: torch.Tensor  # (R, 2, 2) per channel <g, g>, <g, w>, <w, g>, <w, w>
    norm: torch.Tensor  # (R,) |w| per channel
    along_sum: torch.Tensor  # (R,) <u, d> per channel
    scale: torch.Tensor  # (R,) |w| + eps of each channel, or of its weight
    along: torch.Tensor  # (R,) <u, d> of each channel, or of its weight (0: not projected)
    blocks: list[_Block]

    @classmethod
    def of(cls, params: list[torch.Tensor]) -> _Layout:
        weights = [i for i, p in enumerate(params) if p.dim() > 1]
        vectors = [i for i, p in enumerate(params) if p.dim() <= 1]
        order = sorted(weights, key=lambda i: params[i][0].numel()) + vectors
        shapes = [params[i].shape for i in order]
        sizes = [params[i].numel() for i in order]
        rows = [shape[0] for shape in shapes[: len(weights)]]
        lengths = [math.prod(shape[1:]) for shape in shapes[: len(weights)]]
        spans: list[_Span] = []
        start = 0
        channel = 0
        for n, length in zip(rows, lengths):
            # Weights sorted by channel length put equal lengths side by side: one block for them.
            if spans and spans[-1].length == length:
                spans[-1] = spans[-1]._replace(channels=spans[-1].channels + n)
            else:
                spans.append(_Span(start, channel, n, length))
            start += n * length
            channel += n
        new = params[0].new_empty
        buffer = new(3, sum(sizes))  # the gradients, the weights and the step directions
        moments = new(2, sum(sizes))  # exp_avg and exp_avg_sq: the state is copied in
        work = new(2, start)  # room for u and a product, of the weights
        dots = new(channel, 2, 2)
        norm = new(channel)
        along_sum = new(channel)
        scale = new(channel)
        along = new(channel)
        blocks = []
        for first, c, n, length in spans:
            part = buffer[:, first : first + n * length].view(3, n, length)
            room = work[:, first : first + n * length].view(2, n, length)
            g_w = part[:2].transpose(0, 1)  # (n, 2, L)
            blocks.append(
                _Block(
                    w=part[1],
                    d=part[2],
                    g_w=g_w,
                    g_w_t=g_w.transpose(1, 2),
                    unit=room[0],
                    product=room[1],
                    dots=dots[c : c + n],
                    norm=norm[c : c + n],
                    along_sum=along_sum[c : c + n],
                    scale=scale[c : c + n].view(n, 1),
                    along=along[c : c + n].view(n, 1),
                )
            )

        def views(flat: torch.Tensor) -> list[torch.Tensor]:
            return [x.view(shape) for x, shape in zip(flat.split(sizes), shapes)]

        device = params[0].device
        return cls(
            order=order,
            owner=torch.arange(len(rows))
            .repeat_interleave(torch.tensor(rows, dtype=torch.long))
            .to(device),
            sqrt_channel=torch.tensor(lengths, dtype=torch.float64).sqrt().float().to(device),
            sqrt_numel=torch.tensor(sizes[: len(weights)], dtype=torch.float64)
            .sqrt()
            .float()
            .to(device),
            views=_Views(
                grads=views(buffer[0]),
                weights=views(buffer[1])[: len(weights)],
                directions=views(buffer[2]),
                exp_avg=views(moments[0]),
                exp_avg_sq=views(moments[1]),
            ),
            products=list(work[1].split(sizes[: len(weights)])),
            grad=buffer[0],
            direction=buffer[2],
            exp_avg=moments[0],
            exp_avg_sq=moments[1],
            denom=new(sum(sizes)),
            weight_direction=buffer[2, :start],
            product=work[1],
            dots=dots,
            norm=norm,
            along_sum=along_sum,
            scale=scale,
            along=along,
            blocks=blocks,
        )


def _changes(factor: float, dtype: torch.dtype) -> bool:
    """Whether multiplying by ``factor`` can change a number of ``dtype``: not where the factor
    rounds to 1 there (the report's weight decay in float32), so that multiply is skipped."""
    if dtype == torch.float32:
        return np.float32(factor) != 1
    return factor != 1


class MaskedAdamP(AdamP):
    """``adamp.AdamP`` (Heo et al., 2021), its steps to the last bit on the CPU, in multi-tensor
    form: every parameter laid end to end in flat tensors (_Layout), so each of Adam's
    operations is one over all of them, and AdamP's projection of all the weights at once,
    chosen by tensor masks instead of Python branches on tensor values, so the host never waits
    for the device. The state is AdamP's (``step``, ``exp_avg``, ``exp_avg_sq`` of each
    parameter, views of the flat moments): checkpoints load in both."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._layouts: dict[tuple, _Layout] = {}  # by the parameters' shapes and device

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
        layout = self._layout(params)
        params = [params[i] for i in layout.order]  # the flat order: the weights, then vectors
        self._share_moments(layout, params)
        # The gradients and the weights into the flat tensors, one operation each.
        weights = len(layout.views.weights)
        torch._foreach_copy_(layout.views.grads, [p.grad for p in params])
        if weights:
            torch._foreach_copy_(layout.views.weights, params[:weights])
        # Adam's moments: running means of the gradient and of its square
        layout.exp_avg.mul_(beta1).add_(layout.grad, alpha=1 - beta1)
        layout.exp_avg_sq.mul_(beta2).addcmul_(layout.grad, layout.grad, value=1 - beta2)
        # The step direction is exp_avg / (sqrt(exp_avg_sq / bias correction 2) + eps), as
        # AdamP has it (with Nesterov: beta1 exp_avg + (1 - beta1) grad for exp_avg); bias
        # correction 1 goes into the step size.
        denom = torch.sqrt(layout.exp_avg_sq, out=layout.denom)
        denom.div_(math.sqrt(1 - beta2**steps)).add_(group["eps"])
        if group["nesterov"]:
            torch.mul(layout.exp_avg, beta1, out=layout.direction)
            layout.direction.add_(layout.grad * (1 - beta1))
            layout.direction.div_(denom)
        else:
            torch.div(layout.exp_avg, denom, out=layout.direction)
        step_size = group["lr"] / (1 - beta1**steps)
        lr_wd = group["lr"] * group["weight_decay"]
        # Weights take AdamP's projection; biases and batch-norm scales (one dimension) Adam's
        # step. Each decays by its factor, then takes its step.
        ratio = self._project(group, layout) if weights else None  # (W,) float64
        decays = (1 - lr_wd * group["wd_ratio"], 1 - lr_wd)  # projected or not
        if any(_changes(decay, params[0].dtype) for decay in decays):
            if weights:
                torch._foreach_mul_(params[:weights], (1 - lr_wd * ratio).unbind())
            if params[weights:]:
                torch._foreach_mul_(params[weights:], 1 - lr_wd)
        torch._foreach_add_(params, layout.views.directions, alpha=-step_size)

    def _layout(self, params: list[torch.Tensor]) -> _Layout:
        """The _Layout of ``params``, made on their first step and kept."""
        key = (params[0].device, params[0].dtype, *(tuple(p.shape) for p in params))
        if key not in self._layouts:
            self._layouts[key] = _Layout.of(params)
        return self._layouts[key]

    def _share_moments(self, layout: _Layout, params: list[torch.Tensor]) -> None:
        """Make the state of ``params`` (in the layout's order) views of the layout's moments.
        Where a state is not one yet (the first step, a loaded checkpoint), its values are
        copied in and the view takes its place: the state stays AdamP's, a tensor of each
        parameter's shape, and a checkpoint holds the moments once."""
        views = zip(params, layout.views.exp_avg, layout.views.exp_avg_sq)
        for p, exp_avg, exp_avg_sq in views:
            state = self.state[p]
            if state["exp_avg"] is not exp_avg:
                state["exp_avg"] = exp_avg.copy_(state["exp_avg"])
            if state["exp_avg_sq"] is not exp_avg_sq:
                state["exp_avg_sq"] = exp_avg_sq.copy_(state["exp_avg_sq"])

    @staticmethod
    def _project(group: dict, layout: _Layout) -> torch.Tensor:
        """AdamP's projection of the step directions (``layout.direction``), in
        place, and each weight's factor of weight decay (W,) float64. A weight whose gradient
        is nearly orthogonal to it in every output channel (|cos| < delta / sqrt(elements of a
        channel), as before batch norm, where the weight's scale does not matter) steps without
        the direction's part along it per channel; else, if nearly orthogonal as a whole
        (delta / sqrt(its elements)), without the part along it as a whole; else as in Adam.
        A projected weight decays by weight_decay * wd_ratio only. The arithmetic is AdamP's,
        step for step, on the same rows: the steps are AdamP's to the last bit on the CPU."""
        eps = group["eps"]
        delta = group["delta"]
        weights = len(layout.sqrt_numel)
        # AdamP's two tests, from <g, w>, |g|^2 and |w|^2 of each channel and weight (in each
        # block the products of the channels' (g, w) with their (g, w))
        for block in layout.blocks:
            torch.bmm(block.g_w, block.g_w_t, out=block.dots)
        per_channel = layout.dots.view(-1, 4)  # (R, 4): <g, g>, <g, w>, <w, g>, <w, w>
        whole = per_channel.new_zeros(weights, 4).index_add_(0, layout.owner, per_channel)
        products = torch.cat([per_channel, whole])  # (R + W, 4)
        gg = products[:, 0]  # (R + W,) <g, g>
        gw = products[:, 1]  # (R + W,) <g, w>
        ww = products[:, 3]  # (R + W,) <w, w>
        cosine = gw.abs() / (gg.sqrt().clamp_min(eps) * ww.sqrt().clamp_min(eps))
        cos_channel, cos_whole = cosine.split([len(layout.owner), weights])
        worst = cos_whole.new_zeros(weights).scatter_reduce_(0, layout.owner, cos_channel, "amax")
        by_channel = worst < delta / layout.sqrt_channel  # (W,)
        as_whole = ~by_channel & (cos_whole < delta / layout.sqrt_numel)  # (W,)
        projected = by_channel | as_whole
        # the unit vector u = w / (|w| + eps) of each channel, or of each weight taken whole
        for block in layout.blocks:
            torch.linalg.vector_norm(block.w, dim=1, out=block.norm)
        norm_whole = torch.stack(torch._foreach_norm(layout.views.weights))  # (W,)
        by_channel_here = by_channel[layout.owner]  # (R,)
        norm = torch.where(by_channel_here, layout.norm, norm_whole[layout.owner])
        torch.add(norm, eps, out=layout.scale)
        for block in layout.blocks:
            torch.div(block.w, block.scale, out=block.unit)
            torch.mul(block.unit, block.d, out=block.product)
            torch.sum(block.product, dim=1, out=block.along_sum)
        # <u, d> per channel or whole weight, zero where the weight is not projected
        along_whole = torch.stack([x.sum() for x in layout.products])  # (W,)
        along = torch.where(by_channel_here, layout.along_sum, along_whole[layout.owner])
        layout.along.copy_(torch.where(projected[layout.owner], along, 0.0))
        # d - u <u, d>
        for block in layout.blocks:
            torch.mul(block.unit, block.along, out=block.product)
        layout.weight_direction.sub_(layout.product)
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
