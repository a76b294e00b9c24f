"""Replay of ticks or bars from a CSV, CSV.gz or Parquet file, read by :mod:`osm.core.files`.

The file is read as research reads it (:func:`osm.core.files.load_ticks_or_bars`, the shared
format needing no option) and refused the same way when unusable. Ticks replay as they are. A bar
becomes four ticks inside it: its open first, then its low and high (in the order a bar that closes
up or down most likely took), its close last, so the router rebuilds exactly the bars of the file
(at their own granularity and any coarser one). The file holds one instrument, the feed's first.
With ``loop``, the file starts over, shifted in time past its own end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from osm.core.config import FeedConfig
from osm.core.dtypes import BAR_DTYPE, empty_ticks
from osm.core.errors import ConfigError, DataError
from osm.core.files import load_ticks, load_ticks_or_bars
from osm.core.granularity import NS

__all__ = ["ReplaySource", "bars_to_ticks", "load_ticks", "replay_ticks"]


def bars_to_ticks(bars: np.ndarray, step: int) -> np.ndarray:
    """Four ticks per BAR_DTYPE bar (open, low/high, close) inside [open, open + step)."""
    up = bars["bid_close"] >= bars["bid_open"]
    ticks = empty_ticks(4 * len(bars))
    ticks["time"] = (bars["time"][:, None] + np.arange(4) * (step // 4)).ravel()
    # (bid_high, ask_high) and (bid_low, ask_low) are never crossed when the bar's quotes were not:
    # at the instant of the bid high the ask was at least that bid, and the ask high at least that.
    for side in ("bid", "ask"):
        high, low = bars[f"{side}_high"], bars[f"{side}_low"]
        second, third = np.where(up, low, high), np.where(up, high, low)
        path = [bars[f"{side}_open"], second, third, bars[f"{side}_close"]]
        ticks[side] = np.stack(path, axis=1).ravel()
    return ticks


def replay_ticks(path: str | Path) -> np.ndarray:
    """The ticks a replay of `path` emits (bars expanded to four ticks each), TICK_DTYPE."""
    rows = load_ticks_or_bars(Path(path))
    if rows.dtype != BAR_DTYPE:
        return rows
    # The shortest gap between bars is their length (or, for D/W/M, at most it), so four ticks
    # spaced by a quarter of it stay inside every bar.
    gaps = np.diff(rows["time"])
    return bars_to_ticks(rows, int(gaps.min()) if gaps.size else 60 * NS)


class ReplaySource:
    """Ticks of one file, for the feed's first instrument."""

    def __init__(self, config: FeedConfig, position: int, state: dict[str, Any]) -> None:
        if len(config.instruments) != 1:
            raise ConfigError(
                f"a replay file holds one instrument; give the feed exactly one, got {config.instruments}"
            )
        self._instrument = config.instruments[0]
        self._ticks = replay_ticks(config.file or "")
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
