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
    """ConfigError unless every domain a step draws from has training clips of its classes; a
    run whose classes hold no target domain at all (one condition only) says so."""
    for domain in domains:
        if domain == "target" and "target" not in set(pd.DataFrame(classes)["domain"]):
            raise ConfigError(
                f"the data root {root} has no target training clips, and {step} pairs source "
                f"with target clips: it needs two conditions (folders layout: two sub-folders "
                f"of a machine's train/, the smaller plays the target); submit works from the "
                f"Step 1 run (make submit FROM=runs/NNN-stage1)"
            )
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

    # Catalyst looks for these on every loader; a MixupBatches has neither.
    sampler = None
    batch_sampler = None

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
        self.device = torch.device(device)
        self.seed = seed
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.generator = torch.Generator()
        # Batches yielded so far, over all epochs: the position a checkpoint saves.
        self.done = 0
        # Copies (torch.tensor): the index's arrays can be read-only, which torch.as_tensor
        # warns about.
        self._first = torch.tensor(np.asarray(first_rows), dtype=torch.long)
        self._second = torch.tensor(np.asarray(second_rows), dtype=torch.long)
        self._labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        band_mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        band_std = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        self._mean = band_mean.to(self.device)
        # The inverse, so that every batch multiplies instead of dividing.
        self._istd = (1.0 / band_std).to(self.device)
        self._features = features
        self._device_features = None
        self._position = None
        # asd.infra.training.use_device_cache has found that the training rows fit on the device.
        if cache_on_device:
            self._device_features, self._position = _to_device(
                features, np.union1d(first_rows, second_rows), self.device
            )

    def __len__(self) -> int:
        return max(0, min(self.steps_per_epoch, self.total_steps - self.done))

    def __iter__(self) -> Iterator[dict]:
        n = len(self)
        size = self.batch_size
        generator = self.generator
        # Re-seeded from (seed, epoch): a run resumed at an epoch boundary draws the batches the
        # uninterrupted run would have drawn.
        generator.manual_seed(self.seed * 1_000_003 + self.done // self.steps_per_epoch)
        # The epoch's draws come first, one batch after another in the generator's order: the
        # positions of the two clips in their lists, and the mixing ratio lam ~ U(0, 1).
        pick_a = torch.empty(n, size, dtype=torch.long)
        pick_b = torch.empty(n, size, dtype=torch.long)
        lam = torch.empty(n, size, dtype=torch.float32)
        for i in range(n):
            pick_a[i] = torch.randint(len(self._first), (size,), generator=generator)
            pick_b[i] = torch.randint(len(self._second), (size,), generator=generator)
            lam[i] = torch.rand(size, generator=generator)
        # The positions become cache rows (Step 1: both from the source rows; Step 2: the first
        # from the source rows, the second from the target rows).
        rows_a = self._first[pick_a]  # (n, B)
        rows_b = self._second[pick_b]  # (n, B)
        # Rows, labels and ratios travel to the device in one copy per epoch, while the device
        # is idle between epochs; float64 holds the row numbers and the ratios exactly.
        fields = [rows_a, rows_b, self._labels[rows_a], self._labels[rows_b], lam]
        epoch = torch.stack([field.double() for field in fields]).to(self.device)  # (5, n, B)
        device_rows_a = epoch[0].long()
        device_rows_b = epoch[1].long()
        labels_a = epoch[2].long()
        labels_b = epoch[3].long()
        device_lam = epoch[4].float()
        for i in range(n):
            self.done += 1
            yield {
                "x_a": self.gather(device_rows_a[i], rows_a[i]),
                "x_b": self.gather(device_rows_b[i], rows_b[i]),
                "y_a": labels_a[i],
                "y_b": labels_b[i],
                "lam": device_lam[i],
            }

    def gather(self, rows: torch.Tensor, host_rows: torch.Tensor) -> torch.Tensor:
        """Normalised features (B, 1, T, F) float32 of ``rows`` (device) = ``host_rows`` (CPU)."""
        if self._device_features is not None:
            # The training rows are already in device memory: pick them there.
            x = self._device_features.index_select(0, self._position[rows])
        else:
            # Each row drawn is read once, in file order (the memory map reads forwards), and
            # repeated where the batch drew it twice.
            unique, inverse = np.unique(host_rows.numpy(), return_inverse=True)
            x = torch.from_numpy(np.asarray(self._features[unique]))
            x = x[torch.from_numpy(inverse)].to(self.device, non_blocking=True)
        # Standardised per mel band with the training statistics, as the scoring does.
        x = (x.float() - self._mean) * self._istd  # (B, T, F)
        return x.unsqueeze(1)  # (B, 1, T, F)

    def state_dict(self) -> dict:
        """The seed and the number of batches yielded so far, which a checkpoint keeps."""
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
        # In chunks, so that host memory never holds a full copy of the rows.
        for start in range(0, len(rows), 4096):
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
