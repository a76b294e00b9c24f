"""Merge history and live bars of one series into one sequence without gaps or duplicates.

Whoever follows a series (a brain, a chart) subscribes to its live bars first, then asks the
router for history, and feeds both to a :class:`BarMerge`. The merge hands back, in open-time
order, each closed bar exactly once:

- a live bar at or before the last one taken is a duplicate (a router restart republishes) and is
  dropped, counted in ``seen_twice``;
- a live bar that does not follow the last one (a dropped message, a router restart), or the first
  one after a warm-up that found no history, is held back (a bar the router says comes right
  after the one before it, in its message's `previous` or as the next in one message, follows it
  whatever the time between: the gap is the market's) and history is asked for the bars before
  it (:attr:`BarMerge.wanted`: enough to reach back to the last bar taken, at least `count`, at
  most :data:`GAP_MAX_BARS`); if the router has none, the gap is the market's (a weekend) and the
  bar is taken;
- live bars wait while a history request is outstanding, then follow in time order.

A consumer that keeps only the newest `count` bars (a chart: ``only_last=True``) need not wait for
a gap to be filled once `count` newer bars are already waiting behind it: whatever history would
return is older than all of them. The merge then skips ahead instead: it drops the request (a late
answer is stale), keeps the newest `count` waiting bars, counts the older ones it never handed in
:attr:`BarMerge.skipped`, and goes on from there. So a follower that falls behind a router too busy
to answer history (a replay flat out) catches up at once, with bounded work.

The merge owns no socket: the caller sends :attr:`wanted` as a ``wire.HistoryRequest`` and resends
it when no answer came (a request sent while the router was away is lost with its connection).
All work is on whole arrays: no per-bar Python loop for fixed-length granularities, and no
``np.concatenate`` or ``np.sort(order=...)`` of structured arrays (numpy promotes their fields in
Python, a millisecond per few dozen arrays): :func:`join_bars` joins raw bytes instead.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from osm.core.dtypes import BAR_DTYPE
from osm.core.granularity import OANDA_ALIGNMENT, Alignment, next_open, step_ns

GAP_MAX_BARS = 10_000
"""Most bars asked to fill one gap (the request has no start: it returns the last bars before the
gap, so a weekend of S5 bars would otherwise bring back 35,000 bars from before it)."""


class Wanted(NamedTuple):
    """A history request the merge waits for: the last `count` bars opening before `end_ns`
    (None: up to the last closed one)."""

    count: int
    end_ns: int | None


def join_bars(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate BAR_DTYPE arrays into one new, writable, contiguous array.

    ``np.concatenate`` of structured arrays promotes their dtypes pairwise in Python (about
    0.1 ms an array); joining the raw bytes costs a copy.
    """
    parts = [a if a.dtype == BAR_DTYPE else a.astype(BAR_DTYPE) for a in arrays if len(a)]
    if not parts:
        return np.empty(0, BAR_DTYPE)
    return np.frombuffer(bytearray(b"".join(a.tobytes() for a in parts)), BAR_DTYPE)


def _by_time(bars: np.ndarray) -> np.ndarray:
    """`bars` in open-time order (stable), without ``np.sort(order=...)`` (slow on records)."""
    times = bars["time"]
    if len(times) < 2 or np.all(times[1:] >= times[:-1]):
        return bars
    return bars[np.argsort(times, kind="stable")]


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
    only_last
        The consumer keeps only the newest `count` bars: skip ahead over a gap once `count` newer
        bars wait behind it (see the module's docstring).
    """

    def __init__(
        self,
        granularity: str,
        count: int,
        alignment: Alignment = OANDA_ALIGNMENT,
        only_last: bool = False,
    ) -> None:
        self.granularity, self.count, self.alignment = granularity, count, alignment
        self.only_last = only_last
        self.last_time = -1
        self.warm = False
        self.wanted: Wanted | None = Wanted(count, None)  # warm-up comes first
        self.counters: collections.Counter[str] = collections.Counter()
        self.skipped = 0  # bars received but never handed (only_last); the caller resets it
        self._step = step_ns(granularity)
        self._pending = np.empty(0, BAR_DTYPE)  # live bars waiting: by time, unique, > last_time
        self._gap_checked_until = -1
        self._links: dict[int, int] = {}  # waiting bar's time -> the router's bar before it

    def live(self, bars: np.ndarray, previous: int = -1) -> np.ndarray:
        """Take live closed bars, one message's; return the bars now in order (maybe none).

        `previous` is the message's (:class:`osm.core.wire.Bars`): when it is the last bar taken,
        nothing was missed before these, and a gap among them is the market's.
        """
        run = self._run_after_last(bars, previous)
        if run is not None:
            return run
        if previous >= 0 and len(bars):
            times = bars["time"].tolist()
            self._links.update(zip(times, [previous, *times[:-1]], strict=True))
        fresh = bars["time"] > self.last_time
        self.counters["seen_twice"] += int(len(bars) - np.count_nonzero(fresh))
        waiting = _by_time(join_bars([self._pending, bars[fresh]]))
        times = waiting["time"]
        # The same open time twice while waiting: keep the one received last.
        last_of_time = np.append(times[1:] != times[:-1], True)[: len(times)]
        self.counters["seen_twice"] += int(len(times) - np.count_nonzero(last_of_time))
        self._pending = waiting if last_of_time.all() else waiting[last_of_time]
        return self._advance([])

    def history(self, bars: np.ndarray) -> np.ndarray:
        """Take the answer to :attr:`wanted`; return the bars now in order (maybe none).

        An answer when none is awaited (a retried request answered twice) is ignored.
        """
        if self.wanted is None:
            self.counters["history_stale"] += 1
            return bars[:0]
        end_ns, self.wanted = self.wanted.end_ns, None
        bars = _by_time(bars)
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
        fills it (or, with `only_last`, skipping ahead over it)."""
        pending = self._pending
        stale = pending["time"] <= self.last_time
        if stale.any():
            self.counters["seen_twice"] += int(np.count_nonzero(stale))
            pending = pending[~stale]
        if self.wanted is not None and (kept := self._skip_ahead(pending)) is not None:
            pending = kept
            self.wanted = None  # its answer, when it comes, is stale
            self.counters["history_dropped"] += 1
        while self.wanted is None and len(pending):
            times = pending["time"]
            gaps = np.flatnonzero(~self._follows(times) & (times > self._gap_checked_until))
            if not len(gaps):
                taken.append(pending)
                pending = pending[:0]
                break
            k = int(gaps[0])
            if k:
                taken.append(pending[:k])
                self.last_time = int(times[k - 1])
                pending = pending[k:]
            if (kept := self._skip_ahead(pending)) is not None:
                pending = kept  # the next pass takes its first bar
                continue
            self.counters["gaps"] += 1
            self.wanted = Wanted(self._gap_count(int(times[k])), int(times[k]))
        self._pending = pending
        if not len(pending):
            self._links.clear()
        elif len(self._links) > 2 * len(pending):
            first = int(pending["time"][0])
            self._links = {t: p for t, p in self._links.items() if t >= first}
        out = join_bars(taken)
        if len(out):
            self.last_time = int(out["time"][-1])
        return out

    def _skip_ahead(self, pending: np.ndarray) -> np.ndarray | None:
        """With `only_last` and `count` bars or more waiting behind a gap, the newest `count` of
        them, the first taken as checked (no history asked before it) and the older counted as
        skipped; None otherwise."""
        if not (self.only_last and len(pending) >= self.count):
            return None
        dropped = len(pending) - self.count
        self.skipped += dropped
        self.counters["bars_skipped_ahead"] += dropped
        self.counters["skips_ahead"] += 1
        kept = pending[dropped:]
        self._gap_checked_until = max(self._gap_checked_until, int(kept["time"][0]))
        self.warm = True
        return kept

    def _gap_count(self, t: int) -> int:
        """Bars to ask for before `t`: enough to reach back to the last one taken."""
        if self.only_last or self.last_time < 0:
            return self.count
        shortest = self._step or 23 * 3600 * 10**9  # a calendar bar lasts at least 23 hours
        slots = (t - self.last_time) // shortest
        return int(min(max(self.count, slots), GAP_MAX_BARS))

    def _follows(self, times: np.ndarray) -> np.ndarray:
        """Per bar of `times` (ascending, after last_time): does it follow the bar before it
        (the first: the last taken) without a gap?"""
        before = np.concatenate([[self.last_time], times[:-1]])
        if self._step is not None:
            follows = times - before <= self._step
        else:  # calendar bars (weeks, months): a handful, so per bar is fine
            follows = np.array(
                [int(t) <= next_open(int(b), self.granularity, self.alignment)
                 for t, b in zip(times, before, strict=True)], bool,
            )  # fmt: skip
        if self._links:  # what the router says came before a bar
            said = [
                self._links.get(t, -2) == b
                for t, b in zip(times.tolist(), before.tolist(), strict=True)
            ]
            follows |= np.array(said, bool)
        follows[0] &= self.last_time >= 0
        return follows

    def _run_after_last(self, bars: np.ndarray, previous: int) -> np.ndarray | None:
        """The common case at its cheapest: nothing pending or awaited, and `bars`, once those
        already taken are dropped, follow the last one taken: the router says so (`previous`),
        or each follows the one before (a fixed-length granularity). Return them taken, or None
        to go the general way."""
        step = self._step
        if self.wanted is not None or len(self._pending) or self.last_time < 0:
            return None
        times = bars["time"]
        if previous == self.last_time and np.all(np.diff(times, prepend=previous) > 0):
            fresh = bars
        else:
            new = times > self.last_time
            fresh = bars if new.all() else bars[new]
            t = fresh["time"]
            if len(t) and not (
                step is not None and t[0] - self.last_time <= step and np.all(np.diff(t) == step)
            ):
                return None
        self.counters["seen_twice"] += len(bars) - len(fresh)
        if len(fresh):
            self.last_time = int(fresh["time"][-1])
        return np.ascontiguousarray(fresh, dtype=BAR_DTYPE)
