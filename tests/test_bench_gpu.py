"""bench.gpu: refuses in one line without CUDA; its training child runs the project's runner."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import TINY

from bench import gpu

REPO = Path(__file__).resolve().parents[1]


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
    counts = {
        ("source", "train"): 6,
        ("target", "train"): 2,
        ("source", "test"): 1,
        ("target", "test"): 1,
    }
    cache = gpu.make_cache(tmp_path / "cache", counts, machines=("fan",), sections=("00", "03"))
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
