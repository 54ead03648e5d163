"""Mixup pairs drawn straight from the feature cache, where the model runs.

Step 1 pairs two random source clips, Step 2 one random source with one random target clip
(report 2.4). Indices and mixing ratios come from a ``torch.Generator`` re-seeded at every epoch
from (seed, epoch), so a run resumed at an epoch boundary draws exactly the batches the
uninterrupted run would have, in every process of a distributed run alike.
The cache is read as a memory map (never copied per epoch or per worker); on a GPU it is held
in device memory when it fits, so gathering and normalising a batch costs a few kernels.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from asd.config import ConfigError
from asd.data import assign_classes

log = logging.getLogger(__name__)


def training_rows(index: pd.DataFrame, classes: pd.DataFrame | dict,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class id of every cache row under a run's class table (-1: a class the run does not
    know), and the training rows of the run's classes per domain (``source``, ``target``)."""
    labels = assign_classes(index, pd.DataFrame(classes))["class"].to_numpy()  # (N,)
    train = (index["split"] == "train").to_numpy() & (labels >= 0)
    domain = index["domain"].to_numpy()
    return labels, {d: np.flatnonzero(train & (domain == d)) for d in ("source", "target")}


def check_clips(rows: dict[str, np.ndarray], domains: Sequence[str], classes: pd.DataFrame | dict,
                root: str, step: str) -> None:
    """ConfigError unless every domain a step draws from has training clips of its classes."""
    for domain in domains:
        if len(rows[domain]) == 0:
            c = pd.DataFrame(classes)
            known = sorted({f"{m} {s}" for m, s in zip(c["machine"], c["section"])})
            raise ConfigError(f"the data root {root} has no {domain} training clips of the run's "
                              f"classes ({', '.join(known)}); {step} needs them (was the run "
                              "made on other data?)")


class MixupBatches:
    """An iterable of mixup pairs with the attributes Catalyst reads from a loader.

    Each batch is a dict: ``x_a``, ``x_b`` (B, 1, T, F) normalised log-mels, ``y_a``, ``y_b``
    (B,) class ids and ``lam`` (B,) ~ U(0, 1); the runner mixes them (``asd.losses.mixup``).
    One pass yields ``steps_per_epoch`` batches, fewer at the very end so that exactly
    ``total_steps`` are drawn over the run.
    """

    sampler = None  # Catalyst checks these on every loader
    batch_sampler = None

    def __init__(
        self,
        features: np.ndarray,  # (N, T, F) memory map or array
        mean: np.ndarray,  # (F,)
        std: np.ndarray,  # (F,)
        labels: Sequence[int],  # (N,) class id of every row
        first_rows: Sequence[int],  # rows the first clip of a pair is drawn from
        second_rows: Sequence[int],  # rows the second clip is drawn from
        batch_size: int,
        steps_per_epoch: int,
        total_steps: int,
        seed: int,
        device: torch.device | str = "cpu",
        cache_on_device: bool = True,
    ) -> None:
        if len(first_rows) == 0 or len(second_rows) == 0:
            raise ValueError("no training clips to draw mixup pairs from "
                             f"({len(first_rows)} first, {len(second_rows)} second)")
        if batch_size < 1 or steps_per_epoch < 1 or total_steps < 0:
            raise ValueError(f"bad sampling sizes: batch {batch_size}, steps {steps_per_epoch}, "
                             f"total {total_steps}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.done = 0
        self.seed = seed
        self.generator = torch.Generator()
        # copies (the index's arrays can be read-only, which torch.as_tensor warns about)
        self._first = torch.tensor(np.asarray(first_rows), dtype=torch.long)
        self._second = torch.tensor(np.asarray(second_rows), dtype=torch.long)
        self._labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self._mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32).to(self.device)
        self._istd = (1.0 / torch.as_tensor(np.asarray(std), dtype=torch.float32)).to(self.device)
        self._features = features
        self._device_features = None
        if self.device.type == "cuda" and cache_on_device:
            self._device_features = _to_device_if_fits(features, self.device)

    def __len__(self) -> int:
        return max(0, min(self.steps_per_epoch, self.total_steps - self.done))

    def __iter__(self) -> Iterator[dict]:
        epoch = self.done // self.steps_per_epoch
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        for _ in range(len(self)):
            batch = self.draw()
            self.done += 1
            yield batch

    def draw(self) -> dict:
        """One batch of pairs; advances the generator."""
        b, g = self.batch_size, self.generator
        a = self._first[torch.randint(len(self._first), (b,), generator=g)]
        c = self._second[torch.randint(len(self._second), (b,), generator=g)]
        lam = torch.rand(b, generator=g)
        return {
            "x_a": self.gather(a),
            "x_b": self.gather(c),
            "y_a": self._labels[a].to(self.device),
            "y_b": self._labels[c].to(self.device),
            "lam": lam.to(self.device),
        }

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Normalised features of ``rows`` on the device: (B, 1, T, F) float32."""
        if self._device_features is not None:
            x = self._device_features.index_select(0, rows.to(self.device))
        else:
            # rows in file order, each read once: ~3x faster than np.take on a cold cache
            unique, inverse = np.unique(rows.numpy(), return_inverse=True)
            x = torch.from_numpy(np.asarray(self._features[unique]))[torch.from_numpy(inverse)]
            x = x.to(self.device, non_blocking=True)
        x = (x.float() - self._mean) * self._istd  # (B, T, F)
        return x.unsqueeze(1)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the seed stays this process's own (each DDP rank has one)."""
        self.done = int(state["done"])

    def __getstate__(self):  # spawned DDP workers reopen the cache; never pickle the arrays
        raise TypeError("MixupBatches is built inside each process; it is not picklable")


def _to_device_if_fits(features: np.ndarray, device: torch.device) -> torch.Tensor | None:
    free, _ = torch.cuda.mem_get_info(device)
    need = features.size * features.dtype.itemsize
    if need > 0.6 * free:
        log.info("feature cache (%.1f GB) kept in host memory: %.1f GB free on %s",
                 need / 1e9, free / 1e9, device)
        return None
    out = torch.empty(features.shape, dtype=torch.from_numpy(features[:1]).dtype, device=device)
    step = 4096
    for start in range(0, len(features), step):  # chunked: no full host copy
        rows = np.ascontiguousarray(features[start:start + step])
        out[start:start + step] = torch.from_numpy(rows).to(device)
    return out
