"""A synthetic FX market: seeded, realistic enough quotes that need nothing installed or online.

Per instrument: Poisson tick arrivals (exponential gaps, millisecond stamps, some ticks sharing a
millisecond as real feeds do), a log random walk mid whose volatility changes between blocks of
ticks (volatility clustering), a right-skewed spread (log-normal, median about 1.1 pip as OANDA's
EUR_USD, clipped to 0.5..15 pips), quotes rounded to the instrument's precision. The market is shut
from Friday 21:00 to Sunday 21:00 UTC: the random walk runs in trading time and each week's 48 hours
of weekend are skipped. The same seed, instruments and origin always give the same ticks.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from osm.core.config import FeedConfig
from osm.core.dtypes import empty_ticks
from osm.core.instruments import instrument

_MS = 1_000_000
_HOUR_MS = 3600 * 1000
_TRADING_WEEK_MS = 120 * _HOUR_MS  # Sunday 21:00 to Friday 21:00 UTC
_WEEK_MS = 168 * _HOUR_MS
_SUNDAY_OPEN_MS = (3 * 24 + 21) * _HOUR_MS  # 1970-01-04 21:00 UTC, a Sunday
_BLOCK = 4096
_TICKS_PER_SECOND = 4.0  # OANDA EUR_USD: median gap 0.19 s in busy hours, longer in quiet ones
_ANNUAL_VOL = 0.08
_TRADING_SECONDS_PER_YEAR = 52 * 120 * 3600
_START_PRICES = {
    "EUR_USD": 1.1,
    "GBP_USD": 1.27,
    "USD_JPY": 150.0,
    "USD_CHF": 0.88,
    "AUD_USD": 0.66,
}


def weekly_anchor_ms(t_ms: int) -> int:
    """The Sunday 21:00 UTC at or before `t_ms`."""
    return t_ms - (t_ms - _SUNDAY_OPEN_MS) % _WEEK_MS


def trading_to_wall_ms(anchor_ms: int, tau_ms: np.ndarray) -> np.ndarray:
    """Map trading-time offsets from a Sunday open onto wall time, skipping every weekend."""
    weeks, within = np.divmod(tau_ms, _TRADING_WEEK_MS)
    return anchor_ms + weeks * _WEEK_MS + within


class _Walk:
    """One instrument's endless tick stream, generated in blocks."""

    def __init__(self, name: str, seed: int, index: int, origin_ms: int) -> None:
        spec = instrument(name)
        self.name, self.precision, self.pip = name, spec.precision, spec.pip_size
        self._rng = np.random.default_rng([seed, index])
        self._anchor = weekly_anchor_ms(origin_ms)
        offset = origin_ms - self._anchor
        self._tau = offset if offset < _TRADING_WEEK_MS else _TRADING_WEEK_MS  # weekend: Sunday
        self._log_mid = math.log(_START_PRICES.get(name, 1.0 if spec.pip_size < 0.01 else 100.0))
        self._sigma = _ANNUAL_VOL / math.sqrt(_TRADING_SECONDS_PER_YEAR)
        self.buffer = empty_ticks()
        self.cursor = 0

    def next_time(self) -> int:
        if self.cursor == len(self.buffer):
            self._generate()
        return int(self.buffer["time"][self.cursor])

    def _generate(self) -> None:
        rng = self._rng
        gaps_ms = np.floor(rng.exponential(1000.0 / _TICKS_PER_SECOND, _BLOCK)).astype(np.int64)
        tau = self._tau + np.cumsum(gaps_ms)
        self._tau = int(tau[-1])
        regime = self._sigma * math.exp(0.35 * rng.standard_normal())
        steps = regime * np.sqrt(np.maximum(gaps_ms, 1) / 1000.0) * rng.standard_normal(_BLOCK)
        log_mid = self._log_mid + np.cumsum(steps)
        self._log_mid = float(log_mid[-1])
        spread = np.clip(rng.lognormal(math.log(1.1), 0.45, _BLOCK), 0.5, 15.0) * self.pip
        mid = np.exp(log_mid)
        unit = 10.0**-self.precision
        bid = np.round(mid - spread / 2, self.precision)
        ask = np.maximum(np.round(mid + spread / 2, self.precision), bid + unit)
        out = empty_ticks(_BLOCK)
        out["time"] = trading_to_wall_ms(self._anchor, tau) * _MS
        out["bid"], out["ask"] = bid, np.round(ask, self.precision)
        # A quote that repeats the one before in the same millisecond says nothing new, and the
        # router would count it as a rejected duplicate: the market does not send it.
        before = np.empty_like(out)
        before[1:] = out[:-1]
        before[:1] = self.buffer[-1:] if len(self.buffer) else out[:1]
        repeats = out == before
        repeats[0] &= len(self.buffer) > 0
        self.buffer, self.cursor = out[~repeats], 0


class SyntheticSource:
    """Endless synthetic quotes for every instrument of the feed, merged in time order."""

    def __init__(self, config: FeedConfig, position: int, state: dict[str, Any]) -> None:
        if config.start is not None:
            origin_ns = pd.Timestamp(config.start, tz="UTC").value
        else:
            origin_ns = int(state.get("origin_ns", time.time_ns()))
        self._origin_ns = origin_ns
        self._walks = [
            _Walk(name, config.seed, i, origin_ns // _MS)
            for i, name in enumerate(config.instruments)
        ]
        while position > 0:  # regenerate what earlier runs emitted: the stream is deterministic
            position -= len(self.read(min(position, 65536))[1])

    def state(self) -> dict[str, Any]:
        return {"origin_ns": self._origin_ns}

    def read(self, limit: int) -> tuple[str, np.ndarray]:
        times = [walk.next_time() for walk in self._walks]
        first = int(np.argmin(times))
        walk = self._walks[first]
        others = [t for i, t in enumerate(times) if i != first]
        end = min(len(walk.buffer), walk.cursor + limit)
        if others:
            # Up to the next tick of another instrument, so the merged stream stays in time order.
            until = walk.cursor + int(
                np.searchsorted(walk.buffer["time"][walk.cursor : end], min(others), "right")
            )
            end = max(until, walk.cursor + 1)
        rows = walk.buffer[walk.cursor : end].copy()
        walk.cursor = end
        return walk.name, rows
