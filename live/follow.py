"""Merge history and live bars of one series into one sequence without gaps or duplicates.

Whoever follows a series (a brain, a chart) subscribes to its live bars first, then asks the
router for history, and feeds both to a :class:`BarMerge`. The merge hands back, in open-time
order, each closed bar exactly once:

- a live bar at or before the last one taken is a duplicate (a router restart republishes) and is
  dropped, counted in ``seen_twice``;
- a live bar that does not follow the last one (a dropped message, a router restart), or the first
  one after a warm-up that found no history, is held back and history is asked for the bars before
  it (:attr:`BarMerge.wanted`); if the router has none, the gap is the market's (a weekend) and the
  bar is taken;
- live bars wait while a history request is outstanding, then follow in time order.

The merge owns no socket: the caller sends :attr:`wanted` as a ``wire.HistoryRequest`` and resends
it when no answer came (a request sent while the router was away is lost with its connection).
"""

from __future__ import annotations

import collections
from typing import NamedTuple

import numpy as np

from osm.core.dtypes import BAR_DTYPE
from osm.core.granularity import OANDA_ALIGNMENT, Alignment, next_open, step_ns


class Wanted(NamedTuple):
    """A history request the merge waits for: the last `count` bars opening before `end_ns`
    (None: up to the last closed one)."""

    count: int
    end_ns: int | None


class BarMerge:
    """The merge state of one (instrument, granularity) series.

    Parameters
    ----------
    granularity
        The series' granularity, to know which open time follows a bar.
    count
        Bars to ask for at warm-up and before a gap.
    alignment
        The router's bar alignment (daily bars).
    """

    def __init__(
        self, granularity: str, count: int, alignment: Alignment = OANDA_ALIGNMENT
    ) -> None:
        self.granularity, self.count, self.alignment = granularity, count, alignment
        self.last_time = -1
        self.warm = False
        self.wanted: Wanted | None = Wanted(count, None)  # warm-up comes first
        self.counters: collections.Counter[str] = collections.Counter()
        self._pending: dict[int, np.void] = {}
        self._gap_checked_until = -1

    def live(self, bars: np.ndarray) -> np.ndarray:
        """Take live closed bars; return the bars now in order (maybe none)."""
        run = self._run_after_last(bars)
        if run is not None:
            return run
        for bar in bars:
            t = int(bar["time"])
            if t > self.last_time:
                self._pending[t] = bar
            else:
                self.counters["seen_twice"] += 1
        return self._advance([])

    def history(self, bars: np.ndarray) -> np.ndarray:
        """Take the answer to :attr:`wanted`; return the bars now in order (maybe none).

        An answer when none is awaited (a retried request answered twice) is ignored.
        """
        if self.wanted is None:
            self.counters["history_stale"] += 1
            return bars[:0]
        end_ns, self.wanted = self.wanted.end_ns, None
        bars = np.sort(bars, order="time")
        if end_ns is not None:
            bars = bars[bars["time"] < end_ns]
            self._gap_checked_until = end_ns
        taken = [bars[bars["time"] > self.last_time]]
        self.counters["history_bars"] += len(taken[0])
        self.warm = True
        if len(taken[0]):
            self.last_time = int(taken[0]["time"][-1])
        return self._advance(taken)

    def _advance(self, taken: list[np.ndarray]) -> np.ndarray:
        """Move pending live bars to `taken` in time order, stopping at a gap until history
        fills it."""
        if self.wanted is None:
            for t in sorted(self._pending):
                bar = self._pending.pop(t)
                if t <= self.last_time:
                    self.counters["seen_twice"] += 1
                    continue
                follows = self.last_time >= 0 and t <= self._expected_next()
                if not follows and t > self._gap_checked_until:
                    self._pending[t] = bar
                    self.counters["gaps"] += 1
                    self.wanted = Wanted(self.count, t)
                    break
                taken.append(np.asarray(bar).reshape(1))
                self.last_time = t
        if not taken:
            return np.empty(0, BAR_DTYPE)
        return np.concatenate(taken).astype(BAR_DTYPE, copy=False)

    def _run_after_last(self, bars: np.ndarray) -> np.ndarray | None:
        """The common case without a per-bar loop: nothing pending or awaited, and `bars`, once
        those already taken are dropped, each follow the one before (a fixed-length granularity).
        Return them taken, or None to go the general way."""
        step = step_ns(self.granularity)
        if self.wanted is not None or self._pending or step is None or self.last_time < 0:
            return None
        times = bars["time"]
        new = times > self.last_time
        fresh = bars if new.all() else bars[new]
        t = fresh["time"]
        if len(t) and not (t[0] - self.last_time <= step and np.all(np.diff(t) == step)):
            return None
        self.counters["seen_twice"] += len(bars) - len(fresh)
        if len(fresh):
            self.last_time = int(t[-1])
        return np.ascontiguousarray(fresh, dtype=BAR_DTYPE)

    def _expected_next(self) -> int:
        return next_open(self.last_time, self.granularity, self.alignment)
