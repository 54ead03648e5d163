"""Embeddings of log-mel features with a trained model (eval mode, no gradients)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

# Batch size for embedding on a CPU: small batches keep each layer's activations in the
# processor's cache, and a larger batch gives no more parallelism there (``python -m
# bench.embed`` measures it).
CPU_BATCH = 32


def inference_batch(batch_size: int, device: str | torch.device) -> int:
    """The batch size to embed with: ``batch_size``, at most ``CPU_BATCH`` on a CPU."""
    if torch.device(device).type == "cpu":
        return min(batch_size, CPU_BATCH)
    return batch_size


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
    # CPU convolutions run faster in channels_last, as in training.
    on_cpu = torch.device(device).type == "cpu"
    layout = torch.channels_last if on_cpu else torch.contiguous_format
    # A copy in eval mode: batch norm uses its running statistics and the AdaCos scale stays.
    net = copy.deepcopy(model).eval().to(memory_format=layout)
    out = []
    with torch.no_grad():
        for sl in wrap(slices) if wrap is not None else slices:
            x = torch.from_numpy(np.asarray(features[sl], dtype=np.float32)).to(device)
            # Standardised per mel band with the training statistics, as in training.
            x = ((x - mean) / std).unsqueeze(1)  # (B, 1, T, F)
            x = x.contiguous(memory_format=layout)
            out.append(net(x).float().cpu().numpy())  # (B, D)
    return np.concatenate(out).astype(np.float32, copy=False)
