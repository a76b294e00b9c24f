"""Tick validation and tick-to-bar aggregation kernels of the router (numba, pure over arrays).

Array contract: a batch of ticks is three equal-length arrays in arrival order, `time` int64 ns UTC,
`bid` and `ask` float64. The forming bars of one instrument are three arrays over its G
granularities: `f_time` int64 (open time, or NO_BAR), `f_px` float64 (G, 8) in PRICE_FIELDS order
(bid OHLC then ask OHLC) and `f_n` int64 tick counts; the kernels update them in place. `opens` is
int64 (G, n): the open time of the bar of each granularity that holds each tick, computed by the
caller (D/W/M alignment needs time zones, which numba has not).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS
from osm.core.granularity import Alignment, bar_opens, step_ns

NO_BAR = np.iinfo(np.int64).min

ACCEPTED = 0
NON_FINITE = 1
NON_POSITIVE = 2
CROSSED = 3
OUT_OF_ORDER = 4
DUPLICATE = 5
REASONS = ("accepted", "non_finite", "non_positive", "crossed", "out_of_order", "duplicate")
"""Names of the codes :func:`validate` returns, as counted in `rejected.<reason>`."""


@njit(cache=True)
def validate(
    time: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    last_time: int,
    last_bid: float,
    last_ask: float,
) -> np.ndarray:
    """Code each tick (ACCEPTED or why not) against the previous accepted one of its instrument.

    A repeat of the last accepted tick (same time, bid and ask) is a DUPLICATE: it changes no price
    of any bar and would only inflate tick counts, and it is what a resend without seq looks like.
    """
    codes = np.zeros(len(time), np.int8)
    for i in range(len(time)):
        t, b, a = time[i], bid[i], ask[i]
        if not (np.isfinite(b) and np.isfinite(a)):
            codes[i] = NON_FINITE
        elif b <= 0.0 or a <= 0.0:
            codes[i] = NON_POSITIVE
        elif a < b:
            codes[i] = CROSSED
        elif t < last_time:
            codes[i] = OUT_OF_ORDER
        elif t == last_time and b == last_bid and a == last_ask:
            codes[i] = DUPLICATE
        else:
            last_time, last_bid, last_ask = t, b, a
    return codes


@njit(cache=True)
def aggregate(
    bid: np.ndarray,
    ask: np.ndarray,
    opens: np.ndarray,
    f_time: np.ndarray,
    f_px: np.ndarray,
    f_n: np.ndarray,
    c_gran: np.ndarray,
    c_time: np.ndarray,
    c_px: np.ndarray,
    c_n: np.ndarray,
) -> int:
    """Fold accepted ticks into the forming bars; write the bars they close to `c_*`, return how many.

    `c_*` need room for G * n bars (each tick closes at most one bar per granularity). A bar closes
    when the first tick of a later bar arrives; closed bars come out in time order per granularity.
    """
    k = 0
    for i in range(len(bid)):
        b, a = bid[i], ask[i]
        for g in range(opens.shape[0]):
            if opens[g, i] != f_time[g]:
                if f_time[g] != NO_BAR:
                    c_gran[k], c_time[k], c_n[k] = g, f_time[g], f_n[g]
                    c_px[k, :] = f_px[g, :]
                    k += 1
                f_time[g], f_n[g] = opens[g, i], 1
                f_px[g, 0] = f_px[g, 1] = f_px[g, 2] = f_px[g, 3] = b
                f_px[g, 4] = f_px[g, 5] = f_px[g, 6] = f_px[g, 7] = a
            else:
                f_n[g] += 1
                f_px[g, 1] = max(f_px[g, 1], b)
                f_px[g, 2] = min(f_px[g, 2], b)
                f_px[g, 3] = b
                f_px[g, 5] = max(f_px[g, 5], a)
                f_px[g, 6] = min(f_px[g, 6], a)
                f_px[g, 7] = a
    return k


def opens_of(time: np.ndarray, granularities: list[str], alignment: Alignment) -> np.ndarray:
    """The (G, n) `opens` array of a batch."""
    opens = np.empty((len(granularities), len(time)), np.int64)
    for g, name in enumerate(granularities):
        step = step_ns(name)
        opens[g] = time - time % step if step is not None else bar_opens(time, name, alignment)
    return opens


def to_bars(
    times: np.ndarray, prices: np.ndarray, counts: np.ndarray, complete: bool
) -> np.ndarray:
    """Pack kernel outputs into BAR_DTYPE rows."""
    bars = np.empty(len(times), BAR_DTYPE)
    bars["time"], bars["ticks"], bars["complete"] = times, counts, complete
    for j, field in enumerate(PRICE_FIELDS):
        bars[field] = prices[:, j]
    return bars


def from_bars(bars: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unpack BAR_DTYPE rows into (times, (n, 8) prices, counts)."""
    prices = np.stack([bars[f] for f in PRICE_FIELDS], axis=1).astype(np.float64)
    return bars["time"].astype(np.int64), prices, bars["ticks"].astype(np.int64)
