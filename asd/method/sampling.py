"""Mixup pairs drawn straight from the feature cache, where the model runs (report 2.4).

Step 1 pairs two random source clips, Step 2 a random source with a random target clip. The
generator is re-seeded at every epoch from (seed, epoch), so a run resumed at an epoch boundary
draws the batches the uninterrupted run would have. The cache is read as a memory map; on a GPU
it is held in device memory when it fits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from asd.infra.config import ConfigError
from asd.infra.data import assign_classes


def training_rows(
    index: pd.DataFrame,
    classes: pd.DataFrame | dict,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class id of every cache row under a run's class table (-1: a class the run does not
    know), and the training rows of the run's classes per domain (``source``, ``target``)."""
    labels = assign_classes(index, pd.DataFrame(classes))["class"].to_numpy()  # (N,)
    train = (index["split"] == "train").to_numpy() & (labels >= 0)
    domain = index["domain"].to_numpy()
    return labels, {d: np.flatnonzero(train & (domain == d)) for d in ("source", "target")}


def check_clips(
    rows: dict[str, np.ndarray],
    domains: Sequence[str],
    classes: pd.DataFrame | dict,
    root: str,
    step: str,
) -> None:
    """ConfigError unless every domain a step draws from has training clips of its classes."""
    for domain in domains:
        if len(rows[domain]) == 0:
            c = pd.DataFrame(classes)
            known = sorted({f"{m} {s}" for m, s in zip(c["machine"], c["section"])})
            raise ConfigError(
                f"the data root {root} has no {domain} training clips of the run's "
                f"classes ({', '.join(known)}), which {step} needs (other data?)"
            )


class MixupBatches:
    """A loader (for Catalyst) of pairs of rows of ``features`` (N, T, F), the first clip from
    ``first_rows``, the second from ``second_rows``: batches ``x_a``, ``x_b`` (B, 1, T, F) log-mels
    normalised by mean and std (F,), ``y_a``, ``y_b`` (B,) ``labels`` and ``lam`` (B,) ~ U(0, 1).
    A pass yields ``iterations_per_epoch`` batches, fewer at the end: ``iterations`` in all."""

    sampler = batch_sampler = None  # Catalyst checks these on every loader

    def __init__(
        self,
        features: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        labels: Sequence[int],
        first_rows: Sequence[int],
        second_rows: Sequence[int],
        batch_size: int,
        iterations_per_epoch: int,
        iterations: int,
        seed: int,
        device: torch.device | str = "cpu",
        cache_on_device: bool = False,
    ) -> None:
        self.device, self.seed, self.done = torch.device(device), seed, 0
        self.batch_size, self.iterations_per_epoch = batch_size, iterations_per_epoch
        self.iterations, self.generator = iterations, torch.Generator()
        # copies: the index's arrays can be read-only, which torch.as_tensor warns about
        self._first, self._second, self._labels = (
            torch.tensor(np.asarray(rows), dtype=torch.long)
            for rows in (first_rows, second_rows, labels)
        )
        self._mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32).to(self.device)
        self._istd = (1.0 / torch.as_tensor(np.asarray(std), dtype=torch.float32)).to(self.device)
        self._features, self._device_features = features, None
        if cache_on_device:  # asd.infra.training.use_device_cache found that the rows fit
            self._device_features, self._position = _to_device(
                features, np.union1d(first_rows, second_rows), self.device
            )

    def __len__(self) -> int:
        return max(0, min(self.iterations_per_epoch, self.iterations - self.done))

    def __iter__(self) -> Iterator[dict]:
        n, b, g = len(self), self.batch_size, self.generator
        g.manual_seed(self.seed * 1_000_003 + self.done // self.iterations_per_epoch)
        draws = torch.empty(3, n, b, dtype=torch.float64)  # float64 holds rows and ratios exactly
        for i in range(n):  # in the generator's order of one batch after another
            draws[0, i] = torch.randint(len(self._first), (b,), generator=g)
            draws[1, i] = torch.randint(len(self._second), (b,), generator=g)
            draws[2, i] = torch.rand(b, generator=g)
        a, c = self._first[draws[0].long()], self._second[draws[1].long()]  # (n, B) each
        # the epoch's rows, labels and ratios in one copy (the device is idle after the epoch's end)
        epoch = torch.stack([a, c, self._labels[a], self._labels[c], draws[2]]).to(self.device)
        rows, lam = epoch[:4].long(), epoch[4].float()
        for i in range(n):
            self.done += 1
            yield {
                "x_a": self.gather(rows[0, i], a[i]),
                "x_b": self.gather(rows[1, i], c[i]),
                "y_a": rows[2, i],
                "y_b": rows[3, i],
                "lam": lam[i],
            }

    def gather(self, rows: torch.Tensor, host_rows: torch.Tensor) -> torch.Tensor:
        """Normalised features (B, 1, T, F) float32 of ``rows`` (device) = ``host_rows`` (CPU)."""
        if self._device_features is not None:
            x = self._device_features.index_select(0, self._position[rows])
        else:
            unique, inverse = np.unique(host_rows.numpy(), return_inverse=True)
            x = torch.from_numpy(np.asarray(self._features[unique]))  # file order, each row once
            x = x[torch.from_numpy(inverse)].to(self.device, non_blocking=True)
        x = (x.float() - self._mean) * self._istd  # (B, T, F)
        return x.unsqueeze(1)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the seed stays this process's own (each DDP rank has one)."""
        self.done = int(state["done"])


def _to_device(features: np.ndarray, rows: np.ndarray, device: torch.device):
    """The ``rows`` of ``features`` in device memory (R, T, F) and each cache row's position
    there (N,); (None, None) with a warning where the device runs out of memory on the way."""
    try:
        out = torch.empty(
            (len(rows), *features.shape[1:]),
            device=device,
            dtype=torch.from_numpy(features[:1]).dtype,
        )
        for start in range(0, len(rows), 4096):  # in chunks: no full copy in host memory
            chunk = np.asarray(features[rows[start : start + 4096]])
            out[start : start + len(chunk)] = torch.from_numpy(chunk).to(device)
    except torch.OutOfMemoryError:
        warnings.warn(
            f"engine.cache_on_device: {device} ran out of memory holding the "
            "training features; they are read from the memory-mapped cache instead",
            stacklevel=2,
        )
        return None, None
    position = torch.full((len(features),), -1, dtype=torch.long)
    position[torch.from_numpy(rows)] = torch.arange(len(rows))
    return out, position.to(device)
