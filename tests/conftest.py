"""Shared fixtures: a tiny synthetic data set in the challenge layout and a shrunken config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_AUDIO = REPO.parent / "shared" / "real-audio" / "dcase2023-dev"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end or multi-process tests (CI runs them too)")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_audio() -> Path:
    """The 28 real DCASE 2023 recordings beside the checkout; tests skip where they are absent."""
    if not REAL_AUDIO.is_dir():
        pytest.skip("../shared/real-audio is not present in this checkout")
    return REAL_AUDIO
