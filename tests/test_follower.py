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
from osm.live.client import Client, _Held
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


def test_merge_fast_path_matches_the_bar_by_bar_way(monkeypatch):
    """Chunks of in-order bars (with repeats, gaps and disorder mixed in) give the same bars and
    counters whether or not the vectorised run-after-last path is taken."""
    rng = np.random.default_rng(7)
    chunks, m = [], 0
    for _ in range(200):
        n = int(rng.integers(0, 6))
        chunk = list(range(m + 1, m + 1 + n))
        if rng.random() < 0.2 and m > 2:
            chunk = [m - 1, m, *chunk]  # a republished bar
        if rng.random() < 0.1:
            chunk = [*chunk, chunk[-1] + 3] if chunk else [m + 4]  # a gap
        if rng.random() < 0.05:
            chunk = chunk[::-1]
        m = max([m, *chunk])
        chunks.append(chunk)

    def run(fast: bool) -> tuple[list[int], dict]:
        merge = BarMerge("M1", 4)
        if not fast:
            monkeypatch.setattr(merge, "_run_after_last", lambda bars: None)
        out = minutes(merge.history(bars_at(0)))
        for chunk in chunks:
            out += minutes(merge.live(bars_at(*chunk)))
            if merge.wanted is not None:
                end = merge.wanted.end_ns
                before = [k for k in range(m + 10) if T0 + k * M1 < end][-4:]
                out += minutes(merge.history(bars_at(*before)))
        return out, dict(merge.counters)

    fast, slow = run(True), run(False)
    assert fast == slow
    assert fast[0] == sorted(set(fast[0])) and len(fast[0]) > 300


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
