"""The memory-mapped batch path reads the next batch's rows on a background thread while the
current batch is in use, and gives the batches of a plain read, bit for bit."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from asd.method.sampling import MixupBatches

N, T, F = 40, 6, 4


class Recording:
    """A features array that records which thread asked for which rows."""

    def __init__(self, features: np.ndarray) -> None:
        self.features, self.reads = features, []

    def __getitem__(self, rows):
        self.reads.append((threading.current_thread().name, np.asarray(rows).tolist()))
        return self.features[rows]


def features() -> np.ndarray:
    return np.random.default_rng(0).normal(-30, 9, size=(N, T, F)).astype(np.float16)


def batches(data, **kw) -> MixupBatches:
    mean = np.linspace(-40, -20, F).astype(np.float32)
    std = np.linspace(5, 12, F).astype(np.float32)
    args = dict(batch_size=8, iterations_per_epoch=4, iterations=10, seed=3)
    return MixupBatches(
        data, mean, std, np.arange(N) % 3, range(0, 25), range(25, 40), **args, **kw
    )


def test_batches_equal_a_plain_read_bit_for_bit():
    data = features()
    loader = batches(data)
    mean, istd = loader._mean, loader._istd
    g = torch.Generator()
    for epoch in range(3):
        g.manual_seed(3 * 1_000_003 + epoch)
        for batch in loader:  # in the generator's order: first rows, second rows, ratios
            a = torch.randint(25, (8,), generator=g)
            c = torch.randint(15, (8,), generator=g) + 25
            assert torch.equal(batch["lam"], torch.rand(8, generator=g).float())
            for key, cache_rows in (("x_a", a), ("x_b", c)):
                plain = (torch.from_numpy(data[cache_rows.numpy()]).float() - mean) * istd
                assert torch.equal(batch[key], plain.unsqueeze(1))
    assert loader.done == 10


def test_the_next_batch_is_read_on_a_thread_while_this_one_is_used():
    data = Recording(features())
    loader = iter(batches(data))
    first = next(loader)
    assert first["x_a"].shape == (8, 1, T, F)
    deadline = time.monotonic() + 60
    while len(data.reads) < 4 and time.monotonic() < deadline:  # batch 2's two reads
        time.sleep(0.01)
    assert len(data.reads) == 4  # batch 1 and batch 2 read, batch 2 not yet asked for
    assert {name for name, _ in data.reads} == {"read-ahead_0"}
    assert len(list(loader)) == 3
