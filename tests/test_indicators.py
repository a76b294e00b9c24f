"""Indicator kernels against plain-Python oracles (integers, fractions, decimals) and pandas, over a
grid of inputs; integer prices decide exactly, float ones keep the old per-window values."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from osm.research.data import load_bars
from osm.strategies.base import Bars
from osm.strategies.indicators import (
    MISSING,
    band_zone,
    compare,
    half_points,
    latch,
    prior_max,
    prior_min,
    quote_decimals,
    ratio,
    rolling_max,
    rolling_min,
    rolling_std,
    rolling_sum,
    rolling_var_scaled,
    shift,
    sign_of_products,
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


def _int_inputs() -> dict[str, np.ndarray]:
    """Mid prices in half-points: EUR/USD-like walks, plateaus, and levels near 2**40 whose squares
    overflow int64 (the variance carries them modulo 2**64)."""
    rng = np.random.default_rng(11)
    walk = 260_000 + np.cumsum(rng.integers(-40, 41, 600))
    return {
        "walk": walk.astype(np.int64),
        "plateaus": np.repeat(rng.integers(259_990, 260_010, 60), 10).astype(np.int64),
        "constant": np.full(50, 220_002, dtype=np.int64),
        "short": walk[:5].astype(np.int64),
        "empty": np.empty(0, dtype=np.int64),
        "huge": (2**40 + rng.integers(-5_000, 5_000, 300)).astype(np.int64),
        "negative": rng.integers(-1_000, 1_000, 300).astype(np.int64),
    }


@pytest.fixture
def h1_bars(h1_file) -> np.ndarray:
    return load_bars(h1_file)[-3000:]


@pytest.fixture
def h1_close(h1_bars) -> np.ndarray:
    return (h1_bars["bid_close"] + h1_bars["ask_close"]) * 0.5


@pytest.fixture
def h1_int_close(h1_bars) -> np.ndarray:
    return Bars(h1_bars).int_close


def _cases(extra: np.ndarray | None = None):
    cases = dict(_inputs())
    if extra is not None:
        cases["h1"] = extra
    for name, x in cases.items():
        for window in WINDOWS:
            yield name, x, window


def _int_cases(extra: np.ndarray):
    for name, x in {**_int_inputs(), "h1": extra}.items():
        for window in WINDOWS:
            yield name, x, window


def _window_sums(x: np.ndarray, window: int) -> list[int | None]:
    """Python integers, each window summed afresh."""
    values = [int(v) for v in x]
    return [
        sum(values[t - window + 1 : t + 1]) if t >= window - 1 else None for t in range(len(values))
    ]


def _as_int64(values: list[int | None]) -> np.ndarray:
    return np.array([MISSING if v is None else v for v in values], dtype=np.int64)


def test_rolling_sum_and_sma_of_integers_are_exact(h1_int_close: np.ndarray) -> None:
    for name, x, window in _int_cases(h1_int_close):
        want = _window_sums(x, window)
        np.testing.assert_array_equal(rolling_sum(x, window), _as_int64(want), f"{name} {window}")
        means = [np.nan if s is None else float(Fraction(s, window)) for s in want]
        np.testing.assert_array_equal(sma(x, window), means, f"{name} {window}")


def _check_rolling(h1_close: np.ndarray, kernel, oracle) -> None:
    for name, x, window in _cases(h1_close):
        got = kernel(x, window)
        want = oracle(pd.Series(x), window).to_numpy(np.float64)
        assert got.shape == x.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} w={window}")
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=f"{name} {window}")


def test_sma_of_floats_matches_pandas(h1_close: np.ndarray) -> None:
    _check_rolling(h1_close, sma, lambda s, w: s.rolling(w).mean())
    _check_rolling(h1_close, rolling_sum, lambda s, w: s.rolling(w).sum())


def test_rolling_var_scaled_is_exact_even_where_squares_overflow(h1_int_close) -> None:
    for name, x, window in _int_cases(h1_int_close):
        values = [int(v) for v in x]
        want = [
            window * sum(v * v for v in values[t - window + 1 : t + 1])
            - sum(values[t - window + 1 : t + 1]) ** 2
            if t >= window - 1
            else None
            for t in range(len(values))
        ]
        np.testing.assert_array_equal(
            rolling_var_scaled(x, window), _as_int64(want), err_msg=f"{name} {window}"
        )


def _window_oracle(x: np.ndarray, window: int, fn) -> np.ndarray:
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        out[t] = fn(x[t - window + 1 : t + 1])
    return out


def test_rolling_std_matches_numpy_per_window_for_both_ddofs(h1_close, h1_int_close) -> None:
    # Not pandas: its online algorithm loses ~1e-5 relative on the tiny H1 deviations.
    cases = [*_cases(h1_close), *_int_cases(h1_int_close)]
    for ddof in (0, 1):
        for name, x, window in cases:
            if window <= ddof:
                continue
            # The integers less a level, so that numpy's floats hold them and their squares.
            level = x[0] if x.dtype == np.int64 and len(x) else 0
            centred = np.asarray(x - level, dtype=np.float64)
            want = _window_oracle(centred, window, lambda w, d=ddof: np.std(w, ddof=d))
            got = rolling_std(x, window, ddof)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14, err_msg=f"{name} {window}")


def test_integer_sums_that_would_overflow_are_refused() -> None:
    big = np.full(10, 2**61, dtype=np.int64)
    with pytest.raises(OverflowError, match="window too long"):
        rolling_sum(big, 4)
    assert rolling_sum(big, 3)[-1] == 3 * 2**61
    spread = np.array([0, 2**40, 0, 2**40], dtype=np.int64)  # range * window beyond 3e9
    with pytest.raises(OverflowError, match="rolling_var_scaled"):
        rolling_var_scaled(spread, 2)
    with pytest.raises(ValueError, match="MISSING"):
        rolling_sum(shift(np.arange(5, dtype=np.int64), 1), 2)


def _with_missing_as_nan(x: np.ndarray) -> np.ndarray:
    return np.where(x == MISSING, np.nan, x) if x.dtype == np.int64 else x


def test_rolling_extremes_match_pandas_exactly(h1_close, h1_int_close) -> None:
    for name, x, window in [*_cases(h1_close), *_int_cases(h1_int_close)]:
        series = pd.Series(x, dtype=np.float64)
        for got, want in [
            (rolling_max(x, window), series.rolling(window).max()),
            (rolling_min(x, window), series.rolling(window).min()),
            (prior_max(x, window), series.rolling(window).max().shift(1)),
            (prior_min(x, window), series.rolling(window).min().shift(1)),
        ]:
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(
                _with_missing_as_nan(got), want.to_numpy(np.float64), err_msg=f"{name} {window}"
            )


def test_shift_matches_pandas() -> None:
    x = _inputs()["walk"]
    ints = _int_inputs()["walk"]
    for periods in [0, 1, 5, 499, 500, 800]:
        np.testing.assert_array_equal(shift(x, periods), pd.Series(x).shift(periods).to_numpy())
        want = pd.Series(ints, dtype=np.float64).shift(periods).to_numpy()
        np.testing.assert_array_equal(_with_missing_as_nan(shift(ints, periods)), want)


def _sign(value: int | Fraction) -> float:
    return float((value > 0) - (value < 0))


def test_sign_of_products_matches_python_integers() -> None:
    rng = np.random.default_rng(5)
    top = 2**63 - 1
    for magnitude in [10, 2**20, 3_037_000_499, 2**40, 2**62, top]:
        values = rng.integers(-magnitude, magnitude, size=(2000, 4), endpoint=True)
        # Equal products written differently: a*b = (a*m) * (b/m) ties must come out 0.
        values[::7, 2], values[::7, 3] = values[::7, 1], values[::7, 0]
        for a, b, c, d in values.tolist():
            assert sign_of_products(a, b, c, d) == _sign(a * b - c * d), (a, b, c, d)
    for a, b, c, d in [
        (top, top, top, top),
        (-top, top, top, -top),
        (top, 2, 2, top),
        (0, top, 0, 1),
    ]:
        assert sign_of_products(a, b, c, d) == _sign(a * b - c * d)


def test_compare_matches_python_integers_with_missing_as_nan() -> None:
    rng = np.random.default_rng(9)
    for magnitude, weights in [
        (10, [(1, 1), (3, 2), (0, 5)]),
        (300_000 * 400, [(400, 10), (30, 10), (1000, 1001)]),
        (2**45, [(2**20, 3), (7, 2**21)]),
        (2**62, [(1, 1), (3, 5), (2**62, 2**61)]),
    ]:
        a = rng.integers(-magnitude, magnitude, 500)
        b = a.copy()
        b[::3] = rng.integers(-magnitude, magnitude, len(b[::3]))
        a[:7], b[5:9] = MISSING, MISSING
        for wa, wb in weights:
            want = [
                np.nan if MISSING in (x, y) else _sign(x * wa - y * wb)
                for x, y in zip(a.tolist(), b.tolist(), strict=True)
            ]
            np.testing.assert_array_equal(compare(a, b, wa, wb), want, f"{magnitude} {wa} {wb}")


def test_compare_refuses_floats_and_unequal_lengths() -> None:
    x = np.arange(5, dtype=np.int64)
    with pytest.raises(Exception, match="int64 prices"):
        compare(x * 1.0, x * 1.0)
    with pytest.raises(ValueError, match="same length"):
        compare(x, x[:4])


def _zone_oracle(x: np.ndarray, window: int, k: Fraction) -> np.ndarray:
    """The band rule in fractions: where x[t] lies against mean +/- k * std of its window."""
    out = np.full(len(x), np.nan)
    values = [int(v) for v in x]
    for t in range(window - 1, len(values)):
        xs = values[t - window + 1 : t + 1]
        mean = Fraction(sum(xs), window)
        variance = sum((v - mean) ** 2 for v in xs) / window
        away = values[t] - mean
        beyond = away * away > k * k * variance
        out[t] = _sign(away) * (2 if beyond else 1)
    return out


def test_band_zone_matches_fractions(h1_int_close: np.ndarray) -> None:
    cases = {**_int_inputs(), "h1": h1_int_close[-400:]}
    del cases["empty"]
    for name, x in cases.items():
        for window in [1, 2, 3, 7, 20]:
            sums, var_scaled = rolling_sum(x, window), rolling_var_scaled(x, window)
            for k in [0.0, 0.5, 1.0, 1.75, 2.0, 2.5]:
                num, den = ratio(k)
                got = band_zone(x, sums, var_scaled, window, num, den)
                want = _zone_oracle(x, window, Fraction(num, den))
                np.testing.assert_array_equal(got, want, err_msg=f"{name} w={window} k={k}")


def test_a_price_exactly_on_a_band_is_inside_it(h1_int_close: np.ndarray) -> None:
    # Over two bars the mean is their midpoint and the std half their distance: every close that
    # moved sits exactly on the 1-std band, a case float arithmetic decides either way.
    x = h1_int_close
    zone = band_zone(x, rolling_sum(x, 2), rolling_var_scaled(x, 2), 2, 1, 1)
    moved = np.flatnonzero(np.diff(x) != 0) + 1
    assert len(moved) > len(x) // 2
    np.testing.assert_array_equal(zone[moved], np.sign(np.diff(x))[moved - 1])


def _decimal_places(value: float) -> int:
    return max(0, -Decimal(repr(float(value))).normalize().as_tuple().exponent)


def test_quote_decimals_and_half_points_match_the_decimal_text(h1_bars: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    for decimals in range(7):
        prices = np.round(rng.uniform(0.5, 300, 2000), decimals)
        want = max(_decimal_places(v) for v in prices)
        assert quote_decimals(prices, 6) == want
        assert quote_decimals(prices, 6, 6) == 6  # never fewer than start
    assert quote_decimals(rng.uniform(1, 2, 50), 6) == 7  # off any grid up to 6 decimals
    bid, ask = h1_bars["bid_close"], h1_bars["ask_close"]
    decimals = max(_decimal_places(v) for v in np.concatenate([bid, ask]))
    assert quote_decimals(np.concatenate([bid, ask]), 6) == decimals
    want = [
        int((Decimal(repr(b)) + Decimal(repr(a))) * 10**decimals)
        for b, a in zip(bid.tolist(), ask.tolist(), strict=True)
    ]
    np.testing.assert_array_equal(half_points(bid, ask, decimals), want)


def test_ratio_reads_a_float_as_its_fraction() -> None:
    assert ratio(2.0) == (2, 1)
    assert ratio(0.001) == (1, 1000)
    assert ratio(1.75) == (7, 4)
    assert ratio(0.1) == (1, 10)
    assert ratio(0.0) == (0, 1)
    assert ratio(1 / 3) == (1, 3)


def test_windowed_values_are_bit_identical_whatever_came_before(h1_close, h1_int_close) -> None:
    # The live brain runs on a bounded window: its last value must equal the full run's exactly.
    for x in (h1_close, h1_int_close):
        for window in [3, 20, 64]:
            kernels = [sma, rolling_std, rolling_max, rolling_min, rolling_sum]
            if x.dtype == np.int64:
                kernels.append(rolling_var_scaled)
            for kernel in kernels:
                full = kernel(x, window)
                for t in [window + 5, 1000, len(x) - 1]:
                    assert kernel(x[t - window + 1 : t + 1], window)[-1] == full[t]
            if x.dtype != np.int64:
                continue
            sums, var_scaled = rolling_sum(x, window), rolling_var_scaled(x, window)
            full = band_zone(x, sums, var_scaled, window, 2, 1)
            for t in [window + 5, 1000, len(x) - 1]:
                part = x[t - window + 1 : t + 1]
                zone = band_zone(
                    part, rolling_sum(part, window), rolling_var_scaled(part, window), window, 2, 1
                )
                assert zone[-1] == full[t]


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
    for kernel in (sma, rolling_sum, rolling_max, rolling_min, prior_max, prior_min):
        with pytest.raises(ValueError, match="at least 1 bar"):
            kernel(x, 0)
    with pytest.raises(ValueError, match="larger than ddof"):
        rolling_std(x, 1, 1)
    with pytest.raises(ValueError, match="peek at future bars"):
        shift(x, -1)
    ints = _int_inputs()["walk"]
    with pytest.raises(ValueError, match="k_den > 0"):
        band_zone(ints, rolling_sum(ints, 3), rolling_var_scaled(ints, 3), 3, 1, 0)
