"""Shared fixtures: a tiny synthetic data set in the challenge layout, the one tiny config every
test starts from, and one tiny run (Step 1, Step 2, submit) trained once per session.

A test that only reads a run takes ``runs``; a test that changes a run copies it first
(``helpers.copy_run`` or ``shutil.copytree``); a test that trains in a way of its own starts from
``tiny_cfg`` (or the ``config`` file) with the overrides it needs.

Files: tests/test_<name>.py tests the module named so (asd/<name>.py, asd/method/<name>.py,
asd/infra/<name>.py; test_runners.py: runners/; test_bench_<name>.py: bench/<name>.py). Tests
of a theme that crosses modules keep a file of their own: test_robust_*.py (bad input, files
and interruptions through the commands), test_distributed.py (several processes, GPU checks),
test_host_waits.py (the training step never waits for the device), test_reproduction_doc.py
(docs/reproduction.md and what cites it).
"""

from __future__ import annotations

import fcntl
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY, snapshot

REPO = Path(__file__).resolve().parents[1]
REAL_AUDIO = REPO.parent / "shared" / "real-audio" / "dcase2023-dev"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end or multi-process tests (CI runs them too)")
    # The runners do the backward pass and optimiser step in handle_batch, on purpose.
    config.addinivalue_line("filterwarnings", r"ignore:No ``I(Backward|Optimizer)Callback")


@pytest.fixture(autouse=True)
def _torch_threads():
    """Each test starts with torch's thread count as the session began: a runner started in
    this process sets it from ``engine.num_threads`` (1 in TINY) and does not set it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """``build(folder)`` once for the whole session: under pytest-xdist (``make test``) the
    first worker builds in a folder all workers share and the others wait for it (a file
    lock), then read its result (pickled); without xdist it is simply called."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / name
    with open(shared / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = folder / ".result.pickle"
        if not result.exists():
            folder.mkdir(exist_ok=True)
            result.write_bytes(pickle.dumps(build(folder)))
        return pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny synthetic data set in the challenge layout, generated once per session.

    fan and valve; dev section 00 (labelled test names) and eval section 03 (unlabelled, with
    eval_data/ground_truth/); 12 source + 3 target training clips and 6 test clips per domain
    (3 anomalous) per section; 10 s clips. 108 files.
    """
    from asd.synthetic import generate

    def build(root: Path) -> Path:
        return generate(
            root,
            machines=("fan", "valve"),
            dev_sections=("00",),
            eval_sections=("03",),
            n_source=12,
            n_target=3,
            n_test=6,
            duration=10.0,
            seed=0,
        )

    return built_once(tmp_path_factory, "tiny_data", build)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_data, tmp_path_factory):
    """config.yml with the tiny model and schedule (helpers.TINY), pointed at tiny_data, with
    the feature cache (shared by the session) and the runs in a temporary folder."""
    from asd.infra.config import load_config

    tmp = tmp_path_factory.mktemp("tiny_cfg")
    return load_config(
        REPO / "config.yml",
        [
            f"data.root={tiny_data}",
            f"data.cache_dir={tmp / 'cache'}",
            f"runs.dir={tmp / 'runs'}",
            *TINY,
        ],
    )


@pytest.fixture(scope="session")
def real_audio() -> Path:
    """The 28 real DCASE 2023 recordings beside the checkout; tests skip where they are absent."""
    if not REAL_AUDIO.is_dir():
        pytest.skip("../shared/real-audio is not present in this checkout")
    return REAL_AUDIO


@pytest.fixture(scope="session")
def runs(tiny_cfg, tmp_path_factory):
    """The tiny run of the session: Step 1, Step 2 and submit of tiny_cfg through the command
    lines (helpers.TinyRuns: its config file, the Step 1 run, the submitted Step 2 run), trained
    once for all workers. Tests read it and never change it: one that would, copies it first;
    the session fails at its end where a file of it changed."""
    from helpers import tiny_runs

    runs = built_once(tmp_path_factory, "runs", lambda folder: tiny_runs(tiny_cfg, folder))
    before = snapshot(runs.stage1.parent)
    yield runs
    after = snapshot(runs.stage1.parent)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert not changed, f"a test changed these files of the session's tiny run: {changed}"


@pytest.fixture
def config(tiny_cfg, tmp_path) -> Path:
    """tiny_cfg as a config file (the shared run's settings), with a runs folder of this
    test's own."""
    from helpers import write_config

    return write_config(tiny_cfg, tmp_path / "config.yml", [f"runs.dir={tmp_path / 'runs'}"])
