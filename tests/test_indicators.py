"""Indicator kernels against pandas and plain-Python oracles over a grid of inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osm.research.data import load_bars
from osm.strategies.indicators import (
    latch,
    prior_max,
    prior_min,
    rolling_max,
    rolling_min,
    rolling_std,
    shift,
    sma,
)

WINDOWS = [1, 2, 3, 7, 20, 64]


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    walk = 1.3 + np.cumsum(rng.normal(0, 1e-4, 500))
    ties = np.round(walk, 3)  # long runs of equal values: the deque must handle ties
    return {
        "walk": walk,
        "ties": ties,
        "constant": np.full(50, 1.1),
        "short": walk[:5],
        "empty": np.empty(0),
    }


@pytest.fixture
def h1_close(h1_file) -> np.ndarray:
    bars = load_bars(h1_file)[-3000:]
    return (bars["bid_close"] + bars["ask_close"]) * 0.5


def _cases(extra: np.ndarray | None = None):
    cases = dict(_inputs())
    if extra is not None:
        cases["h1"] = extra
    for name, x in cases.items():
        for window in WINDOWS:
            yield name, x, window


def _check_rolling(h1_close: np.ndarray, kernel, oracle) -> None:
    for name, x, window in _cases(h1_close):
        got = kernel(x, window)
        want = oracle(pd.Series(x), window).to_numpy(np.float64)
        assert got.shape == x.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} w={window}")
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=f"{name} {window}")


def test_sma_matches_pandas(h1_close: np.ndarray) -> None:
    _check_rolling(h1_close, sma, lambda s, w: s.rolling(w).mean())


def _window_oracle(x: np.ndarray, window: int, fn) -> np.ndarray:
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        out[t] = fn(x[t - window + 1 : t + 1])
    return out


def test_rolling_std_matches_numpy_per_window_for_both_ddofs(h1_close: np.ndarray) -> None:
    # Not pandas: its online algorithm loses ~1e-5 relative on the tiny H1 deviations.
    for ddof in (0, 1):
        for name, x, window in _cases(h1_close):
            if window <= ddof:
                continue
            want = _window_oracle(x, window, lambda w, d=ddof: np.std(w, ddof=d))
            got = rolling_std(x, window, ddof)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14, err_msg=f"{name} {window}")


def test_rolling_extremes_match_pandas_exactly(h1_close: np.ndarray) -> None:
    for name, x, window in _cases(h1_close):
        series = pd.Series(x)
        for got, want in [
            (rolling_max(x, window), series.rolling(window).max()),
            (rolling_min(x, window), series.rolling(window).min()),
            (prior_max(x, window), series.rolling(window).max().shift(1)),
            (prior_min(x, window), series.rolling(window).min().shift(1)),
        ]:
            np.testing.assert_array_equal(
                got, want.to_numpy(np.float64), err_msg=f"{name} {window}"
            )


def test_shift_matches_pandas() -> None:
    x = _inputs()["walk"]
    for periods in [0, 1, 5, 499, 500, 800]:
        np.testing.assert_array_equal(shift(x, periods), pd.Series(x).shift(periods).to_numpy())


def test_windowed_values_are_bit_identical_whatever_came_before(h1_close: np.ndarray) -> None:
    # The live brain runs on a bounded window: its last value must equal the full run's exactly.
    for window in [3, 20, 64]:
        for kernel in (sma, rolling_std, rolling_max, rolling_min):
            full = kernel(h1_close, window)
            for t in [window + 5, 1000, len(h1_close) - 1]:
                assert kernel(h1_close[t - window + 1 : t + 1], window)[-1] == full[t]


def _latch_oracle(el, es, xl, xs, max_hold: int) -> np.ndarray:
    """The documented rule, read literally: scan back at most max_hold bars for the last entry."""
    out = np.zeros(len(el))
    for t in range(len(el)):
        for s in range(t, max(-1, t - max_hold), -1):
            side = 1 if el[s] and not es[s] else -1 if es[s] and not el[s] else 0
            if side:
                exits = xl if side > 0 else xs
                out[t] = 0 if any(exits[s + 1 : t + 1]) else side
                break
    return out


def test_latch_matches_its_definition_over_random_signals() -> None:
    rng = np.random.default_rng(3)
    for density in [0.02, 0.1, 0.4]:
        el, es, xl, xs = (rng.random(400) < density for _ in range(4))
        for max_hold in [1, 2, 5, 30, 1000]:
            np.testing.assert_array_equal(
                latch(el, es, xl, xs, max_hold), _latch_oracle(el, es, xl, xs, max_hold)
            )


def test_bad_windows_are_refused_with_the_reason() -> None:
    x = _inputs()["walk"]
    for kernel in (sma, rolling_max, rolling_min, prior_max, prior_min):
        with pytest.raises(ValueError, match="at least 1 bar"):
            kernel(x, 0)
    with pytest.raises(ValueError, match="larger than ddof"):
        rolling_std(x, 1, 1)
    with pytest.raises(ValueError, match="peek at future bars"):
        shift(x, -1)
