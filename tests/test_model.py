"""The model reproduces Table 1's output sizes exactly and works in the runners' fast modes."""

import subprocess
import sys

import pytest
import torch

from asd.infra.config import load_config
from asd.method.model import EmbeddingNet

# Table 1, T x F x C (time x mel x channels); PyTorch holds (C, T, F).
TABLE1 = {
    "input": (313, 128, 1),
    "stem": (157, 64, 16),
    "stage1": (79, 32, 16),
    "stage2": (40, 16, 32),
    "stage3": (20, 8, 64),
    "stage4": (10, 4, 128),
    "pool": (1, 4, 128),
}


@pytest.fixture(scope="module")
def cfg(repo):
    return load_config(repo / "config.yml").model


@pytest.fixture(scope="module")
def net(cfg):
    torch.manual_seed(0)
    return EmbeddingNet(cfg).eval()


def test_forward_hooks_agree_with_table1(net):
    seen = {}
    hooks = [
        getattr(net, n).register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape[1:]))
        )
        for n in ("stem", "stage1", "stage2", "stage3", "stage4", "pool", "flatten", "head")
    ]
    try:
        with torch.no_grad():
            out = net(torch.randn(3, 1, 313, 128))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (3, 128)
    for name, (t, f, c) in TABLE1.items():
        if name != "input":
            assert seen[name] == (c, t, f), name
    assert seen["flatten"] == (512,) and seen["head"] == (128,) and net.head.in_features == 512


def test_batch_norm_after_every_convolution(net):
    modules = list(net.modules())
    convs = [m for m in modules if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 4 * 2 * 2 + 3  # stem, 16 block convs, 3 channel-changing shortcuts
    for conv in convs:
        assert conv.bias is None
    for parent in net.modules():
        kids = list(parent.children())
        for a, b in zip(kids, kids[1:]):
            if isinstance(a, torch.nn.Conv2d):
                assert isinstance(b, torch.nn.BatchNorm2d)
    slopes = {m.negative_slope for m in modules if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}


def test_summary_shows_sizes_and_parameter_count(net):
    text = net.summary()
    total = sum(p.numel() for p in net.parameters())
    assert f"{total:,}" in text
    for t, f, c in TABLE1.values():
        assert f"{t} x {f} x {c}" in text
    assert "512" in text and "128" in text
    net.train()
    before = net.stem[1].running_mean.clone()
    net.summary()
    assert net.training  # summary restores the mode ...
    assert torch.equal(net.stem[1].running_mean, before)  # ... and leaves BN statistics alone
    net.eval()


def test_summary_command_prints(repo):
    code = (
        "from asd.infra.config import load_config; from asd.method.model import EmbeddingNet; "
        "print(EmbeddingNet(load_config().model).summary())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "157 x 64 x 16" in out and "1 x 4 x 128" in out and "total parameters" in out


def test_channels_last_matches(net):
    x = torch.randn(2, 1, 313, 128)
    with torch.no_grad():
        ref = net(x)
        fast = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    net.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_autocast_bf16_cpu(net):
    x = torch.randn(2, 1, 313, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (2, 128) and torch.isfinite(out.float()).all()


def test_gradients_and_train_mode(cfg):
    net = EmbeddingNet(cfg)
    out = net(torch.randn(2, 1, 313, 128))
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_other_input_sizes_and_bad_time_pool(cfg):
    import dataclasses

    net = EmbeddingNet(cfg, frames=320, mels=64)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 320, 64)).shape == (1, 128)
    with pytest.raises(ValueError, match="time_pool"):
        EmbeddingNet(dataclasses.replace(cfg, time_pool=11))
