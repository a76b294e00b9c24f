"""The broker contract (osm.live.adapters.base.Broker) that every adapter passes: the paper broker and
the OANDA broker against the fake v20 server, through the same steps and the same assertions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from osm.core import wire
from osm.core.config import TraderConfig
from osm.core.dtypes import as_ticks
from osm.live.adapters import brokers
from osm.live.adapters.base import Book
from osm.live.adapters.oanda.fake import FakeV20
from osm.live.journal import Journal

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
TOKEN = "tok-contract-92b7-secret"
S = 10**9


class Venue:
    """A broker under test and the market it fills on."""

    def __init__(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fake = None
        adapter = {}
        if name == "oanda":
            self.fake = FakeV20(token=TOKEN).start()
            monkeypatch.setenv("OANDA_ACCESS_TOKEN", TOKEN)
            adapter = {"account": self.fake.account, "environment": self.fake.url,
                       "poll_s": 0.1, "backoff_s": 0.0, "backoff_cap_s": 0.0}  # fmt: skip
        self.broker_config = TraderConfig(broker=name, adapter=adapter)
        self.broker = brokers.create(self.broker_config)
        self.clock = 0

    def quote(self, bid: float, ask: float, instrument: str = "EUR_USD") -> None:
        self.clock += S
        if self.fake is not None:
            self.fake.push_price(instrument, bid, ask)
        ticks = as_ticks(np.array([self.clock]), np.array([bid]), np.array([ask]))
        assert self.broker.on_quotes(instrument, ticks) == 0

    def fills(self, count: int) -> list[wire.Fill]:
        out: list[wire.Fill] = []
        deadline = time.monotonic() + 10
        while len(out) < count and time.monotonic() < deadline:
            out += self.broker.take_fills()
            time.sleep(0.01)
        return out

    def close(self) -> None:
        self.broker.close()
        if self.fake is not None:
            self.fake.stop()


@pytest.fixture(params=["paper", "oanda"])
def venue(request, monkeypatch) -> Iterator[Venue]:
    v = Venue(request.param, monkeypatch)
    try:
        v.broker.restore({}, 100_000.0, [])
        yield v
    finally:
        v.close()


def test_a_market_order_fills_once_at_the_touch_and_is_held(venue):
    venue.quote(1.10000, 1.10020)
    venue.broker.submit(wire.Order("b", "EUR_USD", 1000, "b-1", venue.clock))
    [fill] = venue.fills(1)
    assert (fill.client_id, fill.brain, fill.instrument, fill.units) == (
        "b-1",
        "b",
        "EUR_USD",
        1000,
    )
    assert fill.price == pytest.approx(1.10020)  # a buy pays the ask
    assert fill.booked == 0.0  # opening realises nothing
    assert venue.broker.pending() == []
    assert venue.fills(1) == []  # reported once
    [position] = venue.broker.positions()
    assert (position.instrument, position.units) == ("EUR_USD", 1000)
    assert position.average_price == pytest.approx(1.10020)


def test_closing_books_the_pnl_in_the_account_currency(venue):
    venue.quote(1.10000, 1.10020)
    venue.broker.submit(wire.Order("b", "EUR_USD", 1000, "b-1", venue.clock))
    venue.fills(1)
    venue.quote(1.10120, 1.10140)
    venue.broker.submit(wire.Order("b", "EUR_USD", -1000, "b-2", venue.clock))
    [fill] = venue.fills(1)
    assert fill.price == pytest.approx(1.10120)  # a sell gets the bid
    assert fill.booked == pytest.approx(1000 * (1.10120 - 1.10020), abs=1e-4)
    account = venue.broker.account()
    assert account["currency"] == "USD"
    assert account["balance"] == pytest.approx(100_000 + fill.booked, abs=1e-4)
    assert account["equity"] == pytest.approx(account["balance"])
    [position] = venue.broker.positions()
    assert position.units == 0


def test_restore_adopts_the_journaled_books_and_accounts_for_every_open_order(monkeypatch):
    for name in ("paper", "oanda"):
        venue = Venue(name, monkeypatch)
        try:
            if venue.fake is not None:  # the venue holds what the journal says
                venue.fake.push_price("EUR_USD", 1.1, 1.1002)
                venue.fake.open_manual_trade("EUR_USD", 2000)
            books = {"EUR_USD": Book(2000, 1.1002)}
            never_sent = wire.Order("b", "EUR_USD", 500, "b-9", 1)
            lost = venue.broker.restore(books, 100_000.0, [never_sent])
            pending = [o.client_id for o in venue.broker.pending()]
            assert sorted(pending + lost) == ["b-9"], name  # held, or reported lost: never dropped
            [position] = venue.broker.positions()
            assert (position.units, position.average_price) == (2000, pytest.approx(1.1002)), name
            assert getattr(venue.broker, "halt_reason", None) is None, name
        finally:
            venue.close()


def test_an_order_not_yet_filled_is_cancelled_once_and_never_fills(venue):
    venue.quote(1.10000, 1.10020)
    if venue.fake is not None:  # the venue leaves it pending (a market not trading)
        venue.fake.arm("orders", "rest")
    order = wire.Order("b", "EUR_USD", 1000, "b-rest", venue.clock + 10 * S)  # paper: quote to come
    venue.broker.submit(order)
    if venue.fake is not None:
        wait_for(lambda: venue.fake.find_order("@b-rest"), "the order resting at the venue")
    assert venue.broker.cancel("b-rest")
    assert not venue.broker.cancel("b-none")  # no such order
    [ended] = wait_for(venue.broker.take_expired, "the cancel confirmed")
    assert (ended.order.client_id, ended.order.units, ended.status) == ("b-rest", 1000, "cancelled")
    assert venue.broker.pending() == [] and venue.broker.take_expired() == []
    for _ in range(11):  # past its after_ns: still nothing fills
        venue.quote(1.10000, 1.10020)
    assert venue.broker.take_fills() == [] and [p.units for p in venue.broker.positions()] in (
        [],
        [0],
    )


def test_a_stop_loss_closes_the_brains_trade_and_the_fill_is_the_brains(venue):
    venue.quote(1.10000, 1.10020)
    order = wire.Order("b", "EUR_USD", 1000, "b-sl", venue.clock, stop_loss=5e-4, take_profit=1e-3)
    venue.broker.submit(order)
    [opened] = venue.fills(1)
    assert (opened.client_id, opened.price) == ("b-sl", pytest.approx(1.10020))
    if venue.fake is not None:  # the venue holds the exits at the fill price's distances
        [trade] = venue.fake.trades
        exits = trade["stopLossOrder"]["price"], trade["takeProfitOrder"]["price"]
        assert exits == ("1.09970", "1.10120")
        venue.fake.trigger_stop_loss(trade["id"])
    venue.quote(1.09990, 1.10010)  # above the stop: nothing on paper
    venue.quote(1.09960, 1.09980)  # the bid through the stop: a long exits at the bid
    [closed] = venue.fills(1)
    assert (closed.client_id, closed.brain, closed.units) == ("b-sl/stop_loss", "b", -1000)
    assert closed.price <= 1.09970 and closed.booked < 0
    assert [p.units for p in venue.broker.positions()] == [0] and venue.fills(1) == []


def test_an_exit_that_would_be_a_price_below_zero_is_refused_not_raised(venue):
    if venue.fake is None:
        pytest.skip("the paper broker places exits at its fill: one below zero is never reached")
    venue.quote(1.10000, 1.10020)
    order = wire.Order("b", "EUR_USD", -1000, "b-pips", venue.clock, take_profit=20.0)
    venue.broker.submit(order)  # 20 meant as pips: the target of a short at -18.9
    [ended] = venue.broker.take_expired()
    assert (ended.order.client_id, ended.code) == ("b-pips", "bad_order")
    assert "take_profit" in ended.reason and "distance in price units" in ended.reason
    assert venue.fake.orders == {} and venue.fills(1) == []


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_fill_the_journal_holds_read_again_after_a_restart_changes_nothing(monkeypatch):
    venue = Venue("oanda", monkeypatch)  # only a venue reads its fills again
    venue.broker.restore({}, 100_000.0, [])
    try:
        venue.quote(1.10000, 1.10020)
        venue.fake.arm("orders", "hold", 300)  # 300 of 1000 units, the rest left open
        venue.broker.submit(wire.Order("b", "EUR_USD", 1000, "b-part", venue.clock))
        [first] = venue.fills(1)
        assert (first.units, [o.units for o in venue.broker.pending()]) == (300, [700])
        venue.broker.close()
        # A restart whose persisted cursor lags the first part: it is read again.
        cursor = str(int(first.fill_id) - 1)
        venue.broker = brokers.create(venue.broker_config)
        venue.broker.cursor = cursor
        venue.broker.journaled = {first.fill_id: (first.client_id, first.brain)}.get
        rest = wire.Order("b", "EUR_USD", 700, "b-part", venue.clock)  # the journal's open order
        lost = venue.broker.restore({"EUR_USD": Book(300, first.price)}, 100_000.0, [rest])
        assert lost == [] and venue.broker.take_fills() == []  # the repeat is not reported
        assert venue.broker.halt_reason is None  # the books are the journal's: = the venue's
        assert [(p.units, p.average_price) for p in venue.broker.positions()] == [
            (300, pytest.approx(first.price))
        ]
        assert [o.units for o in venue.broker.pending()] == [700]
        venue.fake.fill_held("b-part")
        [second] = venue.fills(1)
        assert (second.client_id, second.units) == ("b-part", 700)
        assert venue.broker.pending() == [] and venue.fills(1) == []
        assert [p.units for p in venue.broker.positions()] == [venue.fake.net_units("EUR_USD")]
        assert venue.broker.halt_reason is None
    finally:
        venue.close()


def test_a_fill_of_an_order_of_ours_the_journal_lost_is_adopted_once(monkeypatch, tmp_path):
    venue = Venue("oanda", monkeypatch)  # only a venue fills what the journal never saw
    journal = Journal(tmp_path / "trader.sqlite", 100_000.0)

    def restart(cursor: str) -> list[wire.Fill]:
        """The trader's start: its journal's books and cursor, the broker's fills journaled."""
        venue.broker.close()
        venue.broker = brokers.create(venue.broker_config)
        venue.broker.cursor = cursor
        venue.broker.journaled = journal.fill_owner
        books = journal.rebuild(time.time_ns()).books
        assert venue.broker.restore(books, 100_000.0, journal.open_orders()) == []
        fills = venue.broker.take_fills()
        for fill in fills:  # as the trader does with a fill of no order it holds
            book = books.setdefault(fill.instrument, Book())
            book.apply(fill.units, fill.price, fill.commission)
            assert journal.record_fill(fill, book, time.time_ns(), adopt=True)
        return fills

    try:
        venue.broker.restore({}, 100_000.0, [])
        venue.quote(1.10000, 1.10020)
        backup = venue.fake.last_id  # the cursor of a journal backed up before the order
        venue.broker.submit(wire.Order("b", "EUR_USD", 1000, "b-gone", venue.clock))
        [sent] = venue.fills(1)
        # The journal is restored from that backup: neither the order nor its fill is in it.
        [adopted] = restart(backup)
        assert adopted == sent  # its client id, its brain (the order's tag), its transaction
        assert venue.broker.halt_reason is None
        assert [p.units for p in venue.broker.positions()] == [venue.fake.net_units("EUR_USD")]
        assert journal.fill_owner(sent.fill_id) == ("b-gone", "b")
        [order] = journal.orders()
        assert (order["client_id"], order["brain"], order["status"]) == ("b-gone", "b", "filled")

        # The venue goes away and comes back: the reconciliation adopts nothing more.
        venue.fake.down = ("drop",)
        wait_for(lambda: venue.broker.account()["venue_down"], "the broker sees OANDA down")
        reconciled = venue.broker.reconciliations
        venue.fake.down = None
        more: list[wire.Fill] = []
        wait_for(
            lambda: (
                more.extend(venue.broker.take_fills()) or venue.broker.reconciliations > reconciled
            ),
            "a reconciliation",
        )
        assert more == [] and venue.broker.halt_reason is None

        # A restart whose cursor lags the fill reads it again: journaled, it changes nothing.
        assert restart(backup) == []
        assert venue.broker.halt_reason is None
        assert [(p.units, p.average_price) for p in venue.broker.positions()] == [
            (1000, pytest.approx(sent.price))
        ]
        assert [f["fill_id"] for f in journal.fills()] == [sent.fill_id]
    finally:
        venue.close()
        journal.close()
