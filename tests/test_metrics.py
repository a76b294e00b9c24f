"""Trade list and metrics kernels against pandas and plain-Python oracles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from osm.research.backtest import backtest, target_units
from osm.research.data import load_bars
from osm.research.metrics import (
    METRIC_NAMES,
    TRADE_DTYPE,
    evaluate_nb,
    metrics_dict,
    metrics_nb,
    scratch,
    trades_nb,
)
from osm.research.nb import FILL_DTYPE, backtest_nb
from osm.strategies.bollinger import Bollinger
from osm.strategies.donchian import Donchian
from osm.strategies.momentum import Momentum
from osm.strategies.sma_cross import SmaCross
from tests.test_backtest import Replay, random_targets

YEAR = pd.Timedelta(days=365.25)


@pytest.fixture
def h1(h1_file) -> np.ndarray:
    return load_bars(h1_file)[-6000:]


def trades_oracle(bars: np.ndarray, held: np.ndarray, commission: float, financing: float):
    """Round trips from the position held through each bar, with their pnl, in plain Python.

    A trade is a run of bars with a non-zero position of one sign; its pnl is every cash flow of its
    units (a flip's fill split by units) plus, if still open, the last close's value.
    """
    trades, current = [], None
    previous = 0.0
    n = len(bars)
    for t in range(n):
        now = held[t]
        if now != previous:
            delta = now - previous
            price = bars["ask_open"][t] if delta > 0 else bars["bid_open"][t]
            fee_per_unit = price * commission
            closes = abs(previous) if previous * now <= 0 else max(0.0, abs(previous) - abs(now))
            opens = abs(now) if previous * now <= 0 else max(0.0, abs(now) - abs(previous))
            if current is not None and closes:
                current["pnl"] += current["dir"] * closes * price - closes * fee_per_unit
                if previous * now <= 0:
                    trades.append(current | {"closed": True})
                    current = None
            if opens:
                if current is None:
                    current = {"dir": math.copysign(1, now), "pnl": 0.0, "entry": t}
                current["pnl"] += -current["dir"] * opens * price - opens * fee_per_unit
        if now:
            mid = (bars["bid_close"][t] + bars["ask_close"][t]) / 2
            current["pnl"] -= abs(now) * mid * financing
        previous = now
    if current is not None:
        mark = bars["bid_close"][-1] if previous > 0 else bars["ask_close"][-1]
        current["pnl"] += current["dir"] * abs(previous) * mark
        trades.append(current | {"closed": False})
    return trades


def metrics_oracle(time: np.ndarray, equity: np.ndarray, cash: float, trades, held) -> dict:
    """The formulas of osm.research.metrics' docstring, with pandas."""
    curve = pd.Series(equity, index=pd.to_datetime(time, unit="ns", utc=True))
    returns = curve.pct_change().iloc[1:]
    years = (curve.index[-1] - curve.index[0]) / YEAR
    per_year = len(returns) / years
    downside = np.sqrt((returns.clip(upper=0) ** 2).mean())
    closed = [t["pnl"] for t in trades if t["closed"]]
    gains = sum(p for p in closed if p > 0)
    losses = -sum(p for p in closed if p <= 0)
    return {
        "total_return": curve.iloc[-1] / cash - 1,
        "cagr": (curve.iloc[-1] / cash) ** (1 / years) - 1,
        "sharpe": returns.mean() / returns.std() * np.sqrt(per_year),
        "sortino": returns.mean() / downside * np.sqrt(per_year),
        "max_drawdown": (1 - curve / curve.cummax().clip(lower=cash)).max(),
        "win_rate": sum(p > 0 for p in closed) / len(closed) if closed else np.nan,
        "profit_factor": gains / losses if losses else (np.inf if gains else np.nan),
        "exposure": np.count_nonzero(held) / len(held),
        "trades": len(closed),
    }


def _held(units: np.ndarray) -> np.ndarray:
    held = np.zeros(len(units))
    held[1:] = units[:-1]
    return held


RUNS = [
    (SmaCross, {"fast": 5, "slow": 30}),
    (Donchian, {}),
    (Bollinger, {"k": 1.5}),
    (Momentum, {"lookback": 48, "threshold": 0.001}),
    (Replay, {"seed": 11}),
]


@pytest.mark.parametrize(("cls", "params"), RUNS, ids=[c.__name__ for c, _ in RUNS])
def test_trades_and_metrics_match_the_oracles(h1: np.ndarray, cls, params) -> None:
    commission, financing = 3e-5, 1e-6
    result = backtest(cls, h1, commission=commission, financing=financing, **params)
    held = _held(result.target_units)
    want_trades = trades_oracle(h1, held, commission, financing)
    got = result.trades
    assert len(got) == len(want_trades) > 10
    assert got["entry_bar"].tolist() == [t["entry"] for t in want_trades]
    assert got["closed"].tolist() == [t["closed"] for t in want_trades]
    np.testing.assert_allclose(got["pnl"], [t["pnl"] for t in want_trades], rtol=1e-9, atol=1e-9)
    want = metrics_oracle(h1["time"], result.equity_values, result.cash, want_trades, held)
    for name in METRIC_NAMES:
        assert result.metrics[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name


def test_the_fast_path_gives_the_backtest_metrics_exactly(h1: np.ndarray) -> None:
    returns, fills, trades, out = scratch(len(h1))
    for seed in range(4):  # reused buffers: nothing may leak from one combination to the next
        outside = evaluate_nb(
            h1["time"], h1["bid_open"], h1["ask_open"], h1["bid_close"], h1["ask_close"],
            random_targets(len(h1), seed), 25_000.0, 2e-5, 1e-6, 50_000.0, returns, fills,
            trades, out,
        )  # fmt: skip
        result = backtest(Replay, h1, size=25_000, commission=2e-5, financing=1e-6, cash=50_000,
                          seed=seed)  # fmt: skip
        assert outside == 0
        assert metrics_dict(out) == result.metrics


def _chained(bars: np.ndarray, units: np.ndarray, commission: float, financing: float,
             cash: float) -> np.ndarray:  # fmt: skip
    """The slow path the fused kernel replaces: every equity, fill and trade kept."""
    n = len(bars)
    equity, fills = np.empty(n), np.empty(n, dtype=FILL_DTYPE)
    prices = [
        np.ascontiguousarray(bars[f]) for f in ("bid_open", "ask_open", "bid_close", "ask_close")
    ]
    n_fills = backtest_nb(*prices, units, commission, financing, cash, equity, fills)
    trades = np.empty(max(n_fills, 1), dtype=TRADE_DTYPE)
    n_trades = trades_nb(fills, n_fills, prices[2], prices[3], financing, trades)
    out = np.empty(len(METRIC_NAMES))
    metrics_nb(np.ascontiguousarray(bars["time"]), equity, cash, trades, n_trades, units, out)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 50, 6000])
def test_the_fused_kernel_equals_the_chained_kernels_bit_for_bit(h1: np.ndarray, n: int) -> None:
    bars = h1[-n:]
    columns = [np.ascontiguousarray(bars[f]) for f in
               ("time", "bid_open", "ask_open", "bid_close", "ask_close")]  # fmt: skip
    returns, fills, trades, out = scratch(n)
    returns[:] = fills["price"] = trades["pnl"] = np.pi  # stale scratch must not leak in
    rng = np.random.default_rng(n)
    cases = [random_targets(n, seed) for seed in range(3)]
    cases += [np.full(n, np.nan), np.zeros(n), np.ones(n), -np.ones(n)]
    cases += [np.sign(rng.standard_normal(n)), rng.uniform(-1, 1, n)]  # flips every bar
    # size 2e6 on 100 000 cash: 20x leverage, drawdowns near or past 1.
    for targets, size in itertools.product(cases, [1.0, 10_000.0, 2e6]):
        for commission, financing in [(0.0, 0.0), (2e-5, 0.0), (1e-3, 3e-6)]:
            want = _chained(bars, target_units(targets, size), commission, financing, 1e5)
            outside = evaluate_nb(
                *columns, targets, size, commission, financing, 1e5, returns, fills, trades, out
            )
            assert outside == 0
            np.testing.assert_array_equal(out, want)  # NaN equals NaN, nothing else but equality


def test_the_fused_kernel_counts_targets_outside_the_range(h1: np.ndarray) -> None:
    bars = h1[-100:]
    columns = [np.ascontiguousarray(bars[f]) for f in
               ("time", "bid_open", "ask_open", "bid_close", "ask_close")]  # fmt: skip
    targets = np.zeros(100)
    targets[[3, 50, 99]] = [1.5, -1.0 - 1e-9, 2.0]  # the last one too, though never executed
    targets[10] = 1.0 + 1e-13  # rounding noise is inside
    returns, fills, trades, out = scratch(100)
    assert evaluate_nb(*columns, targets, 1.0, 0.0, 0.0, 1e5, returns, fills, trades, out) == 3


def test_a_run_that_never_trades_has_no_ratio_to_report(h1: np.ndarray) -> None:
    metrics = backtest(Momentum, h1, lookback=5, threshold=0.02).metrics
    assert metrics["total_return"] == 0 and metrics["max_drawdown"] == 0
    assert metrics["trades"] == 0 and metrics["exposure"] == 0
    for name in ("sharpe", "sortino", "win_rate", "profit_factor"):
        assert math.isnan(metrics[name]), name
    assert metrics["cagr"] == 0


def test_metric_values_on_a_known_curve() -> None:
    from osm.research.metrics import TRADE_DTYPE, metrics_nb

    time = (np.arange(5) * 365.25 / 4 * 86400 * 10**9).astype(np.int64)  # exactly one year
    equity = np.array([100.0, 110.0, 99.0, 108.9, 121.0])
    trades = np.zeros(3, dtype=TRADE_DTYPE)
    trades["pnl"] = [10.0, -5.0, 7.0]
    trades["closed"] = [True, True, False]
    out = np.empty(len(METRIC_NAMES))
    metrics_nb(time, equity, 100.0, trades, 3, np.array([1.0, 0.0, -2.0, np.nan, 5.0]), out)
    got = metrics_dict(out)
    returns = np.array([0.1, -0.1, 0.1, 121.0 / 108.9 - 1])
    assert got["total_return"] == pytest.approx(0.21)
    assert got["cagr"] == pytest.approx(0.21)  # one year: CAGR is the total return
    assert got["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * 2)
    assert got["sortino"] == pytest.approx(returns.mean() / np.sqrt(0.01 / 4) * 2)
    assert got["max_drawdown"] == pytest.approx(0.1)
    assert got["win_rate"] == 0.5 and got["profit_factor"] == 2.0 and got["trades"] == 2
    assert got["exposure"] == pytest.approx(2 / 5)  # held after bars 0 and 2 only
