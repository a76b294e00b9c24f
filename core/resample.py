"""Aggregation into bars: one numba kernel folds ticks or finer bars, for the router and research.

A bar is stamped with its open time and holds only what was known at its close: the first open, the
highest high, the lowest low and the last close of what it aggregated (bid and ask separately), and
the number of ticks. A tick is the smallest bar: its open, high, low and close are one quote.

Array contract of :func:`fold`, the kernel: the rows to fold are a :class:`Rows` of equal-length
arrays in time order (float64 prices, int64 tick counts; any stride, so the fields of a TICK_DTYPE or
BAR_DTYPE array go in without a copy). `opens` is int64 (G, m): the open time of the bar of each of
G granularities that holds each row, computed by the caller (D/W/M alignment needs time zones,
which numba has not). The bars still forming are a :class:`Forming`, updated in place; the bars
that close are written to a :class:`Closed`. The router calls it batch by batch with its forming
bars carried over (:mod:`osm.live.aggregate`); :func:`ticks_to_bars` and :func:`resample` call it
once over a whole array.

numba's cache does not see edits to a kernel in another file: after changing :func:`fold`, clear
``NUMBA_CACHE_DIR`` (or touch ``live/aggregate.py``) so the router's kernels compile it again.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, TICK_DTYPE
from osm.core.errors import DataError
from osm.core.granularity import NS, OANDA_ALIGNMENT, Alignment, bar_opens, next_open, step_ns

NO_BAR = np.iinfo(np.int64).min
"""`Forming.time` of a granularity with no bar forming yet."""


class Rows(NamedTuple):
    """What :func:`fold` aggregates: one row per tick or finer bar, in time order."""

    bid_open: np.ndarray
    bid_high: np.ndarray
    bid_low: np.ndarray
    bid_close: np.ndarray
    ask_open: np.ndarray
    ask_high: np.ndarray
    ask_low: np.ndarray
    ask_close: np.ndarray
    ticks: np.ndarray
    """int64: how many ticks each row stands for (1 for a tick)."""


class Forming(NamedTuple):
    """The bar forming in each of G granularities."""

    time: np.ndarray
    """int64 (G,): its open time, or NO_BAR."""
    px: np.ndarray
    """float64 (G, 8): its prices in PRICE_FIELDS order (bid OHLC, then ask OHLC)."""
    ticks: np.ndarray
    """int64 (G,): its tick count."""


class Closed(NamedTuple):
    """Bars closed by a fold, in the order they closed; each array needs room for G * m bars."""

    granularity: np.ndarray
    """int64: the index (0..G-1) of the bar's granularity."""
    time: np.ndarray
    """int64: its open time."""
    px: np.ndarray
    """float64 (G * m, 8): its prices in PRICE_FIELDS order."""
    ticks: np.ndarray
    """int64: its tick count."""


@njit(cache=True)
def fold(rows: Rows, opens: np.ndarray, forming: Forming, closed: Closed) -> int:
    """Fold `rows` into the forming bars; write the bars they close to `closed`, return how many.

    A bar closes when the first row of a later bar arrives (each row closes at most one bar per
    granularity); closed bars come out in time order per granularity.
    """
    f_time, f_px, f_n = forming
    k = 0
    for i in range(len(rows.ticks)):
        for g in range(opens.shape[0]):
            if opens[g, i] != f_time[g]:
                if f_time[g] != NO_BAR:
                    closed.granularity[k], closed.time[k] = g, f_time[g]
                    closed.ticks[k] = f_n[g]
                    closed.px[k, :] = f_px[g, :]
                    k += 1
                f_time[g], f_n[g] = opens[g, i], rows.ticks[i]
                f_px[g, 0], f_px[g, 1] = rows.bid_open[i], rows.bid_high[i]
                f_px[g, 2], f_px[g, 3] = rows.bid_low[i], rows.bid_close[i]
                f_px[g, 4], f_px[g, 5] = rows.ask_open[i], rows.ask_high[i]
                f_px[g, 6], f_px[g, 7] = rows.ask_low[i], rows.ask_close[i]
            else:
                f_n[g] += rows.ticks[i]
                f_px[g, 1] = max(f_px[g, 1], rows.bid_high[i])
                f_px[g, 2] = min(f_px[g, 2], rows.bid_low[i])
                f_px[g, 3] = rows.bid_close[i]
                f_px[g, 5] = max(f_px[g, 5], rows.ask_high[i])
                f_px[g, 6] = min(f_px[g, 6], rows.ask_low[i])
                f_px[g, 7] = rows.ask_close[i]
    return k


@njit(cache=True)
def tick_rows(bid: np.ndarray, ask: np.ndarray) -> Rows:
    """Ticks as :class:`Rows`: each quote is its own open, high, low and close; no copy."""
    return Rows(bid, bid, bid, bid, ask, ask, ask, ask, np.ones(len(bid), np.int64))


def bar_rows(bars: np.ndarray) -> Rows:
    """BAR_DTYPE bars as :class:`Rows` (views of their fields)."""
    return Rows(*(bars[field] for field in PRICE_FIELDS), bars["ticks"])


def to_bars(
    times: np.ndarray, prices: np.ndarray, counts: np.ndarray, complete: bool
) -> np.ndarray:
    """Pack kernel outputs (open times, (n, 8) prices, tick counts) into BAR_DTYPE rows."""
    bars = np.empty(len(times), BAR_DTYPE)
    bars["time"], bars["ticks"], bars["complete"] = times, counts, complete
    for j, field in enumerate(PRICE_FIELDS):
        bars[field] = prices[:, j]
    return bars


def from_bars(bars: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unpack BAR_DTYPE rows into (open times, (n, 8) prices, tick counts)."""
    prices = np.stack([bars[f] for f in PRICE_FIELDS], axis=1).astype(np.float64)
    return bars["time"].astype(np.int64), prices, bars["ticks"].astype(np.int64)


def ticks_to_bars(
    ticks: np.ndarray,
    granularity: str,
    *,
    until: int | None = None,
    alignment: Alignment = OANDA_ALIGNMENT,
) -> np.ndarray:
    """Aggregate ticks into bars of `granularity`, each stamped with its open time.

    A bar exists for every period that had a tick: open, high, low and close of the bid and of the
    ask, and the number of ticks. Every bar but the last is complete; the last is complete only if
    `until` (an instant, ns UTC, up to which the ticks are known to be whole) reaches its close,
    since without it a later tick may still belong to that bar. These are the bars the router
    builds from the same ticks (one kernel does both).
    """
    if ticks.dtype != TICK_DTYPE:
        raise TypeError(f"ticks_to_bars takes a TICK_DTYPE array, got dtype {ticks.dtype}")
    if len(ticks) == 0:
        return np.zeros(0, dtype=BAR_DTYPE)
    opens = bar_opens(ticks["time"], granularity, alignment)
    out = _fold_whole(tick_rows(ticks["bid"], ticks["ask"]), opens)
    last_close = next_open(int(out["time"][-1]), granularity, alignment)
    out["complete"][-1] = until is not None and until >= last_close
    return out


def resample(
    bars: np.ndarray,
    granularity: str,
    *,
    smooth: bool = False,
    alignment: Alignment = OANDA_ALIGNMENT,
) -> np.ndarray:
    """Aggregate bars into a coarser granularity, each stamped with its open time.

    A coarse bar takes the first open, the highest high, the lowest low and the last close of the
    fine bars inside it (bid and ask separately) and the sum of their ticks. Only bars that exist
    are used, so a coarse bar exists only where a fine one does. A coarse bar is complete if all
    its fine bars are and, for the last one, if the data reaches its close (the last fine bar ends
    at or after it, the fine bar length being the smallest gap between bars).

    Parameters
    ----------
    bars
        BAR_DTYPE bars, sorted, of a granularity that nests in `granularity` (M1 into H1).
    granularity
        The OANDA name of the coarse granularity (``"H1"``, ``"D"``...).
    smooth
        Open each bar at the previous bar's close and widen its high and low to include it, as
        OANDA's ``smooth=true`` candles do. OANDA's H1 history (the shared H1 file) is smooth;
        its M1 bars are not, so resampling them to H1 matches the H1 file only with ``smooth=True``.
    alignment
        Where daily, weekly and monthly bars open.
    """
    if bars.dtype != BAR_DTYPE:
        raise TypeError(f"resample takes a BAR_DTYPE array, got dtype {bars.dtype}")
    if len(bars) == 0:
        return bars.copy()
    gaps = np.diff(bars["time"])
    if gaps.size and gaps.min() <= 0:
        raise DataError("resample needs bars sorted by time, one per time; run check_bars first")
    coarse = step_ns(granularity)
    if gaps.size and coarse is not None and gaps.min() > coarse:
        raise DataError(
            f"the bars are {int(gaps.min()) // NS} s apart or more, longer than {granularity}: "
            "resample only aggregates into a coarser granularity"
        )
    opens = bar_opens(bars["time"], granularity, alignment)
    out = _fold_whole(bar_rows(bars), opens)
    out["complete"] = ~np.isin(out["time"], opens[~bars["complete"]])
    if len(bars) < 2:
        out["complete"][-1] = False
    else:
        data_end = int(bars["time"][-1]) + int(gaps.min())
        out["complete"][-1] &= data_end >= next_open(int(out["time"][-1]), granularity, alignment)
    if smooth:
        _smooth(out)
    return out


def _fold_whole(rows: Rows, opens: np.ndarray) -> np.ndarray:
    """Every bar of `rows` (at least one) in one granularity, the forming last one included."""
    m = len(opens)
    forming = Forming(np.full(1, NO_BAR, np.int64), np.zeros((1, 8)), np.zeros(1, np.int64))
    closed = Closed(np.empty(m, np.int64), np.empty(m, np.int64), np.empty((m, 8)), np.empty(m, np.int64))  # fmt: skip
    k = fold(rows, opens.reshape(1, m), forming, closed)
    return np.concatenate(
        [to_bars(closed.time[:k], closed.px[:k], closed.ticks[:k], True), to_bars(*forming, True)]
    )


def _smooth(bars: np.ndarray) -> None:
    for side in ("bid", "ask"):
        previous_close = bars[f"{side}_close"][:-1]
        opens = bars[f"{side}_open"]
        opens[1:] = previous_close
        bars[f"{side}_high"] = np.maximum(bars[f"{side}_high"], opens)
        bars[f"{side}_low"] = np.minimum(bars[f"{side}_low"], opens)
