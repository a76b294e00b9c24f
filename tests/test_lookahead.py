"""Lookahead and warm-up checks: biased strategies are caught, every built-in passes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import msgspec
import numpy as np
import pandas as pd
import pytest

import osm.strategies
from osm.research.data import load_bars
from osm.research.lookahead import LookaheadReport, check_lookahead
from osm.research.synthetic import random_walk_bars
from osm.strategies import Param, Strategy
from osm.strategies.indicators import sma
from osm.strategies.sma_cross import SmaCross


class Centred(Strategy):
    """A centred rolling mean: the classic accidental lookahead."""

    window = Param(11, low=3, high=51, step=2)

    def target(self, bars, ind):
        mean = pd.Series(bars.close).rolling(self.window, center=True).mean().to_numpy()
        return np.sign(bars.close - mean)


class PeeksFrom(Strategy):
    """Trades on the next bar's close (shift(-1)) from bar `start` on."""

    start = Param(30, low=0, high=10_000)

    def target(self, bars, ind):
        ahead = pd.Series(bars.close).shift(-1).to_numpy()
        out = np.sign(ind(sma, bars.close, 5) - bars.close)
        out[self.start :] = np.sign(ahead - bars.close)[self.start :]
        return out


class WholeSampleMean(Strategy):
    """Compares each close with the mean of the whole series, future included."""

    def target(self, bars, ind):
        return np.sign(bars.close - bars.close.mean())


class Anchored(Strategy):
    """Causal but never forgets where the data started: it has no finite warm-up."""

    def target(self, bars, ind):
        return np.where(np.arange(len(bars)) % 7 < 3, 1.0, -1.0)  # a weekly cycle of bar counts


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


@pytest.mark.parametrize("strategy", [Centred(), PeeksFrom(), WholeSampleMean()], ids=repr)
def test_biased_strategies_are_flagged(bars, strategy):
    report = check_lookahead(strategy, bars)
    assert not report.passed
    assert report.first_biased_bar is not None
    assert report.first_biased_time is not None
    assert "LOOKAHEAD" in str(report)


@pytest.mark.parametrize(("start", "first"), [(0, 1), (30, 30), (45, 45)])
def test_exhaustive_prefixes_find_the_exact_first_biased_bar(bars, start, first):
    # target[0] only uses close[1], which every prefix of 2 bars or more holds: bar 1 is first
    report = check_lookahead(PeeksFrom, bars[:60], {"start": start}, exhaustive=60)
    assert report.first_biased_bar == first
    assert report.params == {"start": start}


def test_a_bias_deep_in_the_series_is_found_by_the_sampled_cuts(bars):
    report = check_lookahead(PeeksFrom(start=2500), bars)
    assert not report.passed and report.first_biased_bar >= 2500


def test_warmup_is_measured_exactly_for_a_moving_average(bars):
    report = check_lookahead(SmaCross(fast=5, slow=40), bars)
    assert report.passed and report.warmup_converged
    assert report.warmup == 39  # the slow average's first value needs 40 bars: 39 NaN before it


def test_a_strategy_without_finite_memory_does_not_converge(bars):
    report = check_lookahead(Anchored(), bars)
    assert report.passed  # causal...
    assert not report.warmup_converged  # ...but its output depends on where the data starts


@pytest.mark.parametrize("cls", _built_ins(), ids=lambda cls: cls.__name__)
def test_every_built_in_strategy_passes(bars, cls):
    report = check_lookahead(cls(), bars)
    assert report.passed, str(report)
    assert report.warmup_converged
    declared = getattr(cls(), "warmup", None)
    if declared is not None:
        assert report.warmup <= declared, f"{cls.__name__} needs more bars than it declares"


def test_built_ins_pass_on_real_hourly_bars(h1_file):
    real = load_bars(h1_file)[:4000]
    for cls in _built_ins():
        assert check_lookahead(cls(), real, cuts=8, exhaustive=16).passed, cls.__name__


def test_report_is_json_serialisable(bars):
    report = check_lookahead(PeeksFrom, bars[:200], {"start": 100})
    again = msgspec.json.decode(msgspec.json.encode(report), type=LookaheadReport)
    assert again == report
    assert report.strategy == f"{__name__}:PeeksFrom"
    with pytest.raises(TypeError, match="params only with a strategy class"):
        check_lookahead(SmaCross(), bars, {"fast": 3})
