"""Backtest kernel: pure numba over arrays, no pandas.

Array contract: every input array has one element per bar, oldest first. ``target_units[t]`` is the
position wanted after bar ``t`` closes (NaN means flat); it is executed at the open of bar ``t + 1``
(the first quote after the close), buying at ``ask_open`` and selling at ``bid_open``. The target of
the last bar is never executed. Commission is a fraction of traded notional. Financing charges
``financing_per_bar`` times the absolute notional at each close. Equity is cash plus the position
valued at the price it could be closed at: ``bid_close`` for a long, ``ask_close`` for a short.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FILL_DTYPE = np.dtype(
    [("bar", "i8"), ("units", "f8"), ("price", "f8"), ("commission", "f8"), ("position", "f8")]
)


@njit(cache=True, nogil=True)
def backtest_nb(
    bid_open: np.ndarray,
    ask_open: np.ndarray,
    bid_close: np.ndarray,
    ask_close: np.ndarray,
    target_units: np.ndarray,
    commission: float,
    financing_per_bar: float,
    cash: float,
    equity_out: np.ndarray,
    fills_out: np.ndarray,
) -> int:
    """Fill `equity_out` (n,) and `fills_out` (at most n rows); return the number of fills.

    `fills_out` rows: bar index of the fill, signed units, price, commission paid, position after.
    If `fills_out` is shorter than the fills, extra fills still happen but are not recorded.
    """
    n = len(bid_open)
    position = 0.0
    n_fills = 0
    for t in range(n):
        if t > 0:
            wanted = target_units[t - 1]
            if wanted != wanted:  # NaN: no opinion yet, stay flat
                wanted = 0.0
            delta = wanted - position
            if delta != 0.0:
                price = ask_open[t] if delta > 0.0 else bid_open[t]
                fee = abs(delta) * price * commission
                cash -= delta * price + fee
                position = wanted
                if n_fills < len(fills_out):
                    fills_out[n_fills]["bar"] = t
                    fills_out[n_fills]["units"] = delta
                    fills_out[n_fills]["price"] = price
                    fills_out[n_fills]["commission"] = fee
                    fills_out[n_fills]["position"] = position
                n_fills += 1
        if position > 0.0:
            value = position * bid_close[t]
        else:
            value = position * ask_close[t]
        if financing_per_bar != 0.0 and position != 0.0:
            cash -= abs(position) * 0.5 * (bid_close[t] + ask_close[t]) * financing_per_bar
        equity_out[t] = cash + value
    return n_fills
