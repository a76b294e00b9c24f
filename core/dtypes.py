"""Tick and bar records as numpy structured dtypes, the one in-memory form on every side.

A tick is (time, bid, ask) with time in int64 ns UTC. A bar is stamped with its open time and holds
bid and ask OHLC, the number of ticks it aggregated and whether it is complete (closed).
"""

from __future__ import annotations

import numpy as np

TICK_DTYPE = np.dtype([("time", "i8"), ("bid", "f8"), ("ask", "f8")])

PRICE_FIELDS = (
    "bid_open", "bid_high", "bid_low", "bid_close",
    "ask_open", "ask_high", "ask_low", "ask_close",
)  # fmt: skip
BAR_DTYPE = np.dtype(
    [("time", "i8"), *((f, "f8") for f in PRICE_FIELDS), ("ticks", "i8"), ("complete", "?")]
)


def empty_ticks(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=TICK_DTYPE)


def empty_bars(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=BAR_DTYPE)


def mid(bars: np.ndarray, field: str = "close") -> np.ndarray:
    """Mid price of one OHLC field: (bid + ask) / 2."""
    return (bars[f"bid_{field}"] + bars[f"ask_{field}"]) * 0.5


def valid_quotes(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Mask of usable quotes: bid and ask finite and positive, ask at or above bid."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid)


def as_ticks(time_ns, bid, ask) -> np.ndarray:
    """Pack three equal-length arrays into a TICK_DTYPE array."""
    out = empty_ticks(len(time_ns))
    out["time"], out["bid"], out["ask"] = time_ns, bid, ask
    return out
