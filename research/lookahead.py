"""The causality check a live brain needs: every bar's target, recomputed from the brain's window.

A live brain keeps the last `window` bars in a BarSeries and, when bar ``t`` closes, calls the
strategy on that window and trades its last target (:mod:`osm.live.brain`). The strategy is causal
and warm enough exactly when, for every bar ``t``, that call gives the target the full run gives
at ``t``. This module makes that call for every bar, so look-ahead (the full run used bars after
``t``) and a too-short warm-up (the window lacks history the full run had) are caught on every bar,
not only where trades fired and not only at sampled cut points.

Cost: one strategy call on at most `window` bars per bar checked, O(n * window) for the built-in
indicators; a few seconds for 10 000 bars with windows of hundreds of bars.

A mismatch is attributed: where the window starts at bar 0 it *is* all the data up to ``t``, so a
different target can only come from bars after ``t`` (look-ahead). Further on, the first mismatch
is run once more on all bars up to ``t``: if that agrees with the full run, the window was too
short (warm-up); if not, the strategy looked ahead.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import numpy as np

from osm.core.config import BrainConfig
from osm.core.dtypes import BAR_DTYPE
from osm.core.errors import ConfigError, DataError
from osm.strategies.base import Bars, Strategy, load_strategy

DEFAULT_WINDOW: int = next(
    f.default for f in msgspec.structs.fields(BrainConfig) if f.name == "window"
)
"""The window a brain holds unless configured otherwise (``BrainConfig.window``)."""


class LookaheadReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What :func:`check_lookahead` covered and found; JSON-serialisable so promotion can keep it."""

    strategy: str  # importable "module:Class"
    params: dict[str, Any]
    n_bars: int  # bars of the full run
    window: int  # bars the brain holds: bar t was recomputed from bars max(0, t-window+1)..t
    first_checked: int  # index of the first bar checked; bars first_checked..n_bars-1 were
    bars_checked: int
    first_checked_time: datetime
    last_checked_time: datetime
    passed: bool  # every checked bar's window target equals the full run's
    mismatches: int = 0  # checked bars whose window target differs
    first_mismatch: int | None = None  # index of the earliest such bar
    first_mismatch_time: datetime | None = None
    full_target: float | None = None  # the full run's target there (None: NaN, no opinion)
    window_target: float | None = None  # the window run's target there (None: NaN)
    cause: Literal["lookahead", "warmup"] | None = None  # see the module docstring
    seconds: float = 0.0  # wall time of the check

    def __str__(self) -> str:
        name = f"{self.strategy.rpartition(':')[2]} {self.params}"
        covered = (
            f"bars {self.first_checked}..{self.n_bars - 1} ({self.bars_checked} bars, "
            f"{self.first_checked_time:%Y-%m-%d %H:%M} to {self.last_checked_time:%Y-%m-%d %H:%M}"
            f" UTC), each recomputed from a window of up to {self.window} bars"
        )
        if self.passed:
            return f"{name}: no lookahead and enough warm-up: {covered} gives the full run's target"
        what = {
            "lookahead": "LOOKAHEAD: the full run's target there uses later bars",
            "warmup": f"WARM-UP longer than the {self.window}-bar window: all bars up to it agree",
        }[self.cause or "lookahead"]
        return (
            f"{name}: {what}; first at bar {self.first_mismatch} "
            f"({self.first_mismatch_time:%Y-%m-%d %H:%M} UTC): full run {_show(self.full_target)}, "
            f"window {_show(self.window_target)}; {self.mismatches} of {covered} differ"
        )


def check_lookahead(
    strategy: Strategy | type[Strategy] | str,
    bars: np.ndarray | Bars,
    params: dict[str, Any] | None = None,
    *,
    window: int | None = None,
    start: int = 0,
    tolerance: float = 1e-12,
) -> LookaheadReport:
    """Check that every bar's target is what a live brain holding `window` bars would compute.

    Parameters
    ----------
    strategy
        A strategy instance, or a class or ``"module:Class"`` path built with `params`.
    bars
        BAR_DTYPE records (or Bars), oldest first.
    params
        Parameter values when `strategy` is a class or path (defaults otherwise).
    window
        Bars the brain holds (``BrainConfig.window``). Default: the strategy's declared
        :attr:`~osm.strategies.base.Strategy.warmup`, which checks that declaration; else the
        default brain window.
    start
        Index of the first bar to check (every bar from it on is checked; the full run still
        sees all bars). Use it to skip the start of a long series.
    tolerance
        Largest absolute difference of two targets (fractions in [-1, 1]) taken as equal;
        NaN equals only NaN.

    Returns
    -------
    LookaheadReport
        Passed or not, the bars covered, and the first mismatching bar with both targets.
    """
    began = time.perf_counter()
    strategy = _instance(strategy, params)
    records = bars.records if isinstance(bars, Bars) else bars
    if not isinstance(records, np.ndarray) or records.dtype != BAR_DTYPE:
        raise TypeError(
            "check_lookahead takes BAR_DTYPE bars (osm.research.data.load_bars), got "
            f"{getattr(records, 'dtype', type(records).__name__)}"
        )
    n = len(records)
    if n == 0:
        raise DataError("check_lookahead got no bars; give it the bars the strategy will trade")
    window = _window(strategy, window)
    if isinstance(start, bool) or not isinstance(start, int | np.integer) or not 0 <= start < n:
        raise ConfigError(f"start must be a bar index in 0..{n - 1} ({n} bars), got {start!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    full = strategy.targets(records)
    got = window_targets(strategy, records, window, start)
    bad = np.flatnonzero(~_same(got, full[start:], tolerance)) + start
    first = int(bad[0]) if bad.size else None
    cls = type(strategy)
    times = records["time"]
    return LookaheadReport(
        strategy=f"{cls.__module__}:{cls.__qualname__}",
        params=strategy.values,
        n_bars=n,
        window=window,
        first_checked=int(start),
        bars_checked=n - int(start),
        first_checked_time=_utc(times[start]),
        last_checked_time=_utc(times[-1]),
        passed=first is None,
        mismatches=int(bad.size),
        first_mismatch=first,
        first_mismatch_time=None if first is None else _utc(times[first]),
        full_target=None if first is None else _value(full[first]),
        window_target=None if first is None else _value(got[first - start]),
        cause=None if first is None else _cause(strategy, records, full, first, window, tolerance),
        seconds=round(time.perf_counter() - began, 6),
    )


def window_targets(
    strategy: Strategy, records: np.ndarray, window: int, start: int = 0
) -> np.ndarray:
    """Return, for each bar ``t >= start``, the last target of the strategy run on the `window`
    bars ending at ``t`` (fewer at the start): what a live brain decides when bar ``t`` closes."""
    out = np.empty(len(records) - start)
    for t in range(start, len(records)):
        out[t - start] = strategy.targets(records[max(0, t - window + 1) : t + 1])[-1]
    return out


def _window(strategy: Strategy, window: int | None) -> int:
    if window is None:
        declared = strategy.warmup
        return DEFAULT_WINDOW if declared is None else int(declared)
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ConfigError(f"window must be a whole number of bars >= 1, got {window!r}")
    return int(window)


def _cause(
    strategy: Strategy,
    records: np.ndarray,
    full: np.ndarray,
    t: int,
    window: int,
    tolerance: float,
) -> Literal["lookahead", "warmup"]:
    if t < window:
        return "lookahead"  # the window was already every bar up to t
    prefix = strategy.targets(records[: t + 1])[-1:]
    return "warmup" if _same(prefix, full[t : t + 1], tolerance)[0] else "lookahead"


def _same(a: np.ndarray, b: np.ndarray, tolerance: float) -> np.ndarray:
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        return both_nan | (np.abs(a - b) <= tolerance)


def _instance(strategy: Strategy | type[Strategy] | str, params: dict | None) -> Strategy:
    if isinstance(strategy, Strategy):
        if params:
            raise TypeError("pass params only with a strategy class or path, not an instance")
        return strategy
    return load_strategy(strategy)(**(params or {}))


def _value(target: float) -> float | None:
    return None if math.isnan(target) else float(target)


def _show(target: float | None) -> str:
    return "NaN" if target is None else f"{target:+g}"


def _utc(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(ns) // 1000)
