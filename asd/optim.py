"""The optimiser of both steps (AdamP, lr 1e-3, weight decay 1e-5 in the report) and the parts
of the embedding net it updates."""

from __future__ import annotations

from typing import Iterable

import torch
from adamp import AdamP
from torch import nn

from asd.config import ConfigError


class ChannelsLastAdamP(AdamP):
    """AdamP reshaping where it views: same numbers, and channels_last weights work (CPU runs)."""

    def _channel_view(self, x):
        return x.reshape(x.size(0), -1)

    def _layer_view(self, x):
        return x.reshape(1, -1)


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """``name``: ``adamp`` (the report's), ``adam`` or ``sgd`` (momentum 0.9), as in the config."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return {"adamp": ChannelsLastAdamP, "adam": torch.optim.Adam}[name](
        params, lr=lr, weight_decay=weight_decay)


def set_trainable(net: nn.Module, trainable: Iterable[str]) -> None:
    """Only the named parts (direct children) of ``net`` keep gradients; ConfigError else."""
    parts = dict(net.named_children())
    if unknown := [t for t in trainable if t not in parts]:
        raise ConfigError(f"stage2.trainable names {unknown}, not a part of the model "
                          f"(parts: {', '.join(parts)})")
    for name, part in parts.items():
        part.requires_grad_(name in trainable)
