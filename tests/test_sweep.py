"""Sweeps: equal to a loop of single backtests, each indicator computed once, same on Dask."""

from __future__ import annotations

import importlib
import threading

import numpy as np
import pandas as pd
import pytest

from osm.core.errors import ConfigError, UnknownNameError
from osm.research.backtest import backtest
from osm.research.metrics import METRIC_NAMES
from osm.research.sweep import (
    SharedIndicatorCache,
    SweepEstimateWarning,
    best,
    combinations,
    sweep,
)
from osm.research.synthetic import random_walk_bars
from osm.strategies import Param, Strategy
from osm.strategies.indicators import sma
from osm.strategies.sma_cross import SmaCross

# The package exports the function `sweep`, which hides the module of the same name.
sweep_module = importlib.import_module("osm.research.sweep")


class Scaled(Strategy):
    """A crossover with a float parameter, a bool and a constraint: the grid's awkward cases."""

    fast = Param(4, low=2, high=8, step=2)
    slow = Param(12, low=6, high=18, step=6)
    scale = Param(1.0, low=0.5, high=1.0, step=0.25)
    invert = Param(False)

    def check(self):
        if self.fast >= self.slow:
            raise ValueError("fast must be shorter than slow")

    def target(self, bars, ind):
        side = np.sign(ind(sma, bars.close, self.fast) - ind(sma, bars.close, self.slow))
        return -side * self.scale if self.invert else side * self.scale


class FailsOn(Strategy):
    fast = Param(2, low=2, high=9, step=1)

    def target(self, bars, ind):
        if self.fast == 7:
            raise RuntimeError("boom at fast=7")
        return np.sign(bars.close - ind(sma, bars.close, self.fast))


class Wild(Strategy):
    fast = Param(2, low=2, high=3, step=1)

    def target(self, bars, ind):
        return np.full(len(bars), 1.5)


@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    return random_walk_bars(3000, seed=11)


def _oracle(cls, bars, combos, **settings) -> pd.DataFrame:
    rows = [{**values, **backtest(cls, bars, **settings, **values).metrics} for values in combos]
    return pd.DataFrame(rows)


def _by_params(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    return frame.sort_values(names).reset_index(drop=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_equals_a_loop_of_backtests(bars, workers):
    settings = {"size": 25_000, "commission": 2e-5, "financing": 1e-6, "cash": 50_000.0}
    frame = sweep(Scaled, bars, workers=workers, progress=False, **settings)
    combos = list(Scaled.grid())
    assert len(frame) == len(combos) == 4 * 3 * 3 * 2 - 2 * 3 * 2
    expected = _oracle(Scaled, bars, combos, **settings)
    names = list(Scaled.params)
    got = _by_params(frame, names)
    expected = _by_params(expected, names)
    expected["trades"] = expected["trades"].astype(np.int64)
    pd.testing.assert_frame_equal(got, expected[got.columns], check_exact=True)
    assert list(frame.columns) == names + list(METRIC_NAMES)
    sharpe = frame["sharpe"].to_numpy()
    assert np.all(np.diff(sharpe[~np.isnan(sharpe)]) <= 0)  # best objective first


def test_each_indicator_is_computed_once(bars):
    grid = {"fast": [2, 4, 6], "slow": [6, 12, 18], "scale": [0.5, 1.0]}
    for workers in (1, 2):
        frame = sweep(Scaled, bars, grid=grid, workers=workers, progress=False)
        combos = len(frame)
        assert frame.attrs["indicators_computed"] == len({2, 4, 6, 12, 18})
        # every combination asks for two moving averages; all but the first asks hit the cache
        assert frame.attrs["indicator_hits"] == 2 * combos - 5


def test_shared_cache_computes_once_under_threads():
    calls = []
    gate = threading.Barrier(4)

    def slow_square(x):
        calls.append(1)
        return x * x

    cache = SharedIndicatorCache()
    x = np.arange(5.0)

    def ask():
        gate.wait()
        return cache(slow_square, x)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and cache.misses == 1 and cache.hits == 3
    np.testing.assert_array_equal(cache(slow_square, x), x * x)


def test_grid_values_are_coerced_sorted_and_checked():
    combos = combinations(SmaCross, {"slow": [60, 50], "fast": (20.0, 10)})
    assert combos == [
        {"fast": 10, "slow": 50},
        {"fast": 10, "slow": 60},
        {"fast": 20, "slow": 50},
        {"fast": 20, "slow": 60},
    ]
    assert all(isinstance(c["fast"], int) for c in combos)
    assert combinations(SmaCross, {"fast": 10, "slow": [40]}) == [{"fast": 10, "slow": 40}]
    with pytest.raises(UnknownNameError, match="Did you mean 'slow'"):
        combinations(SmaCross, {"slwo": [40]})
    with pytest.raises(ConfigError, match="outside its range"):
        combinations(SmaCross, {"fast": [1000]})
    with pytest.raises(ConfigError, match="no valid combination"):
        combinations(SmaCross, {"fast": [50], "slow": [40]})


def test_random_search_is_seeded_distinct_valid_and_in_range():
    combos = combinations(Scaled, n_random=15, seed=3)
    assert combos == combinations(Scaled, n_random=15, seed=3)
    assert combos != combinations(Scaled, n_random=15, seed=4)
    assert len({tuple(c.values()) for c in combos}) == 15
    for values in combos:
        assert Scaled.is_valid(values) and 0.5 <= values["scale"] <= 1.0
    assert len({c["scale"] for c in combos}) > 4  # floats drawn uniformly, not from the step grid
    fixed = combinations(Scaled, {"fast": [2], "invert": False}, n_random=5, seed=0)
    assert {c["fast"] for c in fixed} == {2} and not any(c["invert"] for c in fixed)
    with pytest.warns(SweepEstimateWarning, match="found only 3"):
        assert len(combinations(SmaCross, {"fast": [2], "slow": [5, 10, 15]}, n_random=9)) == 3


def test_best_returns_typed_parameters(bars):
    frame = sweep(SmaCross, bars, grid={"fast": [5, 10], "slow": [40, 80]}, progress=False)
    top = best(frame, SmaCross)
    assert top == {"fast": int(frame.loc[0, "fast"]), "slow": int(frame.loc[0, "slow"])}
    assert isinstance(top["fast"], int)


def test_bad_arguments_are_explained(bars):
    with pytest.raises(UnknownNameError, match="Did you mean 'sharpe'"):
        sweep(SmaCross, bars, objective="sharp", progress=False)
    with pytest.raises(UnknownNameError, match="Did you mean 'dask'"):
        sweep(SmaCross, bars, executor="dusk", progress=False)
    with pytest.raises(ConfigError, match="workers must be"):
        sweep(SmaCross, bars, grid={"fast": [5], "slow": [40]}, workers=0, progress=False)
    with pytest.raises(ConfigError, match="needs a cluster"):
        sweep(SmaCross, bars, grid={"fast": [5], "slow": [40]}, executor="dask", progress=False)
    with pytest.raises(ValueError, match=r"within \[-1, 1\]"):
        sweep(Wild, bars, progress=False)


def test_a_failing_combination_stops_the_sweep(bars):
    with pytest.raises(RuntimeError, match="boom at fast=7"):
        sweep(FailsOn, bars, workers=2, progress=False)


def test_estimate_warns_with_figures_and_a_way_out(bars, monkeypatch):
    monkeypatch.setattr(sweep_module, "LONG_SECONDS", 0.0)
    with pytest.warns(SweepEstimateWarning, match=r"ms each on 1 threads.*GiB.*n_random="):
        sweep(SmaCross, bars, grid={"fast": [5, 10, 15], "slow": [40]}, workers=1, progress=False)


def test_dask_cluster_gives_identical_results(bars):
    distributed = pytest.importorskip("distributed")
    grid = {"fast": [5, 10, 15, 20], "slow": [30, 60, 90]}
    local = sweep(SmaCross, bars, grid=grid, commission=1e-5, progress=False)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = sweep(
            SmaCross, bars, grid=grid, commission=1e-5, executor="dask", scheduler=client,
            progress=False,
        )  # fmt: skip
        by_address = sweep(
            SmaCross, bars, grid=grid, commission=1e-5, executor="dask",
            scheduler=cluster.scheduler_address, progress=False,
        )  # fmt: skip
        leftovers = client.run(
            lambda dask_worker: len(vars(dask_worker).get("_osm_sweep_contexts", {}))
        )
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    pd.testing.assert_frame_equal(local, by_address, check_exact=True)
    # each worker computed its moving averages once; no worker keeps the sweep's context
    assert 7 <= remote.attrs["indicators_computed"] <= 3 + 2 * 7  # pilot here, then workers
    assert set(leftovers.values()) == {0}
