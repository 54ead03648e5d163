"""bench.features: a small run of the whole script."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_benchmark_runs_and_prints_its_ratio(repo):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.features",
            "--clips",
            "40",
            "--repeats",
            "1",
            "--memory",
            "40",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "speed-up of build_cache over the faster plain librosa:" in out.stdout
    assert "peak RSS building    40 clips" in out.stdout
