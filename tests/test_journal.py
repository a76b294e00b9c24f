"""The order journal: intents before sends, unique client ids, positions rebuilt from fills."""

from __future__ import annotations

import math
import sqlite3

import msgspec
import pytest

from osm.core import wire
from osm.live.adapters import Book
from osm.live.journal import Journal


def order(cid: str, units: int = 1000, brain: str = "b", instrument: str = "EUR_USD"):
    return wire.Order(brain, instrument, units, cid, 5)


def fill(cid: str, units: int, price: float, brain: str = "b", instrument: str = "EUR_USD"):
    return wire.Fill(cid, brain, instrument, units, price, 7, abs(units) * price * 1e-5)


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "db" / "trader.sqlite", 10_000.0)
    yield j
    j.close()


def test_wal_and_a_client_id_is_journaled_once(journal):
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.record(order("a"), "order", "new", 1)
    assert not journal.record(order("a", units=-5), "target", "new", 2, target=0)
    row = journal.lookup("a")
    assert (row["units"], row["kind"], row["status"], row["created_ns"]) == (
        1000,
        "order",
        "new",
        1,
    )
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself refuses an unknown status
        journal._db.execute("UPDATE orders SET status = 'maybe' WHERE client_id = 'a'")


def test_fill_marks_the_order_and_a_repeated_fill_changes_nothing(journal):
    journal.record(order("a"), "order", "new", 1)
    journal.mark("a", "sent", 2)
    assert [o.client_id for o in journal.open_orders()] == ["a"]
    book = Book()
    book.apply(1000, 1.1, 0.011)
    assert journal.record_fill(fill("a", 1000, 1.1), book, 3)
    assert not journal.record_fill(fill("a", 1000, 1.2), book, 4)
    assert journal.lookup("a")["status"] == "filled" and journal.open_orders() == []
    (f,) = journal.fills()
    assert (f["units"], f["price"]) == (1000, 1.1)
    with pytest.raises(sqlite3.IntegrityError):  # a fill must belong to a journaled order
        journal.record_fill(fill("ghost", 1, 1.0), book, 5)


def test_rebuild_replays_fills_into_positions_per_instrument_and_brain(tmp_path):
    path = tmp_path / "t.sqlite"
    journal = Journal(path, 10_000.0)
    trades = [
        ("a", "x", "EUR_USD", 10_000, 1.10), ("b", "y", "EUR_USD", -4_000, 1.12),
        ("c", "x", "USD_JPY", 1_000, 110.0), ("d", "x", "EUR_USD", -10_000, 1.15),
    ]  # fmt: skip
    books: dict[str, Book] = {}
    for cid, brain, instrument, units, price in trades:
        journal.record(order(cid, units, brain, instrument), "order", "new", 1)
        f = fill(cid, units, price, brain, instrument)
        books.setdefault(instrument, Book()).apply(units, price, f.commission)
        journal.record_fill(f, books[instrument], 2)
    journal.record(order("open", 7, "x"), "order", "new", 3)
    journal.record(order("no", 7, "x"), "order", "refused", 3, reason="max_order")
    journal.close()

    again = Journal(path, 99.0)  # a changed opening balance cannot rewrite the account
    recovered = again.rebuild(9)
    assert again.initial_balance == 10_000.0
    assert recovered.books == books
    assert dict(recovered.brain_units) == {
        ("x", "EUR_USD"): 0, ("y", "EUR_USD"): -4_000, ("x", "USD_JPY"): 1_000,
    }  # fmt: skip
    eur = books["EUR_USD"]
    assert eur.units == -4_000 and eur.realized == pytest.approx(4_000 * 0.02 + 6_000 * 0.05)
    commission = sum(b.commission for b in books.values())
    realized = sum(b.realized for b in books.values())
    assert recovered.balance == pytest.approx(10_000.0 + realized - commission)
    rows = {r[0]: r[1] for r in again._db.execute("SELECT instrument, units FROM positions")}
    assert rows == {"EUR_USD": -4_000, "USD_JPY": 1_000}
    assert [o.client_id for o in again.open_orders()] == ["open"]
    assert [o["client_id"] for o in again.orders(status="refused")] == ["no"]
    assert [o["client_id"] for o in again.orders(limit=2)] == ["no", "open"]
    again.close()


def test_meta_round_trips_and_deletes(journal):
    journal.set_meta("halted", "drawdown")
    assert journal.get_meta("halted") == "drawdown"
    journal.set_meta("halted", None)
    assert journal.get_meta("halted") is None


def test_an_order_filled_in_parts_keeps_every_part_and_stays_open_until_complete(journal):
    journal.record(order("a", 1000), "order", "new", 1)
    book = Book()
    first = msgspec.structs.replace(fill("a", 400, 1.1), fill_id="7001")
    book.apply(400, 1.1)
    assert journal.record_fill(first, book, 2)
    assert journal.lookup("a")["status"] == "new"  # 600 units still to fill
    assert [(o.client_id, o.units) for o in journal.open_orders()] == [("a", 600)]
    assert not journal.record_fill(first, book, 3)  # the same part reported again
    second = msgspec.structs.replace(fill("a", 600, 1.2), fill_id="7002")
    book.apply(600, 1.2)
    assert journal.record_fill(second, book, 4)
    assert journal.lookup("a")["status"] == "filled" and journal.open_orders() == []
    assert [(f["fill_id"], f["units"]) for f in journal.fills()] == [("7002", 600), ("7001", 400)]
    assert not journal.record_fill(second, book, 5)


OLD_SCHEMA = """
CREATE TABLE orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL UNIQUE, brain TEXT NOT NULL,
    instrument TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('order', 'target', 'flatten')), target INTEGER,
    units INTEGER NOT NULL, after_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('new', 'sent', 'filled', 'refused', 'noop', 'lost')),
    reason TEXT NOT NULL DEFAULT '', created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL);
CREATE TABLE fills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL UNIQUE REFERENCES orders (client_id), brain TEXT NOT NULL,
    instrument TEXT NOT NULL, units INTEGER NOT NULL, price REAL NOT NULL,
    commission REAL NOT NULL, time_ns INTEGER NOT NULL);
INSERT INTO orders VALUES (1, 'a', 'b', 'EUR_USD', 'order', NULL, 1000, 5, 'filled', '', 1, 2);
INSERT INTO orders VALUES (2, 'o', 'b', 'EUR_USD', 'order', NULL, 500, 5, 'sent', '', 1, 1);
INSERT INTO fills VALUES (1, 'a', 'b', 'EUR_USD', 1000, 1.1, 0.0, 7);
"""


def test_a_journal_keyed_by_client_id_is_migrated_and_still_refuses_a_repeat(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # as the trader wrote it before fills had ids
        db.executescript(OLD_SCHEMA)
    journal = Journal(path, 10_000.0)
    try:
        [old] = journal.fills()
        assert (old["fill_id"], old["client_id"], old["units"], old["booked"]) == (
            "a", "a", 1000, None,
        )  # fmt: skip
        recovered = journal.rebuild(9)
        book = recovered.books["EUR_USD"]
        assert (book.units, book.average_price) == (1000, pytest.approx(1.1))
        [trade] = recovered.trades["EUR_USD"]  # an order from before exits were journaled
        assert (trade.client_id, trade.units) == ("a", 1000)
        assert math.isnan(trade.stop_loss) and math.isnan(trade.take_profit)
        [(_, stop_loss, take_profit)] = journal._db.execute(
            "SELECT client_id, stop_loss, take_profit FROM orders WHERE client_id = 'o'"
        )
        assert (stop_loss, take_profit) == (None, None)
        exits = wire.Order("b", "EUR_USD", 1, "new", 5, stop_loss=1e-3)
        assert journal.record(exits, "order", "new", 10)  # the columns it lacked
        assert [o.stop_loss for o in journal.open_orders()] == [None, 1e-3]
        assert not journal.record_fill(fill("a", 1000, 1.1), book, 10)  # journaled already
        journal.mark("o", "cancelled", 11, "cancelled on request")  # a status it lacked
        assert [o.client_id for o in journal.open_orders()] == ["new"]
        again = msgspec.structs.replace(fill("a", 1000, 1.1), fill_id="tx-2")
        assert journal.record_fill(again, book, 12)  # a second part of one order is kept
        with pytest.raises(sqlite3.IntegrityError):  # the foreign key survives the rebuild
            journal.record_fill(fill("ghost", 1, 1.0), book, 13)
        assert journal._db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        journal.close()


def test_a_venue_fill_of_an_old_journal_is_known_by_its_transaction_id(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # a stop-loss adopted before fills had ids
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO orders VALUES (3, 'venue-77', 'venue', 'EUR_USD', 'order', NULL,"
                   " -1000, 0, 'filled', 'adopted', 1, 2)")  # fmt: skip
        db.execute("INSERT INTO fills VALUES (2, 'venue-77', 'venue', 'EUR_USD', -1000, 1.09,"
                   " 0.0, 8)")  # fmt: skip
    journal = Journal(path, 10_000.0)
    try:
        assert journal.fill_owner("77") == ("venue-77", "venue")  # as a broker names it now
        assert journal.fill_owner("a") == ("a", "b") and journal.fill_owner("venue-77") is None
    finally:
        journal.close()


def test_an_adopted_fill_and_its_order_are_journaled_together_or_not_at_all(tmp_path):
    journal = Journal(tmp_path / "trader.sqlite", 10_000.0)
    try:
        exit_fill = wire.Fill("a/stop_loss", "x", "EUR_USD", -1000, 1.09, 7, fill_id="tx-9")
        assert journal.record_fill(exit_fill, Book(), 8, adopt=True)
        assert [(o["client_id"], o["status"]) for o in journal.orders()] == [
            ("a/stop_loss", "filled")
        ]
        again = msgspec.structs.replace(exit_fill, client_id="a/take_profit")  # same fill id
        assert not journal.record_fill(again, Book(), 9, adopt=True)  # a repeat: nothing at all
        assert [o["client_id"] for o in journal.orders()] == ["a/stop_loss"]
        assert journal.open_orders() == []  # no adopted order left open to be sent
    finally:
        journal.close()


def test_the_open_trades_and_their_exits_are_rebuilt_and_a_journaled_exit_does_not_return(tmp_path):
    path = tmp_path / "db" / "trader.sqlite"
    journal = Journal(path, 10_000.0)
    books: dict[str, Book] = {}

    def trade(order: wire.Order, price: float, cid: str | None = None) -> None:
        done = wire.Fill(cid or order.client_id, order.brain, order.instrument, order.units, price,
                         7, 0.0)  # fmt: skip
        book = books.setdefault(order.instrument, Book())
        book.apply(done.units, done.price)
        # An exit is the broker's own fill, adopted (its order journaled with it).
        assert journal.record_fill(done, book, 9, adopt=cid is not None)

    try:
        a = wire.Order("x", "EUR_USD", 1000, "a", 5, stop_loss=1e-3, take_profit=2e-3)
        b = wire.Order("y", "EUR_USD", 500, "b", 5, stop_loss=5e-4)
        c = wire.Order("z", "EUR_USD", -300, "c", 5)
        short = wire.Order("x", "GBP_USD", -100, "d", 5, take_profit=1e-2)
        for o in (a, b, c, short):
            journal.record(o, "order", "new", 6)
        trade(a, 1.1)
        trade(b, 1.2)
        trade(c, 1.15)  # closes 300 of the oldest trade, a's
        trade(wire.Order("y", "EUR_USD", -500, "b", 5), 1.1995, "b/stop_loss")  # b's exit
        trade(short, 1.3)
        pending = wire.Order("x", "EUR_USD", 10, "e", 5, stop_loss=1e-3, take_profit=4e-3)
        journal.record(pending, "order", "new", 6)
    finally:
        journal.close()
    again = Journal(path, 10_000.0)  # a restart
    try:
        recovered = again.rebuild(10)
        [eur], [gbp] = recovered.trades["EUR_USD"], recovered.trades["GBP_USD"]
        assert (eur.client_id, eur.brain, eur.units, eur.opened_ns) == ("a", "x", 700, 7)
        assert (eur.stop_loss, eur.take_profit) == (pytest.approx(1.099), pytest.approx(1.102))
        assert (gbp.client_id, gbp.brain, gbp.units, gbp.opened_ns) == ("d", "x", -100, 7)
        assert math.isnan(gbp.stop_loss) and gbp.take_profit == pytest.approx(1.29)  # a short's
        assert sum(t.units for t in recovered.trades["EUR_USD"]) == recovered.books["EUR_USD"].units
        assert again.open_orders() == [pending]  # its exits go with it
    finally:
        again.close()
