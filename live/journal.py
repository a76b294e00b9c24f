"""The trader's journal: orders, fills and positions in SQLite (WAL), the truth after a crash.

An order's intent is committed, keyed by its client order id, before the broker sees it; the id is
UNIQUE, so a resent order (a restarted brain, a retrying client) is recognised and never executed
twice. Fills are keyed by the broker's fill id (the venue's transaction id; the paper broker's own
id), so a broker that reports a fill again is ignored while an order filled in parts keeps every
part. Positions are a snapshot for readers; on start the trader rebuilds them from the fills.

Schema::

    orders(seq, client_id UNIQUE, brain, instrument, kind, target, units, after_ns, status, reason,
           created_ns, updated_ns, stop_loss, take_profit)
        kind: order | target | flatten; target: the wanted position of a target, else NULL;
        status: new (committed, maybe not sent) | sent (and still open then; an order filled at
        once goes from new to filled; one filled in part stays open) | filled (every unit) |
        refused (also an order that expired: a stale decision, its reason says so) | cancelled
        (on request, or the rest of a part-filled order, by the venue; the reason says which) |
        noop (a target already met) | lost (sent, but the broker neither holds nor filled it
        after a restart); stop_loss, take_profit: the order's exit distances from its fill price
        (NULL: none), from which a replay rebuilds the open trades and their exit prices
    fills(seq, fill_id UNIQUE, client_id -> orders, brain, instrument, units, price, commission,
          time_ns, booked)
        fill_id: the broker's id of the fill (a journal from before partial fills: the client id)
        booked: what the fill changed the balance by, in the account currency (NULL: not
        converted, or journaled before the column existed: then the quote-currency PnL counts)
    positions(instrument PRIMARY KEY, units, average_price, realized, commission, updated_ns)
    meta(key PRIMARY KEY, value): initial_balance, halted
"""

from __future__ import annotations

import collections
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec

from osm.core import wire
from osm.live.adapters.base import Book, Trade, trade_fill

STATUSES = ("new", "sent", "filled", "refused", "cancelled", "noop", "lost")
OPEN = ("new", "sent")
# How many rows a reader asks for: SQLite's integers are 64-bit.
Limit = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

_ORDERS = f"""
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL UNIQUE,
    brain TEXT NOT NULL,
    instrument TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('order', 'target', 'flatten')),
    target INTEGER,
    units INTEGER NOT NULL,
    after_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    reason TEXT NOT NULL DEFAULT '',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    stop_loss REAL,
    take_profit REAL
)"""
_FILLS = """
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fill_id TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL REFERENCES orders (client_id),
    brain TEXT NOT NULL,
    instrument TEXT NOT NULL,
    units INTEGER NOT NULL,
    price REAL NOT NULL,
    commission REAL NOT NULL,
    time_ns INTEGER NOT NULL,
    booked REAL
)"""
_SCHEMA = f"""
{_ORDERS};
CREATE INDEX IF NOT EXISTS orders_open ON orders (status) WHERE status IN {OPEN};
{_FILLS};
CREATE INDEX IF NOT EXISTS fills_order ON fills (client_id);
CREATE TABLE IF NOT EXISTS positions (
    instrument TEXT PRIMARY KEY,
    units INTEGER NOT NULL,
    average_price REAL NOT NULL,
    realized REAL NOT NULL,
    commission REAL NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Recovered:
    """What the fills say after a restart."""

    books: dict[str, Book] = field(default_factory=dict)
    brain_units: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    balance: float = 0.0
    trades: dict[str, list[Trade]] = field(default_factory=dict)  # open, oldest first


class Journal:
    """One SQLite file, used by the trader's loop thread only.

    Parameters
    ----------
    path
        The database file; created with its folder if missing.
    initial_balance
        The account's opening balance, stored on creation; later values are ignored so that
        editing config.json cannot rewrite the account's history.
    sync
        SQLite's synchronous level: "normal" (durable across process crashes) or "full" (across
        power loss too).
    """

    def __init__(self, path: Path, initial_balance: float, sync: str = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # private, whatever the umask
        # Autocommit: each statement is its own transaction unless wrapped in `with self._tx()`.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL makes a commit survive the death of the process (kill -9 included)
        # without an fsync per commit; FULL also survives a power cut, at ~0.3 ms per commit.
        if sync not in ("normal", "full"):
            raise ValueError(f"journal sync must be 'normal' or 'full', got {sync!r}")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._migrate()
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('initial_balance', ?)", (repr(initial_balance),)
        )
        self.initial_balance = float(self.get_meta("initial_balance") or initial_balance)

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Bring a journal written by an older version to this schema (foreign keys are off)."""
        fills = {row[1] for row in self._db.execute("PRAGMA table_info(fills)")}
        if not fills:
            return  # a new journal
        if "booked" not in fills:  # written before PnL was booked per currency
            self._db.execute("ALTER TABLE fills ADD COLUMN booked REAL")
        if "stop_loss" not in {row[1] for row in self._db.execute("PRAGMA table_info(orders)")}:
            # written before the paper broker's exits survived a restart: no order had any
            for name in ("stop_loss", "take_profit"):
                self._db.execute(f"ALTER TABLE orders ADD COLUMN {name} REAL")
        orders = self._db.execute("SELECT sql FROM sqlite_master WHERE name = 'orders'").fetchone()
        if "'cancelled'" not in orders[0]:  # written before orders could be cancelled
            self._rebuild("orders", _ORDERS, "*")
        if "fill_id" not in fills:  # written when fills were keyed by client id (one per order)
            # A venue's own fill (venue-<transaction id>) is keyed by its transaction id, as the
            # broker now names it: read again after the upgrade, it is known.
            fill_id = (
                "CASE WHEN client_id LIKE 'venue-%' THEN substr(client_id, 7) ELSE client_id END"
            )
            columns = f"seq, {fill_id}, client_id, brain, instrument, units, price, commission, "
            self._rebuild("fills", _FILLS, columns + "time_ns, booked")

    def _rebuild(self, table: str, create: str, columns: str) -> None:
        """Replace `table` by `create`'s, keeping its rows (SQLite cannot alter a constraint)."""
        db = self._tx()
        db.execute(create.replace(f"EXISTS {table} (", f"EXISTS {table}_new ("))
        db.execute(f"INSERT INTO {table}_new SELECT {columns} FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
        db.execute("COMMIT")

    def _tx(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def record(
        self,
        order: wire.Order,
        kind: str,
        status: str,
        now_ns: int,
        target: int | None = None,
        reason: str = "",
    ) -> bool:
        """Commit an order's intent (or its refusal); False if its client id is already known."""
        try:
            self._db.execute(
                "INSERT INTO orders (client_id, brain, instrument, kind, target, units, after_ns,"
                " status, reason, created_ns, updated_ns, stop_loss, take_profit)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    order.client_id, order.brain, order.instrument, kind, target, order.units,
                    order.after_ns, status, reason, now_ns, now_ns, order.stop_loss,
                    order.take_profit,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            return False
        return True

    def lookup(self, client_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM orders WHERE client_id = ?", (client_id,)).fetchone()
        return dict(row) if row else None

    def mark(self, client_id: str, status: str, now_ns: int, reason: str = "") -> None:
        self._db.execute(
            "UPDATE orders SET status = ?, reason = ?, updated_ns = ? WHERE client_id = ?",
            (status, reason, now_ns, client_id),
        )

    def record_fill(self, fill: wire.Fill, book: Book, now_ns: int, adopt: bool = False) -> bool:
        """Commit a fill, its order's status and the position after it in one transaction.

        The order is filled once its fills add up to its units; until then it stays open. Return
        False (and change nothing) if this fill (its `fill_id`, else its client id) is journaled
        already; raise IntegrityError for a fill of an order that was never journaled. With
        `adopt`, the fill is of an order the journal does not have (a stop-loss, a take-profit, a
        trade placed by hand, an order of ours a restored journal lost): its order is journaled with it, in the same transaction, so a
        kill between the two cannot leave an open order behind to be sent again.
        """
        fill_id = fill.fill_id or fill.client_id
        db = self._tx()
        try:
            if adopt:
                order = wire.Order(
                    fill.brain, fill.instrument, fill.units, fill.client_id, fill.time_ns
                )
                why = (
                    "adopted: a fill the journal had no order for (a stop-loss, a take-profit, a "
                    "manual trade, or an order of ours the journal lost)"
                )
                self.record(order, "order", "new", now_ns, reason=why)  # inside this transaction
            db.execute(
                "INSERT INTO fills (fill_id, client_id, brain, instrument, units, price,"
                " commission, time_ns, booked) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    fill_id, fill.client_id, fill.brain, fill.instrument, fill.units,
                    fill.price, fill.commission, fill.time_ns, fill.booked,
                ),
            )  # fmt: skip
            db.execute(
                "UPDATE orders SET status = 'filled', updated_ns = ? WHERE client_id = ? AND"
                " units = (SELECT SUM(units) FROM fills WHERE client_id = orders.client_id)",
                (now_ns, fill.client_id),
            )
            self._write_position(fill.instrument, book, now_ns)
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            # Asked only on failure, so a fill costs no extra query: a repeat, or no such order.
            if self.fill_owner(fill_id) is not None:
                return False
            raise
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return True

    def fill_owner(self, fill_id: str) -> tuple[str, str] | None:
        """(client id, brain) of the journaled fill with this id (the broker's; the client id
        for older ones, the transaction id for a venue's), None if none is."""
        row = self._db.execute(
            "SELECT client_id, brain FROM fills WHERE fill_id = ?", (fill_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _write_position(self, instrument: str, book: Book, now_ns: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO positions VALUES (?,?,?,?,?,?)",
            (instrument, book.units, book.average_price, book.realized, book.commission, now_ns),
        )

    def open_orders(self) -> list[wire.Order]:
        """Orders committed and not yet filled in full, refused, cancelled or lost, oldest
        first; an order filled in part with the units still to fill."""
        rows = self._db.execute(
            "SELECT *, units - (SELECT COALESCE(SUM(units), 0) FROM fills"
            f" WHERE fills.client_id = orders.client_id) AS rest FROM orders WHERE status IN {OPEN}"
            " ORDER BY seq"
        ).fetchall()
        return [
            wire.Order(
                r["brain"], r["instrument"], r["rest"], r["client_id"], r["after_ns"],
                r["stop_loss"], r["take_profit"],
            )
            for r in rows
        ]  # fmt: skip

    def rebuild(self, now_ns: int) -> Recovered:
        """Replay every fill into positions (rewriting the snapshot), the account balance and
        the open trades with their exits (an exit's fill closes its trade: it cannot fire again)."""
        out = Recovered(balance=self.initial_balance)
        rows = self._db.execute(
            "SELECT fills.*, orders.stop_loss, orders.take_profit FROM fills"
            " LEFT JOIN orders ON orders.client_id = fills.client_id ORDER BY fills.seq"
        )
        for r in rows:
            book = out.books.setdefault(r["instrument"], Book())
            pnl = book.apply(r["units"], r["price"], r["commission"]) - r["commission"]
            out.balance += pnl if r["booked"] is None else r["booked"]
            out.brain_units[(r["brain"], r["instrument"])] += r["units"]
            trade_fill(
                out.trades.setdefault(r["instrument"], []), r["client_id"], r["brain"],
                r["units"], r["price"], r["time_ns"], r["stop_loss"], r["take_profit"],
            )  # fmt: skip
        db = self._tx()
        db.execute("DELETE FROM positions")
        for instrument, book in out.books.items():
            self._write_position(instrument, book, now_ns)
        db.execute("COMMIT")
        return out

    def decided(self) -> dict[tuple[str, str], int]:
        """The newest after_ns of the targets executed (or met) per (brain, instrument)."""
        rows = self._db.execute(
            "SELECT brain, instrument, MAX(after_ns) FROM orders"
            " WHERE kind = 'target' AND status != 'refused' GROUP BY brain, instrument"
        ).fetchall()
        return {(brain, instrument): after for brain, instrument, after in rows}

    def orders(self, limit: Limit = 100, status: str | None = None) -> list[dict[str, Any]]:
        """The latest orders, newest first, optionally of one status."""
        if status is None:
            rows = self._db.execute("SELECT * FROM orders ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                "SELECT * FROM orders WHERE status = ? ORDER BY seq DESC LIMIT ?", (status, limit)
            )
        return [dict(r) for r in rows]

    def fills(self, limit: Limit = 100) -> list[dict[str, Any]]:
        """The latest fills, newest first."""
        rows = self._db.execute("SELECT * FROM fills ORDER BY seq DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
