"""The optimiser: MaskedAdamP takes AdamP's steps (numbers to 1e-6) without Python branches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adamp import AdamP
from helpers import TINY

from asd.infra.config import load_config
from asd.method.losses import kl_loss
from asd.method.model import build_model
from asd.method.optim import MaskedAdamP

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("lr,weight_decay", [(1e-3, 1e-5), (1e-2, 1e-2)])
def test_same_steps_as_adamp_on_the_model(lr, weight_decay):
    """Both optimisers get the model's gradients at AdamP's weights, step after step: training
    itself amplifies rounding (one ulp in a weight grows past 1e-6 within four steps at lr 1e-2,
    AdamP against itself), so equal steps are compared on equal gradients."""
    cfg = load_config(REPO / "config.yml", TINY)
    torch.manual_seed(0)
    net, head = build_model(cfg, 6)
    gen = torch.Generator().manual_seed(1)
    params = [*net.parameters(), *head.parameters()]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs, mine = (
        AdamP(params, lr=lr, weight_decay=weight_decay),
        MaskedAdamP(ours, lr=lr, weight_decay=weight_decay),
    )
    for _ in range(4):
        x = torch.randn(2, 1, 313, 128, generator=gen)
        y = torch.softmax(torch.randn(2, 6, generator=gen), 1)
        kl_loss(head(net(x), y), y).backward()
        for p, q in zip(params, ours):
            q.grad = p.grad.clone()
        theirs.step()
        mine.step()
        theirs.zero_grad(set_to_none=True)
        for a, b in zip(params, ours):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_each_branch_of_the_projection():
    """Per-channel projection, whole-weight projection and none, each with weight decay."""
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    grads = {
        "channel": torch.tensor([[0.0, 1.0], [0.0, -1.0]]),  # each row orthogonal to w's
        "layer": torch.tensor([[1.0, 0.0], [-1.0, 0.0]]),  # rows parallel, sum orthogonal
        "none": torch.tensor([[1.0, 0.5], [1.0, 0.5]]),
    }
    for name, grad in grads.items():
        out = []
        for kind in (AdamP, MaskedAdamP):
            p = torch.nn.Parameter(w.clone())
            opt = kind([p], lr=0.1, weight_decay=0.5)
            for _ in range(3):
                p.grad = grad.clone()
                opt.step()
            out.append(p.detach())
        assert torch.equal(out[0], out[1]), name
    assert not torch.equal(out[0], w)


def test_channels_last_weights_take_the_same_steps():
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(8, 4, 3, 3, generator=gen), torch.randn(8, 4, 3, 3, generator=gen)
    g_scale_invariant = g - w * (g * w).sum((1, 2, 3), keepdim=True) / w.square().sum(
        (1, 2, 3), keepdim=True
    )  # a weight followed by batch norm: projected per channel
    for grad in (g, g_scale_invariant):
        out = []
        for layout in (torch.contiguous_format, torch.channels_last):
            p = torch.nn.Parameter(w.clone(memory_format=layout))
            opt = MaskedAdamP([p], lr=0.1, weight_decay=0.5)
            for _ in range(2):
                p.grad = grad.contiguous(memory_format=layout)
                opt.step()
            out.append(p.detach())
        torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-6)
        assert out[1].is_contiguous(memory_format=torch.channels_last)
