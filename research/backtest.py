"""Backtest one strategy on bars: the pandas edge around the numba kernels.

``backtest(SmaCross, bars, fast=10, slow=40)`` runs the strategy, turns its targets into units
(``round(target * size)``, NaN meaning flat), executes them with :func:`osm.research.nb.backtest_nb`
(the target of bar ``t`` fills at the open of bar ``t + 1``, buying at the ask and selling at the
bid) and wraps the arrays in a :class:`BacktestResult` of pandas objects indexed by UTC time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from osm.core.errors import ConfigError, DataError
from osm.research.data import check_bars
from osm.research.metrics import N_METRICS, TRADE_DTYPE, metrics_dict, metrics_nb, trades_nb
from osm.research.nb import FILL_DTYPE, backtest_nb
from osm.strategies.base import Bars, Strategy, load_strategy

MAX_COMMISSION = 0.01
"""The largest commission accepted, a fraction of notional (1 %, fifty times a retail FX fee)."""


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """What one backtest produced: the raw arrays, and pandas views of them on first use.

    Attributes
    ----------
    strategy
        The strategy instance that ran, with its parameter values.
    bars
        The BAR_DTYPE bars it ran on.
    size, commission, financing, cash
        The settings of the run (see :func:`backtest`).
    target_fractions
        The strategy's targets, fractions of `size` (NaN: flat).
    target_units
        Units wanted after each bar's close, ``round(target * size)``, the kernel's input.
    equity_values, fill_records, trade_records, metric_values
        The kernels' outputs: float64 (n,), FILL_DTYPE, TRADE_DTYPE, float64 (N_METRICS,).
    """

    strategy: Strategy
    bars: np.ndarray
    size: int
    commission: float
    financing: float
    cash: float
    target_fractions: np.ndarray
    target_units: np.ndarray
    equity_values: np.ndarray
    fill_records: np.ndarray
    trade_records: np.ndarray
    metric_values: np.ndarray

    @cached_property
    def index(self) -> pd.DatetimeIndex:
        """The bars' open times as a UTC DatetimeIndex."""
        return _times(self.bars["time"], "time")

    @cached_property
    def equity(self) -> pd.Series:
        """Cash plus the position valued at the close (bid for a long, ask for a short)."""
        return pd.Series(self.equity_values, index=self.index, name="equity")

    @cached_property
    def targets(self) -> pd.Series:
        """The strategy's target after each bar's close, a fraction of `size` (NaN: flat)."""
        return pd.Series(self.target_fractions, index=self.index, name="target")

    @cached_property
    def fills(self) -> pd.DataFrame:
        """One row per fill: time (bar open), bar, side, signed units, price, commission, position."""
        records = self.fill_records
        return pd.DataFrame(
            {
                "time": _times(self.bars["time"][records["bar"]]),
                "bar": records["bar"],
                "side": np.where(records["units"] > 0, "buy", "sell"),
                "units": records["units"],
                "price": records["price"],
                "commission": records["commission"],
                "position": records["position"],
            }
        )

    @cached_property
    def trades(self) -> pd.DataFrame:
        """One row per round trip; see :mod:`osm.research.metrics` for how a trade is counted."""
        records = self.trade_records
        frame = pd.DataFrame({name: records[name] for name in TRADE_DTYPE.names})
        frame.insert(0, "entry_time", _times(self.bars["time"][records["entry_bar"]]))
        frame.insert(1, "exit_time", _times(self.bars["time"][records["exit_bar"]]))
        frame["direction"] = np.where(records["direction"] > 0, "long", "short")
        return frame

    @cached_property
    def metrics(self) -> dict[str, float]:
        """Total return, CAGR, Sharpe, Sortino, max drawdown, win rate, profit factor, exposure,
        trade count (formulas in :mod:`osm.research.metrics`)."""
        return metrics_dict(self.metric_values)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return f"<BacktestResult {self.strategy!r} on {len(self.bars)} bars: {shown}>"


def backtest(
    strategy_or_cls: Strategy | type[Strategy] | str,
    bars: np.ndarray | Bars,
    size: int | float = 10_000,
    commission: float = 0.0,
    financing: float = 0.0,
    cash: float = 100_000.0,
    **params: Any,
) -> BacktestResult:
    """Backtest a strategy on bars with bid/ask fills at the next bar's open.

    Parameters
    ----------
    strategy_or_cls
        A Strategy instance, a Strategy class, or its import path ``"package.module:Class"``.
    bars
        BAR_DTYPE bars (e.g. from :func:`osm.research.data.load_bars`), oldest first.
    size
        Units for a target of 1: a target of -0.5 with size 10 000 is a short of 5 000 units.
        A whole number (``1e4`` is fine).
    commission
        Fraction of traded notional paid on each fill, 0 to ``MAX_COMMISSION`` (0.01): 0.00002
        is 0.2 bp, 0.2 pip on EUR_USD at 1.0, about 2 per 100 000 units.
    financing
        Fraction of the absolute position's notional at the mid close charged at each bar's close
        (a rate per bar: 2 % a year on H1 bars is about 0.02 / 6200).
    cash
        Starting equity, in the quote currency.
    **params
        Strategy parameters; with an instance, they override its values.

    Returns
    -------
    BacktestResult
        Equity, fills, trades, targets and metrics.
    """
    strategy = _strategy(strategy_or_cls, params)
    records = bars.records if isinstance(bars, Bars) else bars
    if not isinstance(records, np.ndarray):
        raise TypeError(
            f"bars must be a BAR_DTYPE array or Bars, got {type(bars).__name__}; "
            "load them with osm.research.data.load_bars"
        )
    records = check_bars(records)
    check_not_empty(records, "backtest")
    check_settings(size, commission, financing, cash)
    view = bars if isinstance(bars, Bars) else Bars(records)
    fractions = strategy.targets(view)
    units = target_units(fractions, size)
    n = len(records)
    equity = np.empty(n)
    fills = np.empty(n, dtype=FILL_DTYPE)
    bid_close, ask_close = view.bid_close, view.ask_close
    n_fills = backtest_nb(
        view.bid_open, view.ask_open, bid_close, ask_close, units, float(commission),
        float(financing), float(cash), equity, fills,
    )  # fmt: skip
    fills = fills[:n_fills].copy()
    trades = np.empty(n_fills, dtype=TRADE_DTYPE)
    n_trades = trades_nb(fills, n_fills, bid_close, ask_close, float(financing), trades)
    trades = trades[:n_trades].copy()
    values = np.empty(N_METRICS)
    metrics_nb(view.time, equity, float(cash), trades, n_trades, units, values)
    return BacktestResult(
        strategy, records, int(size), float(commission), float(financing), float(cash),
        fractions, units, equity, fills, trades, values,
    )  # fmt: skip


def target_units(targets: np.ndarray, size: int) -> np.ndarray:
    """Return ``round(targets * size)`` with NaN (no opinion) as 0 units."""
    units = np.rint(np.asarray(targets, dtype=np.float64) * size)
    units[np.isnan(units)] = 0.0
    return units


def _strategy(strategy_or_cls: Strategy | type[Strategy] | str, params: dict) -> Strategy:
    if isinstance(strategy_or_cls, Strategy):
        if not params:
            return strategy_or_cls
        return type(strategy_or_cls)(**{**strategy_or_cls.values, **params})
    if isinstance(strategy_or_cls, str | type):
        return load_strategy(strategy_or_cls)(**params)
    raise TypeError(
        "backtest takes a Strategy instance, a Strategy class or a path like "
        f"'osm.strategies.sma_cross:SmaCross', got {type(strategy_or_cls).__name__}"
    )


def check_settings(size: float, commission: float, financing: float, cash: float) -> None:
    """Raise ConfigError for a size, commission, financing or cash a backtest cannot use."""
    if (
        isinstance(size, bool)
        or not isinstance(size, int | float | np.integer | np.floating)
        or not (math.isfinite(size) and float(size).is_integer() and size > 0)
    ):
        raise ConfigError(f"size must be a positive whole number of units, got {size!r}")
    if not (math.isfinite(commission) and 0 <= commission <= MAX_COMMISSION):
        raise ConfigError(
            f"commission must be a fraction of each fill's notional in [0, {MAX_COMMISSION}] "
            f"(0.00002 = 0.2 bp, about 2 per 100 000 units at a price near 1), got {commission!r}"
            + _commission_hint(commission)
        )
    if not math.isfinite(financing):
        raise ConfigError(f"financing must be a finite rate per bar, got {financing!r}")
    if not (math.isfinite(cash) and cash > 0):
        raise ConfigError(f"cash must be a positive amount, got {cash!r}")


def check_not_empty(records: np.ndarray, what: str) -> None:
    """Raise DataError when there are no bars to run `what` on."""
    if len(records) == 0:
        raise DataError(
            f"{what} got no bars: the file or the slice holds none; give it at least one bar"
        )


def _commission_hint(commission: float) -> str:
    # Guess the unit the value was meant in: percent, basis points, or money per 100 000 units.
    if not math.isfinite(commission) or commission <= MAX_COMMISSION or commission > 1000:
        return ""
    if commission < 0.5:
        return f"; for {commission:g} % pass {commission / 100:g}"
    return (
        f"; for {commission:g} bp pass {commission * 1e-4:g}, for {commission:g} per 100 000 "
        f"units traded pass {commission / 100_000:g}"
    )


def _times(values: np.ndarray, name: str | None = None) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(values, unit="ns", utc=True), name=name)
