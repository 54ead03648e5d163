"""Embeddings of a whole feature array, batch by batch (asd.method.embed)."""

import numpy as np
import torch

from asd.method.embed import embed
from asd.method.model import build_model


def test_embed_streams_batches_in_eval_mode(tiny_cfg):
    torch.manual_seed(0)
    model, _ = build_model(tiny_cfg, 2)
    model.train()
    rng = np.random.default_rng(0)
    feats = rng.normal(-40, 5, size=(5, 313, 128)).astype(np.float16)  # (N, T, F)
    mean, std = np.full(128, -40, np.float32), np.full(128, 5, np.float32)
    out = embed(model, feats, mean, std, batch_size=2)
    assert out.shape == (5, 16) and out.dtype == np.float32
    assert model.training  # mode restored
    for p in model.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(), "embed left the caller's weights channels_last"
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy((feats.astype(np.float32) - mean) / std)[:, None]
        assert np.allclose(out, model(x).numpy(), atol=1e-5)
