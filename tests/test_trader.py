"""The trader as a real process: orders fill, risk refuses, garbage is counted, kill -9 is survived.

The test stands in for the router: it binds an XPUB at ``router_bars`` (an XPUB shows when the
trader's subscription has arrived, so no tick is published into the void) and feeds quotes.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import time

import numpy as np
import pytest
import zmq

from osm.core import wire
from osm.core.config import FeedConfig, RiskLimits, SystemConfig, TraderConfig
from osm.core.dtypes import as_ticks
from osm.core.errors import OsmError
from osm.live.client import Client
from tests.live_helpers import LiveSystem, wait_for
from tests.system_helpers import process, running_system, write_config

S = 1_000_000_000
T0 = 1_400_000_000 * S
TIMEOUT = 30.0


class TraderHarness:
    """A trader process, the test's quote publisher, a request socket and an event subscriber."""

    def __init__(
        self, home, risk: RiskLimits, commission: float = 2e-5, feeds: list | None = None
    ) -> None:
        trader = TraderConfig(commission=commission, balance=100_000.0, risk=risk)
        self.system = LiveSystem(home, SystemConfig(feeds=feeds or [], trader=trader))
        self.quotes = self.system.bind(zmq.XPUB, "router_bars")
        self.quotes.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.requests = self.system.socket(zmq.DEALER, "trader_orders")
        self.events = self.system.socket(zmq.SUB, "trader_events")
        self.events.setsockopt(zmq.SUBSCRIBE, b"")
        self.journal_path = self.system.rundir.home / "db" / "trader.sqlite"

    def start(self) -> None:
        self.system.start("trader", "trader")
        # The trader is up once it answers and its quote subscription has reached us.
        assert self.command("status")["name"] == "trader"
        wait_for(self._subscribed, TIMEOUT, "the trader's tick subscription")
        wait_for(self._probe_events, TIMEOUT, "the trader's events reaching the test")

    def _probe_events(self) -> bool:
        # A PUB drops what it sends before a subscriber's connection is up: send an order the
        # trader refuses without journaling (no client id) until its order event comes through.
        self.request(wire.Order("probe", "EUR_USD", 1, ""))
        while self.events.poll(100):
            if wire.parse(self.events.recv_multipart())[0] == "order.probe":
                return True
        return False

    def _subscribed(self) -> bool:
        self.system.alive("trader")
        while self.quotes.poll(50):
            if self.quotes.recv() == b"\x01tick.":
                return True
        return False

    def kill(self) -> None:
        self.system.kill("trader")

    def request(self, message: wire.Message) -> wire.AnyMessage:
        self.requests.send_multipart(wire.frames("request", message))
        return self.reply()

    def reply(self) -> wire.AnyMessage:
        wait_for(lambda: self.system.alive("trader") or self.requests.poll(50), TIMEOUT, "a reply")
        return wire.parse(self.requests.recv_multipart())[1]

    def command(self, name: str, **args) -> object:
        reply = self.request(wire.Command(name, args))
        assert isinstance(reply, wire.Reply) and reply.ok, reply
        return reply.data

    def order(
        self, units: int, cid: str, after_ns: int = 0, instrument: str = "EUR_USD", brain="b1"
    ) -> wire.OrderReply:
        reply = self.request(wire.Order(brain, instrument, units, cid, after_ns))
        assert isinstance(reply, wire.OrderReply) and reply.client_id == cid
        return reply

    def tick(self, t_ns, bid: float, ask: float, instrument: str = "EUR_USD") -> None:
        t = np.atleast_1d(np.asarray(t_ns, dtype=np.int64))
        ticks = as_ticks(t, np.full(len(t), bid), np.full(len(t), ask))
        self.quotes.send_multipart(
            wire.frames(f"tick.{instrument}", wire.Ticks.of(instrument, ticks))
        )

    def event(self, prefix: str) -> wire.AnyMessage:
        """The next event whose topic starts with `prefix` (others are skipped)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.system.alive("trader")
            if self.events.poll(50):
                topic, message = wire.parse(self.events.recv_multipart())
                if topic.startswith(prefix):
                    return message
        raise TimeoutError(f"no {prefix} event within {TIMEOUT} s")

    def counters(self) -> dict[str, int]:
        return self.command("status")["counters"]

    def journal(self) -> tuple[list, list, list]:
        with sqlite3.connect(self.journal_path) as db:
            orders = db.execute(
                "SELECT client_id, brain, instrument, kind, target, units, after_ns, status"
                " FROM orders ORDER BY client_id"
            ).fetchall()
            fills = db.execute(
                "SELECT client_id, brain, instrument, units, price, commission, time_ns"
                " FROM fills ORDER BY client_id"
            ).fetchall()
            positions = db.execute(
                "SELECT instrument, units, average_price, realized, commission FROM positions"
                " ORDER BY instrument"
            ).fetchall()
        return orders, fills, positions

    def close(self) -> None:
        self.system.close()


LIMITS = RiskLimits(max_position=100_000, max_order=50_000, max_orders_per_minute=1000)


@pytest.fixture
def trader(home):
    harness = TraderHarness(home, LIMITS)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def test_orders_and_targets_fill_at_the_next_quote_and_are_published(trader):
    reply = trader.order(10_000, "o1", after_ns=T0 + 2 * S)
    assert (reply.accepted, reply.units) == (True, 10_000)
    assert trader.event("order.b1") == reply
    trader.tick(T0 + 1 * S, 1.1000, 1.1002)  # before after_ns: not this one
    trader.tick(T0 + 2 * S, 1.1010, 1.1012)
    fill = trader.event("fill.b1")
    assert (fill.client_id, fill.units, fill.time_ns) == ("o1", 10_000, T0 + 2 * S)
    assert fill.price == 1.1012 and fill.commission == pytest.approx(10_000 * 1.1012 * 2e-5)
    position = trader.event("position.EUR_USD")
    assert (position.units, position.average_price) == (10_000, 1.1012)

    # A target asks for a position: the trader sends the difference from what b1 holds.
    reply = trader.request(wire.Target("b1", "EUR_USD", -5_000, "t1", T0 + 3 * S))
    assert (reply.accepted, reply.units) == (True, -15_000)
    trader.tick(T0 + 3 * S, 1.1030, 1.1032)
    fill = trader.event("fill.b1")
    assert (fill.units, fill.price) == (-15_000, 1.1030)
    reply = trader.request(wire.Target("b1", "EUR_USD", -5_000, "t2", T0 + 4 * S))
    assert (reply.accepted, reply.units) == (True, 0)  # already there: nothing to send

    (position,) = trader.command("positions")
    assert (position["units"], position["average_price"]) == (-5_000, 1.1030)
    assert position["realized"] == pytest.approx(10_000 * (1.1030 - 1.1012))
    assert position["unrealized"] == pytest.approx(-5_000 * (1.1032 - 1.1030))
    assert position["brains"] == {"b1": -5_000}
    account = trader.command("status")["account"]
    paid = 10_000 * 1.1012 * 2e-5 + 15_000 * 1.1030 * 2e-5
    assert account["balance"] == pytest.approx(100_000 + 10_000 * (1.1030 - 1.1012) - paid)
    orders = {o["client_id"]: o["status"] for o in trader.command("orders")}
    assert orders == {"o1": "filled", "t1": "filled", "t2": "noop"}
    assert [f["client_id"] for f in trader.command("fills")] == ["t1", "o1"]


def test_a_target_behind_one_the_trader_never_got_is_refused_unjournaled_until_that_one_is(
    trader,
):
    """A brain keeps many targets in flight, each naming the one before: one lost on the way (a
    trader that died holding it) must not be overtaken by those sent behind it."""
    trader.tick(T0, 1.1000, 1.1002)
    behind = wire.Target("b1", "EUR_USD", 5_000, "b1-2", T0 + 2 * S, previous_id="b1-1")
    reply = trader.request(behind)
    assert (reply.accepted, reply.code) == (False, "out_of_order")
    assert "'b1-1', has not reached the trader" in reply.reason
    assert [o["client_id"] for o in trader.command("orders")] == []  # nothing journaled
    first = trader.request(wire.Target("b1", "EUR_USD", 10_000, "b1-1", T0 + S))
    assert (first.accepted, first.units) == (True, 10_000)
    reply = trader.request(behind)
    assert (reply.accepted, reply.units) == (True, -5_000)
    again = trader.request(behind)  # a copy of one journaled: a duplicate, said so
    assert (again.accepted, again.code) == (False, "duplicate")
    assert trader.command("status")["counters"]["rejected.out_of_order"] == 1


def test_cancel_ends_an_open_order_once_journaled_and_told_to_its_brain(trader):
    assert trader.order(1_000, "wait", after_ns=T0 + 5 * S).accepted  # its quote is yet to come
    trader.event("order.b1")
    done = trader.command("cancel", client_id="wait")
    assert (done["cancelled"], done["status"]) == (True, "cancelled")
    told = trader.event("order.b1")
    assert (told.client_id, told.accepted, told.reason) == ("wait", False, "cancelled on request")
    trader.tick(T0 + 5 * S, 1.1, 1.1002)  # its quote: nothing fills
    assert trader.order(1, "after", after_ns=T0 + 5 * S).accepted
    assert trader.event("fill.b1").client_id == "after"
    again = trader.command("cancel", client_id="wait")
    assert not again["cancelled"] and "is cancelled, not open" in again["reason"]
    filled = trader.command("cancel", client_id="after")
    assert not filled["cancelled"] and "is filled" in filled["reason"]
    assert "no order 'ghost'" in trader.command("cancel", client_id="ghost")["reason"]
    orders = {o["client_id"]: (o["status"], o["reason"]) for o in trader.command("orders")}
    assert orders["wait"] == ("cancelled", "cancelled on request")
    assert trader.counters()["rejected.cancelled"] == 1
    assert trader.command("positions")[0]["units"] == 1


def test_refusals_say_why_are_counted_and_the_trader_carries_on(trader):
    big = trader.order(50_001, "big")
    assert not big.accepted and "max_order 50000" in big.reason
    assert "trader.risk.max_order" in big.reason
    odd = trader.order(1_000, "odd", instrument="EUR_USDX")
    assert not odd.accepted and "unknown instrument 'EUR_USDX'" in odd.reason
    assert "Did you mean 'EUR_USD'" in odd.reason
    assert trader.order(50_000, "a").accepted and trader.order(50_000, "b").accepted
    over = trader.order(1, "c")  # pending orders count toward the position
    assert not over.accepted and "max_position" in over.reason
    dup = trader.order(-1, "a")
    assert not dup.accepted and "already journaled" in dup.reason
    assert trader.order(-10_000, "d").accepted  # still trading
    counters = trader.counters()
    assert counters["rejected.max_order"] == 1 and counters["rejected.unknown_instrument"] == 1
    assert counters["rejected.max_position"] == 1 and counters["rejected.duplicate"] == 1
    assert counters["orders_sent"] == 3
    statuses = {o["client_id"]: o["status"] for o in trader.command("orders")}
    assert statuses == {
        "big": "refused", "odd": "refused", "a": "sent", "b": "sent", "c": "refused", "d": "sent",
    }  # fmt: skip
    bad = trader.request(wire.Command("halts"))
    assert not bad.ok and "Did you mean 'halt'" in bad.error
    bad = trader.request(wire.Command("orders", {"limits": 5}))
    assert not bad.ok and "bad arguments for 'orders'" in bad.error
    bad = trader.request(wire.Command("orders", {"limit": "ten"}))
    assert not bad.ok and "bad arguments for 'orders': Expected `int`, got `str`" in bad.error
    bad = trader.request(wire.Command("fills", {"limit": 2**64 - 1}))  # beyond SQLite's integers
    assert not bad.ok and "bad arguments for 'fills'" in bad.error
    bad = trader.request(wire.Command("halt", {"reason": ["not", "text"]}))
    assert not bad.ok and "bad arguments for 'halt'" in bad.error
    assert not trader.command("status")["halted"]  # nothing half-done
    huge = trader.order(2**64 - 1, "huge")  # msgpack carries it; the journal could not
    assert not huge.accepted and "fit in 64 bits" in huge.reason
    exit_like = trader.order(1_000, "d/stop_loss")  # would read as the exit of d's trade
    assert not exit_like.accepted and "without '/'" in exit_like.reason
    assert len(trader.command("orders", limit=2)) == 2


def test_halt_refuses_flatten_closes_and_a_restart_keeps_the_halt(trader):
    assert trader.order(20_000, "x1", brain="x").accepted
    assert trader.order(-7_000, "y1", brain="y", instrument="USD_JPY").accepted
    trader.tick(T0, 1.2000, 1.2002)
    trader.tick(T0, 110.00, 110.02, instrument="USD_JPY")
    trader.event("fill.x"), trader.event("fill.y")
    assert trader.command("halt", reason="test drawdown") == {
        "halted": True, "reason": "test drawdown",
    }  # fmt: skip
    refused = trader.order(1_000, "x2", brain="x")
    assert not refused.accepted and "halted (test drawdown)" in refused.reason

    trader.kill()
    trader.start()
    status = trader.command("status")
    assert status["halted"] and status["halt_reason"] == "test drawdown"
    assert {p["instrument"]: p["units"] for p in trader.command("positions")} == {
        "EUR_USD": 20_000, "USD_JPY": -7_000,
    }  # fmt: skip

    rows = trader.command("flatten")
    assert [(r["brain"], r["instrument"], r["units"], r["accepted"]) for r in rows] == [
        ("x", "EUR_USD", -20_000, True), ("y", "USD_JPY", 7_000, True),
    ]  # fmt: skip
    trader.tick(T0 + S, 1.2010, 1.2012)
    trader.tick(T0 + S, 110.10, 110.12, instrument="USD_JPY")
    wait_for(lambda: all(p["units"] == 0 for p in trader.command("positions")), TIMEOUT, "flat")
    kinds = {o["client_id"]: o["kind"] for o in trader.command("orders", status="filled")}
    assert sorted(kinds.values()) == ["flatten", "flatten", "order", "order"]
    assert trader.command("resume") == {"halted": False}
    assert trader.order(1_000, "x3", brain="x").accepted


def test_max_orders_per_minute_counts_market_time(home):
    harness = TraderHarness(home, RiskLimits(max_orders_per_minute=5))
    try:
        harness.start()
        # No quote yet: the market clock stands still, so every order counts in one minute.
        replies = [harness.order(1_000, f"r{i}") for i in range(7)]
        assert [r.accepted for r in replies] == [True] * 5 + [False] * 2
        assert "max_orders_per_minute" in replies[5].reason
        assert harness.counters()["rejected.rate"] == 2
        (row,) = harness.command("flatten")  # flattening is not rate-limited
        assert (row["units"], row["accepted"]) == (-5_000, True)

        # A replay's quotes run ahead; the decisions that follow, one per bar, are sent within
        # milliseconds but each counts (and fills) at its own bar: none is refused.
        harness.tick([T0 + 60 * k * S for k in range(1, 61)], 1.1000, 1.1002)
        wait_for(
            lambda: harness.command("status")["market_time_ns"] == T0 + 3600 * S,
            TIMEOUT,
            "the trader's market clock at the quote",
        )
        bars = [harness.order(1_000, f"bar{k}", after_ns=T0 + 60 * k * S) for k in range(1, 31)]
        assert all(r.accepted for r in bars)
        # Six about the same minute are one too many, however they are spread in wall time.
        same = [harness.order(1_000, f"m{k}", after_ns=T0 + 3600 * S) for k in range(6)]
        assert [r.accepted for r in same] == [True] * 5 + [False]
        assert harness.command("status")["orders_last_minute"] == 5
    finally:
        harness.close()


def test_garbage_frames_are_counted_answered_and_survived(trader):
    rng = random.Random(5)
    garbage = [
        [rng.randbytes(rng.randint(1, 40)) for _ in range(rng.randint(1, 4))] for _ in range(30)
    ]
    for parts in garbage:
        trader.requests.send_multipart(parts)
    for _ in garbage:
        reply = trader.reply()
        assert isinstance(reply, wire.Reply) and not reply.ok and "malformed" in reply.error
    heartbeat = wire.Heartbeat("x", 1, 2, 3)
    assert not trader.request(heartbeat).ok  # decodes, but is not for the trader
    trader.quotes.send_multipart([b"tick.EUR_USD", b"\x00junk"])
    trader.quotes.send_multipart([b"tick.EUR_USD"])
    bad = wire.Ticks("EUR_USD", 3, b"\x00" * 5)  # says 3 rows, carries 5 bytes
    trader.quotes.send_multipart(wire.frames("tick.EUR_USD", bad))
    crossed = wire.Ticks.of("EUR_USD", as_ticks(np.array([T0]), np.array([1.2]), np.array([1.1])))
    trader.quotes.send_multipart(wire.frames("tick.EUR_USD", crossed))
    wait_for(lambda: trader.counters().get("rejected.bad_quote") == 1, TIMEOUT, "bad quote")
    counters = trader.counters()
    assert counters["rejected.malformed"] == len(garbage) + 3
    assert counters["rejected.unexpected_message"] == 1 and counters["quotes_refused"] == 1
    assert trader.order(1_000, "fine").accepted


def run_stream(harness: TraderHarness, n: int, kills: tuple[int, int] | None) -> tuple:
    """Send `n` orders and targets in a burst, then quotes; kill -9 the trader after `kills[0]`
    replies and after `kills[1]` fills, restarting it and resending everything (as a restarted
    brain and router would) each time. Return the journal."""
    rng = random.Random(11)
    messages = []
    for k in range(n):
        brain, after = rng.choice(["b1", "b2"]), T0 + (k + 1) * S
        if k % 3 == 0:
            units = rng.choice([-20_000, -10_000, 0, 10_000, 20_000])
            messages.append(wire.Target(brain, "EUR_USD", units, f"{brain}-t{k:03}", after))
        else:
            units = rng.choice([-3_000, -1_000, 1_000, 3_000])
            messages.append(wire.Order(brain, "EUR_USD", units, f"{brain}-o{k:03}", after))
    prices = [1.3 + 0.0001 * rng.randint(-50, 50) for _ in range(n + 1)]

    harness.start()

    def send_all(stop_after: int | None) -> None:
        for message in messages:
            harness.requests.send_multipart(wire.frames("request", message))
        for _ in range(n if stop_after is None else stop_after):
            reply = harness.reply()
            assert reply.accepted or "already journaled" in reply.reason, reply
        if stop_after is not None:
            harness.kill()  # the trader is still working through the rest of the burst
            harness.requests.close(linger=0)  # replies to the dead trader's requests are moot
            harness.requests = harness.system.socket(zmq.DEALER, "trader_orders")
            harness.start()
            send_all(None)

    def send_quotes(stop_after: int | None) -> None:
        for k, price in enumerate(prices):
            harness.tick(T0 + k * S + S // 2, price, price + 0.0002)
            harness.tick(T0 + (k + 1) * S, price, price + 0.0002)
        if stop_after is not None:
            for _ in range(stop_after):
                harness.event("fill.")
            harness.kill()
            harness.start()
            send_quotes(None)

    send_all(kills[0] if kills else None)
    send_quotes(kills[1] if kills else None)
    wait_for(lambda: not harness.command("status")["open_orders"], TIMEOUT, "every order filled")
    return harness.journal()


def test_kill_minus_9_mid_stream_leaves_every_order_journaled_exactly_once(tmp_path_factory):
    n = 45
    runs = {}
    for name, kills in (("clean", None), ("killed", (17, 9))):
        harness = TraderHarness(tmp_path_factory.mktemp(name), LIMITS)
        try:
            runs[name] = run_stream(harness, n, kills)
        finally:
            harness.close()
    orders, fills, positions = runs["clean"]
    assert len(orders) == n and len({o[0] for o in orders}) == n
    assert {o[7] for o in orders} <= {"filled", "noop"}
    assert len(fills) == sum(o[7] == "filled" for o in orders) > n // 2
    assert runs["killed"] == (orders, fills, positions)


# A fault the trader cannot reason about: the journal refuses the first fill of one order. The
# trigger's condition lapses once a restarted trader has recovered the order (marked it 'sent').
INJECTED_FAULT = """
CREATE TRIGGER injected_fault BEFORE INSERT ON fills
WHEN NEW.client_id = 'fault-1'
    AND (SELECT status FROM orders WHERE client_id = NEW.client_id) = 'new'
BEGIN SELECT RAISE(ABORT, 'injected fault: the journal cannot write'); END;
"""


@pytest.fixture
def system(home):
    yield from running_system(home)


def test_a_failing_handler_crashes_the_trader_which_restarts_and_loses_nothing(home, system):
    market = {"name": "market", "kind": "synthetic", "speed": 60, "start": "2024-03-05T08:00:00Z"}
    system("--config", str(write_config(home, feeds=[market], router={"granularities": ["M1"]})))
    client = Client(home)
    try:
        wait_for(lambda: client.trader("status")["market_time_ns"], TIMEOUT, "quotes")
        with sqlite3.connect(home / "db" / "trader.sqlite") as db:
            db.executescript(INJECTED_FAULT)
        first = process(home, "trader")["pid"]
        # The reply goes out before the fill is journaled; the crash may still cut it off.
        with contextlib.suppress(OsmError):
            assert client.order("EUR_USD", 1_000, client_id="fault-1").accepted

        def restarted() -> dict | None:
            p = process(home, "trader")
            return p if p["state"] == "running" and p["pid"] != first else None

        trader = wait_for(restarted, 60, "the trader restarted")
        assert trader["restarts"] == 1 and trader["reason"] == "exited with code 1"
        fills = wait_for(
            lambda: [f for f in client.fills() if f["client_id"] == "fault-1"],
            TIMEOUT,
            "the order filled by the restarted trader",
        )
        assert len(fills) == 1 and fills[0]["units"] == 1_000
        assert [o["status"] for o in client.orders() if o["client_id"] == "fault-1"] == ["filled"]
        (position,) = client.positions()
        assert (position["units"], position["brains"]) == (1_000, {"cli": 1_000})
    finally:
        client.close()
    crash = "osm trader trader crashed in _on_request: IntegrityError: injected fault"
    log = (home / "logs" / "trader.log").read_text().splitlines()
    assert sum(line.startswith(crash) for line in log) == 1, log[-20:]


def test_stale_decisions_queued_while_the_trader_was_down_expire_instead_of_filling(trader):
    """Targets sent while the trader is down reach it after its restart, before any quote: the
    first quote, two hours of market later, is past their validity, so none fills."""
    trader.tick(T0, 1.1000, 1.1002)
    assert trader.order(1_000, "early", after_ns=T0).accepted
    trader.event("fill.b1")
    trader.kill()
    queued = trader.system.socket(zmq.DEALER, "trader_orders")
    for k in range(1, 8):
        target = wire.Target("b1", "EUR_USD", 10_000 * (-1) ** k, f"q{k}", T0 + 60 * k * S)
        queued.send_multipart(wire.frames("request", target))
    trader.start()
    replies = []
    while len(replies) < 7:  # accepted: their quotes have not come yet
        wait_for(lambda: queued.poll(50), TIMEOUT, "the queued targets' replies")
        replies.append(wire.parse(queued.recv_multipart())[1])
    assert [r.accepted for r in replies] == [True] * 7
    late = T0 + 7200 * S
    trader.tick(late, 1.2000, 1.2002)
    expired = [trader.event("order.b1") for _ in range(7)]
    assert sorted(r.client_id for r in expired) == [f"q{k}" for k in range(1, 8)]
    assert not any(r.accepted for r in expired) and "stale decision" in expired[0].reason
    assert "max_decision_age_s" in expired[0].reason
    wait_for(lambda: trader.counters().get("rejected.stale_decision") == 7, TIMEOUT, "counted")
    assert trader.command("status")["open_orders"] == 0
    assert trader.command("fills") and [f["client_id"] for f in trader.command("fills")] == [
        "early"
    ]
    assert {p["instrument"]: p["units"] for p in trader.command("positions")} == {"EUR_USD": 1_000}
    orders = {o["client_id"]: (o["status"], o["reason"]) for o in trader.command("orders")}
    assert all(orders[f"q{k}"][0] == "refused" for k in range(1, 8))
    assert "stale decision" in orders["q3"][1]

    # A decision whose quote the trader holds but long past is refused at once, with the reason.
    stale = trader.request(wire.Target("b1", "EUR_USD", 5_000, "old", T0 + 100 * S))
    assert not stale.accepted and "stale decision" in stale.reason
    # A fresh one fills; an older target resent after it is superseded and refused.
    fresh = trader.request(wire.Target("b1", "EUR_USD", 5_000, "new", late))
    assert (fresh.accepted, fresh.units) == (True, 4_000)
    assert trader.event("fill.b1").client_id == "new"
    resent = trader.request(wire.Target("b1", "EUR_USD", -5_000, "older", late - S))
    assert not resent.accepted and "is older" in resent.reason
    assert trader.counters()["rejected.stale_decision"] == 9
    assert {p["instrument"]: p["units"] for p in trader.command("positions")} == {"EUR_USD": 5_000}


def test_orders_nothing_could_fill_are_refused_and_open_ones_expire_at_restart(home):
    from osm.core.config import FeedConfig

    feeds = [FeedConfig(name="f", instruments=["EUR_USD", "USD_JPY"])]
    harness = TraderHarness(home, LIMITS, feeds=feeds)
    try:
        harness.start()
        harness.tick(T0, 1.1000, 1.1002)
        wait_for(lambda: harness.command("status")["market_time_ns"] == T0, TIMEOUT, "the clock")
        unquoted = harness.order(1_000, "gbp", instrument="GBP_USD")
        assert not unquoted.accepted and "no configured feed quotes GBP_USD" in unquoted.reason
        y2116 = 4_607_280_000 * S
        future = harness.order(1_000, "2116", after_ns=y2116)
        assert not future.accepted and "max_decision_ahead_s" in future.reason
        waiting = harness.order(1_000, "jpy", after_ns=T0, instrument="USD_JPY")
        assert waiting.accepted  # USD_JPY is quoted, just not yet
        counters = harness.counters()
        assert counters["rejected.unknown_instrument"] == 1
        assert counters["rejected.future_decision"] == 1
        statuses = {o["client_id"]: o["status"] for o in harness.command("orders")}
        assert statuses == {"gbp": "refused", "2116": "refused", "jpy": "sent"}

        # An order journaled open by an older trader that could never fill expires at restart.
        harness.kill()
        with sqlite3.connect(harness.journal_path) as db:
            db.execute(
                "INSERT INTO orders (client_id, brain, instrument, kind, units, after_ns, status,"
                " created_ns, updated_ns) VALUES ('old2116', 'b1', 'EUR_USD', 'order', 5, ?,"
                " 'sent', 0, 0)",
                (y2116,),
            )
        harness.start()
        orders = {o["client_id"]: (o["status"], o["reason"]) for o in harness.command("orders")}
        assert orders["old2116"][0] == "refused" and "expired" in orders["old2116"][1]
        assert orders["jpy"][0] == "sent"
        assert harness.command("status")["open_orders"] == 1
        assert harness.counters()["rejected.future_decision"] == 1
        harness.tick(T0 + S, 110.0, 110.02, instrument="USD_JPY")
        assert harness.event("fill.b1").client_id == "jpy"
    finally:
        harness.close()


def test_paper_exits_survive_a_kill_9_and_fire_once_for_their_brain(trader):
    def send(brain: str, units: int, cid: str, stop_loss: float, take_profit: float) -> None:
        order = wire.Order(brain, "EUR_USD", units, cid, 0, stop_loss, take_profit)
        assert trader.request(order).accepted

    trader.tick(T0, 1.2000, 1.2002)
    send("a", 1_000, "a1", stop_loss=0.0010, take_profit=0.0100)  # stop at 1.1992
    send("b", 2_000, "b1", stop_loss=0.0050, take_profit=0.0010)  # target at 1.2012
    trader.event("fill.a"), trader.event("fill.b")
    trader.tick(T0 + S, 1.1990, 1.1992)  # a's stop: its exit is journaled before the kill
    exit_a = trader.event("fill.a")
    assert (exit_a.client_id, exit_a.units) == ("a1/stop_loss", -1_000)

    trader.kill()
    trader.start()
    [position] = trader.command("positions")
    assert (position["units"], position["brains"]) == (2_000, {"b": 2_000})
    trader.tick(T0 + 2 * S, 1.1980, 1.1982)  # a's stop again: a1 is closed, nothing fires
    trader.tick(T0 + 3 * S, 1.2013, 1.2015)  # b's target, kept across the restart
    exit_b = trader.event("fill.b")
    assert (exit_b.client_id, exit_b.units, exit_b.price) == ("b1/take_profit", -2_000, 1.2013)
    wait_for(lambda: trader.command("positions")[0]["units"] == 0, TIMEOUT, "flat")
    fills = [(f["client_id"], f["brain"], f["units"]) for f in trader.command("fills")]
    assert sorted(fills) == [
        ("a1", "a", 1_000), ("a1/stop_loss", "a", -1_000),
        ("b1", "b", 2_000), ("b1/take_profit", "b", -2_000),
    ]  # fmt: skip
    assert trader.counters().get("fills_adopted") == 1  # b's exit, once, since the restart


def test_quotes_come_before_an_order_are_taken_first_and_a_flat_out_replay_hears_how_far(home):
    """The trader judges an order with the quotes already come (the router sends a bar's quotes
    before the bar, so those its decision saw): a stopped trader that then finds two days of
    quotes and an order waiting is not refused the order as from the future. With a flat-out
    replay it tells the router how far it took each instrument's quotes (wire.Quoted), by which
    the replay is paced."""
    feeds = [FeedConfig(name="r", kind="synthetic", speed=0, instruments=["EUR_USD"])]
    harness = TraderHarness(home, LIMITS, feeds=feeds)
    router = harness.system.bind(zmq.ROUTER, "router_history")
    try:
        harness.start()
        harness.tick(T0, 1.1000, 1.1002)

        def quoted() -> list[int]:
            told = []
            while router.poll(100):
                message = wire.decode(router.recv_multipart()[-1])
                assert isinstance(message, wire.Quoted) and message.instrument == "EUR_USD"
                told.append(message.until_ns)
            return told

        wait_for(lambda: T0 in quoted(), TIMEOUT, "the router told the quotes taken")
        day = 86_400 * S
        process = harness.system.processes["trader"]
        process.send_signal(signal.SIGSTOP)
        try:
            for k in range(1, 201):  # two days of quotes, in 200 messages
                harness.tick(T0 + k * day // 100, 1.1000, 1.1002)
            harness.requests.send_multipart(
                wire.frames("request", wire.Order("b1", "EUR_USD", 1000, "o1", T0 + 2 * day))
            )
            time.sleep(0.5)  # all of it queued at the trader
        finally:
            process.send_signal(signal.SIGCONT)
        reply = harness.reply()
        assert (reply.client_id, reply.accepted) == ("o1", True), reply.reason
        assert harness.event("fill.b1").time_ns == T0 + 2 * day
        wait_for(lambda: T0 + 2 * day in quoted(), TIMEOUT, "the router told the newest quote")
    finally:
        harness.close()
