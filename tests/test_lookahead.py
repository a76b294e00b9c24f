"""The lookahead check: every bar recomputed from the brain's window; biased strategies caught
at their exact first biased bar, too-short windows told apart from look-ahead, built-ins pass."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import msgspec
import numpy as np
import pandas as pd
import pytest

import osm.strategies
from osm.core.errors import ConfigError
from osm.research.data import load_bars
from osm.research.lookahead import (
    DEFAULT_WINDOW,
    LookaheadReport,
    check_lookahead,
    window_targets,
)
from osm.research.synthetic import random_walk_bars
from osm.strategies import Param, Strategy
from osm.strategies.indicators import sma
from osm.strategies.sma_cross import SmaCross

HOUR = 3600 * 10**9


class PeeksEvery(Strategy):
    """Causal (close against its 5-bar mean) except at the bars that open `phase` hours into
    every `period` hours (one bar in `period`), where it trades on the next bar's close. The bars
    are picked by time, not by position, so a window picks the same ones as the full run."""

    period = Param(97, low=2, high=10_000)
    phase = Param(0, low=0, high=10_000)

    @property
    def warmup(self) -> int:
        return 5

    def target(self, bars, ind):
        out = np.sign(bars.close - ind(sma, bars.close, 5))
        ahead = pd.Series(bars.close).shift(-1).to_numpy()
        peek = bars.time // HOUR % self.period == self.phase
        out[peek] = np.sign(ahead - bars.close)[peek]
        return out


class Centred(Strategy):
    """A centred rolling mean: the classic accidental lookahead."""

    window = Param(11, low=3, high=51, step=2)

    def target(self, bars, ind):
        mean = pd.Series(bars.close).rolling(self.window, center=True).mean().to_numpy()
        return np.sign(bars.close - mean)


class WholeSampleMean(Strategy):
    """Compares each close with the mean of the whole series, future included."""

    def target(self, bars, ind):
        return np.sign(bars.close - bars.close.mean())


class Anchored(Strategy):
    """Causal but never forgets where the data started: no window reproduces it."""

    def target(self, bars, ind):
        return np.where(np.arange(len(bars)) % 7 < 3, 1.0, -1.0)


def _built_ins() -> list[type[Strategy]]:
    found = []
    for info in pkgutil.iter_modules(osm.strategies.__path__):
        module = importlib.import_module(f"osm.strategies.{info.name}")
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, Strategy)
            and cls is not Strategy
            and cls.__module__ == module.__name__
        ]
    return sorted(found, key=lambda cls: cls.__name__)


@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    return random_walk_bars(3000, seed=21)


@pytest.mark.parametrize("seed", range(20))
def test_a_peek_at_one_bar_in_97_is_named_exactly_for_every_seed(seed):
    data = random_walk_bars(600, seed=seed)
    phase = int(np.random.default_rng(seed).integers(97))
    report = check_lookahead(PeeksEvery(phase=phase), data)
    peeks = np.flatnonzero(data["time"] // HOUR % 97 == phase)
    first = int(peeks[0])
    close = (data["bid_close"] + data["ask_close"]) / 2
    assert not report.passed and report.cause == "lookahead"
    assert report.first_mismatch == first
    assert report.first_mismatch_time == pd.Timestamp(data["time"][first], tz="UTC")
    assert report.full_target == np.sign(close[first + 1] - close[first])
    assert report.window_target is None  # the window ends at the bar: the next close is unknown
    # Every peeking bar but the last bar of all (whose next close the full run lacks too).
    assert report.mismatches == np.count_nonzero(peeks < len(data) - 1) >= 5
    assert report.window == 5 and report.bars_checked == len(data) and report.first_checked == 0
    assert f"LOOKAHEAD: the full run's target there uses later bars; first at bar {first} " in str(
        report
    )


@pytest.mark.parametrize(
    ("strategy", "first"), [(Centred(), 5), (Centred(window=21), 10), (WholeSampleMean(), 0)]
)
def test_biased_strategies_are_flagged_at_their_first_biased_bar(bars, strategy, first):
    report = check_lookahead(strategy, bars[:500])
    assert not report.passed and report.cause == "lookahead"
    assert report.first_mismatch == first
    assert report.window == DEFAULT_WINDOW  # no declared warm-up: the default brain window


def test_a_window_shorter_than_the_warmup_is_told_apart_from_lookahead(bars):
    strategy = SmaCross(fast=5, slow=40)
    assert check_lookahead(strategy, bars).window == 40  # the declared warm-up by default
    assert check_lookahead(strategy, bars, window=40).passed
    short = check_lookahead(strategy, bars, window=39)
    # Bar 39 is the first whose window (bars 1..39) lacks the 40 bars of the slow average.
    assert not short.passed and short.cause == "warmup" and short.first_mismatch == 39
    assert short.window_target is None and short.full_target in (-1.0, 0.0, 1.0)
    assert short.mismatches == len(bars) - 39  # every bar from there on
    assert "WARM-UP longer than the 39-bar window" in str(short)


def test_a_strategy_without_finite_memory_fails_as_warmup(bars):
    report = check_lookahead(Anchored(), bars[:300], window=100)
    # From bar 100 on the window holds 100 bars, so it always sees position 99 (99 % 7 = 1: +1);
    # bar 101 (101 % 7 = 3) is the first whose full-run target is -1.
    assert report.cause == "warmup" and report.first_mismatch == 101
    assert (report.full_target, report.window_target) == (-1.0, 1.0)


def test_window_targets_are_what_a_brain_computes_bar_by_bar(bars):
    strategy = SmaCross(fast=3, slow=8)
    got = window_targets(strategy, bars[:50], 8, start=10)
    want = [strategy.targets(bars[t - 7 : t + 1])[-1] for t in range(10, 50)]
    np.testing.assert_array_equal(got, want)


def test_start_limits_the_bars_checked_and_says_so(bars):
    strategy = PeeksEvery(period=500, phase=100)
    peeks = np.flatnonzero(bars["time"] // HOUR % 500 == 100)
    start = int(peeks[0]) + 1
    report = check_lookahead(strategy, bars, start=start)
    assert (report.first_checked, report.bars_checked) == (start, len(bars) - start)
    assert report.first_checked_time == pd.Timestamp(bars["time"][start], tz="UTC")
    assert report.first_mismatch == peeks[1] and report.mismatches == len(peeks) - 1 >= 3


@pytest.mark.parametrize("cls", _built_ins(), ids=lambda cls: cls.__name__)
def test_every_built_in_strategy_passes_on_its_declared_warmup(bars, cls):
    strategy = cls()
    report = check_lookahead(strategy, bars)
    assert report.passed, str(report)
    assert report.window == strategy.warmup  # every built-in declares it, and it suffices
    assert report.bars_checked == len(bars) and report.mismatches == 0


def test_built_ins_pass_on_real_hourly_bars(h1_file):
    real = load_bars(h1_file)[-4000:]
    for cls in _built_ins():
        report = check_lookahead(cls(), real)
        assert report.passed, str(report)
        assert report.bars_checked == len(real)


def test_report_is_json_serialisable_and_says_what_it_covered(bars):
    report = check_lookahead(PeeksEvery, bars[:200], {"phase": 50})
    again = msgspec.json.decode(msgspec.json.encode(report), type=LookaheadReport)
    assert again == report
    assert report.strategy == f"{__name__}:PeeksEvery"
    assert report.params == {"period": 97, "phase": 50}
    passed = check_lookahead(SmaCross(), bars[:200])
    assert str(passed).startswith("SmaCross {'fast': 10, 'slow': 40}: no lookahead")
    assert "bars 0..199 (200 bars" in str(passed) and "window of up to 40 bars" in str(passed)


def test_bad_arguments_are_refused(bars):
    with pytest.raises(TypeError, match="params only with a strategy class"):
        check_lookahead(SmaCross(), bars, {"fast": 3})
    with pytest.raises(ConfigError, match="window must be a whole number of bars >= 1, got 0"):
        check_lookahead(SmaCross(), bars, window=0)
    with pytest.raises(ConfigError, match=r"start must be a bar index in 0\.\.99"):
        check_lookahead(SmaCross(), bars[:100], start=100)
    with pytest.raises(TypeError, match="BAR_DTYPE"):
        check_lookahead(SmaCross(), np.zeros(10))
