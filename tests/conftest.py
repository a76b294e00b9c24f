"""Shared fixtures: the real data beside the project, isolated run directories, numba cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OSM_SHARED_DATA", ROOT.parent / "shared" / "data"))
TICKS_FILE = SHARED_DATA / "EURUSD_ticks_oanda_2014-05_bidask.csv.gz"
M1_FILE = SHARED_DATA / "EURUSD_M1_oanda_2014-05_and_2018-04_bidask.csv.gz"
H1_FILE = SHARED_DATA / "EURUSD_H1_oanda_bidask.csv.gz"


def shared_file(path: Path) -> Path:
    """Return `path`, or skip the test where ../shared/data is absent (a user's fresh clone)."""
    if not path.exists():
        pytest.skip(
            f"{path.name} not found in {SHARED_DATA} (only present beside the project in CI)"
        )
    return path


@pytest.fixture
def ticks_file() -> Path:
    return shared_file(TICKS_FILE)


@pytest.fixture
def m1_file() -> Path:
    return shared_file(M1_FILE)


@pytest.fixture
def h1_file() -> Path:
    return shared_file(H1_FILE)


@pytest.fixture
def home(tmp_path_factory) -> Path:
    """A fresh, short run directory (ipc socket paths must stay under ~100 characters)."""
    return Path(tmp_path_factory.mktemp("osm", numbered=True))
