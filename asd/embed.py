"""Embeddings of log-mel features with a trained model (eval mode, no gradients)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

# Batch size for embedding on a CPU: small batches keep each layer's activations in cache, and
# a larger batch gives no more parallelism there (``python -m bench.embed`` measures it).
CPU_BATCH = 32


def inference_batch(batch_size: int, device: str | torch.device) -> int:
    """The batch size to embed with: ``batch_size``, at most ``CPU_BATCH`` on a CPU."""
    return min(batch_size, CPU_BATCH) if torch.device(device).type == "cpu" else batch_size


def embed(model: nn.Module, features, mean: np.ndarray, std: np.ndarray,
          batch_size: int = 256, device: str | torch.device = "cpu",
          wrap: Callable[[list], Iterable] | None = None) -> np.ndarray:
    """Embed unnormalised log-mel features.  # (N, T, F) -> float32 (N, D)

    ``features`` may be a memory-mapped array (read one batch at a time); each batch is
    standardised per mel band with the model's training ``mean``/``std`` (F,) and given a
    channel dimension. The model runs in eval mode under ``torch.no_grad`` and is put back in
    its previous mode and weight layout afterwards. ``wrap`` (optional) wraps the list of batch
    slices, e.g. ``tqdm`` for a progress bar on the command line.
    """
    n = len(features)
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=device)  # (F,)
    std = torch.as_tensor(np.asarray(std, dtype=np.float32), device=device)  # (F,)
    slices = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if wrap is not None:
        slices = wrap(slices)
    was_training = model.training
    model.eval()
    # channels_last convolutions are many times faster on CPU (same numbers, other layout)
    layout = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    kernels = [p for p in model.parameters()  # a kernel whose layout shows: C > 1, not 1 x 1
               if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    before = (torch.channels_last if kernels and kernels[0].is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format)
    model.to(memory_format=layout)
    out = []
    try:
        with torch.no_grad():
            for sl in slices:
                x = torch.from_numpy(np.asarray(features[sl], dtype=np.float32)).to(device)
                x = ((x - mean) / std).unsqueeze(1).contiguous(memory_format=layout)  # (B, 1, T, F)
                out.append(model(x).float().cpu().numpy())  # (B, D)
    finally:
        model.train(was_training)
        if kernels and before != layout:
            model.to(memory_format=before)  # the caller's layout, as it was
    if not out:
        dim = getattr(getattr(model, "cfg", None), "embedding_dim", 0)
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
