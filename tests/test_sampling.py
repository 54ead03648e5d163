"""Mixup pairs: Step 1 draws only source clips, Step 2 one source and one target; resumable."""

import numpy as np
import pytest
import torch

from asd.method.losses import mixup
from asd.method.sampling import MixupBatches


def make(first, second, **kw):
    n, t, f = 10, 6, 4
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, t, f)).astype(np.float16)
    features[:, 0, 0] = np.arange(n)  # row id readable from the features
    mean, std = np.zeros(f, np.float32), np.ones(f, np.float32)
    labels = np.arange(n) % 5
    args = dict(batch_size=16, iterations_per_epoch=3, iterations=7, seed=1)
    args.update(kw)
    return MixupBatches(features, mean, std, labels, first, second, **args)


SOURCE, TARGET = [0, 1, 2, 3, 4, 5], [6, 7, 8, 9]


def rows(x):
    return x[:, 0, 0, 0].round().long()


def test_step1_batches_only_source():
    batches = make(SOURCE, SOURCE)
    for batch in batches:
        assert batch["x_a"].shape == (16, 1, 6, 4) and batch["x_a"].dtype == torch.float32
        assert set(rows(batch["x_a"]).tolist()) <= set(SOURCE)
        assert set(rows(batch["x_b"]).tolist()) <= set(SOURCE)
        assert torch.equal(batch["y_a"], rows(batch["x_a"]) % 5)


def test_step2_pairs_source_with_target():
    for batch in make(SOURCE, TARGET):
        assert set(rows(batch["x_a"]).tolist()) <= set(SOURCE)
        assert set(rows(batch["x_b"]).tolist()) <= set(TARGET)


def test_mixed_labels_sum_to_one():
    batch = next(iter(make(SOURCE, TARGET)))
    assert ((batch["lam"] >= 0) & (batch["lam"] <= 1)).all()
    y_a = torch.nn.functional.one_hot(batch["y_a"], 5).float()
    y_b = torch.nn.functional.one_hot(batch["y_b"], 5).float()
    x, y = mixup(batch["x_a"], batch["x_b"], y_a, y_b, batch["lam"])
    torch.testing.assert_close(y.sum(1), torch.ones(16))
    lam = batch["lam"].view(-1, 1, 1, 1)
    torch.testing.assert_close(x, lam * batch["x_a"] + (1 - lam) * batch["x_b"])


def test_epochs_add_up_to_the_iterations():
    batches = make(SOURCE, SOURCE)
    lengths = []
    while len(batches):
        lengths.append(sum(1 for _ in batches))
    assert lengths == [3, 3, 1]


def test_resume_draws_the_same_batches():
    full = make(SOURCE, TARGET)
    first = next(iter(full))
    state = full.state_dict()
    rest = [b["y_a"] for b in full]
    resumed = make(SOURCE, TARGET)
    resumed.load_state_dict(state)
    again = [b["y_a"] for b in resumed]
    assert len(rest) == len(again) and all(torch.equal(a, b) for a, b in zip(rest, again))
    assert first["y_a"].shape == (16,)


def test_normalisation_uses_cache_stats():
    n, t, f = 4, 3, 2
    features = np.full((n, t, f), 5, np.float16)
    b = MixupBatches(
        features,
        np.full(f, 3, np.float32),
        np.full(f, 2, np.float32),
        [0] * n,
        [0, 1],
        [2, 3],
        batch_size=2,
        iterations_per_epoch=1,
        iterations=1,
        seed=0,
    )
    assert torch.all(next(iter(b))["x_a"] == 1.0)


def test_training_rows_of_the_run_classes():
    import pandas as pd

    from asd.infra.config import ConfigError
    from asd.method.sampling import check_clips, training_rows

    index = pd.DataFrame(
        {
            "machine": ["fan"] * 4 + ["pump"],
            "section": ["00"] * 5,
            "domain": ["source", "target", "source", "source", "source"],
            "split": ["train", "train", "test", "train", "train"],
        }
    )
    classes = pd.DataFrame(
        {
            "class": [0, 1],
            "machine": ["fan", "fan"],
            "section": ["00", "00"],
            "domain": ["source", "target"],
        }
    )
    labels, rows = training_rows(index, classes)
    assert labels.tolist() == [0, 1, 0, 0, -1]  # pump 00 is no class of the run
    assert rows["source"].tolist() == [0, 3] and rows["target"].tolist() == [1]
    check_clips(rows, ["source", "target"], classes, "data", "stage2")
    with pytest.raises(ConfigError, match="no target training clips of the run's classes"):
        check_clips(
            {**rows, "target": rows["target"][:0]}, ["source", "target"], classes, "data", "stage2"
        )


def test_an_epoch_draws_in_the_generator_order_of_one_batch_after_another():
    first, second = torch.tensor(SOURCE), torch.tensor(TARGET)
    batches = make(SOURCE, TARGET)
    g = torch.Generator()
    for epoch in range(2):
        g.manual_seed(1 * 1_000_003 + epoch)  # seed 1 (make's), re-seeded every epoch
        for batch in batches:
            a = first[torch.randint(len(first), (16,), generator=g)]
            c = second[torch.randint(len(second), (16,), generator=g)]
            assert torch.equal(batch["lam"], torch.rand(16, generator=g))
            assert torch.equal(rows(batch["x_a"]), a) and torch.equal(rows(batch["x_b"]), c)
            assert torch.equal(batch["y_a"], a % 5) and torch.equal(batch["y_b"], c % 5)


def test_features_held_on_the_device_give_the_same_batches():
    """The device-resident path (forced on the CPU) holds only the training rows it draws."""
    first, second = [0, 2, 3, 5], [7, 9]
    mapped, held = make(first, second), make(first, second, cache_on_device=True)
    assert len(held._device_features) == len(first + second) < len(held._features)
    for x, y in zip(mapped, held):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
