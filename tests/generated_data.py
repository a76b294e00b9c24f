"""Generated stand-ins for the real EURUSD files, in the same CSV formats, for a fresh clone.

The shared files (``../shared/data``) are absent on a contributor's clone. The tests that compare a
kernel with its oracle, or the live path with the backtest, must run there too, so each shared file
has a generated twin with the same columns and stamp style:

- ticks: the synthetic market (Poisson arrivals, skewed spreads, prices on the 5-decimal grid)
  thinned to about two quotes a second, across a weekend, from Friday 00:00 to Monday 03:00 UTC;
- M1: those ticks aggregated by pandas (an oracle independent of osm's kernels), so the ticks
  aggregate exactly to the M1 file, as the real files do;
- H1: a seeded random walk on the 5-decimal grid, 10,000 hours (about 83 trading weeks).

Generation is deterministic: the same files every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from osm.core.config import FeedConfig
from osm.live.feeds import open_source
from osm.research.synthetic import random_walk_bars

TICKS_START = "2024-03-08T00:00:00Z"  # a Friday: the ticks cross the weekend close and reopen
TICKS_END = "2024-03-11T03:00:00Z"
TICKS_EVERY = 2  # keep every other quote: about two a second, a quieter market than the source's
H1_BARS = 10_000  # more than any test slices off the end (8,000)
_SIDES = ("bid", "ask")
_FIELDS = ("open", "high", "low", "close")


def synthetic_ticks(start: str = TICKS_START, end: str = TICKS_END) -> pd.DataFrame:
    """Return the synthetic market's EUR_USD ticks in [start, end) as time_utc, bid, ask."""
    source = open_source(FeedConfig(kind="synthetic", instruments=["EUR_USD"], start=start))
    stop = pd.Timestamp(end).value
    parts = []
    while True:
        _, rows = source.read(65_536)
        parts.append(rows[rows["time"] < stop])
        if rows["time"][-1] >= stop:
            break
    ticks = np.concatenate(parts)[::TICKS_EVERY]
    return pd.DataFrame(
        {
            "time_utc": pd.to_datetime(ticks["time"], utc=True),
            "bid": ticks["bid"],
            "ask": ticks["ask"],
        }
    )


def m1_from_ticks(ticks: pd.DataFrame) -> pd.DataFrame:
    """Aggregate ticks to bid/ask M1 bars with pandas, one row per minute that had a tick."""
    minute = ticks["time_utc"].dt.floor("min")
    frame = pd.DataFrame({"time_utc": minute.drop_duplicates().to_numpy()})
    for side in _SIDES:
        groups = ticks.groupby(minute, sort=True)[side]
        for field, how in zip(_FIELDS, ("first", "max", "min", "last"), strict=True):
            frame[f"{side}_{field}"] = groups.agg(how).to_numpy()
        frame[f"{side}_size"] = 0
    return frame[["time_utc", *_columns()]]


def h1_bars() -> pd.DataFrame:
    """Return H1_BARS random-walk H1 bars on the 5-decimal price grid."""
    bars = random_walk_bars(H1_BARS, seed=7, start="2015-01-04T22:00:00Z", price=1.2)
    frame = pd.DataFrame({"time_utc": pd.to_datetime(bars["time"], utc=True)})
    for side in _SIDES:
        for field in _FIELDS:
            frame[f"{side}_{field}"] = np.round(bars[f"{side}_{field}"], 5)
        frame[f"{side}_size"] = 0
    return frame[["time_utc", *_columns()]]


def write_csv(frame: pd.DataFrame, path: Path, unit: str) -> Path:
    """Write `frame` as gzipped CSV with ISO-8601 UTC stamps to `unit` ("s", "ms"), ending in Z."""
    out = frame.copy()
    naive = out["time_utc"].dt.tz_convert(None).to_numpy()
    out["time_utc"] = np.char.add(np.datetime_as_string(naive, unit=unit), "Z")
    out.to_csv(path, index=False, compression="gzip")
    return path


def write_all(folder: Path) -> dict[str, Path]:
    """Write the three generated files into `folder`; return them by kind (ticks, m1, h1)."""
    ticks = synthetic_ticks()
    return {
        "ticks": write_csv(ticks, folder / "ticks_generated.csv.gz", "ms"),
        "m1": write_csv(m1_from_ticks(ticks), folder / "m1_generated.csv.gz", "s"),
        "h1": write_csv(h1_bars(), folder / "h1_generated.csv.gz", "s"),
    }


def _columns() -> list[str]:
    return [f"{side}_{field}" for side in _SIDES for field in (*_FIELDS, "size")]
