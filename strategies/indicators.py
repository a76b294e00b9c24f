"""Indicator kernels: pure numba over 1-D arrays, no pandas.

Array contract: every input array holds one value per bar, oldest first; prices are float64 and
finite (the mid prices of :class:`osm.strategies.base.Bars` are), signals are boolean. Every output
has the input's length. An element whose window is not yet full (the warm-up) is NaN, so a rolling
indicator over `window` bars is defined from ``t = window - 1`` on.

Each rolling value ``out[t]`` is computed from its own window ``x[t - window + 1 .. t]`` alone, never
from a running sum carried over from earlier bars. That costs O(n * window) instead of O(n), but it
makes every value bit-identical whatever came before the window: the live brain, which runs a
strategy on a bounded window of bars, gets exactly the last value of the full backtest, so a
comparison such as ``fast > slow`` cannot flip between research and live on a rounding difference.

All kernels are ``@njit(cache=True, nogil=True)``: call them from Python or from other kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def sma(x: np.ndarray, window: int) -> np.ndarray:
    """Return the mean of the last `window` values (NaN for the first ``window - 1``)."""
    if window < 1:
        raise ValueError("sma: window must be at least 1 bar")
    n = len(x)
    out = np.full(n, np.nan)
    for t in range(window - 1, n):
        total = 0.0
        for i in range(t - window + 1, t + 1):
            total += x[i]
        out[t] = total / window
    return out


@njit(cache=True, nogil=True)
def rolling_std(x: np.ndarray, window: int, ddof: int = 0) -> np.ndarray:
    """Return the standard deviation of the last `window` values.

    Parameters
    ----------
    x
        Values, oldest first.
    window
        Number of values in each window.
    ddof
        Delta degrees of freedom: 0 (the default, as Bollinger bands use) divides by ``window``,
        1 by ``window - 1`` as pandas' ``rolling().std()`` does.
    """
    if window < 1 or ddof < 0 or window <= ddof:
        raise ValueError("rolling_std: window must be at least 1 bar and larger than ddof >= 0")
    means = sma(x, window)
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        mean = means[t]
        # Two passes: sum((x - mean)^2) does not cancel catastrophically the way
        # sum(x^2) - n * mean^2 does at FX price levels (1.3 give or take 1e-4).
        squares = 0.0
        for i in range(t - window + 1, t + 1):
            squares += (x[i] - mean) ** 2
        out[t] = np.sqrt(squares / (window - ddof))
    return out


@njit(cache=True, nogil=True)
def _rolling_extreme(x: np.ndarray, window: int, sign: float) -> np.ndarray:
    # A monotonic deque of indices: O(n), and still exact because max/min do no arithmetic.
    n = len(x)
    out = np.full(n, np.nan)
    deque = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for t in range(n):
        while tail > head and sign * x[deque[tail - 1]] <= sign * x[t]:
            tail -= 1
        deque[tail] = t
        tail += 1
        if deque[head] <= t - window:
            head += 1
        if t >= window - 1:
            out[t] = x[deque[head]]
    return out


@njit(cache=True, nogil=True)
def rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """Return the largest of the last `window` values (the upper Donchian channel)."""
    if window < 1:
        raise ValueError("rolling_max: window must be at least 1 bar")
    return _rolling_extreme(x, window, 1.0)


@njit(cache=True, nogil=True)
def rolling_min(x: np.ndarray, window: int) -> np.ndarray:
    """Return the smallest of the last `window` values (the lower Donchian channel)."""
    if window < 1:
        raise ValueError("rolling_min: window must be at least 1 bar")
    return _rolling_extreme(x, window, -1.0)


@njit(cache=True, nogil=True)
def shift(x: np.ndarray, periods: int) -> np.ndarray:
    """Return `x` delayed by `periods` bars: ``out[t] = x[t - periods]``, NaN for the first ones."""
    if periods < 0:
        raise ValueError("shift: periods must be >= 0; a negative shift would peek at future bars")
    out = np.full(len(x), np.nan)
    for t in range(periods, len(x)):
        out[t] = x[t - periods]
    return out


@njit(cache=True, nogil=True)
def prior_max(x: np.ndarray, window: int) -> np.ndarray:
    """Return the largest of the `window` values before each bar, excluding the bar itself.

    ``out[t] = max(x[t - window .. t - 1])``, NaN for ``t < window``: the channel a breakout at
    ``t`` is measured against.
    """
    if window < 1:
        raise ValueError("prior_max: window must be at least 1 bar")
    return shift(_rolling_extreme(x, window, 1.0), 1)


@njit(cache=True, nogil=True)
def prior_min(x: np.ndarray, window: int) -> np.ndarray:
    """Return the smallest of the `window` values before each bar, excluding the bar itself."""
    if window < 1:
        raise ValueError("prior_min: window must be at least 1 bar")
    return shift(_rolling_extreme(x, window, -1.0), 1)


@njit(cache=True, nogil=True)
def latch(
    enter_long: np.ndarray,
    enter_short: np.ndarray,
    exit_long: np.ndarray,
    exit_short: np.ndarray,
    max_hold: int,
) -> np.ndarray:
    """Turn entry and exit signals into a position in {-1, 0, +1} with a finite memory.

    ``out[t]`` is the side of the most recent entry among bars ``t - max_hold + 1 .. t``, or 0 if
    there was none or if an exit for that side came after it. A bar that signals both entries is no
    entry. Because it never looks further back than `max_hold` bars, the value at ``t`` is the same
    whether the signals start at bar 0 or at ``t - max_hold + 1``.

    Parameters
    ----------
    enter_long, enter_short, exit_long, exit_short
        Boolean signals, one per bar.
    max_hold
        The longest a position is held without a fresh entry signal, in bars.
    """
    if max_hold < 1:
        raise ValueError("latch: max_hold must be at least 1 bar")
    n = len(enter_long)
    out = np.zeros(n)
    last_entry = -1
    side = 0.0
    last_exit_long = -1
    last_exit_short = -1
    for t in range(n):
        if enter_long[t] and not enter_short[t]:
            last_entry, side = t, 1.0
        elif enter_short[t] and not enter_long[t]:
            last_entry, side = t, -1.0
        if exit_long[t]:
            last_exit_long = t
        if exit_short[t]:
            last_exit_short = t
        if last_entry < 0 or last_entry <= t - max_hold:
            continue
        last_exit = last_exit_long if side > 0.0 else last_exit_short
        if last_exit <= last_entry:
            out[t] = side
    return out
