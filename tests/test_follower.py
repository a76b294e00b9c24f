"""The follower: history and live bars merged into every closed bar exactly once, in order, even
across a kill -9 of the router; the merge on its own against hand-made sequences; stop and close
never hang."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from osm.core.dtypes import empty_bars
from osm.core.granularity import NS
from osm.live.client import Client, _Held, poll_ms
from osm.live.follow import BarMerge, Wanted
from tests.live_helpers import wait_for
from tests.system_helpers import process, running_system

M1 = 60 * NS
T0 = 1_709_625_600 * NS  # 2024-03-05 08:00 UTC, a Tuesday


def bars_at(*minutes: int) -> np.ndarray:
    bars = empty_bars(len(minutes))
    bars["time"] = [T0 + m * M1 for m in minutes]
    bars["bid_close"] = np.array(minutes, float)
    bars["complete"] = True
    return bars


def minutes(bars: np.ndarray) -> list[int]:
    return [int((t - T0) // M1) for t in bars["time"]]


# -- the merge, on hand-made sequences -------------------------------------------------------


def test_merge_takes_history_then_live_bars_without_duplicates():
    merge = BarMerge("M1", 10)
    assert merge.wanted == Wanted(10, None)
    assert minutes(merge.live(bars_at(5, 6))) == []  # held until history answers
    assert minutes(merge.history(bars_at(3, 4, 5))) == [3, 4, 5, 6]
    assert minutes(merge.live(bars_at(6, 7))) == [7]
    assert merge.counters["seen_twice"] == 2  # 5 once from history, 6 again live


def test_merge_asks_history_for_a_gap_and_takes_a_market_gap():
    merge = BarMerge("M1", 10)
    merge.history(bars_at(1, 2))
    assert minutes(merge.live(bars_at(5))) == []
    assert merge.wanted == Wanted(10, T0 + 5 * M1)
    assert minutes(merge.live(bars_at(6))) == []  # waits behind the gap
    assert minutes(merge.history(bars_at(1, 2, 3, 4))) == [3, 4, 5, 6]
    # A gap the router has no bars for (a weekend) is the market's: the bar is taken.
    assert minutes(merge.live(bars_at(100))) == []
    assert minutes(merge.history(bars_at(5, 6))) == [100]
    assert merge.counters["gaps"] == 2


def test_merge_after_empty_history_checks_the_first_live_bar():
    merge = BarMerge("M1", 10)
    assert minutes(merge.history(bars_at())) == []
    assert minutes(merge.live(bars_at(8))) == []
    assert merge.wanted == Wanted(10, T0 + 8 * M1)
    assert minutes(merge.history(bars_at(6, 7))) == [6, 7, 8]


def test_merge_ignores_a_second_answer_to_a_retried_request():
    merge = BarMerge("M1", 10)
    merge.history(bars_at(1))
    assert minutes(merge.history(bars_at(1, 2))) == []
    assert merge.counters["history_stale"] == 1


# -- against a running system ----------------------------------------------------------------


@pytest.fixture
def system(home):
    yield from running_system(home)


def follow_all(client: Client, count: int) -> tuple[list[np.ndarray], object]:
    got: list[np.ndarray] = []
    lock = threading.Lock()

    def sink(batch):
        with lock:
            got.append(batch.bars.copy())

    follower = client.follow("EUR_USD", "M1", count=count, sink=sink, hz=20)
    return got, follower


def test_follower_delivers_every_bar_once_across_a_router_kill(home, system):
    system("--speed", "120", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1")
    with Client(home) as client:
        wait_for(lambda: len(client.bars("EUR_USD", "M1", 5)) >= 3, 60, "three closed bars")
        got, follower = follow_all(client, count=3)

        def seen() -> int:
            return sum(len(b) for b in got)

        wait_for(lambda: seen() >= 8, 60, "bars through the follower")
        victim = process(home, "router")
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(
            lambda: (
                (p := process(home, "router"))["state"] == "running" and p["pid"] != victim["pid"]
            ),
            60,
            "the router restarted",
        )
        after = seen()
        wait_for(lambda: seen() >= after + 8, 60, "bars after the restart")
        follower.stop()
        assert not follower.is_alive()
        followed = np.concatenate(got)
        stored = client.bars("EUR_USD", "M1", 10_000)
    times = followed["time"]
    assert np.all(np.diff(times) > 0), "a bar came twice or out of order"
    # Every bar the router holds between the first and last followed, and only those, with the
    # same values: no gap, no duplicate, no forming bar taken for a closed one.
    expected = stored[(stored["time"] >= times[0]) & (stored["time"] <= times[-1])]
    assert len(expected) >= 16
    np.testing.assert_array_equal(followed, expected)
    assert follower.merge.counters["history_bars"] >= 3


def test_follower_hands_forming_bars_and_fills_and_stops_on_close(home, system):
    system("--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1")
    client = Client(home)
    follower = client.follow("EUR_USD", "M1", count=5, hz=10)
    forming = fills = positions = None
    deadline = time.monotonic() + 60
    reply = client.order("EUR_USD", 1000)
    assert reply.accepted, reply.reason
    while time.monotonic() < deadline and not (forming is not None and fills and positions):
        batch = follower.get(1.0)
        if batch is None:
            continue
        if len(batch.forming):
            forming = batch.forming
            assert int(forming["time"][0]) > follower.merge.last_time - 1
        fills = fills or [f for f in batch.fills if f.client_id == reply.client_id]
        positions = positions or [p for p in batch.positions if p.instrument == "EUR_USD"]
    assert forming is not None and not forming["complete"][0]
    assert fills and fills[0].units == 1000
    assert positions
    started = time.monotonic()
    client.close()  # stops the follower, never hangs
    assert time.monotonic() - started < 5
    assert not follower.is_alive()


def test_close_never_hangs_on_a_forgotten_subscription(home, system):
    system("--speed", "60", "--granularities", "M1")
    client = Client(home)
    client.subscribe("router_bars", ["bar."])  # never closed by its owner
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 2


def test_follow_without_a_system_says_how_to_start_one(home):
    from osm.core.errors import SystemNotRunning

    with Client(home) as client, pytest.raises(SystemNotRunning, match="osm up"):
        client.follow("EUR_USD", "M1")
    assert not [t for t in threading.enumerate() if t.name.startswith("osm-follow")]


class OracleMerge:
    """The merge's rules bar by bar, in plain Python (M1: every minute follows the one before)."""

    def __init__(self, count: int) -> None:
        self.count, self.last, self.checked = count, -1, -1
        self.wanted: tuple[int, int | None] | None = (count, None)
        self.pending: dict[int, int] = {}
        self.counters = {"seen_twice": 0, "gaps": 0, "history_bars": 0}

    def live(self, ms: list[int]) -> list[int]:
        for t in ms:
            if t <= self.last or t in self.pending:
                self.counters["seen_twice"] += 1
            else:
                self.pending[t] = t
        return self.advance([])

    def history(self, ms: list[int]) -> list[int]:
        end, self.wanted = self.wanted[1], None
        ms = sorted(t for t in ms if end is None or t < end)
        if end is not None:
            self.checked = end
        taken = [t for t in ms if t > self.last]
        self.counters["history_bars"] += len(taken)
        self.last = taken[-1] if taken else self.last
        return self.advance(taken)

    def advance(self, taken: list[int]) -> list[int]:
        if self.wanted is None:
            for t in sorted(self.pending):
                del self.pending[t]
                if t <= self.last:
                    self.counters["seen_twice"] += 1
                    continue
                if not (self.last >= 0 and t <= self.last + 1) and t > self.checked:
                    self.pending[t] = t
                    self.counters["gaps"] += 1
                    gap = self.count if self.last < 0 else max(self.count, t - self.last)
                    self.wanted = (gap, t)
                    break
                taken.append(t)
                self.last = t
        return taken


def random_chunks(seed: int, n: int = 200) -> tuple[list[list[int]], int]:
    """Live minutes as a router might send them: in order mostly, with republished bars, jumps
    over dropped bars (never sent live again), reversed chunks."""
    rng = np.random.default_rng(seed)
    chunks, m = [], 0
    for _ in range(n):
        k = int(rng.integers(0, 6))
        chunk = list(range(m + 1, m + 1 + k))
        if rng.random() < 0.2 and m > 2:
            chunk = [m - 1, m, *chunk]  # a republished bar
        if rng.random() < 0.1:
            chunk = [*chunk, chunk[-1] + 3] if chunk else [m + 4]  # a gap
        if rng.random() < 0.05:
            chunk = chunk[::-1]
        m = max([m, *chunk])
        chunks.append(chunk)
    return chunks, m


def answer(wanted: Wanted, upto: int) -> np.ndarray:
    """The router's answer from a complete series of minutes 0..upto."""
    end = upto + 1 if wanted.end_ns is None else (wanted.end_ns - T0) // M1
    return bars_at(*range(max(0, end - wanted.count), end))


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_merge_matches_the_bar_by_bar_oracle(monkeypatch, seed):
    """Chunks of in-order bars (with repeats, gaps and disorder mixed in) give the oracle's bars
    and counters, with or without the vectorised run-after-last path; every minute once."""
    chunks, m = random_chunks(seed)

    def run(merge) -> tuple[list[int], dict]:
        out = list(merge.history([0]) if isinstance(merge, OracleMerge) else [])
        if not isinstance(merge, OracleMerge):
            out = minutes(merge.history(bars_at(0)))
        for chunk in chunks:
            if isinstance(merge, OracleMerge):
                out += merge.live(chunk)
                if merge.wanted is not None:
                    count, end = merge.wanted
                    out += merge.history(list(range(max(0, end - count), end)))
                continue
            out += minutes(merge.live(bars_at(*chunk)))
            if merge.wanted is not None:
                out += minutes(merge.history(answer(merge.wanted, m)))
        return out, {k: merge.counters[k] for k in ("seen_twice", "gaps", "history_bars")}

    fast = run(BarMerge("M1", 4))
    slow_merge = BarMerge("M1", 4)
    monkeypatch.setattr(slow_merge, "_run_after_last", lambda bars, previous: None)
    assert fast == run(slow_merge) == run(OracleMerge(4))
    # The gap requests reach back to the last bar taken: no minute is missing.
    assert fast[0] == list(range(fast[0][-1] + 1)) and len(fast[0]) > 300


@pytest.mark.parametrize("fast", [True, False])
def test_bars_the_router_says_follow_need_no_history_over_minutes_the_market_skipped(
    monkeypatch, fast
):
    """A message's `previous` (the router's bar before its first) and the order within it say
    which bars follow: minutes without a bar are no gap then; a message lost in between is."""
    merge = BarMerge("M1", 4)
    if not fast:
        monkeypatch.setattr(merge, "_run_after_last", lambda bars, previous: None)
    assert minutes(merge.history(bars_at(0, 1))) == [0, 1]
    assert minutes(merge.live(bars_at(3, 7), T0 + 1 * M1)) == [3, 7]
    assert merge.wanted is None
    assert minutes(merge.live(bars_at(12, 15), T0 + 10 * M1)) == []  # 9 and 10 were lost
    assert merge.wanted is not None and merge.wanted.end_ns == T0 + 12 * M1
    assert minutes(merge.live(bars_at(20), T0 + 15 * M1)) == []  # waits behind the gap
    assert minutes(merge.history(bars_at(7, 9, 10))) == [9, 10, 12, 15, 20]
    assert merge.counters["gaps"] == 1
    assert minutes(merge.live(bars_at(22), T0 + 20 * M1)) == [22]
    assert minutes(merge.live(bars_at(25))) == []  # no `previous` said: asked as before
    assert merge.counters["gaps"] == 2


def test_only_last_skips_a_gap_once_count_bars_wait_behind_it():
    merge = BarMerge("M1", 5, only_last=True)
    assert minutes(merge.history(bars_at(0, 1))) == [0, 1]
    assert minutes(merge.live(bars_at(4))) == []
    assert merge.wanted == Wanted(5, T0 + 4 * M1)  # only_last asks no more than count
    assert minutes(merge.live(bars_at(5, 6, 7))) == []  # four wait: history could still matter
    # Six wait: whatever history says is older than the newest five; skip ahead to them.
    assert minutes(merge.live(bars_at(8, 9))) == [5, 6, 7, 8, 9]
    assert merge.wanted is None and merge.skipped == 1
    assert merge.counters["history_dropped"] == 1 and merge.counters["skips_ahead"] == 1
    assert minutes(merge.history(bars_at(2, 3))) == []  # the late answer is stale
    assert merge.counters["history_stale"] == 1
    assert minutes(merge.live(bars_at(10))) == [10]
    # Without only_last the same sequence waits for history and fills the gap.
    merge = BarMerge("M1", 5)
    merge.history(bars_at(0, 1))
    for ms in ((4,), (5, 6, 7), (8, 9)):
        assert minutes(merge.live(bars_at(*ms))) == []
    assert minutes(merge.history(bars_at(2, 3))) == [2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_only_last_hands_the_newest_count_bars_once_in_order_under_a_slow_router(seed):
    """History answers come late (a saturated router) or never: the merge skips ahead, yet each
    bar is handed at most once, in order, and whenever it waits for nothing the newest `count`
    handed are the series' last `count` up to the newest, exactly; every live bar is handed,
    skipped (counted) or still pending."""
    count = 6
    chunks, m = random_chunks(seed, 400)
    rng = np.random.default_rng(seed)
    merge = BarMerge("M1", count, only_last=True)
    handed: list[int] = []
    received: set[int] = set()
    skipped = 0
    delay = 0
    for chunk in chunks:
        received.update(chunk)
        handed += minutes(merge.live(bars_at(*chunk)))
        if merge.wanted is not None:
            delay = delay or int(rng.integers(1, 8))  # chunks until the router answers
            delay -= 1
            if delay == 0:
                handed += minutes(merge.history(answer(merge.wanted, m)))
        skipped += merge.skipped
        merge.skipped = 0
        assert handed == sorted(set(handed)), "a bar came twice or out of order"
        if merge.wanted is None and len(handed) >= count:
            assert handed[-count:] == list(range(handed[-1] - count + 1, handed[-1] + 1))
    pending = set(minutes(merge._pending))
    # The bars skipped are exactly the live bars neither handed nor waiting, each counted once.
    assert skipped == len(received - set(handed) - pending) > 0
    assert skipped == merge.counters["bars_skipped_ahead"]
    assert merge.counters["skips_ahead"] > 0 and len(handed) > 300


def test_held_bars_stay_bounded_and_count_what_they_skip():
    held = _Held(5)
    for m in range(0, 40, 3):
        held.add_bars(bars_at(m, m + 1, m + 2))
    assert held.held == 6  # whole arrays dropped once the newer ones hold 5
    batch = held.take(-1, lambda parts: ("", None))
    assert minutes(batch.bars) == [36, 37, 38, 39, 40, 41]
    assert batch.skipped == 42 - 6
    held.add_bars(bars_at(*range(50, 60)))  # one piece of the merge is never cut
    assert minutes(held.take(-1, lambda parts: ("", None)).bars) == list(range(50, 60))
    assert not held and not held.take(-1, lambda parts: ("", None))


def test_poll_timeout_rounds_a_short_wait_up_not_to_zero():
    # A timeout of 0 returns at once: the follower would spin until its deadline.
    assert [poll_ms(s) for s in (0.0, 0.0004, 0.001, 0.0101, 2.0)] == [0, 1, 1, 11, 2000]


def test_a_flood_is_read_about_twice_per_hand_over(home, system):
    # Flat out the router publishes thousands of bar messages a second; the follower hands 10
    # batches a second. Reading the subscription every DRAIN_GAP_S (10 ms) woke the thread
    # about five times per batch; what is read between two hand-overs only waits for the next.
    system("--speed", "0", "--start", "2024-03-05T00:00:00Z", "--granularities", "S5")
    with Client(home) as client:
        got: list[np.ndarray] = []
        follower = client.follow(
            "EUR_USD", "S5", count=500, sink=lambda b: got.append(b.bars.copy()), hz=10,
            only_last=True,
        )  # fmt: skip
        wait_for(lambda: follower.batches_sent >= 30, 60, "30 batches from a flood")
        follower.stop()
    assert follower.error is None
    times = np.concatenate(got)["time"]
    assert np.all(np.diff(times) > 0), "a bar came twice or out of order"
    assert sum(len(b) for b in got) > 3_000, "not a flood: the test shows nothing"
    assert follower.drains <= 3 * follower.batches_sent
