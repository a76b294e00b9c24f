"""Causality checks: does a strategy peek at future bars, and how many bars does it need to warm up?

The lookahead check runs the strategy on prefixes of the data and compares *every* bar's target with
the full run's, not only the bars where a trade fired: a causal strategy gives bar ``t`` the same
target whether the data stops at ``t`` or goes on. Running every prefix would cost O(n^2), so the
prefixes end at a seeded sample of cut points across the whole series plus at every bar of a short
stretch just past the warm-up (where the strategy has opinions and an off-by-one shows up).

The warm-up check runs the strategy on suffixes (the data starting later) and finds how many bars
pass before the output stops depending on where the data starts: the least history a live brain
must hold, and the least context a walk-forward out-of-sample run needs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np

from osm.strategies.base import Strategy, load_strategy


class LookaheadReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The outcome of :func:`check_lookahead`; JSON-serialisable so promotion can keep it."""

    strategy: str  # importable "module:Class"
    params: dict[str, Any]
    n_bars: int
    passed: bool  # no prefix run disagreed with the full run
    first_biased_bar: int | None = None  # earliest bar whose target changed once later bars came
    first_biased_time: datetime | None = None
    prefixes_checked: int = 0
    warmup: int = 0  # bars before the output stops depending on where the data starts
    warmup_converged: bool = True  # False: some suffix never settled within the checked window

    def __str__(self) -> str:
        name = f"{self.strategy} {self.params}"
        warm = f"warm-up {self.warmup} bars" + ("" if self.warmup_converged else " (not converged)")
        if self.passed:
            return f"{name}: no lookahead in {self.prefixes_checked} prefixes; {warm}"
        return (
            f"{name}: LOOKAHEAD at bar {self.first_biased_bar} ({self.first_biased_time}): its "
            f"target changes when later bars are added; {warm}"
        )


def check_lookahead(
    strategy: Strategy | type[Strategy] | str,
    bars: np.ndarray,
    params: dict[str, Any] | None = None,
    *,
    cuts: int = 24,
    exhaustive: int = 48,
    suffixes: int = 12,
    max_warmup: int = 5000,
    seed: int = 0,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> LookaheadReport:
    """Check that a strategy's targets never use future bars, and measure its warm-up.

    Parameters
    ----------
    strategy
        A strategy instance, or a class or ``"module:Class"`` path built with `params`.
    bars
        BAR_DTYPE records, oldest first; a few thousand bars are plenty.
    params
        Parameter values when `strategy` is a class or path (defaults otherwise).
    cuts
        Prefixes ending at this many seeded random cut points across the series.
    exhaustive
        Prefixes ending at every bar of a stretch this long, just past the warm-up.
    suffixes
        Suffix start points for the warm-up check.
    max_warmup
        The longest warm-up looked for, in bars (capped at a third of the series).
    seed
        Seed of the cut points.
    rtol, atol
        Tolerance of the target comparison (targets are fractions in [-1, 1]).

    Returns
    -------
    LookaheadReport
        ``passed``, the first biased bar if any, and the warm-up in bars.
    """
    strategy = _instance(strategy, params)
    n = len(bars)
    if n < 4:
        raise ValueError(f"check_lookahead needs at least 4 bars, got {n}")
    full = strategy.targets(bars)
    tol = (rtol, atol)
    warmup, converged = _warmup(strategy, bars, full, suffixes, min(max_warmup, n // 3), tol)
    ends = _cut_points(n, warmup, cuts, exhaustive, seed)
    first = None
    for end in ends:
        bad = _first_mismatch(strategy.targets(bars[:end]), full[:end], tol)
        if bad >= 0 and (first is None or bad < first):
            first = bad
    cls = type(strategy)
    return LookaheadReport(
        strategy=f"{cls.__module__}:{cls.__qualname__}",
        params=strategy.values,
        n_bars=n,
        passed=first is None,
        first_biased_bar=first,
        first_biased_time=None if first is None else _utc(bars["time"][first]),
        prefixes_checked=len(ends),
        warmup=warmup,
        warmup_converged=converged,
    )


def _instance(strategy: Strategy | type[Strategy] | str, params: dict | None) -> Strategy:
    if isinstance(strategy, Strategy):
        if params:
            raise TypeError("pass params only with a strategy class or path, not an instance")
        return strategy
    return load_strategy(strategy)(**(params or {}))


def _cut_points(n: int, warmup: int, cuts: int, exhaustive: int, seed: int) -> np.ndarray:
    # Prefix lengths: random ones anywhere (>= 2 bars), and every length in a stretch where the
    # strategy is warm, so an off-by-one at the newest bar is caught exactly where it starts.
    rng = np.random.default_rng(seed)
    sampled = rng.integers(2, n, size=min(cuts, n - 2))
    start = min(max(warmup + 1, 2), max(n - exhaustive, 2))
    stretch = np.arange(start, min(start + exhaustive, n))
    return np.unique(np.concatenate([sampled, stretch]))


def _warmup(
    strategy: Strategy,
    bars: np.ndarray,
    full: np.ndarray,
    suffixes: int,
    horizon: int,
    tol: tuple[float, float],
) -> tuple[int, bool]:
    """Return the most bars any suffix run needed to agree with the full run, and if all settled.

    Starts lie in [horizon, n - horizon] so the full run is warm there (if the warm-up is shorter
    than `horizon`) and each suffix window holds `horizon` bars. A suffix has settled when it
    agrees for at least the last half of its window.
    """
    n = len(bars)
    warmup, converged = 0, True
    for start in np.unique(np.linspace(horizon, n - horizon, suffixes).astype(np.int64)):
        window = slice(start, start + horizon)
        last = _last_mismatch(strategy.targets(bars[window]), full[window], tol)
        warmup = max(warmup, last + 1)
        converged &= last + 1 <= horizon // 2
    return warmup, bool(converged)


def _mismatch(a: np.ndarray, b: np.ndarray, tol: tuple[float, float]) -> np.ndarray:
    return ~np.isclose(a, b, rtol=tol[0], atol=tol[1], equal_nan=True)


def _first_mismatch(a: np.ndarray, b: np.ndarray, tol: tuple[float, float]) -> int:
    bad = _mismatch(a, b, tol)
    return int(bad.argmax()) if bad.any() else -1


def _last_mismatch(a: np.ndarray, b: np.ndarray, tol: tuple[float, float]) -> int:
    bad = _mismatch(a, b, tol)
    return int(len(bad) - 1 - bad[::-1].argmax()) if bad.any() else -1


def _utc(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(ns) // 1000)
