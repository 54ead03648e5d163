"""bench.features: its child-process accounting, and a small run of the whole script."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.features import child_pids, wait_for_children

linux = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@linux
def test_wait_for_children_waits_until_a_background_child_is_reaped():
    before = child_pids()
    cpu = children_cpu()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    reaper = threading.Thread(target=lambda: (threading.Event().wait(0.2), child.wait()))
    reaper.start()  # reaped by another thread, as a pool's workers are
    assert str(child.pid) in child_pids() - before
    wait_for_children(before)
    assert str(child.pid) not in child_pids()
    assert children_cpu() - cpu >= 0.25  # its CPU time is in RUSAGE_CHILDREN now
    reaper.join()


@linux
def test_wait_for_children_ignores_children_that_were_there_before(monkeypatch):
    import bench.features

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        before = child_pids()
        assert str(sleeper.pid) in before
        naps = []
        monkeypatch.setattr(bench.features.time, "sleep", naps.append)
        wait_for_children(before, timeout=10)
        assert naps == []  # nothing new to wait for: it did not wait at all
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_the_benchmark_runs_and_prints_its_ratio(repo):
    out = subprocess.run([sys.executable, "-m", "bench.features", "--clips", "40", "--repeats",
                          "1", "--memory", "40"], cwd=repo, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "speed-up of build_cache over the faster plain librosa:" in out.stdout
    assert "peak RSS building    40 clips" in out.stdout
