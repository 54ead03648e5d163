"""The modified ResNet of the report's Table 1: log-mel (B, 1, T, F) -> embedding (B, D).

Sizes below are Table 1's, written T x F x C (time x mel x channels); tensors are (B, C, T, F).

    input    313 x 128 x 1
    stem     conv 7x7 stride 2 (padding 3), BN, leaky ReLU           157 x 64 x 16
    stage1   max-pool 3x3 stride 2 (padding 1), 2 residual blocks     79 x 32 x 16
    stage2   idem                                                     40 x 16 x 32
    stage3   idem                                                     20 x  8 x 64
    stage4   idem                                                     10 x  4 x 128
    pool     max-pool 10x1 stride 1                                    1 x  4 x 128
    flatten                                                                   512
    head     linear                                                           128

Choices the report leaves open:
- Table 1's residual blocks have stride 1, yet every stage halves T and F (rounding up): each
  stage starts with a 3x3 stride-2 max-pool (padding 1), giving exactly 157 -> 79 -> 40 -> 20 -> 10.
- A residual block is conv 3x3, BN, leaky ReLU, conv 3x3, BN, plus the shortcut (1x1 conv + BN
  where the width changes, else identity), then leaky ReLU.
- Batch norm follows every convolution (which has no bias), on that convolution's own output (a
  port of the original code applies it to the first block's input: a bug we do not copy).
- The flatten takes (C, F) in PyTorch's (B, C, 1, F) order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from asd.infra.config import Config, ConfigError, ModelConfig
from asd.method.losses import SubClusterAdaCos


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """A convolution without bias ("same" padding for odd kernels), then batch norm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResidualBlock(nn.Module):
    """(conv 3x3, BN, leaky ReLU, conv 3x3, BN) + shortcut, leaky ReLU; stride 1."""

    def __init__(self, c_in: int, c_out: int, slope: float):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3)
        self.conv2 = _conv_bn(c_out, c_out, 3)
        self.shortcut = _conv_bn(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, F) -> (B, C_out, T, F)."""
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


def _stage(c_in: int, c_out: int, blocks: int, slope: float) -> nn.Sequential:
    """Max-pool 3x3 stride 2 (halving T and F, rounding up), then ``blocks`` residual blocks."""
    return nn.Sequential(
        nn.MaxPool2d(3, stride=2, padding=1),
        *(ResidualBlock(c_in if i == 0 else c_out, c_out, slope) for i in range(blocks)),
    )


def _conv_len(n: int, kernel: int, stride: int, padding: int) -> int:
    """The output length of a convolution or pooling along one axis of length ``n``."""
    return (n + 2 * padding - kernel) // stride + 1


class EmbeddingNet(nn.Sequential):
    """Table 1's modified ResNet: (B, 1, frames, mels) -> (B, embedding_dim), its parts in order:
    stem, stage1.., pool, flatten, head."""

    def __init__(self, cfg: ModelConfig, frames: int = 313, mels: int = 128):
        super().__init__()
        self.frames = frames
        self.mels = mels
        slope = cfg.leaky_relu_slope
        kernel = cfg.stem_kernel
        stride = cfg.stem_stride
        stem_conv = _conv_bn(1, cfg.stem_channels, kernel, stride)
        self.stem = nn.Sequential(*stem_conv, nn.LeakyReLU(slope))
        # The sizes (T, F, C) are followed layer by layer, so that the head's input size comes
        # from the config and a wrong time_pool is refused here, not at the first batch.
        t = _conv_len(frames, kernel, stride, kernel // 2)
        f = _conv_len(mels, kernel, stride, kernel // 2)
        c = cfg.stem_channels
        for i, width in enumerate(cfg.stage_channels, start=1):
            self.add_module(f"stage{i}", _stage(c, width, cfg.blocks_per_stage, slope))
            # The stage's max-pool (3x3, stride 2, padding 1) halves T and F, rounding up.
            t = _conv_len(t, 3, 2, 1)
            f = _conv_len(f, 3, 2, 1)
            c = width
        if t < cfg.time_pool:
            raise ValueError(
                f"model.time_pool={cfg.time_pool} exceeds the {t} time steps left "
                f"after the last stage for {frames} input frames"
            )
        # Table 1's max-pool over time (10 x 1) leaves one step for 313 frames.
        self.pool = nn.MaxPool2d((cfg.time_pool, 1), stride=1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear((t - cfg.time_pool + 1) * f * c, cfg.embedding_dim)

    def summary(self) -> str:
        """Table 1 as built: each layer's output size (T x F x C) and parameter count."""
        was_training = self.training
        p = next(self.parameters())
        x = torch.zeros(1, 1, self.frames, self.mels, device=p.device, dtype=p.dtype)
        lines = [
            "EmbeddingNet (report Table 1, modified ResNet)",
            f"{'layer':8} {'output (T x F x C)':>18}  {'parameters':>10}",
            f"{'input':8} {f'{self.frames} x {self.mels} x 1':>18}  {0:>10,}",
        ]
        # A zero clip goes through in eval mode, so the probe leaves batch-norm statistics alone.
        with torch.no_grad():
            for name, layer in self.eval().named_children():
                x = layer(x)
                n = sum(q.numel() for q in layer.parameters())
                if x.dim() == 4:
                    size = f"{x.shape[2]} x {x.shape[3]} x {x.shape[1]}"  # T x F x C
                else:
                    size = x.shape[1]
                lines.append(f"{name:8} {size:>18}  {n:>10,}")
        self.train(was_training)
        total = sum(q.numel() for q in self.parameters())
        trainable = sum(q.numel() for q in self.parameters() if q.requires_grad)
        lines.append(f"total parameters: {total:,} (trainable: {trainable:,})")
        return "\n".join(lines)


# Embedding nets by ``model.backbone``: a function of the config giving a module that maps
# (B, 1, frames, mels) log-mels to (B, model.embedding_dim) embeddings. Its direct children are
# the parts ``stage2.trainable`` can name. Add one with ``BACKBONES["name"] = fn``.
BACKBONES: dict[str, Callable[[Config], nn.Module]] = {
    "resnet": lambda cfg: EmbeddingNet(
        cfg.model, frames=cfg.features.frames, mels=cfg.features.n_mels
    ),  # the report's Table 1
}


def build_model(cfg: Config, n_classes: int) -> tuple[nn.Module, SubClusterAdaCos]:
    """The embedding net that ``model.backbone`` names, and a new sub-cluster AdaCos head."""
    if cfg.model.backbone not in BACKBONES:
        raise ConfigError(
            f"config key 'model.backbone': unknown backbone "
            f"{cfg.model.backbone!r} (known: {', '.join(sorted(BACKBONES))})"
        )
    net = BACKBONES[cfg.model.backbone](cfg)
    head = SubClusterAdaCos(
        n_classes, cfg.loss.n_subclusters, cfg.model.embedding_dim, cfg.loss.max_angle
    )
    return net, head
