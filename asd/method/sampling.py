"""Mixup pairs drawn straight from the feature cache, where the model runs (report 2.4).

Step 1 pairs two random source clips, Step 2 a random source with a random target clip. The
generator is re-seeded at every epoch from (seed, epoch), so a run resumed at an epoch boundary
draws the batches the uninterrupted run would have. The cache is read as a memory map; on a GPU
it is held in device memory when it fits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

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
    A pass yields ``steps_per_epoch`` batches, fewer at the end: ``total_steps`` in all."""

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
        steps_per_epoch: int,
        total_steps: int,
        seed: int,
        device: torch.device | str = "cpu",
        cache_on_device: bool = False,
    ) -> None:
        self.device, self.seed, self.done = torch.device(device), seed, 0
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.total_steps, self.generator = total_steps, torch.Generator()
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
        return max(0, min(self.steps_per_epoch, self.total_steps - self.done))

    def __iter__(self) -> Iterator[dict]:
        n, b, g = len(self), self.batch_size, self.generator
        g.manual_seed(self.seed * 1_000_003 + self.done // self.steps_per_epoch)
        draws = torch.empty(3, n, b, dtype=torch.float64)  # float64 holds rows and ratios exactly
        for i in range(n):  # in the generator's order of one batch after another
            draws[0, i] = torch.randint(len(self._first), (b,), generator=g)
            draws[1, i] = torch.randint(len(self._second), (b,), generator=g)
            draws[2, i] = torch.rand(b, generator=g)
        a, c = self._first[draws[0].long()], self._second[draws[1].long()]  # (n, B) each
        # the epoch's rows, labels and ratios in one copy (the device is idle after the epoch's end)
        epoch = torch.stack([a, c, self._labels[a], self._labels[c], draws[2]]).to(self.device)
        rows, lam = epoch[:4].long(), epoch[4].float()
        if self._device_features is None:  # memory-mapped: each batch's rows read on a thread
            yield from self._read_ahead(rows, lam, a, c)
            return
        for i in range(n):
            self.done += 1
            x_a = self._from_device(rows[0, i])
            x_b = self._from_device(rows[1, i])
            yield self._batch(rows, lam, i, x_a, x_b)

    def _batch(self, rows, lam, i: int, x_a: torch.Tensor, x_b: torch.Tensor) -> dict:
        """Batch ``i`` of the epoch's ``rows`` (4, n, B) and ``lam`` (n, B), with its features."""
        return {
            "x_a": self._normalise(x_a),
            "x_b": self._normalise(x_b),
            "y_a": rows[2, i],
            "y_b": rows[3, i],
            "lam": lam[i],
        }

    def _read_ahead(self, rows, lam, a: torch.Tensor, c: torch.Tensor) -> Iterator[dict]:
        """The epoch's batches from the memory-mapped cache, the next batch's rows read on a
        background thread (into pinned memory where the device is a GPU) while the device works
        on the current one; ``a``, ``c`` (n, B): the cache rows of the pairs, on the host."""
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
            ahead = reader.submit(self._from_host, a[0], c[0]) if len(a) else None
            for i in range(len(a)):
                x_a, x_b = ahead.result()
                if i + 1 < len(a):
                    ahead = reader.submit(self._from_host, a[i + 1], c[i + 1])
                self.done += 1
                x_a = x_a.to(self.device, non_blocking=True)
                x_b = x_b.to(self.device, non_blocking=True)
                yield self._batch(rows, lam, i, x_a, x_b)

    def _from_device(self, rows: torch.Tensor) -> torch.Tensor:
        """Features (B, T, F) of cache ``rows`` (on the device) from the device's copy."""
        return self._device_features.index_select(0, self._position[rows])

    def _from_host(self, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Features (B, T, F) of each of ``batches`` of cache rows (B,) from the memory map, in
        pinned memory where the device is a GPU (so that the copy there runs on its own)."""
        out = []
        for rows in batches:
            unique, inverse = np.unique(rows.numpy(), return_inverse=True)
            block = torch.from_numpy(np.asarray(self._features[unique]))  # file order, once each
            x = torch.empty(
                (len(rows), *block.shape[1:]),
                dtype=block.dtype,
                pin_memory=self.device.type == "cuda",
            )
            out.append(torch.index_select(block, 0, torch.from_numpy(inverse), out=x))
        return tuple(out)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mels (B, T, F) of the cache's dtype -> normalised float32 (B, 1, T, F)."""
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
