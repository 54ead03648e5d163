"""bench.gpu's measures that run without a GPU: the profiler's summary of a step, the runner
under the profiler with the data path it used, and a row of the speed table."""

from __future__ import annotations

import torch

from asd.infra.config import load_config
from bench import gpu

TINY = [
    "model.stem_channels=4",
    "model.stage_channels=[4,4,8,8]",
    "model.embedding_dim=16",
    "loss.n_subclusters=4",
    "stage1.batch_size=4",
]


def test_profile_summary_counts_host_time_per_step():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(4):
            torch.ones(100, 100).matmul(torch.ones(100, 100)).sum()
    summary = gpu.profile_summary(profiler, steps=4)
    assert summary["host_ms"] > 0
    assert summary["device_ms"] == 0 and summary["launches"] == 0


def test_the_last_epoch_runs_under_the_profiler_and_the_data_path_is_named(tmp_path):
    counts = {
        ("source", "train"): 6,
        ("target", "train"): 2,
        ("source", "test"): 1,
        ("target", "test"): 1,
    }
    cache = gpu.make_cache(tmp_path / "cache", counts, machines=("fan",), sections=("00", "03"))
    cfg = load_config(gpu.REPO / "config.yml", TINY)
    runner = gpu.train(cfg, cache, tmp_path / "run", (2, 2), False, profile=True)
    assert runner.data_path() == "memory map"  # the CPU: no device cache
    assert len(runner.losses) == 4
    assert gpu.profile_summary(runner.profiler, steps=2)["host_ms"] > 0


def test_a_row_names_the_data_path_and_the_shares():
    r = {
        "data_path": "device cache",
        "samples_per_s": 10_000.0,
        "ms_per_step": 25.6,
        "host_share": 0.4,
        "device_share": 0.9,
        "launches": 1234.0,
        "peak_gib": 12.5,
        "batch": 256,
        "stage2_batch": 256,
    }
    line = gpu.row(r)
    assert line.split()[:7] == ["device", "cache", "10000", "25.6", "40%", "90%", "1234"]
    assert gpu.row({"error": "skipped"}) == "skipped"
