"""Replay of ticks or bars from a CSV, CSV.gz or Parquet file in the shared data's format.

Ticks: columns ``time_utc`` (or ``time``), ``bid``, ``ask``. Bars: ``time_utc`` (the bar's open),
``bid_open .. bid_close``, ``ask_open .. ask_close``. Times are ISO-8601 UTC strings, timestamps or
int64 ns. A bar becomes four ticks inside it: its open first, then its low and high (in the order a
bar that closes up or down most likely took), its close last, so the router rebuilds exactly the
bars of the file (at their own granularity and any coarser one). The file holds one instrument, the
feed's first. With ``loop``, the file starts over, shifted in time past its own end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from osm.core.config import FeedConfig
from osm.core.dtypes import PRICE_FIELDS, empty_ticks
from osm.core.errors import ConfigError, DataError
from osm.core.granularity import NS

_TICK_COLUMNS = ("bid", "ask")


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(
            f"replay file {path} does not exist; set FeedConfig.file to a CSV or Parquet"
        )
    if path.suffix == ".parquet" or path.name.endswith(".parquet"):
        return pq.read_table(path).to_pandas()
    return pd.read_csv(path)


def _times_ns(frame: pd.DataFrame, path: Path) -> np.ndarray:
    column = next((c for c in ("time_utc", "time") if c in frame.columns), None)
    if column is None:
        raise DataError(f"{path} has no time_utc or time column; columns are {list(frame.columns)}")
    values = frame[column]
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    return stamps.dt.tz_localize(None).to_numpy("datetime64[ns]").view(np.int64)


def bars_to_ticks(times: np.ndarray, prices: np.ndarray, step: int) -> np.ndarray:
    """Four ticks per bar (open, low/high, close) inside [open, open + step); prices: (n, 8)."""
    n = len(times)
    bid_o, bid_h, bid_l, bid_c, ask_o, ask_h, ask_l, ask_c = prices.T
    up = bid_c >= bid_o
    ticks = empty_ticks(4 * n)
    ticks["time"] = (times[:, None] + np.arange(4) * (step // 4)).ravel()
    # (bid_high, ask_high) and (bid_low, ask_low) are never crossed when the bar's quotes were not:
    # at the instant of the bid high the ask was at least that bid, and the ask high at least that.
    second_bid, third_bid = np.where(up, bid_l, bid_h), np.where(up, bid_h, bid_l)
    second_ask, third_ask = np.where(up, ask_l, ask_h), np.where(up, ask_h, ask_l)
    ticks["bid"] = np.stack([bid_o, second_bid, third_bid, bid_c], axis=1).ravel()
    ticks["ask"] = np.stack([ask_o, second_ask, third_ask, ask_c], axis=1).ravel()
    return ticks


def load_ticks(path: str | Path) -> np.ndarray:
    """The ticks a replay of `path` emits (bars expanded to four ticks each), TICK_DTYPE."""
    path = Path(path)
    frame = _read_frame(path)
    times = _times_ns(frame, path)
    if len(times) and np.any(np.diff(times) < 0):
        raise DataError(f"{path} is not sorted by time; sort it before replaying")
    if all(c in frame.columns for c in PRICE_FIELDS):
        # The shortest gap between bars is their length (or, for D/W/M, at most it), so four
        # ticks spaced by a quarter of it stay inside every bar.
        gaps = np.diff(times)
        step = int(gaps[gaps > 0].min()) if np.any(gaps > 0) else 60 * NS
        return bars_to_ticks(times, frame[list(PRICE_FIELDS)].to_numpy(np.float64), step)
    if all(c in frame.columns for c in _TICK_COLUMNS):
        ticks = empty_ticks(len(times))
        ticks["time"], ticks["bid"], ticks["ask"] = times, frame["bid"], frame["ask"]
        return ticks
    raise DataError(
        f"{path} holds neither ticks (time_utc, bid, ask) nor bars (time_utc, {', '.join(PRICE_FIELDS)})"
    )


class ReplaySource:
    """Ticks of one file, for the feed's first instrument."""

    def __init__(self, config: FeedConfig, position: int, state: dict[str, Any]) -> None:
        if len(config.instruments) != 1:
            raise ConfigError(
                f"a replay file holds one instrument; give the feed exactly one, got {config.instruments}"
            )
        self._instrument = config.instruments[0]
        self._ticks = load_ticks(config.file or "")
        if len(self._ticks) == 0:
            raise DataError(f"{config.file} holds no rows to replay")
        self._loop = config.loop
        span = int(self._ticks["time"][-1] - self._ticks["time"][0])
        self._period = span + NS  # a looped copy starts one second after the last tick
        self._position = position

    def state(self) -> dict[str, Any]:
        return {}

    def read(self, limit: int) -> tuple[str, np.ndarray] | None:
        n = len(self._ticks)
        lap, row = divmod(self._position, n)
        if lap > 0 and not self._loop:
            return None
        rows = self._ticks[row : row + limit].copy()
        rows["time"] += lap * self._period
        self._position += len(rows)
        return self._instrument, rows
