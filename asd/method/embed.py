"""Embeddings of log-mel features with a trained model (eval mode, no gradients)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

# Batch size for embedding on a CPU: small batches keep each layer's activations in cache, and
# a larger batch gives no more parallelism there (``python -m bench.embed`` measures it).
CPU_BATCH = 32


def inference_batch(batch_size: int, device: str | torch.device) -> int:
    """The batch size to embed with: ``batch_size``, at most ``CPU_BATCH`` on a CPU."""
    return min(batch_size, CPU_BATCH) if torch.device(device).type == "cpu" else batch_size


def embed(
    model: nn.Module,
    features,
    mean: np.ndarray,
    std: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    wrap: Callable[[list], Iterable] | None = None,
) -> np.ndarray:
    """Embed unnormalised log-mel features.  # (N, T, F) -> float32 (N, D)

    ``features`` may be memory-mapped (read a batch at a time); batches are standardised per
    mel band with the training ``mean``/``std`` (F,). A copy of the model runs in eval mode
    (channels_last on a CPU), so the caller's model is left as it was. ``wrap`` (optional)
    wraps the list of batch slices, e.g. ``tqdm`` for a progress bar.
    """
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=device)  # (F,)
    std = torch.as_tensor(np.asarray(std, dtype=np.float32), device=device)  # (F,)
    slices = [slice(i, i + batch_size) for i in range(0, len(features), batch_size)]
    layout = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    net = copy.deepcopy(model).eval().to(memory_format=layout)
    out = []
    with torch.no_grad():
        for sl in wrap(slices) if wrap is not None else slices:
            x = torch.from_numpy(np.asarray(features[sl], dtype=np.float32)).to(device)
            x = ((x - mean) / std).unsqueeze(1).contiguous(memory_format=layout)  # (B, 1, T, F)
            out.append(net(x).float().cpu().numpy())  # (B, D)
    return np.concatenate(out).astype(np.float32, copy=False)
