"""Attacks on a running router through real sockets (issue 10), each compared with a clean run.

A replay feeder and the router run as real processes; while the replay is under way the test
attacks the router as an outsider (no token), as a faulty feed of the config (its token, bad
quotes), and at the socket level (garbage, oversized frames and subscriptions). Afterwards both
processes are alive, the bars equal those of the same replay without the attacks, every attack is
counted under a reason that names it, and the router's memory is back within a bound.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq

from osm.core import wire
from osm.core.config import FeedConfig, RouterConfig, SystemConfig
from osm.core.dtypes import as_ticks
from osm.core.granularity import NS
from osm.live.bus import feed_token
from osm.live.feeds.replay import load_ticks
from osm.live.store import BarStore, read_bars
from tests.generated_data import synthetic_ticks, write_csv
from tests.live_helpers import LiveSystem, started_ok, wait_for

GRANULARITIES = ["S5", "M1"]
FUTURE_NS = 4_102_444_800 * NS  # 2100-01-01
MEMORY_BOUND = 64 << 20  # the router's RSS after the attacks, over its RSS before them
RUN_S = 10.0  # the attacked replay is paced over about this long
_HUGE_SUBSCRIBER = """
import os, sys, time, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.connect(sys.argv[1])
sub.setsockopt(zmq.SUBSCRIBE, b"bar." + bytes(50 << 20))
time.sleep(2.0)
os._exit(0)
"""


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory) -> Path:
    ticks = synthetic_ticks("2024-03-05T08:00:00Z", "2024-03-05T10:00:00Z")
    return write_csv(ticks, tmp_path_factory.mktemp("attacks") / "ticks.csv.gz", "ms")


def config(replay_file: Path, speed: float) -> SystemConfig:
    feeds = [
        FeedConfig(name="replay", kind="replay", file=str(replay_file), speed=speed, batch=256),
        # Feeds of the config that the test plays itself, badly: one replays at any speed (its
        # clock is its own), one is paced at real time (its clock is this machine's).
        FeedConfig(name="rogue", instruments=["EUR_USD"], speed=0),
        FeedConfig(name="clocked", instruments=["EUR_USD"], speed=1),
    ]
    return SystemConfig(
        feeds=feeds, router=RouterConfig(granularities=GRANULARITIES), heartbeat_s=0.2
    )


class Attacker:
    """The test's sockets into a running system, and the attacks."""

    def __init__(self, system: LiveSystem) -> None:
        self.system = system
        self.dealer = system.socket(zmq.DEALER, "router_ticks")
        # Subscribed before the replay starts, unbounded: the newest tick is always at hand, even
        # when a loaded machine lets the paced replay run ahead of the test.
        self.ticks = system.socket(zmq.SUB, "router_bars", RCVHWM=0)
        self.ticks.setsockopt(zmq.SUBSCRIBE, b"tick.EUR_USD")
        self.positions = {"rogue": 0, "clocked": 0}

    def as_feed(self, feed: str, ticks: np.ndarray) -> None:
        """Send `ticks` as the next batch of `feed`, a feed of the config the test plays."""
        self.positions[feed] += len(ticks)
        token = feed_token(self.system.rundir, feed)
        message = wire.Ticks.of("EUR_USD", ticks, feed, self.positions[feed], token)
        self.dealer.send_multipart(wire.frames("ticks", message))

    def latest_tick(self) -> np.ndarray:
        """The last tick the router published (waits for one)."""
        last, deadline = None, time.monotonic() + 30
        while True:
            while self.ticks.poll(0):  # drain: the newest is the last one
                last = wire.parse(self.ticks.recv_multipart())[1].array()[-1]
            if last is not None:
                return last
            if not self.ticks.poll(1000) and time.monotonic() > deadline:
                raise TimeoutError("the router published no tick")

    def far_future(self) -> None:
        """One well-formed tick dated 2100 from each faulty feed (it froze the instrument)."""
        last = self.latest_tick()
        future = as_ticks([FUTURE_NS], [last["bid"]], [last["ask"]])
        self.as_feed("rogue", future)
        self.as_feed("clocked", future)

    def spike(self) -> None:
        """A print at 1000.0 between real quotes at 1.1, until one lands after the last one."""
        counters = {}
        for _ in range(50):
            last = self.latest_tick()
            self.as_feed("rogue", as_ticks([int(last["time"]) + 1], [1000.0], [1000.0002]))
            counters = self.system.counters("router")
            if counters.get("rejected.price_spike", 0):
                return
            time.sleep(0.1)
        raise AssertionError(f"no spike landed after the last accepted tick: {counters}")

    def speak_for_the_replay(self) -> None:
        """Batches naming the real feed: position advanced by a million, no or another's token."""
        last = self.latest_tick()
        rows = as_ticks([int(last["time"]) + 1], [last["bid"]], [last["ask"]])
        for token in ("", feed_token(self.system.rundir, "rogue")):
            message = wire.Ticks.of("EUR_USD", rows, "replay", 10**6, token)
            self.dealer.send_multipart(wire.frames("ticks", message))
        # A feed's own token, but a batch longer than it ever sends: its position would jump.
        many = np.repeat(rows, 300)
        token = feed_token(self.system.rundir, "rogue")
        message = wire.Ticks.of("EUR_USD", many, "rogue", 10**6, token)
        self.dealer.send_multipart(wire.frames("ticks", message))

    def unknown_feeds(self, count: int) -> None:
        rows = as_ticks([FUTURE_NS], [1.1], [1.1001])
        for i in range(count):
            message = wire.Ticks.of("EUR_USD", rows, f"feed-{i}", 1, "guess")
            self.dealer.send_multipart(wire.frames("ticks", message))

    def subscriptions(self, count: int) -> None:
        """Many subscriptions no topic matches, then one of 50 MB."""
        rng = np.random.default_rng(1)
        sub = self.system.socket(zmq.SUB, "router_bars")
        for _ in range(count):
            sub.setsockopt(zmq.SUBSCRIBE, rng.bytes(60))
        # In a process of its own: libzmq frees a 50 MB topic recursively, which overflows the
        # stack of the subscriber (the attacker's problem, not the test's), so it leaves by _exit.
        address = self.system.endpoints["router_bars"]
        subprocess.run([sys.executable, "-c", _HUGE_SUBSCRIBER, address], timeout=60, check=True)

    def garbage(self) -> None:
        """Random bytes straight into the ipc sockets, and a 50 MB frame on the ticks socket."""
        rng = np.random.default_rng(2)
        for name in ("router_bars", "router_ticks"):
            for head in (b"", b"\xff" + bytes(8) + b"\x7f"):  # no signature; ZMTP's
                raw = socket.socket(socket.AF_UNIX)
                raw.connect(self.system.endpoints[name].removeprefix("ipc://"))
                raw.settimeout(10)
                try:
                    raw.sendall(head + rng.bytes(50 << 20))
                except OSError:
                    pass  # the router hung up on the garbage: what it should do
                finally:
                    raw.close()
        big = self.system.socket(zmq.DEALER, "router_ticks")
        big.send_multipart([b"ticks", bytes(50 << 20)])
        time.sleep(1.0)
        big.close(linger=0)


WANTED = {
    "rejected.time_jump": 1,  # the 2100 tick of the feed with its own clock
    "rejected.ahead_of_clock": 1,  # the 2100 tick of the feed paced at real time
    "rejected.price_spike": 1,
    "rejected.forged_feed": 2,
    "rejected.seq_jump": 1,
    "rejected.unknown_feed": 20_000,
    "rejected.subscription": 1_000,  # a SUB sends its first 1000 (its high-water mark), no more
    "rejected.malformed": 1,  # random bytes: libzmq reads them as frames of the old ZMTP 1.0
    "rejected.handshake_protocol": 2,  # a ZMTP signature, then garbage
    "peers_disconnected": 1,  # the 50 MB frame and subscription: dropped unread
}


def run(home: Path, replay_file: Path, attack: bool) -> tuple[dict, dict, int]:
    """Replay the file through real processes; return bars, router counters, RSS growth."""
    n = len(load_ticks(replay_file))
    span_s = 2 * 3600
    system = LiveSystem(home, config(replay_file, span_s / RUN_S if attack else 0))
    try:
        router = system.start("router", "router")
        started_ok(system, "router")
        attacker = Attacker(system) if attack else None
        system.start("feeder", "replay")
        growth = 0
        if attacker is not None:
            system.wait_counter("router", "ticks_applied", n // 5, 60)
            rss = psutil.Process(router.pid).memory_info().rss
            attacker.far_future()
            attacker.spike()
            attacker.speak_for_the_replay()
            attacker.unknown_feeds(20_000)
            attacker.subscriptions(10_000)
            attacker.garbage()
        system.wait_counter("replay", "finished", 1, 180)

        def counted() -> dict | None:
            c = system.counters("router")
            missing = [k for k, v in WANTED.items() if attack and c.get(k, 0) < v]
            return c if c.get("ticks_applied") and not missing else None

        try:
            counters = wait_for(counted, 60, "every tick applied and every attack counted")
        except TimeoutError:
            raise AssertionError(f"not every attack counted: {system.counters('router')}") from None
        if attack:
            growth = psutil.Process(router.pid).memory_info().rss - rss
        system.alive("router")
        system.alive("replay")
        assert system.kill("router", 15) == 0
        bars = {g: read_bars(home, "EUR_USD", g) for g in GRANULARITIES}
        store = BarStore(system.rundir.bar_store)
        store.recover()
        store.close()
        counters = {**counters, "feeds_kept": sorted(store.seqs)}
        return bars, counters, growth
    finally:
        system.close()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, replay_file) -> tuple[dict, dict, int]:
    return run(tmp_path_factory.mktemp("osm"), replay_file, attack=False)


def test_attacks_are_refused_counted_and_change_nothing(clean, home, replay_file) -> None:
    bars, counters, growth = run(home, replay_file, attack=True)
    for g in GRANULARITIES:
        assert len(bars[g]) > 50
        np.testing.assert_array_equal(bars[g], clean[0][g], err_msg=g)
    assert counters["ticks_applied"] == clean[1]["ticks_applied"]
    # No state for unknown or forged feed names; the real feed's position is its own.
    assert counters["feeds_kept"] == ["clocked", "replay", "rogue"]
    assert counters.get("batches_gap", 0) == clean[1].get("batches_gap", 0)
    for name, least in WANTED.items():
        assert counters.get(name, 0) >= least, (name, counters.get(name))
    assert growth < MEMORY_BOUND, f"router RSS grew {growth >> 20} MB"


# ---------------------------------------------------------------- the spike defence


def test_a_confirmed_jump_passes_and_a_lone_print_does_not(home) -> None:
    config = SystemConfig(
        feeds=[FeedConfig(name="f", instruments=["EUR_USD"], speed=0)],
        router=RouterConfig(granularities=["M1"]),
        heartbeat_s=0.2,
    )
    system = LiveSystem(home, config)
    try:
        system.start("router", "router")
        started_ok(system, "router")
        attacker = Attacker(system)
        attacker.positions["f"] = 0
        t0 = 1_709_625_600 * NS  # 2024-03-05 08:00 UTC
        seconds = np.arange(600) * NS
        mid = np.full(600, 1.09)
        mid[100] = 1000.0  # a lone bad print, in minute 1
        mid[300:] = 1.11  # a 200-pip jump in minute 5 that the following quotes confirm
        mid[300:] += 1e-5 * (np.arange(300) % 3)
        ticks = as_ticks(t0 + seconds, mid, mid + 1e-4)
        for start in range(0, 600, 50):
            attacker.as_feed("f", ticks[start : start + 50])
        counters = wait_for(
            lambda: (c := system.counters("router")).get("ticks_applied", 0) == 599 and c,
            60,
            "all ticks but the bad print applied",
        )
        assert counters["rejected.price_spike"] == 1
        history = system.socket(zmq.DEALER, "router_history")
        history.send_multipart(wire.frames("history", wire.HistoryRequest("EUR_USD", "M1", 100)))
        assert history.poll(10_000)
        bars = wire.parse(history.recv_multipart())[1].array()
        assert len(bars) == 9  # minutes 0..8 closed, minute 9 forming
        np.testing.assert_allclose(bars["bid_high"][:5], 1.09)  # no 1000.0 in minute 1
        np.testing.assert_allclose(bars["bid_open"][5], 1.11)  # the jump, taken at its quote
        assert bars["ticks"][1] == 59 and bars["ticks"][5] == 60
        system.alive("router")
    finally:
        system.close()
