"""The optimiser of both steps (AdamP, lr 1e-3, weight decay 1e-5 in the report) and the parts
of the embedding net it updates."""

from __future__ import annotations

from typing import Iterable

import torch
from adamp import AdamP
from torch import nn

from asd.config import ConfigError


class ChannelsLastAdamP(AdamP):
    """AdamP whose projection also works on channels_last weights.

    AdamP flattens weights with ``.view``, which fails on channels_last tensors (about 1.7x
    faster convolutions on CPU); ``.reshape`` gives the same numbers for contiguous ones.
    """

    def _channel_view(self, x):
        return x.reshape(x.size(0), -1)

    def _layer_view(self, x):
        return x.reshape(1, -1)


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """``name`` is ``adamp`` (the report's), ``adam`` or ``sgd`` (momentum 0.9)."""
    params = [p for p in params if p.requires_grad]
    if name == "adamp":
        return ChannelsLastAdamP(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def set_trainable(net: nn.Module, trainable: Iterable[str]) -> None:
    """Only the named parts (direct children) of ``net`` keep gradients; ConfigError naming the
    parts the backbone has when ``trainable`` names another."""
    parts = dict(net.named_children())
    unknown = [t for t in trainable if t not in parts]
    if unknown:
        raise ConfigError(f"stage2.trainable names {unknown}, not a part of the model "
                          f"(parts: {', '.join(parts)})")
    for name, part in parts.items():
        part.requires_grad_(name in trainable)
