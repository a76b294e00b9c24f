"""Tick validation and tick-to-bar aggregation kernels of the router (numba, pure over arrays).

The aggregation itself is :func:`osm.core.resample.fold`, the one kernel research uses as well;
this module validates ticks and drives it batch by batch.

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

from osm.core.granularity import Alignment, bar_opens, step_ns
from osm.core.resample import NO_BAR, Closed, Forming, fold, from_bars, tick_rows, to_bars

__all__ = [
    "ACCEPTED", "NO_BAR", "REASONS", "aggregate", "from_bars", "ingest", "opens_of", "to_bars",
    "validate",
]  # fmt: skip

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

    :func:`osm.core.resample.fold` on ticks, the kernel research's ``ticks_to_bars`` uses too.
    `c_*` need room for G * n bars (each tick closes at most one bar per granularity). A bar closes
    when the first tick of a later bar arrives; closed bars come out in time order per granularity.
    """
    forming = Forming(f_time, f_px, f_n)
    return fold(tick_rows(bid, ask), opens, forming, Closed(c_gran, c_time, c_px, c_n))


@njit(cache=True)
def ingest(
    time: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    last_time: int,
    last_bid: float,
    last_ask: float,
    steps: np.ndarray,
    calendar_opens: np.ndarray,
    f_time: np.ndarray,
    f_px: np.ndarray,
    f_n: np.ndarray,
    closed: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, int, int]:
    """Validate a batch, fold its accepted ticks into the forming bars, pack the bars they close.

    One call per batch: the router's per-batch cost is dominated by Python-to-numba crossings and
    small allocations, not by the loops. `time`, `bid` and `ask` may be strided (the fields of a
    TICK_DTYPE array). `steps` int64 (G,) holds each granularity's bar length in ns, 0 for D, W and
    M, whose opens come precomputed in `calendar_opens` (G, n), which is (G, 0) when none is built.
    Closed bars go to `closed`, BAR_DTYPE (G, >= n): `counts[g]` rows for granularity g, in time
    order. Return the :func:`validate` codes, how many ticks it accepted and the index of the last
    accepted one (-1: none).
    """
    codes = validate(time, bid, ask, last_time, last_bid, last_ask)
    keep = np.flatnonzero(codes == ACCEPTED)
    n_gran, m = len(steps), len(keep)
    counts[:] = 0
    if m == 0:
        return codes, 0, -1
    opens = np.empty((n_gran, m), np.int64)
    for g in range(n_gran):
        for j in range(m):
            t = time[keep[j]]
            opens[g, j] = t - t % steps[g] if steps[g] > 0 else calendar_opens[g, keep[j]]
    room = n_gran * m
    c_gran, c_time, c_n = (
        np.empty(room, np.int64),
        np.empty(room, np.int64),
        np.empty(room, np.int64),
    )
    c_px = np.empty((room, 8))
    k = aggregate(bid[keep], ask[keep], opens, f_time, f_px, f_n, c_gran, c_time, c_px, c_n)
    for j in range(k):
        g = c_gran[j]
        row = closed[g, counts[g]]
        counts[g] += 1
        row["time"], row["ticks"], row["complete"] = c_time[j], c_n[j], True
        # PRICE_FIELDS order; numba needs the field names as literals.
        row["bid_open"], row["bid_high"] = c_px[j, 0], c_px[j, 1]
        row["bid_low"], row["bid_close"] = c_px[j, 2], c_px[j, 3]
        row["ask_open"], row["ask_high"] = c_px[j, 4], c_px[j, 5]
        row["ask_low"], row["ask_close"] = c_px[j, 6], c_px[j, 7]
    return codes, m, keep[m - 1]


def opens_of(time: np.ndarray, granularities: list[str], alignment: Alignment) -> np.ndarray:
    """The (G, n) `opens` array of a batch."""
    opens = np.empty((len(granularities), len(time)), np.int64)
    for g, name in enumerate(granularities):
        step = step_ns(name)
        opens[g] = time - time % step if step is not None else bar_opens(time, name, alignment)
    return opens
