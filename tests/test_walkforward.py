"""Walk-forward: folds, per-fold optimisation, warm stitched out-of-sample run, parameter schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from osm.core.errors import ConfigError
from osm.research.backtest import backtest
from osm.research.synthetic import random_walk_bars
from osm.research.walkforward import (
    Fold,
    ParameterSchedule,
    ScheduleEntry,
    make_folds,
    walk_forward,
)
from osm.strategies import Param, Strategy
from osm.strategies.sma_cross import SmaCross

GRID = {"fast": [5, 10, 20], "slow": [40, 80]}
HOUR = 3600 * 10**9


class Replay(Strategy):
    """Plays back targets set on the class: the oracle's way to backtest a stitched target path."""

    path = np.zeros(0)

    def target(self, bars, ind):
        return type(self).path


class Flat(Strategy):
    n = Param(1, low=1, high=2, step=1)

    def target(self, bars, ind):
        return np.zeros(len(bars))


@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    return random_walk_bars(6000, seed=5)


def test_folds_by_bars_roll_or_anchor():
    times = np.arange(100) * HOUR
    assert make_folds(times, 40, 20) == [Fold(0, 40, 60), Fold(20, 60, 80), Fold(40, 80, 100)]
    assert make_folds(times, 40, 20, anchored=True) == [
        Fold(0, 40, 60),
        Fold(0, 60, 80),
        Fold(0, 80, 100),
    ]
    assert make_folds(times, 50, 20, step=10)[:2] == [Fold(0, 50, 70), Fold(10, 60, 80)]
    with pytest.raises(ConfigError, match="no complete fold"):
        make_folds(times, 90, 20)
    with pytest.raises(ConfigError, match="not a mix"):
        make_folds(times, 40, "2D")
    with pytest.raises(ConfigError, match="not a time span"):
        make_folds(times, "forty", "2D")


def test_folds_by_time_span_follow_the_clock_across_gaps():
    times = np.delete(np.arange(24 * 10) * HOUR, np.arange(48, 72))  # day 3 missing
    folds = make_folds(times, "2D", "1D")
    # day 2 has no bars, so the first fold with an out-of-sample window tests day 3
    assert folds[0] == Fold(24, 48, 72)
    assert [times[f.oos_start] // (24 * HOUR) for f in folds] == [3, 4, 5, 6, 7, 8, 9]
    assert times[folds[-1].oos_end - 1] == times[-1]  # the last day is covered, so it counts
    anchored = make_folds(times, pd.Timedelta("2D"), "1D", anchored=True)
    assert {f.is_start for f in anchored} == {0}


def test_each_fold_trades_the_best_in_sample_parameters(bars):
    result = walk_forward(SmaCross, bars, 2000, 1000, grid=GRID, commission=1e-5, progress=False)
    assert len(result.folds) == 4
    for row, fold in zip(
        result.folds.itertuples(), make_folds(bars["time"], 2000, 1000), strict=True
    ):
        in_sample = bars[fold.is_start : fold.oos_start]
        scores = {
            (c["fast"], c["slow"]): backtest(SmaCross, in_sample, commission=1e-5, **c).metrics[
                "sharpe"
            ]
            for c in SmaCross.grid(**GRID)
        }
        assert (row.fast, row.slow) == max(scores, key=scores.get)
        assert row.is_sharpe == pytest.approx(max(scores.values()), rel=0, abs=0)


def test_stitched_equity_is_one_warm_run_over_the_out_of_sample_span(bars):
    result = walk_forward(SmaCross, bars, 2000, 1000, grid=GRID, commission=1e-5, progress=False)
    folds = make_folds(bars["time"], 2000, 1000)
    path = []
    for fold, params in zip(folds, (e.params for e in result.schedule.entries), strict=True):
        full = SmaCross(**params).targets(bars[fold.is_start : fold.oos_end])
        path.append(full[fold.oos_start - fold.is_start :])
    Replay.path = np.concatenate(path)
    oracle = backtest(Replay, bars[folds[0].oos_start :], commission=1e-5)
    np.testing.assert_array_equal(result.equity.to_numpy(), oracle.equity.to_numpy())
    assert result.metrics == oracle.metrics
    assert result.equity.index[0] == pd.Timestamp(int(bars["time"][2000]), tz="UTC")
    # warm from the first bar: the first fill is at the second out-of-sample bar's open
    assert result.fills["bar"].iloc[0] == 2001
    assert result.fills["bar"].min() > 2000 and result.fills["bar"].max() < len(bars)
    cold = walk_forward(SmaCross, bars, 2000, 1000, grid=GRID, warmup=0, progress=False)
    assert cold.fills["bar"].iloc[0] >= 2000 + cold.folds.loc[0, "slow"]


def test_fold_table_columns_and_out_of_sample_returns_compound(bars):
    result = walk_forward(SmaCross, bars, "120D", "60D", grid=GRID, anchored=True, progress=False)
    folds = result.folds
    assert list(folds.columns[:8]) == [
        "fold", "is_from", "oos_from", "oos_to", "is_bars", "oos_bars", "fast", "slow",
    ]  # fmt: skip
    assert {"is_sharpe", "oos_total_return", "oos_sharpe", "oos_trades"} <= set(folds.columns)
    assert (folds["is_from"] == folds["is_from"].iloc[0]).all()
    compounded = np.prod(1 + folds["oos_total_return"].to_numpy()) - 1
    assert compounded == pytest.approx(result.metrics["total_return"], rel=1e-9)
    assert folds["oos_bars"].sum() == len(result.equity)


def test_schedule_round_trips_and_answers_by_time(bars, tmp_path):
    result = walk_forward(SmaCross, bars, 2000, 1000, grid=GRID, progress=False)
    schedule = result.schedule
    assert schedule.strategy == "osm.strategies.sma_cross:SmaCross"
    assert ParameterSchedule.from_json(schedule.to_json()) == schedule
    assert ParameterSchedule.load(schedule.save(tmp_path / "schedule.json")) == schedule
    second = schedule.entries[1]
    assert schedule.params_at(second.from_time) == second.params
    assert schedule.params_at(int(bars["time"][-1]) + 10**15) == schedule.entries[-1].params
    with pytest.raises(ValueError, match="before the schedule starts"):
        schedule.params_at("2000-01-01")
    assert list(schedule.to_frame().columns) == ["from_time", "fast", "slow"]


def test_schedule_is_validated():
    t0, t1 = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC)
    entries = [ScheduleEntry(from_time=t1, params={}), ScheduleEntry(from_time=t0, params={})]
    with pytest.raises(ConfigError, match="increasing time order"):
        ParameterSchedule(strategy="x:Y", entries=entries)
    with pytest.raises(ConfigError, match="time zone"):
        ParameterSchedule(
            strategy="x:Y", entries=[ScheduleEntry(from_time=datetime(2020, 1, 1), params={})]
        )
    with pytest.raises(ConfigError, match="unknown field"):
        ParameterSchedule.from_json(b'{"strategy": "x:Y", "entries": [], "objectiv": "sharpe"}')


def test_a_fold_without_any_objective_keeps_the_previous_parameters(bars):
    with pytest.warns(UserWarning, match="no combination has a sharpe"):
        result = walk_forward(Flat, bars, 3000, 1500, progress=False)
    assert [e.params for e in result.schedule.entries] == [{"n": 1}, {"n": 1}]
    assert len(result.fills) == 0


def test_walk_forward_on_a_dask_scheduler_address_matches_local(bars):
    distributed = pytest.importorskip("distributed")
    local = walk_forward(SmaCross, bars, 2000, 1000, grid=GRID, progress=False)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        remote = walk_forward(
            SmaCross, bars, 2000, 1000, grid=GRID, executor="dask",
            scheduler=cluster.scheduler_address, progress=False,
        )  # fmt: skip
    assert remote.schedule == local.schedule
    pd.testing.assert_series_equal(remote.equity, local.equity, check_exact=True)
