"""Shared fixtures: the real data beside the project (or its generated twin), isolated run
directories, numba cache.

The ``ticks_file``, ``m1_file`` and ``h1_file`` fixtures give the real EURUSD files where
``../shared/data`` is present (CI) and generated files of the same format where it is not (a
contributor's fresh clone), so the kernel oracles and the parity tests run in both. A test about a
property of the real data itself asks for ``real_file`` and skips without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OSM_SHARED_DATA", ROOT.parent / "shared" / "data"))
TICKS_FILE = SHARED_DATA / "EURUSD_ticks_oanda_2014-05_bidask.csv.gz"
M1_FILE = SHARED_DATA / "EURUSD_M1_oanda_2014-05_and_2018-04_bidask.csv.gz"
H1_FILE = SHARED_DATA / "EURUSD_H1_oanda_bidask.csv.gz"
REAL_DATA = TICKS_FILE.exists() and M1_FILE.exists() and H1_FILE.exists()


def real_file(path: Path) -> Path:
    """Return `path`, or skip a test about the real data itself where ../shared/data is absent."""
    if not path.exists():
        pytest.skip(f"{path.name} not found in {SHARED_DATA}: this test is about the real data")
    return path


@pytest.fixture(scope="session")
def generated_files(tmp_path_factory) -> dict[str, Path]:
    from tests.generated_data import write_all

    return write_all(tmp_path_factory.mktemp("generated_data"))


@pytest.fixture(scope="session")
def data_files(request) -> dict[str, Path]:
    """The three data files by kind (ticks, m1, h1): real where present, else generated."""
    if REAL_DATA:
        return {"ticks": TICKS_FILE, "m1": M1_FILE, "h1": H1_FILE}
    return request.getfixturevalue("generated_files")


@pytest.fixture(scope="session")
def ticks_file(data_files) -> Path:
    return data_files["ticks"]


@pytest.fixture(scope="session")
def m1_file(data_files) -> Path:
    return data_files["m1"]


@pytest.fixture(scope="session")
def h1_file(data_files) -> Path:
    return data_files["h1"]


@pytest.fixture
def home(tmp_path_factory) -> Path:
    """A fresh, short run directory (ipc socket paths must stay under ~100 characters)."""
    return Path(tmp_path_factory.mktemp("osm", numbered=True))
