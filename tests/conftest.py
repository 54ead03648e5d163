"""Shared fixtures: a tiny synthetic data set in the challenge layout and a shrunken config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_AUDIO = REPO.parent / "shared" / "real-audio" / "dcase2023-dev"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end or multi-process tests (CI runs them too)")
    # The runners do the backward pass and optimiser step in handle_batch, on purpose.
    config.addinivalue_line("filterwarnings", r"ignore:No ``I(Backward|Optimizer)Callback")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny synthetic data set in the challenge layout, generated once per session.

    fan and valve; dev section 00 (labelled test names) and eval section 03 (unlabelled, with
    eval_data/ground_truth/); 12 source + 3 target training clips and 6 test clips per domain
    (3 anomalous) per section; 10 s clips. 108 files.
    """
    from asd.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_data")
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


@pytest.fixture(scope="session")
def tiny_cfg(tiny_data, tmp_path_factory):
    """config.yml pointed at tiny_data, with the cache and runs in a temporary folder."""
    from asd.infra.config import load_config

    tmp = tmp_path_factory.mktemp("tiny_cfg")
    return load_config(
        REPO / "config.yml",
        [
            f"data.root={tiny_data}",
            f"data.cache_dir={tmp / 'cache'}",
            f"runs.dir={tmp / 'runs'}",
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
    """Step 1, Step 2 and submit of the tiny model on tiny_data through the command lines, built
    once per session; the tests/test_robust_*.py modules share it and must not change it."""
    from robust_helpers import tiny_runs

    return tiny_runs(tiny_cfg, tmp_path_factory)


@pytest.fixture
def config(runs, tmp_path) -> Path:
    """The shared runs' settings (and feature cache), with a runs folder of this test's own."""
    from robust_helpers import write_config

    from asd.infra.config import load_config

    return write_config(
        load_config(runs.config), tmp_path / "config.yml", [f"runs.dir={tmp_path / 'runs'}"]
    )
