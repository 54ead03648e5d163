"""bench.gpu: refuses in one line without CUDA; its training child runs the project's runner;
the profiler's summary of a step, the runner under the profiler with the data path it used,
and a row of the speed table, all without a GPU."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from helpers import TINY

from asd.infra.config import load_config
from bench import gpu

REPO = Path(__file__).resolve().parents[1]


def tiny_cache(tmp_path: Path) -> Path:
    """bench.gpu's own cache of one machine: 6 source and 2 target training clips."""
    counts = {
        ("source", "train"): 6,
        ("target", "train"): 2,
        ("source", "test"): 1,
        ("target", "test"): 1,
    }
    return gpu.make_cache(tmp_path / "cache", counts, machines=("fan",), sections=("00", "03"))


def test_refuses_without_cuda():
    out = subprocess.run(
        [sys.executable, "-m", "bench.gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""},
        timeout=300,
    )
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == (
        "bench.gpu: no CUDA GPU is visible; it measures training on a GPU only"
    )


def test_cpu_child_trains_the_first_steps_with_the_runner(tmp_path):
    cache = tiny_cache(tmp_path)
    args = argparse.Namespace(compare_steps=5, compare_batch=4, overrides=TINY)
    first = gpu.child("cpu", cache, tmp_path / "a", args)
    again = gpu.child("cpu", cache, tmp_path / "b", args)
    assert len(first["losses"]) == 5 and np.isfinite(first["losses"]).all()
    assert first == again  # the same seed: the same batches and losses


def test_report_states_agreement(capsys):
    args = argparse.Namespace(compare_steps=3, compare_batch=4)
    cpu = {"losses": [4.0, 3.0, 2.0]}
    results = {"cpu": cpu, **{name: cpu for name in gpu.ENGINES}}
    assert gpu.report(results, args) == 0
    results["amp fp16"] = {"losses": [4.0, 3.0, 2.5]}  # 25 % off at step 3
    assert gpu.report(results, args) == 1
    assert "25.00%  NO" in capsys.readouterr().out


def test_profile_summary_counts_host_time_per_step():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(4):
            torch.ones(100, 100).matmul(torch.ones(100, 100)).sum()
    summary = gpu.profile_summary(profiler, steps=4)
    assert summary["host_ms"] > 0
    assert summary["device_ms"] == 0 and summary["launches"] == 0


def test_the_last_epoch_runs_under_the_profiler_and_the_data_path_is_named(tmp_path):
    cache = tiny_cache(tmp_path)
    cfg = load_config(gpu.REPO / "config.yml", [*TINY, "stage1.batch_size=4"])
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
