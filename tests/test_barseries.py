"""BarSeries: a view over a larger buffer, bounded, O(1) amortised appends, compared with a deque."""

from __future__ import annotations

import collections
import tracemalloc

import numpy as np
import pytest

from osm.core.barseries import BarSeries
from osm.core.dtypes import BAR_DTYPE


def bar(i: int, complete: bool = True) -> np.ndarray:
    row = np.zeros((), BAR_DTYPE)
    row["time"], row["bid_close"], row["ticks"], row["complete"] = i, i * 0.5, i, complete
    return row


def bars(start: int, n: int) -> np.ndarray:
    out = np.zeros(n, BAR_DTYPE)
    out["time"] = np.arange(start, start + n)
    out["bid_close"] = out["time"] * 0.5
    return out


def test_view_is_a_view_of_the_buffer() -> None:
    series = BarSeries(window=5, capacity=12)
    for i in range(3):
        series.append(bar(i))
    view = series.view
    assert view.base is not None and np.shares_memory(view, series._buffer)
    view["bid_close"][0] = 99.0  # writes through: no copy was handed out
    assert series.view["bid_close"][0] == 99.0
    assert series.last["time"] == 2 and len(series) == 3


@pytest.mark.parametrize(("window", "capacity"), [(1, 2), (3, 4), (5, 12), (64, 128), (10, 1000)])
def test_appends_roll_out_the_oldest_like_a_deque(window: int, capacity: int) -> None:
    series = BarSeries(window=window, capacity=capacity)
    oracle: collections.deque[int] = collections.deque(maxlen=window)
    for i in range(5 * capacity + 3):
        series.append(bar(i))
        oracle.append(i)
        assert series.view["time"].tolist() == list(oracle)
        assert series.view["bid_close"].tolist() == [t * 0.5 for t in oracle]


@pytest.mark.parametrize("chunk", [1, 3, 7, 20])
def test_extend_equals_appends(chunk: int) -> None:
    series = BarSeries(window=7, capacity=15)
    oracle: collections.deque[int] = collections.deque(maxlen=7)
    for start in range(0, 200, chunk):
        series.extend(bars(start, chunk))
        oracle.extend(range(start, start + chunk))
        assert series.view["time"].tolist() == list(oracle)


def test_upsert_updates_the_forming_bar_in_place() -> None:
    series = BarSeries(window=3)
    series.append(bar(1))
    forming = bar(2, complete=False)
    series.upsert(forming)
    forming["bid_close"] = 7.0
    series.upsert(forming)
    assert series.view["time"].tolist() == [1, 2]
    assert series.view["bid_close"].tolist() == [0.5, 7.0]
    series.upsert(bar(3))
    assert series.view["time"].tolist() == [1, 2, 3]


def test_compaction_copies_the_window_to_the_start() -> None:
    series = BarSeries(window=4, capacity=10)
    for i in range(10):
        series.append(bar(i))
    assert series._end == 10
    series.append(bar(10))  # buffer full: the last window - 1 bars move to the front
    assert (series._start, series._end) == (0, 4)
    assert series._buffer["time"][:4].tolist() == [7, 8, 9, 10]


def test_memory_stays_bounded() -> None:
    series = BarSeries(window=1000, capacity=3000)
    row = bar(0)
    for i in range(5000):  # warm up: first compactions, interned objects
        row["time"] = i
        series.append(row)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(5000, 105_000):
        row["time"] = i
        series.append(row)
    growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert growth < 64 * 1024, f"{growth} bytes allocated and kept over 100k appends"
    assert series._buffer.nbytes == 3000 * BAR_DTYPE.itemsize
    assert len(series) == 1000 and series.view["time"][-1] == 104_999


def test_bad_sizes_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="window must be at least 1"):
        BarSeries(window=0)
    with pytest.raises(ValueError, match="capacity"):
        BarSeries(window=10, capacity=10)
