"""Shared by the tests: the one tiny config (TINY), the entry points in subprocesses, and the
tiny run that tests/conftest.py trains once per session.

Every subprocess runs with one torch/BLAS thread: the numbers are then the same in every
process (a resumed run can be compared bit for bit with an uninterrupted one), and on a busy
machine one thread is several times faster than two for these tiny models.
"""

from __future__ import annotations

import csv
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The tiny runs' detectors fit faster in one process than in worker processes that first have
# to start (asd.submit asks joblib for the cores, which heeds this), in the tests' own process
# and in theirs; the one test of the parallel fits asks for two.
os.environ.setdefault("LOKY_MAX_CPU_COUNT", "1")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
# The tiny model and schedule of every test (tests/conftest.py's tiny_cfg and the shared run):
# Step 1 takes 6 batches an epoch of tiny_data's 48 source training clips. A test that needs
# other values names them as overrides after these.
TINY = [
    "model.stem_channels=4",
    "model.stage_channels=[4,4,8,8]",
    "model.embedding_dim=16",
    "loss.n_subclusters=4",
    "stage1.epochs=3",
    "stage1.batch_size=8",
    "stage2.iterations=4",
    "stage2.batch_size=8",
    "stage2.log_every=1",
    "stage2.checkpoint_every=1",
    "detectors.batch_size=16",
    "engine.num_threads=1",
]


def cli(
    module: str, *args: str, timeout: float = 300, preexec_fn=None, check: bool | None = None
) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository root; check=True/False asserts the
    exit status is zero/non-zero (showing stderr otherwise)."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    if check is True:
        assert out.returncode == 0, out.stderr[-3000:]
    elif check is False:
        assert out.returncode != 0, out.stdout[-2000:]
    return out


def popen(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Run as ``python -c DYING SPEC MODULE ARGS...``: MODULE's command line, killed with SIGKILL at
# a precise moment. SPEC is "write:WHERE:N" (the Nth file written through asd.infra.io.atomic_path
# whose path contains WHERE is cut to half its size on disk, then the process dies before the
# rename, as if the power went mid-write) or "replace:WHERE:N" (dies just before the Nth rename
# onto such a path, after the earlier ones).
DYING = r"""
import contextlib, os, runpy, signal, sys
import asd.infra.io
kind, where, nth = sys.argv[1].split(":")
seen = []
def due(path):
    if where in str(path):
        seen.append(path)
        return len(seen) == int(nth)
    return False
def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if kind == "write":
    real_atomic_path = asd.infra.io.atomic_path
    @contextlib.contextmanager
    def atomic_path(path):
        with real_atomic_path(path) as tmp:
            yield tmp
            if due(path):
                os.truncate(tmp, os.path.getsize(tmp) // 2)
                die()
    asd.infra.io.atomic_path = atomic_path  # before the modules that import it are loaded
else:
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if due(dst):
            die()
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def cli_killed(spec: str, module: str, *args: str, timeout: float = 300):
    """``python -m module args`` killed at the moment ``spec`` names (see DYING)."""
    # Its output goes to files, not pipes: the worker processes of a killed submit inherit them
    # and would hold a pipe open until they notice, long after the process itself has died.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        returncode = subprocess.run(
            [sys.executable, "-c", DYING, spec, module, *map(str, args)],
            cwd=REPO,
            env=ENV,
            stdout=stdout,
            stderr=stderr,
            timeout=timeout,
        ).returncode
        stdout.seek(0)
        stderr.seek(0)
        out = subprocess.CompletedProcess([module, *args], returncode, stdout.read(), stderr.read())
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr[-3000:])
    return out


def kill_when(proc: subprocess.Popen, folder: Path, pattern: str, timeout: float = 300) -> Path:
    """SIGKILL ``proc`` as soon as a file matching ``pattern`` appears under ``folder``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(Path(folder).glob(pattern))
        if found:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"finished before {pattern} appeared:\n{proc.communicate()[1]}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"{pattern} did not appear under {folder} in {timeout} s")


def read_like_evaluator(path: Path) -> tuple[list[str], list[float]]:
    """A challenge CSV as the official evaluator reads it: csv.reader, rows sorted, the float
    of column 1; (file names, scores)."""
    with open(path) as f:
        rows = sorted(csv.reader(f))
    return [r[0] for r in rows], [float(r[1]) for r in rows]


def refused(out: subprocess.CompletedProcess, *words: str) -> str:
    """Assert a clean refusal: non-zero exit, no traceback, stderr naming ``words``."""
    assert out.returncode != 0, out.stdout[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for w in words:
        assert str(w) in out.stderr, (w, out.stderr[-3000:])
    return out.stderr


def file_size_limit(nbytes: int):
    """preexec_fn: files may not grow beyond ``nbytes``; writes then fail with EFBIG."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def temp_files(folder: Path) -> list[Path]:
    """Temporary files of asd.infra.io.atomic_path (``.name.XXXX.tmp``) and the cache builder."""
    return sorted(
        p
        for p in Path(folder).rglob(".*")
        if p.is_file() and (p.suffix == ".tmp" or p.name.startswith(".features."))
    )


@dataclass
class TinyRuns:
    config: Path  # config file: tiny_cfg (tiny_data, TINY, its feature cache), its own runs/
    stage1: Path
    stage2: Path  # submitted


def copy_run(run: Path, folder: Path) -> Path:
    """A copy of ``run`` in ``folder`` that a test may change; a Step 2 run goes with a copy of
    the Step 1 run it starts from, beside it, as its init.txt names that model relative to it."""
    from asd.runview import run_chain

    for r in run_chain(run):
        shutil.copytree(r, Path(folder) / r.name)
    return Path(folder) / Path(run).name


def write_config(cfg, path: Path, overrides=()) -> Path:
    """``cfg`` with ``key.sub=value`` overrides, resolved, as a config file at ``path``."""
    import yaml

    from asd.infra.config import from_dict

    cfg = from_dict(cfg.to_dict(), overrides)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return Path(path)


def tiny_runs(tiny_cfg, folder: Path) -> TinyRuns:
    """Step 1, Step 2 and submit of tiny_cfg's model, through the command lines, in ``folder``
    (the session fixture ``runs`` of tests/conftest.py builds it once)."""
    config = write_config(tiny_cfg, folder / "config.yml", [f"runs.dir={folder / 'runs'}"])
    run1 = Path(
        cli("runners.stage1", "--config", config, "--no-progress", check=True).stdout.split()[-1]
    )
    run2 = Path(
        cli(
            "runners.stage2", "--config", config, "--no-progress", "--from", run1, check=True
        ).stdout.split()[-1]
    )
    cli("asd.submit", "--config", config, "--from", run2, "--device", "cpu", check=True)
    return TinyRuns(config=config, stage1=run1, stage2=run2)
