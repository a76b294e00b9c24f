"""The brain as a real process: warm-up from history, one target per closed bar, safe restarts.

The test stands in for the router (an XPUB at ``router_bars`` and a ROUTER at ``router_history``)
and, in the first test, for the trader (a ROUTER at ``trader_orders``).
"""

from __future__ import annotations

import logging
import re
import signal
import sqlite3
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from osm.core import wire
from osm.core.config import BrainConfig, SystemConfig, TraderConfig
from osm.core.dtypes import as_ticks, empty_bars
from osm.live.brain import TARGET_RETRY_S
from osm.live.service import RepeatFilter
from tests.live_helpers import LiveSystem, wait_for
from tests.strategies_for_tests import Alternate

ROOT = Path(__file__).resolve().parents[1]
S = 1_000_000_000
M1 = 60 * S
T0 = 1_400_000_040 * S - (1_400_000_040 * S) % M1
TIMEOUT = 30.0
WINDOW = 20
PARAMS = {"every": 1, "warmup": 5}  # a new target each bar: every decision is sent


def make_bars(n: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    bars = empty_bars(n)
    bars["time"] = T0 + np.arange(n) * M1
    mid = 1.3 + np.cumsum(rng.normal(0, 2e-4, 2 * n)).reshape(n, 2)
    bars["bid_open"], bars["ask_open"] = mid[:, 0] - 1e-4, mid[:, 0] + 1e-4
    bars["bid_close"], bars["ask_close"] = mid[:, 1] - 1e-4, mid[:, 1] + 1e-4
    for side in ("bid", "ask"):
        o, c = bars[f"{side}_open"], bars[f"{side}_close"]
        bars[f"{side}_high"], bars[f"{side}_low"] = np.maximum(o, c), np.minimum(o, c)
    bars["ticks"], bars["complete"] = 2, True
    return bars


BARS = make_bars(60)


def expected_units(merged: list[int], params: dict = PARAMS) -> int:
    """The target the brain must send after the bars with these indices, from its window."""
    window = BARS[merged[-WINDOW:]]
    target = Alternate(**params).targets(window)[-1]
    return 0 if np.isnan(target) else round(target * 1000)


class Router:
    """The test's stand-in router: bars and quotes out, history answered by hand."""

    def __init__(self, system: LiveSystem) -> None:
        self.system = system
        self.pub = system.bind(zmq.XPUB, "router_bars")
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.history = system.bind(zmq.ROUTER, "router_history")
        self.decided: list[wire.Decided] = []

    def wait_subscription(self, topic: str, process: str) -> None:
        def seen() -> bool:
            self.system.alive(process)
            while self.pub.poll(50):
                if self.pub.recv() == b"\x01" + topic.encode():
                    return True
            return False

        wait_for(seen, TIMEOUT, f"{process} subscribing to {topic}")

    def bar(self, i: int) -> None:
        self.bars(i, i + 1)

    def bars(self, i: int, j: int, previous: int | None = None) -> None:
        """Bars i to j - 1 in one message; `previous`: the index the router says came before."""
        said = -1 if previous is None else int(BARS["time"][previous])
        message = wire.Bars.of("EUR_USD", "M1", BARS[i:j], said)
        self.pub.send_multipart(wire.frames("bar.EUR_USD.M1", message))

    def quotes(self, i: int) -> None:
        """Bar i as two quotes: its open at its open time, its close 30 s later."""
        b = BARS[i]
        ticks = as_ticks(
            np.array([b["time"], b["time"] + 30 * S]),
            np.array([b["bid_open"], b["bid_close"]]),
            np.array([b["ask_open"], b["ask_close"]]),
        )
        self.pub.send_multipart(wire.frames("tick.EUR_USD", wire.Ticks.of("EUR_USD", ticks)))

    def request(self, process: str) -> tuple[list[bytes], wire.HistoryRequest]:
        """The next history request and its envelope (identity and tag), echoed in the answer;
        what the brain tells of its progress meanwhile is kept in `decided`."""
        while True:
            wait_for(
                lambda: self.system.alive(process) or self.history.poll(50),
                TIMEOUT,
                "history request",
            )
            *envelope, _, payload = self.history.recv_multipart()
            request = wire.decode(payload)
            if not isinstance(request, wire.Decided):
                break
            self.decided.append(request)
        assert isinstance(request, wire.HistoryRequest)
        return envelope, request

    def drain_decided(self) -> list[wire.Decided]:
        """What the brain told of its progress since the last look (kept in `decided` too)."""
        told = []
        while self.history.poll(0):
            told.append(wire.decode(self.history.recv_multipart()[-1]))
        self.decided.extend(told)
        return told

    def answer(self, envelope: list[bytes], indices: list[int]) -> None:
        message = wire.Bars.of("EUR_USD", "M1", BARS[indices])
        self.history.send_multipart([*envelope, *wire.frames("history", message)])


def system_for(
    home: Path, monkeypatch, params: dict = PARAMS, stop_loss: float | None = None
) -> LiveSystem:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the brain imports tests.strategies_for_tests
    brain = BrainConfig(
        name="b1", strategy="tests.strategies_for_tests:Alternate", params=params,
        instrument="EUR_USD", granularity="M1", size=1000, window=WINDOW, stop_loss=stop_loss,
    )  # fmt: skip
    return LiveSystem(home, SystemConfig(feeds=[], brains=[brain], trader=TraderConfig()))


@pytest.fixture
def system(home, monkeypatch):
    live = system_for(home, monkeypatch)
    yield live
    live.close()


def test_warm_up_merges_live_and_history_and_decides_once_per_bar(system):
    router = Router(system)
    trader = system.bind(zmq.ROUTER, "trader_orders")

    def target() -> wire.Target:
        wait_for(lambda: system.alive("b1") or trader.poll(50), TIMEOUT, "a target")
        peer, topic, payload = trader.recv_multipart()
        message = wire.decode(payload)
        assert topic == b"target" and isinstance(message, wire.Target)
        reply = wire.OrderReply(message.client_id, True, units=message.units)
        trader.send_multipart([peer, *wire.frames("order_reply", reply)])
        return message

    previous = [""]

    def expect(merged: list[int]) -> None:
        i = merged[-1]
        got = target()
        # Named when sent before the one before was answered: the answers here are immediate.
        assert got.previous_id in ("", previous[0])
        previous[0] = got.client_id
        assert msgspec.structs.replace(got, previous_id="") == wire.Target(
            "b1",
            "EUR_USD",
            expected_units(merged),
            f"b1-{BARS['time'][i]}",
            int(BARS["time"][i + 1]),
        )

    system.start("brain", "b1")
    router.wait_subscription("bar.EUR_USD.M1", "b1")
    identity, request = router.request("b1")
    assert request == wire.HistoryRequest("EUR_USD", "M1", WINDOW, None)
    router.bar(41)  # closes before the history answer: buffered, then merged once
    router.answer(identity, list(range(10, 42)))  # overlaps the live bar
    expect(list(range(10, 42)))  # warm-up decides on the last bar it has
    merged = list(range(10, 42))
    for i in (42, 43):
        router.bar(i)
        merged.append(i)
        expect(merged)
    router.bar(43)  # seen twice: no second decision

    router.bar(46)  # 44 and 45 missing: the brain asks for them
    identity, request = router.request("b1")
    assert request == wire.HistoryRequest("EUR_USD", "M1", WINDOW, int(BARS["time"][46]))
    router.answer(identity, list(range(30, 46)))
    for i in (44, 45, 46):
        merged.append(i)
        expect(merged)

    router.bar(49)  # a gap the router cannot fill (a weekend): taken as it is
    identity, request = router.request("b1")
    assert request.end_ns == int(BARS["time"][49])
    router.answer(identity, [])
    merged.append(49)
    expect(merged)
    router.bar(50)
    merged.append(50)
    expect(merged)  # and nothing else came in between
    router.bars(
        51, 57, previous=50
    )  # six bars in one message (a replay's burst): one decision each
    for i in range(51, 57):
        merged.append(i)
        expect(merged)
    counters = system.wait_counter("b1", "targets", 14, TIMEOUT)
    assert counters["targets"] == 14 and counters["gaps"] == 2
    assert counters["seen_twice"] == 2  # live 41 once more after history, and 43


def test_targets_lost_with_the_trader_are_resent_in_bar_order_with_their_ids(system):
    router = Router(system)
    trader = system.bind(zmq.ROUTER, "trader_orders")

    def receive() -> tuple[bytes, wire.Target]:
        wait_for(lambda: system.alive("b1") or trader.poll(50), TIMEOUT, "a target")
        peer, _, payload = trader.recv_multipart()
        return peer, wire.decode(payload)

    def answer(peer: bytes, target: wire.Target, code: str = "") -> None:
        reply = wire.OrderReply(target.client_id, not code, code=code)
        trader.send_multipart([peer, *wire.frames("order_reply", reply)])

    system.start("brain", "b1")
    router.wait_subscription("bar.EUR_USD.M1", "b1")
    identity, _ = router.request("b1")
    router.answer(identity, list(range(0, 20)))
    _, lost = receive()  # read and never answered: the trader died with it
    router.bar(20)
    router.bar(21)
    sent = [lost, receive()[1], receive()[1]]  # sent without waiting for an answer
    assert [t.client_id for t in sent] == [f"b1-{BARS['time'][i]}" for i in (19, 20, 21)]
    # Each names the one before: the trader journals none before it.
    assert [t.previous_id for t in sent] == ["", sent[0].client_id, sent[1].client_id]
    peer, probe = receive()  # no answer within TARGET_RETRY_S: the oldest alone again
    assert probe == lost
    router.bar(22)  # decided, and held back while the probe waits
    assert not trader.poll(500)
    answer(peer, probe)
    peer, second = receive()  # then the rest, the oldest unanswered naming none
    rest = [receive()[1], receive()[1]]
    assert (second.client_id, second.previous_id) == (sent[1].client_id, "")
    assert rest[0] == sent[2]
    assert (rest[1].client_id, rest[1].previous_id) == (f"b1-{BARS['time'][22]}", rest[0].client_id)
    answer(peer, second, "out_of_order")  # what it named was lost: all again, from it
    again = [receive()[1] for _ in range(3)]
    assert again == [second, *rest]
    for target in [*rest, *again]:  # the first two: to copies, answered late
        answer(peer, target)
    assert not trader.poll(int((TARGET_RETRY_S + 1) * 1000))  # all answered: nothing resent
    counters = system.wait_counter("b1", "accepted", 4, TIMEOUT)
    assert counters["targets"] == 4 and counters["target_retries"] == 1
    assert counters["resent_in_order"] == 1 and counters["replies_late"] == 2
    # The router hears how far the trader has answered: up to the close of bar 22.
    router.drain_decided()
    assert router.decided[-1] == wire.Decided("EUR_USD", "M1", int(BARS["time"][22]) + M1)


@pytest.mark.parametrize("stop_loss", [None, 0.002])
def test_a_decision_that_repeats_the_last_target_is_sent_only_at_the_end_of_a_burst(
    home, monkeypatch, stop_loss
):
    """Without stops the trader already holds or works a repeated target: it is not sent (in a
    flat-out replay most decisions repeat the last), unless it is the last of the bars that came
    together, and the router hears it decided all the same. With a stop-loss or take-profit the
    position can leave the target between decisions: every decision is sent."""
    params = {"every": 3, "warmup": 5}
    system = system_for(home, monkeypatch, params, stop_loss)
    try:
        router = Router(system)
        trader = system.bind(zmq.ROUTER, "trader_orders")

        def answered() -> list[str]:
            """The client ids of the targets received until none comes for 0.5 s, answered."""
            ids = []
            while trader.poll(500):
                peer, _, payload = trader.recv_multipart()
                target = wire.decode(payload)
                ids.append(target.client_id)
                reply = wire.OrderReply(target.client_id, True, units=target.units)
                trader.send_multipart([peer, *wire.frames("order_reply", reply)])
            return ids

        def units(i: int) -> int:
            return expected_units(list(range(i - WINDOW + 1, i + 1)), params)

        system.start("brain", "b1")
        router.wait_subscription("bar.EUR_USD.M1", "b1")
        identity, _ = router.request("b1")
        router.answer(identity, list(range(0, 20)))  # the warm-up decides bar 19: sent
        router.bars(20, 29, previous=19)  # one burst
        changed = [i for i in range(20, 29) if units(i) != units(i - 1)]
        assert 2 <= len(changed) < 8 and 28 not in changed  # most repeat, the last too
        sent = list(range(19, 29)) if stop_loss else [19, *changed, 28]
        assert answered() == [f"b1-{BARS['time'][i]}" for i in sent]
        wait_for(
            lambda: any(
                d.until_ns == int(BARS["time"][28]) + M1
                for d in [*router.decided, *router.drain_decided()]
            ),
            TIMEOUT,
            "the router told bar 28 is decided",
        )
        assert units(29) == units(28)
        router.bar(29)  # a repeat, alone in its message: sent
        assert answered() == [f"b1-{BARS['time'][29]}"]
        counters = system.wait_counter("b1", "accepted", len(sent) + 1, TIMEOUT)
        assert counters["decisions"] == 11 and counters["targets"] == len(sent) + 1
        assert counters.get("targets_unchanged", 0) == 10 - len(sent)
    finally:
        system.close()


def trader_journal(system: LiveSystem) -> tuple[list, list]:
    with sqlite3.connect(system.rundir.home / "db" / "trader.sqlite") as db:
        orders = db.execute("SELECT client_id, status FROM orders ORDER BY seq").fetchall()
        fills = db.execute("SELECT time_ns, units, price FROM fills ORDER BY seq").fetchall()
    return orders, fills


def test_with_a_real_trader_restart_does_not_duplicate_and_fills_match_backtest(system):
    from osm.research.nb import FILL_DTYPE, backtest_nb

    router = Router(system)
    commands = system.socket(zmq.DEALER, "trader_orders")

    def trader(name: str) -> dict:
        commands.send_multipart(wire.frames("command", wire.Command(name)))
        wait_for(lambda: system.alive("trader") or commands.poll(50), TIMEOUT, "trader reply")
        return wire.parse(commands.recv_multipart())[1].data

    def journaled(last: int) -> bool:
        system.alive("b1")
        orders, _ = trader_journal(system)
        return any(cid == f"b1-{BARS['time'][last]}" for cid, _ in orders)

    system.start("trader", "trader")
    router.wait_subscription("tick.", "trader")
    assert trader("status")["name"] == "trader"  # its journal exists from here on
    system.start("brain", "b1")
    router.wait_subscription("bar.EUR_USD.M1", "b1")
    identity, _ = router.request("b1")
    router.answer(identity, list(range(0, 30)))
    for i in range(30, 40):
        router.quotes(i)
        router.bar(i)
    wait_for(lambda: journaled(39), TIMEOUT, "the target of bar 39 in the journal")

    system.kill("b1")
    system.start("brain", "b1")
    router.wait_subscription("bar.EUR_USD.M1", "b1")
    identity, _ = router.request("b1")
    router.answer(identity, list(range(0, 40)))  # the restarted brain resends bar 39's target
    wait_for(
        lambda: trader("status")["counters"].get("rejected.duplicate") == 1,
        TIMEOUT,
        "the resent target refused as a duplicate",
    )
    for i in range(40, 45):
        router.quotes(i)
        router.bar(i)
    router.quotes(45)
    wait_for(lambda: journaled(44), TIMEOUT, "the target of bar 44 in the journal")
    wait_for(lambda: trader("status")["open_orders"] == 0, TIMEOUT, "every target filled")

    orders, fills = trader_journal(system)
    assert [cid for cid, _ in orders] == [f"b1-{t}" for t in BARS["time"][29:45]]
    assert trader("status")["counters"]["rejected.duplicate"] == 1

    # The same strategy in the backtest, from flat at bar 29, fills the same bars, units, prices.
    span = BARS[29:46]
    target = np.array([expected_units(list(range(i - WINDOW + 1, i + 1))) for i in range(29, 46)])
    equity, expected = np.zeros(len(span)), np.zeros(len(span), dtype=FILL_DTYPE)
    count = backtest_nb(
        span["bid_open"], span["ask_open"], span["bid_close"], span["ask_close"],
        target.astype(float), 0.0, 0.0, 0.0, equity, expected,
    )  # fmt: skip
    want = [(int(span["time"][r["bar"]]), int(r["units"]), r["price"]) for r in expected[:count]]
    assert len(want) >= 3
    assert fills == want


def test_a_brain_whose_every_target_is_refused_logs_it_once_with_a_count(system):
    router = Router(system)
    trader = system.bind(zmq.ROUTER, "trader_orders")
    system.start("brain", "b1")
    router.wait_subscription("bar.EUR_USD.M1", "b1")
    identity, _ = router.request("b1")
    router.answer(identity, list(range(0, 20)))
    for i in range(20, 60):
        router.bar(i)
    for _ in range(41):  # the warm-up decision on bar 19, then one per bar
        wait_for(lambda: system.alive("b1") or trader.poll(50), TIMEOUT, "a target")
        peer, _, payload = trader.recv_multipart()
        target = wire.decode(payload)
        reply = wire.OrderReply(target.client_id, False, "trading is halted (a test)")
        trader.send_multipart([peer, *wire.frames("order_reply", reply)])
    system.wait_counter("b1", "refused", 41, TIMEOUT)
    assert system.kill("b1", signal.SIGTERM) == 0  # a clean stop logs the repeats held back

    lines = [
        line
        for line in (system.rundir.logs / "b1.log").read_text().splitlines()
        if "refused: trading is halted (a test)" in line
    ]
    # Each line stands for itself and the repeats it counts, or (the last) for the repeats only.
    suffix = r"\[and (\d+) more like it in the last \d+ s, not logged\]$"
    counted = sum(int(m[1]) for line in lines if (m := re.search(suffix, line)))
    flushed = re.search(
        r"osm\.b1: (\d+) more like it in the last \d+ s, not logged: target ", lines[-1]
    )
    assert 2 <= len(lines) <= 5, lines  # once, then the count at the stop (more if slow)
    assert flushed and len(lines) - 1 + counted + int(flushed[1]) == 41


def test_repeat_filter_lets_a_message_through_once_per_interval_with_the_count():
    clock = [0.0]
    log = logging.getLogger("osm.test_repeats")
    log.propagate = False
    log.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log.addHandler(Keep())
    repeats = RepeatFilter(interval_s=10.0, clock=lambda: clock[0])
    log.addFilter(repeats)
    try:
        for k in range(5):
            log.warning("target %s refused", k)
            log.warning("rejected (%s)", "rate", extra={"repeat_key": "rate"})
            log.warning("rejected (%s)", "halted", extra={"repeat_key": "halted"})
            clock[0] += 1.0
        log.info("target %s refused", "at another level")
        log.warning("started %s (pid %d)", "router", 7)  # not the same message: both logged
        log.warning("started %s (pid %d)", "trader", 8)
        clock[0] = 12.0
        log.warning("target %s refused", 99)
        log.warning("rejected (%s)", "rate", extra={"repeat_key": "rate"})
        repeats.flush(log)
        repeats.flush(log)  # nothing more held back: nothing more logged
    finally:
        log.removeFilter(repeats)
        log.handlers.clear()
    assert [r.getMessage() for r in records] == [
        "target 0 refused",
        "rejected (rate)",
        "rejected (halted)",
        "target at another level refused",
        "started router (pid 7)",
        "started trader (pid 8)",
        "target 99 refused [and 4 more like it in the last 12 s, not logged]",
        "rejected (rate) [and 4 more like it in the last 12 s, not logged]",
        "4 more like it in the last 12 s, not logged: rejected (halted)",
    ]


def test_a_late_twin_of_a_retried_history_request_is_not_taken_for_a_newer_one(system):
    router = Router(system)
    system.start("brain", "b1")
    router.wait_subscription("bar.EUR_USD.M1", "b1")
    first, _ = router.request("b1")
    twin, _ = router.request("b1")  # unanswered for HISTORY_RETRY_S: asked again, same tag
    assert twin == first
    router.answer(first, list(range(0, 20)))
    router.bar(23)  # 20 to 22 missing: a new request
    gap, request = router.request("b1")
    assert gap != first and request.end_ns == int(BARS["time"][23])
    router.answer(twin, list(range(0, 20)))  # late: it must not pass for the gap's answer
    router.answer(gap, list(range(10, 23)))
    counters = system.wait_counter("b1", "targets", 5, TIMEOUT)  # warm-up, then 20 to 23
    assert counters["history_stale"] == 1 and counters["gaps"] == 1
    assert counters["history_retries"] == 1
