"""Indicator kernels: pure numba over 1-D arrays, no pandas, with comparisons decided exactly.

Array contract
--------------
Every input array holds one value per bar, oldest first; every output has the input's length.

- **Prices are integers.** Quotes have a fixed precision, so :class:`osm.strategies.base.Bars`
  also gives each mid price exactly, as an int64 count of half-points: ``bid + ask`` counted in
  points of ``10**-precision`` (``bars.int_close``, ``int_open``, ``int_high``, ``int_low``).
  Integer arrays are int64; integer inputs hold no :data:`MISSING`.
- **Integer sums are exact**, so a rolling sum is one running sum, O(bars), and each of its values
  is the same integer whatever history precedes the window: the live brain, which holds a bounded
  window of bars, and the backtest agree bit for bit. Sums that could overflow int64 are refused
  with an OverflowError that names the window.
- **Warm-up.** An integer output holds :data:`MISSING` (the smallest int64) while its window is not
  yet full, a float output NaN; a rolling indicator over `window` bars is defined from
  ``t = window - 1`` on.
- **Decisions are exact.** A cross, a breakout, a band or a threshold is decided in integer
  arithmetic by :func:`compare` or :func:`band_zone`, which return a sign as float64 (+1.0, 0.0,
  -1.0) and NaN where an input is missing, so ``compare(a, b) > 0`` is False during the warm-up.
  A float parameter in a comparison (a band width, a threshold) enters as the fraction
  :func:`ratio` makes of it.
- **Floats are for charts.** :func:`sma` and :func:`rolling_std` return float64 in the input's
  units (``bars.to_price`` turns half-points into prices). From integer input they come from the
  exact sums in O(bars). :func:`rolling_sum`, :func:`sma` and :func:`rolling_std` take float input
  as well; each window is then summed afresh, O(bars x window), so that a value still does not
  depend on the bars before its window, but a float comparison can be decided by rounding: decide
  on the integer arrays.

The rolling extremes and :func:`shift` do no arithmetic and take integer or float arrays alike.
:func:`quote_decimals` and :func:`half_points` are how ``Bars`` derives the integer prices.
Every kernel is ``@njit(cache=True, nogil=True)``: call it from Python or from other kernels
(:func:`ratio`, which turns a parameter into a fraction, is plain Python).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

MISSING = np.iinfo(np.int64).min
"""The warm-up value of an integer output (the smallest int64), as NaN is of a float output."""

_INT_MAX = np.iinfo(np.int64).max
_SQRT_MAX = 3_037_000_499  # isqrt(2**63 - 1): two factors up to this multiply within int64
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


# Type dispatch: each overload below chooses an implementation by the array's dtype when the
# kernel calling it is compiled; the plain function of the same name is what the kernels call.


def _missing(x: np.ndarray) -> int | float:
    return MISSING if np.issubdtype(x.dtype, np.integer) else np.nan


@overload(_missing)
def _missing_nb(x):
    if isinstance(x.dtype, types.Integer):
        if x.dtype != types.int64:
            raise TypingError(f"integer prices must be int64, got {x.dtype}")
        return lambda x: MISSING
    return lambda x: np.nan


def _require_int64(x: np.ndarray, name: str) -> None:
    if x.dtype != np.int64:
        raise TypeError(f"{name} takes int64 prices (bars.int_close and the like), got {x.dtype}")


@overload(_require_int64)
def _require_int64_nb(x, name):
    if x.dtype != types.int64:
        kernel = getattr(name, "literal_value", "this kernel")
        raise TypingError(
            f"{kernel} takes int64 prices (bars.int_close and the like), got {x.dtype}: "
            "a comparison of floats is decided by rounding"
        )
    return lambda x, name: None


def _window_sums(x: np.ndarray, window: int) -> np.ndarray:
    raise NotImplementedError("compiled only")


@overload(_window_sums)
def _window_sums_nb(x, window):
    if isinstance(x.dtype, types.Integer):
        return lambda x, window: _running_sums(x, window)
    return lambda x, window: _fresh_sums(x, window)


@njit(cache=True, nogil=True)
def _running_sums(x: np.ndarray, window: int) -> np.ndarray:
    largest = 0
    for v in x:
        if v == MISSING:
            raise ValueError("rolling sum: the input holds MISSING (a warm-up value); sum prices")
        largest = max(largest, abs(v))
    if largest > _INT_MAX // window:
        raise OverflowError("rolling sum: window too long for int64 at these price levels")
    out = np.empty(len(x), dtype=np.int64)
    total = 0
    for t in range(len(x)):
        total += x[t]
        if t >= window:
            total -= x[t - window]
        out[t] = total if t >= window - 1 else MISSING
    return out


@njit(cache=True, nogil=True)
def _fresh_sums(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        total = 0.0
        for i in range(t - window + 1, t + 1):
            total += x[i]
        out[t] = total
    return out


def _std(x: np.ndarray, window: int, ddof: int) -> np.ndarray:
    raise NotImplementedError("compiled only")


@overload(_std)
def _std_nb(x, window, ddof):
    if isinstance(x.dtype, types.Integer):
        return lambda x, window, ddof: _std_from_integers(x, window, ddof)
    return lambda x, window, ddof: _std_two_pass(x, window, ddof)


@njit(cache=True, nogil=True)
def _std_from_integers(x: np.ndarray, window: int, ddof: int) -> np.ndarray:
    scaled = rolling_var_scaled(x, window)
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        out[t] = np.sqrt(scaled[t] / (window * (window - ddof)))
    return out


@njit(cache=True, nogil=True)
def _std_two_pass(x: np.ndarray, window: int, ddof: int) -> np.ndarray:
    means = sma(x, window)
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        mean = means[t]
        # Two passes: sum((x - mean)^2) does not cancel catastrophically the way
        # sum(x^2) - n * mean^2 does at FX price levels (1.3 give or take 1e-4).
        squares = 0.0
        for i in range(t - window + 1, t + 1):
            squares += (x[i] - mean) ** 2
        out[t] = np.sqrt(squares / (window - ddof))
    return out


@njit(cache=True, nogil=True)
def rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Return the sum of the last `window` values (MISSING or NaN for the first ``window - 1``).

    Exact and O(bars) for int64 prices; see the module docstring for float input.
    """
    if window < 1:
        raise ValueError("rolling_sum: window must be at least 1 bar")
    return _window_sums(x, window)


@njit(cache=True, nogil=True)
def sma(x: np.ndarray, window: int) -> np.ndarray:
    """Return the mean of the last `window` values as float64 (NaN for the first ``window - 1``).

    From int64 prices it is the exact sum divided by `window`, O(bars). For a decision, compare
    the sums instead: ``compare(fast_sum, slow_sum, slow, fast)``.
    """
    if window < 1:
        raise ValueError("sma: window must be at least 1 bar")
    sums = _window_sums(x, window)
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        out[t] = sums[t] / window
    return out


@njit(cache=True, nogil=True)
def rolling_var_scaled(x: np.ndarray, window: int) -> np.ndarray:
    """Return ``window**2`` times the population variance of the last `window` int64 prices.

    That is ``window * sum(x**2) - sum(x)**2``, an exact integer (MISSING for the first
    ``window - 1``), O(bars). The sum of squares is carried modulo 2**64 (numba's int64 wraps):
    the result is exact whenever it fits in int64, which a check of each window's range ensures.
    """
    _require_int64(x, "rolling_var_scaled")
    sums = rolling_sum(x, window)  # refuses MISSING and sums that overflow
    high = rolling_max(x, window)
    low = rolling_min(x, window)
    out = np.empty(len(x), dtype=np.int64)
    squares = 0
    for t in range(len(x)):
        squares += x[t] * x[t]
        if t >= window:
            squares -= x[t - window] * x[t - window]
        if t < window - 1:
            out[t] = MISSING
            continue
        # |window * x - sum| <= window * range, and the result is at most (window * range)**2 / 4.
        if high[t] - low[t] > _SQRT_MAX // window:
            raise OverflowError("rolling_var_scaled: window too long for int64 at this price range")
        out[t] = window * squares - sums[t] * sums[t]
    return out


@njit(cache=True, nogil=True)
def rolling_std(x: np.ndarray, window: int, ddof: int = 0) -> np.ndarray:
    """Return the standard deviation of the last `window` values as float64.

    Parameters
    ----------
    x
        Values, oldest first: int64 prices (from the exact variance, O(bars)) or floats.
    window
        Number of values in each window.
    ddof
        Delta degrees of freedom: 0 (the default, as Bollinger bands use) divides by ``window``,
        1 by ``window - 1`` as pandas' ``rolling().std()`` does.
    """
    if window < 1 or ddof < 0 or window <= ddof:
        raise ValueError("rolling_std: window must be at least 1 bar and larger than ddof >= 0")
    return _std(x, window, ddof)


@njit(cache=True, nogil=True)
def _rolling_extreme(x: np.ndarray, window: int, largest: bool) -> np.ndarray:
    # A monotonic deque of indices: O(n), and exact because max/min do no arithmetic.
    n = len(x)
    out = np.empty(n, dtype=x.dtype)
    deque = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for t in range(n):
        while tail > head and (
            x[deque[tail - 1]] <= x[t] if largest else x[deque[tail - 1]] >= x[t]
        ):
            tail -= 1
        deque[tail] = t
        tail += 1
        if deque[head] <= t - window:
            head += 1
        out[t] = x[deque[head]] if t >= window - 1 else _missing(x)
    return out


@njit(cache=True, nogil=True)
def rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """Return the largest of the last `window` values (the upper Donchian channel)."""
    if window < 1:
        raise ValueError("rolling_max: window must be at least 1 bar")
    return _rolling_extreme(x, window, True)


@njit(cache=True, nogil=True)
def rolling_min(x: np.ndarray, window: int) -> np.ndarray:
    """Return the smallest of the last `window` values (the lower Donchian channel)."""
    if window < 1:
        raise ValueError("rolling_min: window must be at least 1 bar")
    return _rolling_extreme(x, window, False)


@njit(cache=True, nogil=True)
def shift(x: np.ndarray, periods: int) -> np.ndarray:
    """Return `x` delayed by `periods` bars: ``out[t] = x[t - periods]``, missing for the first."""
    if periods < 0:
        raise ValueError("shift: periods must be >= 0; a negative shift would peek at future bars")
    out = np.empty(len(x), dtype=x.dtype)
    for t in range(len(x)):
        out[t] = x[t - periods] if t >= periods else _missing(x)
    return out


@njit(cache=True, nogil=True)
def prior_max(x: np.ndarray, window: int) -> np.ndarray:
    """Return the largest of the `window` values before each bar, excluding the bar itself.

    ``out[t] = max(x[t - window .. t - 1])``, missing for ``t < window``: the channel a breakout
    at ``t`` is measured against.
    """
    if window < 1:
        raise ValueError("prior_max: window must be at least 1 bar")
    return shift(_rolling_extreme(x, window, True), 1)


@njit(cache=True, nogil=True)
def prior_min(x: np.ndarray, window: int) -> np.ndarray:
    """Return the smallest of the `window` values before each bar, excluding the bar itself."""
    if window < 1:
        raise ValueError("prior_min: window must be at least 1 bar")
    return shift(_rolling_extreme(x, window, False), 1)


@njit(cache=True, nogil=True, inline="always")
def _product_128(a: int, b: int) -> tuple[np.uint64, np.uint64]:
    # (high, low) 64-bit words of a * b for 0 <= a, b < 2**63, from 32-bit halves.
    ua, ub = np.uint64(a), np.uint64(b)
    a0, a1 = ua & _LOW32, ua >> _SHIFT32
    b0, b1 = ub & _LOW32, ub >> _SHIFT32
    low_low, low_high, high_low = a0 * b0, a0 * b1, a1 * b0
    middle = (low_low >> _SHIFT32) + (low_high & _LOW32) + (high_low & _LOW32)
    low = (low_low & _LOW32) | (middle << _SHIFT32)
    high = a1 * b1 + (low_high >> _SHIFT32) + (high_low >> _SHIFT32) + (middle >> _SHIFT32)
    return high, low


@njit(cache=True, nogil=True)
def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


@njit(cache=True, nogil=True)
def sign_of_products(a: int, b: int, c: int, d: int) -> int:
    """Return the sign of ``a * b - c * d`` for int64 values (not MISSING), exactly.

    Products that fit in int64 are compared directly; others as 128-bit magnitudes.
    """
    if abs(a) <= _SQRT_MAX and abs(b) <= _SQRT_MAX and abs(c) <= _SQRT_MAX and abs(d) <= _SQRT_MAX:
        left, right = a * b, c * d
        return (left > right) - (left < right)
    left_sign, right_sign = _sign(a) * _sign(b), _sign(c) * _sign(d)
    if left_sign != right_sign:
        return _sign(left_sign - right_sign)
    if left_sign == 0:
        return 0
    left_high, left_low = _product_128(abs(a), abs(b))
    right_high, right_low = _product_128(abs(c), abs(d))
    if left_high != right_high:
        larger = 1 if left_high > right_high else -1
    elif left_low != right_low:
        larger = 1 if left_low > right_low else -1
    else:
        larger = 0
    return larger * left_sign


@njit(cache=True, nogil=True)
def compare(a: np.ndarray, b: np.ndarray, a_weight: int = 1, b_weight: int = 1) -> np.ndarray:
    """Return the sign of ``a * a_weight - b * b_weight`` per bar, decided in integers.

    +1.0, 0.0 or -1.0, and NaN where `a` or `b` is MISSING. ``compare(close, upper) > 0`` is a
    breakout above a channel; ``compare(fast_sum, slow_sum, slow, fast)`` is the sign of the fast
    mean minus the slow one (``fast_sum / fast`` against ``slow_sum / slow``).

    Parameters
    ----------
    a, b
        int64 arrays of the same length (prices, sums, extremes).
    a_weight, b_weight
        Integer factors, e.g. window lengths or the parts of a :func:`ratio`.
    """
    _require_int64(a, "compare")
    _require_int64(b, "compare")
    if len(a) != len(b):
        raise ValueError("compare: a and b must have the same length")
    if a_weight == MISSING or b_weight == MISSING:
        raise ValueError("compare: weights must be larger than the smallest int64")
    out = np.empty(len(a))
    small = abs(a_weight) <= _SQRT_MAX and abs(b_weight) <= _SQRT_MAX
    for t in range(len(a)):
        x, y = a[t], b[t]
        if x == MISSING or y == MISSING:
            out[t] = np.nan
        elif small and -_SQRT_MAX <= x <= _SQRT_MAX and -_SQRT_MAX <= y <= _SQRT_MAX:
            # The common case, inline: both products fit in int64.
            left, right = x * a_weight, y * b_weight
            out[t] = 1.0 if left > right else (-1.0 if left < right else 0.0)
        else:
            out[t] = sign_of_products(x, a_weight, y, b_weight)
    return out


@njit(cache=True, nogil=True)
def band_zone(
    x: np.ndarray, sums: np.ndarray, var_scaled: np.ndarray, window: int, k_num: int, k_den: int
) -> np.ndarray:
    """Return where each price lies against its mean +/- k standard deviations, exactly.

    With ``mean`` and the population ``std`` of the `window` prices ending at the bar and
    ``k = k_num / k_den``: -2.0 below ``mean - k * std``, -1.0 from there up to the mean, 0.0 on
    the mean, +1.0 above it up to ``mean + k * std``, +2.0 above that; NaN in the warm-up. A price
    exactly on a band counts as inside it. Decided in integers: ``window * x - sum`` against
    ``k * sqrt(var_scaled)``, both sides squared.

    Parameters
    ----------
    x
        int64 prices.
    sums, var_scaled
        ``rolling_sum(x, window)`` and ``rolling_var_scaled(x, window)``.
    window
        Bars in the mean and the deviation.
    k_num, k_den
        The band width in standard deviations as a fraction (:func:`ratio`), both >= 0.
    """
    _require_int64(x, "band_zone")
    if len(sums) != len(x) or len(var_scaled) != len(x):
        raise ValueError("band_zone: x, sums and var_scaled must have the same length")
    if not (0 <= k_num <= _SQRT_MAX and 0 < k_den <= _SQRT_MAX):
        raise ValueError("band_zone: k_num must be >= 0 and k_den > 0, both below 3e9")
    k_num_squared, k_den_squared = k_num * k_num, k_den * k_den
    out = np.empty(len(x))
    for t in range(len(x)):
        if sums[t] == MISSING or var_scaled[t] == MISSING:
            out[t] = np.nan
            continue
        away = window * x[t] - sums[t]  # window * (x - mean), exact
        if abs(away) > _SQRT_MAX:
            raise OverflowError("band_zone: price too far from its mean for int64; shorten window")
        side = _sign(away)
        beyond = sign_of_products(away * away, k_den_squared, var_scaled[t], k_num_squared) > 0
        out[t] = 2.0 * side if beyond else 1.0 * side
    return out


def ratio(value: float, max_denominator: int = 1_000_000) -> tuple[int, int]:
    """Return ``(numerator, denominator)`` of the fraction nearest `value` whose denominator is at
    most `max_denominator`: how :func:`compare` and :func:`band_zone` take a float parameter.

    ``ratio(2.0) == (2, 1)``, ``ratio(0.001) == (1, 1000)``, ``ratio(1.75) == (7, 4)``.
    """
    fraction = Fraction(value).limit_denominator(max_denominator)
    return fraction.numerator, fraction.denominator


@njit(cache=True, nogil=True)
def quote_decimals(x: np.ndarray, most: int, start: int = 0) -> int:
    """Return the fewest decimals, at least `start`, that hold every price in `x`; ``most + 1``
    if even `most` do not (prices off any grid that fine).

    A price holds ``d`` decimals when ``x * 10**d`` is an integer up to float rounding.
    """
    decimals = start
    scale = 10.0**decimals
    for v in x:
        while decimals <= most:
            scaled = v * scale
            if abs(scaled - np.rint(scaled)) <= 1e-6 + abs(scaled) * 2.0**-50:
                break
            decimals += 1
            scale *= 10.0
        if decimals > most:
            break
    return decimals


@njit(cache=True, nogil=True)
def half_points(bid: np.ndarray, ask: np.ndarray, decimals: int) -> np.ndarray:
    """Return the mid prices as int64 half-points: ``bid + ask`` in points of ``10**-decimals``.

    Each price is rounded to the nearest point, so quotes that hold `decimals` decimals convert
    exactly.
    """
    scale = 10.0**decimals
    out = np.empty(len(bid), dtype=np.int64)
    for t in range(len(bid)):
        out[t] = np.int64(np.rint(bid[t] * scale)) + np.int64(np.rint(ask[t] * scale))
    return out


@njit(cache=True, nogil=True)
def latch(
    enter_long: np.ndarray,
    enter_short: np.ndarray,
    exit_long: np.ndarray,
    exit_short: np.ndarray,
    max_hold: int,
) -> np.ndarray:
    """Turn entry and exit signals into a position in {-1, 0, +1} with a finite memory.

    ``out[t]`` is the side of the most recent entry among bars ``t - max_hold + 1 .. t``, or 0 if
    there was none or if an exit for that side came after it. A bar that signals both entries is no
    entry. Because it never looks further back than `max_hold` bars, the value at ``t`` is the same
    whether the signals start at bar 0 or at ``t - max_hold + 1``.

    Parameters
    ----------
    enter_long, enter_short, exit_long, exit_short
        Boolean signals, one per bar.
    max_hold
        The longest a position is held without a fresh entry signal, in bars.
    """
    if max_hold < 1:
        raise ValueError("latch: max_hold must be at least 1 bar")
    n = len(enter_long)
    out = np.zeros(n)
    last_entry = -1
    side = 0.0
    last_exit_long = -1
    last_exit_short = -1
    for t in range(n):
        if enter_long[t] and not enter_short[t]:
            last_entry, side = t, 1.0
        elif enter_short[t] and not enter_long[t]:
            last_entry, side = t, -1.0
        if exit_long[t]:
            last_exit_long = t
        if exit_short[t]:
            last_exit_short = t
        if last_entry < 0 or last_entry <= t - max_hold:
            continue
        last_exit = last_exit_long if side > 0.0 else last_exit_short
        if last_exit <= last_entry:
            out[t] = side
    return out
