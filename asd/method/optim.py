"""The optimiser of both steps (AdamP, lr 1e-3, weight decay 1e-5 in the report) and the parts
of the embedding net it updates."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from adamp import AdamP
from torch import nn

from asd.infra.config import ConfigError


class MaskedAdamP(AdamP):
    """AdamP's numbers, its projection chosen by tensor masks instead of Python branches on
    tensor values (the host never waits for the GPU); views by reshape (channels_last works)."""

    def _projection(self, p, grad, perturb, delta, wd_ratio, eps):
        """``perturb`` projected per output channel if every channel's |cos(grad, p)| < delta /
        sqrt(size), else on the whole weight if its is, else kept; weight decay factor (float64)."""
        shape, out, done = [-1] + [1] * (p.dim() - 1), perturb, p.new_zeros((), dtype=torch.bool)
        for rows in (p.size(0), 1):  # per output channel, then the whole weight as one row
            w, g = p.detach().reshape(rows, -1), grad.reshape(rows, -1)
            cosine = torch.cosine_similarity(g, w, dim=1, eps=eps).abs()  # (rows,)
            use = ~done & (cosine.max() < delta / math.sqrt(w.size(1)))
            unit = p.detach() / (w.norm(dim=1).view(shape) + eps)
            along = (unit * perturb).reshape(rows, -1).sum(dim=1).view(shape)
            out, done = torch.where(use, perturb - unit * along, out), done | use
        return out, torch.where(done, p.new_full((), wd_ratio, dtype=torch.float64), 1.0)


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
