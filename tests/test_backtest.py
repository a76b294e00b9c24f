"""The backtest kernel and its pandas edge against a plain-Python oracle of the execution rule,
and the settings backtests and sweeps refuse."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from osm.core.dtypes import BAR_DTYPE
from osm.core.errors import ConfigError, DataError, UnknownNameError
from osm.research.backtest import MAX_COMMISSION, backtest, target_units
from osm.research.data import load_bars
from osm.research.nb import FILL_DTYPE, backtest_nb
from osm.research.sweep import sweep
from osm.strategies.base import Param, Strategy
from osm.strategies.sma_cross import SmaCross

HOUR = 3600 * 10**9


class Replay(Strategy):
    """Replays a fixed list of targets: lets a test choose every position."""

    seed = Param(0, low=0, high=10_000)

    def target(self, bars, ind):
        return random_targets(len(bars), self.seed)


def random_targets(n: int, seed: int) -> np.ndarray:
    """Targets that hold, scale, flip, go flat and go NaN, so every branch of the rule runs."""
    rng = np.random.default_rng(seed)
    levels = np.array([np.nan, -1.0, -0.5, -0.33, 0.0, 0.25, 0.5, 1.0])
    changes = rng.random(n) < 0.15
    picks = rng.integers(len(levels), size=n)
    out = np.empty(n)
    current = np.nan
    for t in range(n):
        if changes[t]:
            current = levels[picks[t]]
        out[t] = current
    return out


def oracle(bars: np.ndarray, units: np.ndarray, commission: float, financing: float, cash: float):
    """DESIGN section 3 read literally, one bar at a time, in plain Python floats."""
    equity, fills = [], []
    position = 0.0
    for t, bar in enumerate(bars.tolist()):
        _, bid_open, _, _, bid_close, ask_open, _, _, ask_close, _, _ = bar
        if t > 0:
            wanted = 0.0 if np.isnan(units[t - 1]) else float(units[t - 1])
            if wanted != position:
                delta = wanted - position
                price = ask_open if delta > 0 else bid_open  # buys at the ask, sells at the bid
                fee = abs(delta) * price * commission
                cash -= delta * price + fee
                position = wanted
                fills.append((t, delta, price, fee, position))
        mark = bid_close if position > 0 else ask_close
        cash -= abs(position) * (bid_close + ask_close) / 2 * financing
        equity.append(cash + position * mark)
    return np.array(equity), fills


@pytest.fixture
def h1(h1_file) -> np.ndarray:
    return load_bars(h1_file)[-4000:]


def test_kernel_matches_the_oracle_on_real_h1_bars(h1: np.ndarray) -> None:
    n = len(h1)
    for seed in range(3):
        units = target_units(random_targets(n, seed), 10_000)
        for commission in [0.0, 2e-5, 1e-3]:
            for financing in [0.0, 3e-6]:
                equity = np.empty(n)
                fills = np.empty(n, dtype=FILL_DTYPE)
                count = backtest_nb(
                    h1["bid_open"], h1["ask_open"], h1["bid_close"], h1["ask_close"], units,
                    commission, financing, 100_000.0, equity, fills,
                )  # fmt: skip
                want_equity, want_fills = oracle(h1, units, commission, financing, 100_000.0)
                np.testing.assert_allclose(equity, want_equity, rtol=1e-12)
                assert count == len(want_fills) > 50
                got = fills[:count]
                for field, column in zip(
                    FILL_DTYPE.names, zip(*want_fills, strict=True), strict=True
                ):
                    np.testing.assert_allclose(got[field], column, rtol=1e-12, err_msg=field)


def _bars(rows: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Bars from (bid_open, ask_open, bid_close, ask_close); highs and lows span them."""
    bars = np.zeros(len(rows), dtype=BAR_DTYPE)
    bars["time"] = np.arange(len(rows)) * HOUR
    for i, (bid_open, ask_open, bid_close, ask_close) in enumerate(rows):
        bars[i]["bid_open"], bars[i]["ask_open"] = bid_open, ask_open
        bars[i]["bid_close"], bars[i]["ask_close"] = bid_close, ask_close
        bars[i]["bid_high"] = bars[i]["ask_high"] = max(ask_open, ask_close)
        bars[i]["bid_low"] = bars[i]["ask_low"] = min(bid_open, bid_close)
    bars["complete"] = True
    return bars


class Script(Strategy):
    """Long after bar 0, short after bar 2, flat after bar 3 (and a last target never executed)."""

    def target(self, bars, ind):
        return np.array([1.0, 1.0, -1.0, 0.0, 1.0])[: len(bars)]


def test_execution_rule_by_hand() -> None:
    bars = _bars(
        [
            (1.0000, 1.0002, 1.0010, 1.0012),
            (1.0010, 1.0012, 1.0020, 1.0022),
            (1.0020, 1.0022, 1.0030, 1.0032),
            (1.0030, 1.0032, 1.0040, 1.0042),
            (1.0040, 1.0042, 1.0050, 1.0052),
        ]
    )
    result = backtest(Script, bars, size=1000, commission=0.001, cash=10_000)
    fills = result.fills
    # Target of bar 0 fills at bar 1's open: a buy at the ask; the flip after bar 2 sells at the bid.
    assert fills["bar"].tolist() == [1, 3, 4]
    assert fills["side"].tolist() == ["buy", "sell", "buy"]
    assert fills["units"].tolist() == [1000.0, -2000.0, 1000.0]
    assert fills["price"].tolist() == [1.0012, 1.0030, 1.0042]
    np.testing.assert_allclose(fills["commission"], [1.0012, 2.0060, 1.0042], rtol=1e-12)
    assert fills["time"].tolist() == [pd.Timestamp(h * HOUR, tz="UTC") for h in (1, 3, 4)]
    # Long valued at the bid close, short at the ask close.
    cash_1 = 10_000 - 1001.2 - 1.0012
    cash_3 = cash_1 + 2006.0 - 2.006
    cash_4 = cash_3 - 1004.2 - 1.0042
    np.testing.assert_allclose(
        result.equity.to_numpy(),
        [10_000, cash_1 + 1002.0, cash_1 + 1003.0, cash_3 - 1004.2, cash_4],
        rtol=1e-12,
    )
    assert result.target_units.tolist() == [1000.0, 1000.0, -1000.0, 0.0, 1000.0]


def test_result_frames_are_indexed_by_utc_time(h1: np.ndarray) -> None:
    result = backtest(SmaCross, h1, fast=5, slow=20, commission=2e-5)
    assert str(result.equity.index.tz) == "UTC"
    assert result.equity.index[0] == pd.Timestamp(int(h1["time"][0]), unit="ns", tz="UTC")
    assert result.equity.iloc[0] == 100_000
    fills = result.fills
    assert (fills["time"].to_numpy() == result.equity.index[fills["bar"]].to_numpy()).all()
    assert set(fills["side"]) == {"buy", "sell"}
    assert (np.sign(fills["units"]) == np.where(fills["side"] == "buy", 1, -1)).all()
    np.testing.assert_array_equal(result.targets.to_numpy(), SmaCross(fast=5, slow=20).targets(h1))
    assert np.isnan(result.targets.iloc[0]) and result.target_units[0] == 0.0


def test_units_round_the_target_times_size_and_nan_is_flat() -> None:
    units = target_units(np.array([np.nan, 0.33333, -0.5, 1.0, -0.00004]), 10_000)
    assert units.tolist() == [0.0, 3333.0, -5000.0, 10_000.0, -0.0]


def test_trade_pnl_adds_up_to_the_equity_change(h1: np.ndarray) -> None:
    result = backtest(Replay, h1, seed=5, commission=5e-5, financing=2e-6)
    trades = result.trades
    assert len(trades) > 20 and trades["closed"].iloc[:-1].all()
    assert trades["pnl"].sum() == pytest.approx(result.equity.iloc[-1] - result.cash, abs=1e-6)
    assert trades["commission"].sum() == pytest.approx(result.fills["commission"].sum(), rel=1e-12)


def test_strategy_by_path_class_or_instance_gives_the_same_run(h1: np.ndarray) -> None:
    by_class = backtest(SmaCross, h1, fast=5, slow=20)
    by_path = backtest("osm.strategies.sma_cross:SmaCross", h1, fast=5, slow=20)
    by_instance = backtest(SmaCross(fast=7, slow=20), h1, fast=5)
    for other in (by_path, by_instance):
        assert other.strategy.values == {"fast": 5, "slow": 20}
        np.testing.assert_array_equal(other.equity_values, by_class.equity_values)


def test_bad_input_is_refused_with_the_fix(h1: np.ndarray) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'fast'"):
        backtest(SmaCross, h1, fastt=5)
    with pytest.raises(ConfigError, match="fast .* must be shorter than slow"):
        backtest(SmaCross, h1, fast=30, slow=20)
    with pytest.raises(ConfigError, match="size must be a positive whole number"):
        backtest(SmaCross, h1, size=0.5)
    with pytest.raises(ConfigError, match="commission must be a fraction"):
        backtest(SmaCross, h1, commission=-1e-5)
    with pytest.raises(TypeError, match="load_bars"):
        backtest(SmaCross, pd.DataFrame({"close": [1.0]}))
    with pytest.raises(TypeError, match="Strategy instance, a Strategy class or a path"):
        backtest(42, h1)
    shuffled = h1[::-1].copy()
    with pytest.raises(DataError, match="row 1 .* is earlier than row 0"):
        backtest(SmaCross, shuffled)


def test_a_whole_size_given_as_a_float_is_accepted(h1: np.ndarray) -> None:
    by_int = backtest(SmaCross, h1, size=10_000)
    for size in (1e4, np.float64(1e4), np.int32(10_000)):
        result = backtest(SmaCross, h1, size=size)
        assert result.size == 10_000 and isinstance(result.size, int)
        np.testing.assert_array_equal(result.equity_values, by_int.equity_values)
    for size in (1e4 + 0.5, float("inf"), -1e4, True):
        with pytest.raises(ConfigError, match="size must be a positive whole number of units"):
            backtest(SmaCross, h1, size=size)


def test_an_unreasonable_commission_is_refused_with_the_accepted_range(h1: np.ndarray) -> None:
    assert backtest(SmaCross, h1, commission=MAX_COMMISSION).commission == 0.01
    accepted = r"commission must be a fraction of each fill's notional in \[0, 0\.01\]"
    with pytest.raises(
        ConfigError, match=rf"{accepted} .*got 2; for 2 bp pass 0\.0002, for 2 per "
    ):
        backtest(SmaCross, h1, commission=2)
    with pytest.raises(ConfigError, match=r"got 0\.05; for 0\.05 % pass 0\.0005$"):
        backtest(SmaCross, h1, commission=0.05)
    with pytest.raises(ConfigError, match=rf"{accepted} .*got nan$"):
        backtest(SmaCross, h1, commission=float("nan"))


def test_no_bars_is_a_clear_error(h1: np.ndarray) -> None:
    for run in (backtest, sweep):
        with pytest.raises(DataError, match=f"{run.__name__} got no bars"):
            run(SmaCross, h1[:0])


def test_sweep_says_how_many_combinations_it_skips_and_why(h1: np.ndarray) -> None:
    grid = {"fast": [5, 20, 50], "slow": [10, 40]}
    with pytest.warns(
        UserWarning,
        match=r"skipping 3 of 6 combinations .* e\.g\. SmaCross\{'fast': 20, 'slow': 10\}: fast "
        r"\(20\) must be shorter than slow",
    ):
        table = sweep(SmaCross, h1[:500], grid=grid, progress=False, workers=1)
    assert sorted(zip(table["fast"], table["slow"], strict=True)) == [(5, 10), (5, 40), (20, 40)]
    with pytest.raises(ConfigError, match=r"all 2 combinations of the grid are invalid, e\.g\. "):
        sweep(SmaCross, h1[:500], grid={"fast": [50], "slow": [10, 40]}, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a grid without invalid combinations says nothing
        sweep(SmaCross, h1[:500], grid={"fast": [5], "slow": [10, 40]}, progress=False, workers=1)
