"""Built-in strategies: their rule against an exact oracle, ties decided as ties, causality and
finite memory."""

from __future__ import annotations

import pickle
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from osm.core.dtypes import PRICE_FIELDS
from osm.core.errors import ConfigError
from osm.research.backtest import backtest
from osm.research.data import load_bars
from osm.research.synthetic import random_walk_bars
from osm.strategies.base import MAX_DECIMALS, Bars, IndicatorCache, Strategy, load_strategy
from osm.strategies.bollinger import Bollinger
from osm.strategies.donchian import Donchian
from osm.strategies.momentum import Momentum
from osm.strategies.sma_cross import SmaCross

BUILT_INS = {
    "osm.strategies.sma_cross:SmaCross": [{}, {"fast": 3, "slow": 7}],
    "osm.strategies.donchian:Donchian": [{}, {"window": 10, "exit_window": 10, "max_hold": 10}],
    "osm.strategies.bollinger:Bollinger": [{}, {"window": 5, "k": 1.0, "max_hold": 3}],
    "osm.strategies.momentum:Momentum": [{}, {"lookback": 5, "threshold": 0.001}],
}
CASES = [(path, params) for path, grid in BUILT_INS.items() for params in grid]
IDS = [
    f"{path.rpartition(':')[2]}-{i}" for path, grid in BUILT_INS.items() for i in range(len(grid))
]


@pytest.fixture
def h1(h1_file) -> np.ndarray:
    return load_bars(h1_file)[-3000:]


def _decimals(bars: np.ndarray) -> int:
    """The decimals the quotes are written with, read from their shortest decimal text."""
    return max(
        max(0, -Decimal(repr(v)).normalize().as_tuple().exponent)
        for field in PRICE_FIELDS
        for v in bars[field].tolist()
    )


def _mid(bars: np.ndarray, field: str) -> list[int]:
    """The exact mid of each bar in half-points (``bid + ask`` in the quotes' last decimal),
    from the decimal text of the quotes: an oracle independent of ``Bars.int_close``."""
    scale = 10 ** _decimals(bars)
    return [
        int((Decimal(repr(b)) + Decimal(repr(a))) * scale)
        for b, a in zip(bars[f"bid_{field}"].tolist(), bars[f"ask_{field}"].tolist(), strict=True)
    ]


def _sums(x: list[int], window: int) -> list[int | None]:
    return [sum(x[t - window + 1 : t + 1]) if t >= window - 1 else None for t in range(len(x))]


def _sign(value) -> float:
    return float((value > 0) - (value < 0))


def _latched(enter_long, enter_short, exit_long, exit_short, max_hold: int, n: int) -> np.ndarray:
    """The side of the last entry among the last max_hold bars, unless an exit came after it."""
    out = np.zeros(n)
    for t in range(n):
        for s in range(t, max(-1, t - max_hold), -1):
            side = (1 if enter_long[s] else 0) - (1 if enter_short[s] else 0)
            if side:
                exits = exit_long if side > 0 else exit_short
                out[t] = 0 if exits[s + 1 : t + 1].any() else side
                break
    return out


def sma_cross_oracle(bars: np.ndarray, fast: int, slow: int) -> np.ndarray:
    """The sign of fast mean minus slow mean, in integers: fast_sum * slow - slow_sum * fast."""
    close = _mid(bars, "close")
    return np.array(
        [
            np.nan if s is None else _sign(f * slow - s * fast)
            for f, s in zip(_sums(close, fast), _sums(close, slow), strict=True)
        ]
    )


def donchian_oracle(bars: np.ndarray, window: int, exit_window: int, max_hold: int) -> np.ndarray:
    # Integer mids below 2**53 are exact in pandas' float64 max and min.
    close, high, low = (pd.Series(_mid(bars, f), dtype=float) for f in ("close", "high", "low"))
    out = _latched(
        (close > high.rolling(window).max().shift()).to_numpy(),
        (close < low.rolling(window).min().shift()).to_numpy(),
        (close < low.rolling(exit_window).min().shift()).to_numpy(),
        (close > high.rolling(exit_window).max().shift()).to_numpy(),
        max_hold,
        len(bars),
    )
    out[:window] = np.nan
    return out


def bollinger_oracle(bars: np.ndarray, window: int, k: float, max_hold: int) -> np.ndarray:
    """The bands in fractions: close against mean +/- k * population std of its window."""
    close = _mid(bars, "close")
    k = Fraction(str(k))
    n = len(close)
    below, above, over_middle, under_middle = (np.zeros(n, dtype=bool) for _ in range(4))
    for t in range(window - 1, n):
        xs = close[t - window + 1 : t + 1]
        mean = Fraction(sum(xs), window)
        variance = sum((x - mean) ** 2 for x in xs) / window
        away = close[t] - mean
        beyond = away * away > k * k * variance
        below[t], above[t] = away < 0 and beyond, away > 0 and beyond
        over_middle[t], under_middle[t] = away >= 0, away <= 0
    out = _latched(below, above, over_middle, under_middle, max_hold, n)
    out[: window - 1] = np.nan
    return out


def momentum_oracle(bars: np.ndarray, lookback: int, threshold: float) -> np.ndarray:
    close = _mid(bars, "close")
    threshold = Fraction(str(threshold))
    out = np.full(len(close), np.nan)
    for t in range(lookback, len(close)):
        change = Fraction(close[t], close[t - lookback]) - 1
        out[t] = 1.0 if change > threshold else -1.0 if change < -threshold else 0.0
    return out


# Exact oracles: integers and fractions from the quotes' decimal text, no tolerance, no abstention.
ORACLES = {
    SmaCross: sma_cross_oracle,
    Donchian: donchian_oracle,
    Bollinger: bollinger_oracle,
    Momentum: momentum_oracle,
}


@pytest.mark.parametrize(("path", "params"), CASES, ids=IDS)
def test_targets_follow_the_documented_rule(h1: np.ndarray, path: str, params: dict) -> None:
    strategy = load_strategy(path)(**params)
    got = strategy.targets(h1)
    want = ORACLES[type(strategy)](h1, **strategy.values)
    np.testing.assert_array_equal(got, want)
    assert {-1.0, 1.0} <= set(got[~np.isnan(got)]) <= {-1.0, 0.0, 1.0}
    assert type(strategy).__doc__ and "The idea" in type(strategy).__doc__


@pytest.mark.parametrize(("path", "params"), CASES, ids=IDS)
def test_targets_are_causal(h1: np.ndarray, path: str, params: dict) -> None:
    strategy = load_strategy(path)(**params)
    full = strategy.targets(h1)
    for cut in [1, 2, 50, 333, 1500, len(h1) - 1]:
        np.testing.assert_array_equal(strategy.targets(h1[:cut]), full[:cut], err_msg=f"cut {cut}")


@pytest.mark.parametrize(("path", "params"), CASES, ids=IDS)
def test_a_window_of_warmup_bars_gives_the_full_runs_last_target(
    h1: np.ndarray, path: str, params: dict
) -> None:
    # What the live brain does: call target on a bounded window at each closed bar.
    strategy = load_strategy(path)(**params)
    full = strategy.targets(h1)
    warmup = strategy.warmup
    ends = np.random.default_rng(1).integers(warmup - 1, len(h1), size=60)
    for t in ends:
        window = strategy.targets(h1[t - warmup + 1 : t + 1])
        assert len(window) == warmup
        np.testing.assert_array_equal(window[-1], full[t], err_msg=f"bar {t}")
    assert not np.isnan(full[warmup - 1 :]).any()


def test_warmup_is_no_longer_than_needed(h1: np.ndarray) -> None:
    strategy = SmaCross(fast=5, slow=30)
    assert np.isnan(strategy.targets(h1[: strategy.warmup - 1])).all()
    strategy = Donchian(window=10, exit_window=5, max_hold=20)
    full = strategy.targets(h1)
    shorter = strategy.warmup - 1
    differs = [
        t
        for t in range(shorter, len(h1))
        if strategy.targets(h1[t - shorter + 1 : t + 1])[-1] != full[t]
    ]
    assert differs  # one bar less of history changes some target: the warm-up is tight


def test_strategies_sharing_an_indicator_compute_it_once(h1: np.ndarray) -> None:
    bars, cache = Bars(h1), IndicatorCache()
    SmaCross(fast=5, slow=30).targets(bars, cache)
    SmaCross(fast=10, slow=30).targets(bars, cache)
    Bollinger(window=30).targets(bars, cache)
    # Sums over 5, 10 and 30 bars and the variance over 30; the 30-bar sum reused twice.
    assert cache.misses == 4 and cache.hits == 2


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (SmaCross, {"fast": 30, "slow": 30}, "fast .30. must be shorter than slow"),
        (Donchian, {"window": 10, "exit_window": 20}, "exit_window .20. must not exceed window"),
        (Bollinger, {"k": 9.0}, "outside its range"),
        (Momentum, {"lookback": 2}, "outside its range"),
    ],
)
def test_parameters_that_do_not_go_together_are_refused(
    cls: type[Strategy], params: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**params)
    assert not cls.is_valid(params)


def _tied_blocks(bars: np.ndarray, blocks: int, fast: int, slow: int) -> np.ndarray:
    """Real quotes arranged so that the fast and slow means tie exactly at the end of each block.

    A block is `slow` bars: a run of `fast` consecutive bars, preceded by ``slow / fast - 1``
    reorderings of the same run, so its last `fast` bars and all `slow` have the same mean.
    """
    rng = np.random.default_rng(17)
    starts = rng.integers(0, len(bars) - fast, blocks)
    out = []
    for start in starts:
        run = bars[start : start + fast]
        out += [run[rng.permutation(fast)] for _ in range(slow // fast - 1)] + [run]
    return np.concatenate(out)


@pytest.fixture(scope="module")
def tied(m1_file) -> np.ndarray:
    """The M1 quotes (real EUR/USD where present), then 200 blocks built to end in a tie of the
    10- and 30-bar means; restamped a minute apart."""
    m1 = load_bars(m1_file)
    bars = np.concatenate([m1, _tied_blocks(m1, 200, 10, 30)])
    bars["time"] = m1["time"][0] + 60 * 10**9 * np.arange(len(bars))
    return bars


def test_sma_cross_targets_zero_on_every_exact_tie(tied: np.ndarray) -> None:
    fast, slow = 10, 30
    close = _mid(tied, "close")
    ties = [
        t
        for t, (f, s) in enumerate(zip(_sums(close, fast), _sums(close, slow), strict=True))
        if s is not None and f * slow == s * fast
    ]
    assert len(ties) >= 200
    # The data tells exact from float: per-window float means miss some of these ties.
    mid = pd.Series(Bars(tied).close)
    fast_mean = mid.rolling(fast).apply(lambda w: sum(w) / fast, raw=True).to_numpy()
    slow_mean = mid.rolling(slow).apply(lambda w: sum(w) / slow, raw=True).to_numpy()
    assert (fast_mean[ties] != slow_mean[ties]).sum() > 10

    result = backtest(SmaCross, tied, fast=fast, slow=slow)
    np.testing.assert_array_equal(result.targets.to_numpy()[ties], 0.0)
    # What a live brain decides on the window it holds when each tie's bar closes.
    strategy = SmaCross(fast=fast, slow=slow)
    for t in ties:
        assert strategy.targets(tied[t - slow + 1 : t + 1])[-1] == 0.0, f"bar {t}"
        assert strategy.targets(tied[max(0, t - 3 * slow) : t + 1])[-1] == 0.0, f"bar {t}"


def _requoted(bars: np.ndarray, bid_shift: float, ask_shift: float) -> np.ndarray:
    out = bars.copy()
    for field in ("open", "high", "low", "close"):
        out[f"bid_{field}"] = np.round(bars[f"bid_{field}"] + bid_shift, 5)
        out[f"ask_{field}"] = np.round(bars[f"ask_{field}"] + ask_shift, 5)
    return out


TIE_CASES = [
    ("osm.strategies.sma_cross:SmaCross", {"fast": 10, "slow": 30}),
    ("osm.strategies.donchian:Donchian", {"window": 10, "exit_window": 10, "max_hold": 10}),
    ("osm.strategies.bollinger:Bollinger", {"window": 10, "k": 1.0, "max_hold": 5}),
    ("osm.strategies.momentum:Momentum", {"lookback": 10, "threshold": 0.0}),
]


@pytest.mark.parametrize(("path", "params"), TIE_CASES, ids=[p.split(":")[1] for p, _ in TIE_CASES])
def test_targets_do_not_move_with_the_spread(tied: np.ndarray, path: str, params: dict) -> None:
    strategy = load_strategy(path)(**params)
    want = strategy.targets(tied)
    # A wider spread around the same mid: the mid, and every decision on it, stay as they were.
    np.testing.assert_array_equal(strategy.targets(_requoted(tied, -0.00003, 0.00003)), want)
    if path.endswith("Momentum"):
        return  # a return is not invariant under a shift of the price level
    # A higher ask, or both sides higher: every mid moves by the same amount, and these rules
    # depend on differences of mids only.
    np.testing.assert_array_equal(strategy.targets(_requoted(tied, 0.0, 0.00007)), want)
    np.testing.assert_array_equal(strategy.targets(_requoted(tied, 0.00011, 0.00011)), want)


def test_bars_hold_the_exact_mid_in_half_points(h1: np.ndarray) -> None:
    bars = Bars(h1)
    assert bars.precision == _decimals(h1)
    for field in ("open", "high", "low", "close"):
        got = getattr(bars, f"int_{field}")
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, _mid(h1, field))
    np.testing.assert_allclose(bars.to_price(bars.int_close), bars.close, rtol=0, atol=1e-15)
    assert np.isnan(bars.to_price(np.array([np.iinfo(np.int64).min]))).all()
    again = pickle.loads(pickle.dumps(bars))  # the lock that guards the lazy fields is rebuilt
    np.testing.assert_array_equal(again.int_close, bars.int_close)
    # Quotes off any grid up to MAX_DECIMALS are rounded to it.
    walk = Bars(random_walk_bars(50, seed=1))
    assert walk.precision == MAX_DECIMALS
    scale = 10**MAX_DECIMALS
    want = np.rint(walk.bid_close * scale) + np.rint(walk.ask_close * scale)
    np.testing.assert_array_equal(walk.int_close, want)
