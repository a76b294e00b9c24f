"""Built-in strategies: their rule against a plain oracle, causality and finite memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osm.core.errors import ConfigError
from osm.research.data import load_bars
from osm.strategies.base import Bars, IndicatorCache, Strategy, load_strategy
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


def _mid(bars: np.ndarray, field: str) -> pd.Series:
    return pd.Series((bars[f"bid_{field}"] + bars[f"ask_{field}"]) / 2)


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


TIE = 1e-12  # closer than this, summation order decides a comparison: the oracle abstains


def _reach(ties: np.ndarray, bars: int) -> np.ndarray:
    """Bars whose target may hang on a tie in the last `bars` bars."""
    return pd.Series(ties).rolling(bars, min_periods=1).max().to_numpy() > 0


def sma_cross_oracle(bars: np.ndarray, fast: int, slow: int):
    close = _mid(bars, "close")
    difference = (close.rolling(fast).mean() - close.rolling(slow).mean()).to_numpy()
    return np.sign(difference), np.abs(difference) < TIE


def donchian_oracle(bars: np.ndarray, window: int, exit_window: int, max_hold: int):
    close, high, low = _mid(bars, "close"), _mid(bars, "high"), _mid(bars, "low")
    out = _latched(
        (close > high.rolling(window).max().shift()).to_numpy(),
        (close < low.rolling(window).min().shift()).to_numpy(),
        (close < low.rolling(exit_window).min().shift()).to_numpy(),
        (close > high.rolling(exit_window).max().shift()).to_numpy(),
        max_hold,
        len(bars),
    )
    out[:window] = np.nan
    return out, np.zeros(len(out), dtype=bool)


def bollinger_oracle(bars: np.ndarray, window: int, k: float, max_hold: int):
    close = _mid(bars, "close").to_numpy()
    middle = np.full(len(close), np.nan)
    width = np.full(len(close), np.nan)
    for t in range(window - 1, len(close)):
        middle[t] = close[t - window + 1 : t + 1].mean()
        width[t] = k * close[t - window + 1 : t + 1].std()
    out = _latched(
        close < middle - width, close > middle + width, close >= middle, close <= middle,
        max_hold, len(close),
    )  # fmt: skip
    out[: window - 1] = np.nan
    with np.errstate(invalid="ignore"):
        ties = (
            np.minimum.reduce(
                [
                    np.abs(close - middle + width),
                    np.abs(close - middle - width),
                    np.abs(close - middle),
                ]
            )
            < TIE
        )
    return out, _reach(ties, max_hold)


def momentum_oracle(bars: np.ndarray, lookback: int, threshold: float):
    change = _mid(bars, "close").pct_change(lookback)
    out = np.where(change > threshold, 1.0, np.where(change < -threshold, -1.0, 0.0))
    return np.where(change.isna(), np.nan, out), np.zeros(len(out), dtype=bool)


# Each oracle returns (targets, ties): the bars where a near-tie lets rounding pick the side.
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
    want, ties = ORACLES[type(strategy)](h1, **strategy.values)
    assert ties.mean() < 0.01
    np.testing.assert_array_equal(got[~ties], want[~ties])
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
    assert cache.misses == 4 and cache.hits == 2  # sma 5, 10, 30 and std 30; sma 30 reused twice


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
