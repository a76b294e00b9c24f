"""Trade list and performance metrics: pure numba over the backtest kernel's arrays, no pandas.

Array contract: the inputs of :func:`osm.research.nb.backtest_nb` (one element per bar, oldest
first), its ``equity`` (n,) and its fills (FILL_DTYPE, complete: the buffer must have held every
fill), and ``time`` (n,) int64 ns UTC open times.

A **trade** runs from the fill that opens a position from flat (or flips it) to the fill that takes
it back to flat (or flips it). Fills that add to or reduce the position belong to the trade; a
flip's units and commission are split between the trade it closes and the one it opens. ``pnl`` is
``direction * (exit value - entry value) - commission - financing``, where each value is the sum of
units times fill price; a trade still open at the last bar is valued at that bar's close (bid for
a long, ask for a short, as the equity is) and flagged ``closed = False``. The pnl of all trades
sums to ``equity[-1] - cash``.

**Metrics** (``r_t = equity[t] / equity[t-1] - 1`` for ``t = 1 .. n-1``; ``years`` is the span of
the open times ``(time[-1] - time[0]) / 365.25 days``; ``bars_per_year = (n - 1) / years``, the
observed bar frequency, weekend gaps included):

- ``total_return = equity[-1] / cash - 1``
- ``cagr = (equity[-1] / cash) ** (1 / years) - 1`` (-1 once equity is at or below 0)
- ``sharpe = mean(r) / std(r, ddof=1) * sqrt(bars_per_year)`` (risk-free rate 0; NaN if std is 0)
- ``sortino = mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(bars_per_year)`` (+inf if no return is
  negative and the mean is positive, NaN if the mean is 0 too)
- ``max_drawdown = max_t (1 - equity[t] / max(cash, equity[0..t]))``, a positive fraction
- ``win_rate`` = closed trades with pnl > 0 / closed trades (NaN with none)
- ``profit_factor`` = sum of winning pnl / -sum of losing pnl over closed trades (+inf with no
  loss, NaN with no trade)
- ``exposure`` = share of the n bar closes at which a position is held
- ``trades`` = number of closed trades

:func:`evaluate_nb` gives the metrics of the backtest, the trade list and :func:`metrics_nb` chained,
bit for bit, in two passes over the bars and buffers the caller allocates once: a sweep evaluates
any number of combinations in memory the size of the data.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from osm.research.nb import FILL_DTYPE

TRADE_DTYPE = np.dtype(
    [
        ("entry_bar", "i8"),
        ("exit_bar", "i8"),
        ("direction", "f8"),
        ("units", "f8"),
        ("entry_price", "f8"),
        ("exit_price", "f8"),
        ("commission", "f8"),
        ("financing", "f8"),
        ("pnl", "f8"),
        ("return", "f8"),
        ("closed", "?"),
    ]
)
"""One round trip: bars of the first and last fill, +1 long / -1 short, units opened in all,
volume-weighted entry and exit prices, costs, pnl, pnl over entry value, whether it was closed."""

METRIC_NAMES: tuple[str, ...] = (
    "total_return", "cagr", "sharpe", "sortino", "max_drawdown",
    "win_rate", "profit_factor", "exposure", "trades",
)  # fmt: skip
"""The order of the values :func:`metrics_nb` writes."""

N_METRICS = len(METRIC_NAMES)
YEAR_NS = 365.25 * 86400 * 1e9


@njit(cache=True, nogil=True)
def _write_trade(
    out: np.ndarray,
    k: int,
    entry_bar: int,
    exit_bar: int,
    direction: float,
    open_units: float,
    open_value: float,
    close_units: float,
    close_value: float,
    commission: float,
    financing: float,
    closed: bool,
) -> None:
    pnl = direction * (close_value - open_value) - commission - financing
    out[k]["entry_bar"] = entry_bar
    out[k]["exit_bar"] = exit_bar
    out[k]["direction"] = direction
    out[k]["units"] = open_units
    out[k]["entry_price"] = open_value / open_units
    out[k]["exit_price"] = close_value / close_units
    out[k]["commission"] = commission
    out[k]["financing"] = financing
    out[k]["pnl"] = pnl
    out[k]["return"] = pnl / open_value
    out[k]["closed"] = closed


@njit(cache=True, nogil=True)
def trades_nb(
    fills: np.ndarray,
    n_fills: int,
    bid_close: np.ndarray,
    ask_close: np.ndarray,
    financing_per_bar: float,
    trades_out: np.ndarray,
) -> int:
    """Fill `trades_out` (TRADE_DTYPE, at least `n_fills` rows) from the fills; return the count."""
    n = len(bid_close)
    n_trades = 0
    position = 0.0
    last_bar = 0
    direction = 0.0
    entry_bar = 0
    open_units = open_value = close_units = close_value = commission = financing = 0.0
    for k in range(n_fills):
        bar = fills[k]["bar"]
        if position != 0.0 and financing_per_bar != 0.0:
            for t in range(last_bar, bar):
                financing += abs(position) * 0.5 * (bid_close[t] + ask_close[t]) * financing_per_bar
        after = fills[k]["position"]
        price = fills[k]["price"]
        fee = fills[k]["commission"]
        traded = abs(after - position)
        flips = position * after < 0.0
        closing = opening = 0.0
        if position != 0.0 and (after == 0.0 or flips):
            closing = abs(position)
        elif abs(after) < abs(position):
            closing = abs(position) - abs(after)
        if after != 0.0 and (position == 0.0 or flips):
            opening = abs(after)
        elif abs(after) > abs(position):
            opening = abs(after) - abs(position)
        if closing > 0.0:
            close_units += closing
            close_value += closing * price
            commission += fee * closing / traded
            if after == 0.0 or flips:
                _write_trade(
                    trades_out, n_trades, entry_bar, bar, direction, open_units, open_value,
                    close_units, close_value, commission, financing, True,
                )  # fmt: skip
                n_trades += 1
        if opening > 0.0:
            if position == 0.0 or flips:
                direction = 1.0 if after > 0.0 else -1.0
                entry_bar = bar
                open_units = open_value = close_units = close_value = 0.0
                commission = financing = 0.0
            open_units += opening
            open_value += opening * price
            commission += fee * opening / traded
        position = after
        last_bar = bar
    if position != 0.0:
        if financing_per_bar != 0.0:
            for t in range(last_bar, n):
                financing += abs(position) * 0.5 * (bid_close[t] + ask_close[t]) * financing_per_bar
        mark = bid_close[n - 1] if position > 0.0 else ask_close[n - 1]
        _write_trade(
            trades_out, n_trades, entry_bar, n - 1, direction, open_units, open_value,
            close_units + abs(position), close_value + abs(position) * mark, commission,
            financing, False,
        )  # fmt: skip
        n_trades += 1
    return n_trades


@njit(cache=True, nogil=True)
def metrics_nb(
    time: np.ndarray,
    equity: np.ndarray,
    cash: float,
    trades: np.ndarray,
    n_trades: int,
    target_units: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write the metrics, in :data:`METRIC_NAMES` order, into `out` (N_METRICS,).

    See the module docstring for the formulas.
    """
    n = len(equity)
    total = 0.0
    downside = 0.0
    for t in range(1, n):
        r = equity[t] / equity[t - 1] - 1.0
        total += r
        if r < 0.0:
            downside += r * r
    mean = total / (n - 1) if n > 1 else np.nan
    squares = 0.0
    for t in range(1, n):
        squares += (equity[t] / equity[t - 1] - 1.0 - mean) ** 2

    peak = cash
    worst = 0.0
    for t in range(n):
        peak = max(peak, equity[t])
        worst = max(worst, 1.0 - equity[t] / peak)

    held = 0
    for t in range(1, n):
        wanted = target_units[t - 1]
        if wanted == wanted and wanted != 0.0:
            held += 1
    _write_metrics(
        time, equity[n - 1], cash, total, downside, squares, worst, held, trades, n_trades, out
    )


@njit(cache=True, nogil=True)
def _write_metrics(
    time: np.ndarray,
    final: float,
    cash: float,
    total: float,
    downside: float,
    squares: float,
    worst: float,
    held: int,
    trades: np.ndarray,
    n_trades: int,
    out: np.ndarray,
) -> None:
    # The formulas once the sums over bars are known: the sums of the returns, of the squared
    # negative ones and of the squared deviations from the mean, the drawdown and the bars held.
    n = len(time)
    years = (time[n - 1] - time[0]) / YEAR_NS if n > 1 else 0.0
    growth = final / cash
    out[0] = growth - 1.0
    if years <= 0.0:
        out[1] = np.nan
    elif growth <= 0.0:
        out[1] = -1.0
    else:
        out[1] = growth ** (1.0 / years) - 1.0

    count = n - 1
    mean = total / count if count > 0 else np.nan
    std = np.sqrt(squares / (count - 1)) if count > 1 else 0.0
    root_bars = np.sqrt(count / years) if years > 0.0 else np.nan
    out[2] = mean / std * root_bars if std > 0.0 else np.nan
    if downside > 0.0:
        out[3] = mean / np.sqrt(downside / count) * root_bars
    else:
        out[3] = np.inf if mean > 0.0 else np.nan
    out[4] = worst

    closed = wins = 0
    gains = losses = 0.0
    for k in range(n_trades):
        if not trades[k]["closed"]:
            continue
        closed += 1
        pnl = trades[k]["pnl"]
        if pnl > 0.0:
            wins += 1
            gains += pnl
        else:
            losses -= pnl
    out[5] = wins / closed if closed > 0 else np.nan
    if losses > 0.0:
        out[6] = gains / losses
    else:
        out[6] = np.inf if gains > 0.0 else np.nan
    out[7] = held / n
    out[8] = closed


@njit(cache=True, nogil=True)
def evaluate_nb(
    time: np.ndarray,
    bid_open: np.ndarray,
    ask_open: np.ndarray,
    bid_close: np.ndarray,
    ask_close: np.ndarray,
    targets: np.ndarray,
    size: float,
    commission: float,
    financing_per_bar: float,
    cash: float,
    returns_buf: np.ndarray,
    fills_buf: np.ndarray,
    trades_buf: np.ndarray,
    out: np.ndarray,
) -> int:
    """Backtest ``rint(targets * size)`` units and write only its metrics into `out` (N_METRICS,).

    Return how many `targets` lie outside [-1, 1] (NaN is flat, not outside); the metrics are
    written all the same, so a caller that refuses such targets checks the count. Pass units
    as `targets` with `size` 1.0 to run units as they are.

    The buffers are scratch space the caller allocates once and reuses across calls:
    `returns_buf` float64 (n,), `fills_buf` FILL_DTYPE (n,), `trades_buf` TRADE_DTYPE (n,).
    The metrics are those of :func:`osm.research.backtest.target_units`,
    :func:`osm.research.nb.backtest_nb`, :func:`trades_nb` and :func:`metrics_nb` chained,
    bit for bit, in two passes over the bars instead of six: the first turns each target into
    units, executes them as ``backtest_nb`` does and folds the bar's equity straight into the
    return sums, the drawdown and the exposure; the second sums the squared deviations from the
    mean return, which needs the mean first. No units or equity array is kept: the drawdown of
    a run of bars under one peak is that of their lowest equity (division and subtraction round
    monotonically), so it is divided once per peak instead of once per bar.
    """
    n = len(bid_open)
    bad = 0
    position = 0.0
    balance = cash  # cash, as backtest_nb names it
    previous = cash  # equity at bar 0: nothing is held yet
    n_fills = 0
    total = downside = worst = 0.0
    peak = trough = cash
    held = 0
    for t in range(1, n):
        wanted = targets[t - 1]
        if wanted != wanted:  # NaN: no opinion yet, stay flat
            wanted = 0.0
        elif wanted < -1.0 - 1e-12 or wanted > 1.0 + 1e-12:
            bad += 1
        wanted = np.rint(wanted * size)
        delta = wanted - position
        if delta != 0.0:
            price = ask_open[t] if delta > 0.0 else bid_open[t]
            fee = abs(delta) * price * commission
            balance -= delta * price + fee
            position = wanted
            if n_fills < len(fills_buf):
                fills_buf[n_fills]["bar"] = t
                fills_buf[n_fills]["units"] = delta
                fills_buf[n_fills]["price"] = price
                fills_buf[n_fills]["commission"] = fee
                fills_buf[n_fills]["position"] = position
            n_fills += 1
        if position > 0.0:
            value = position * bid_close[t]
        else:
            value = position * ask_close[t]
        if position != 0.0:
            held += 1
            if financing_per_bar != 0.0:
                balance -= abs(position) * 0.5 * (bid_close[t] + ask_close[t]) * financing_per_bar
        equity = balance + value
        r = equity / previous - 1.0
        returns_buf[t] = r
        total += r
        loss = min(r, 0.0)  # adding 0.0 when r >= 0 leaves the sum as metrics_nb's branch does
        downside += loss * loss
        previous = equity
        if equity > peak:
            worst = max(worst, 1.0 - trough / peak)
            peak = trough = equity
        elif equity < trough:
            trough = equity
    worst = max(worst, 1.0 - trough / peak)
    last = targets[n - 1]  # never executed, but checked like the others
    if last < -1.0 - 1e-12 or last > 1.0 + 1e-12:
        bad += 1

    mean = total / (n - 1) if n > 1 else np.nan
    squares = 0.0
    for t in range(1, n):
        squares += (returns_buf[t] - mean) ** 2
    n_trades = trades_nb(fills_buf, n_fills, bid_close, ask_close, financing_per_bar, trades_buf)
    _write_metrics(
        time, previous, cash, total, downside, squares, worst, held, trades_buf, n_trades, out
    )
    return bad


def scratch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Allocate the buffers :func:`evaluate_nb` needs for `n` bars: returns, fills, trades, out."""
    return (
        np.empty(n),
        np.empty(n, dtype=FILL_DTYPE),
        np.empty(n, dtype=TRADE_DTYPE),
        np.empty(N_METRICS),
    )


def metrics_dict(values: np.ndarray) -> dict[str, float]:
    """Name the values :func:`metrics_nb` wrote: ``{"total_return": ..., "trades": ...}``."""
    return {name: float(v) for name, v in zip(METRIC_NAMES, values, strict=True)}
