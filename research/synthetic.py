"""Synthetic bid/ask bars: a seeded random walk for tests, notebooks and benchmarks beyond real data.

The mid follows a geometric random walk (normal log returns, `vol` per bar) with no drift, starting
at `price`; each bar opens at the previous close, as OANDA's smoothed candles do. The high and the
low reach beyond the larger and the smaller of open and close by a half-normal excursion. Each bar
has one spread, log-normal around `spread_pips` (clipped to 0.3-20 pips, like EUR/USD), and the bid
and ask OHLC sit half a spread either side of the mid. Bars are stamped at regular steps, skipping
the FX weekend (Friday 21:00 to Sunday 21:00 UTC). The same arguments always give the same bars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from osm.core.dtypes import BAR_DTYPE

_WEEK_NS = 7 * 86_400 * 10**9
# Monday 1970-01-05 00:00 UTC: the origin of the weekly clock below.
_MONDAY_NS = 4 * 86_400 * 10**9
# The market is closed from Friday 21:00 (4 days 21 h after Monday 00:00) to Sunday 21:00.
_CLOSE_NS = (4 * 24 + 21) * 3600 * 10**9
_OPEN_NS = (6 * 24 + 21) * 3600 * 10**9


def random_walk_bars(
    n: int,
    *,
    seed: int = 0,
    start: str = "2010-01-03T22:00:00Z",
    step: str = "1h",
    price: float = 1.3,
    vol: float = 0.0012,
    spread_pips: float = 1.2,
    pip: float = 1e-4,
) -> np.ndarray:
    """Return `n` synthetic BAR_DTYPE bars (see the module docstring for how they are made).

    Parameters
    ----------
    n
        Number of bars.
    seed
        Seed of the random walk and the spreads.
    start, step
        Time of the first candidate bar and the bar length (pandas strings); weekend bars skipped.
    price, vol
        The first open and the standard deviation of one bar's log return (0.0012 is about
        EUR/USD's hourly volatility).
    spread_pips, pip
        The median spread in pips, and the size of a pip.
    """
    if n < 1:
        raise ValueError(f"random_walk_bars needs n >= 1, got {n}")
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate([[price], close[:-1]])
    reach = np.abs(rng.normal(0.0, vol * 0.5, (2, n))) * open_
    high = np.maximum(open_, close) + reach[0]
    low = np.minimum(open_, close) - reach[1]
    half = 0.5 * pip * np.clip(spread_pips * np.exp(rng.normal(0.0, 0.35, n)), 0.3, 20.0)
    out = np.zeros(n, dtype=BAR_DTYPE)
    out["time"] = _open_times(n, start, step)
    for field, mid in (("open", open_), ("high", high), ("low", low), ("close", close)):
        out[f"bid_{field}"] = mid - half
        out[f"ask_{field}"] = mid + half
    out["ticks"] = 1
    out["complete"] = True
    return out


def _open_times(n: int, start: str, step: str) -> np.ndarray:
    first = pd.Timestamp(start).tz_convert("UTC").as_unit("ns").value
    step_ns = pd.Timedelta(step).value
    # A week keeps 5/7 of the candidates, less at most one weekend's worth at the edges.
    weekend = -(-2 * 86_400 * 10**9 // step_ns)
    candidates = first + step_ns * np.arange(int(1.4 * n) + 3 * weekend + 16, dtype=np.int64)
    clock = (candidates - _MONDAY_NS) % _WEEK_NS
    return candidates[(clock < _CLOSE_NS) | (clock >= _OPEN_NS)][:n]
