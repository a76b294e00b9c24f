"""The strategy contract: typed parameters, did-you-mean, grids, indicator memoisation."""

from __future__ import annotations

import numpy as np
import pytest

from osm.core.dtypes import BAR_DTYPE
from osm.core.errors import ConfigError, UnknownNameError
from osm.strategies import Bars, IndicatorCache, Param, Strategy, load_strategy


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    c = np.cumsum(np.insert(x, 0, 0.0))
    out[n - 1 :] = (c[n:] - c[:-n]) / n
    return out


class Cross(Strategy):
    fast = Param(3, low=2, high=6, step=2)
    slow = Param(8, low=4, high=8, step=4)
    scale = Param(1.0, low=0.5, high=1.0, step=0.5)

    def check(self):
        if self.fast >= self.slow:
            raise ValueError("fast must be shorter than slow")

    def target(self, bars, ind):
        f = ind(_rolling_mean, bars.close, self.fast)
        s = ind(_rolling_mean, bars.close, self.slow)
        return np.where(np.isnan(s), np.nan, np.sign(f - s) * self.scale)


def _bars(n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(1)
    out = np.zeros(n, BAR_DTYPE)
    mid = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    for side, shift in (("bid", -5e-5), ("ask", 5e-5)):
        for f in ("open", "high", "low", "close"):
            out[f"{side}_{f}"] = mid + shift
    out["time"] = np.arange(n) * 60_000_000_000
    return out


def test_params_are_collected_typed_and_defaulted():
    s = Cross(fast=2)
    assert s.values == {"fast": 2, "slow": 8, "scale": 1.0}
    assert Cross(fast=4.0).fast == 4 and isinstance(Cross(fast=4.0).fast, int)


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"fsat": 3}, UnknownNameError, "Did you mean 'fast'"),
        ({"fast": 2.5}, ConfigError, "must be an integer"),
        ({"fast": 99}, ConfigError, r"outside its range \[2, 6\]"),
        ({"fast": 6, "slow": 4}, ConfigError, "fast must be shorter than slow"),
        ({"scale": float("nan")}, ConfigError, "finite number"),
    ],
)
def test_bad_parameters_are_explained(values, error, message):
    with pytest.raises(error, match=message):
        Cross(**values)


def test_grid_skips_invalid_combinations():
    combos = list(Cross.grid())
    assert {"fast": 6, "slow": 4, "scale": 0.5} not in combos
    assert len(combos) == 3 * 2 * 2 - 4  # fast 4 or 6 with slow 4, at two scales
    assert list(Cross.grid(fast=[2], scale=[1.0])) == [
        {"fast": 2, "slow": 4, "scale": 1.0},
        {"fast": 2, "slow": 8, "scale": 1.0},
    ]
    with pytest.raises(UnknownNameError):
        list(Cross.grid(slwo=[3]))


def test_indicator_cache_computes_each_unique_indicator_once():
    bars, cache = Bars(_bars()), IndicatorCache()
    for combo in Cross.grid():
        Cross(**combo).targets(bars, cache)
    assert cache.misses == len({2, 4, 6, 8})  # one moving average per distinct length
    assert cache.hits > 0


def test_targets_are_checked():
    class Wild(Strategy):
        def target(self, bars, ind):
            return np.full(len(bars), 2.0)

    with pytest.raises(ValueError, match=r"within \[-1, 1\]"):
        Wild().targets(_bars())


def test_bars_mid_and_sides():
    records = _bars(5)
    bars = Bars(records)
    np.testing.assert_allclose(bars.close, (records["bid_close"] + records["ask_close"]) / 2)
    assert bars.bid_open.flags.c_contiguous
    with pytest.raises(TypeError, match="BAR_DTYPE"):
        Bars(np.zeros(3))


def test_load_strategy_by_path():
    assert load_strategy("tests.test_contract:Cross") is Cross
    with pytest.raises(ConfigError, match="module:ClassName"):
        load_strategy("tests.test_contract.Cross")
    with pytest.raises(UnknownNameError, match="Did you mean 'Cross'"):
        load_strategy("tests.test_contract:Cros")
