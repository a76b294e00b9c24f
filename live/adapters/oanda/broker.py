"""The OANDA broker as the trader drives it: the :class:`~osm.live.adapters.base.Broker` contract
over :class:`~osm.live.adapters.oanda.execution.OandaExecution`.

Every network call runs on the execution's own thread; the trader's loop only enqueues orders and
drains the outcomes that thread reported, so a slow or dead venue never stalls quotes, commands or
heartbeats. Outcomes become what the trader journals:

- ``filled`` / ``partially_filled``: a :class:`wire.Fill` of the units the venue filled, at its
  price. A fill with no client id of ours (a stop-loss, a take-profit, a trade placed by hand) is
  reported under the client id ``venue-<transaction id>`` and the brain ``venue``; the trader
  adopts it into the journal. So is a fill of an order of ours (our client id, its brain as the
  order's tag) that is not open here, under that client id and brain: one the journal does not
  hold (restored from an older backup) is adopted with its order, never dropped.
- ``rejected``: the order ends with the venue's reason; the trader journals it refused and tells
  its brain. ``cancelled`` (on request, by the venue, or the rest of a part-filled order): the
  same, journaled cancelled. An order filled in parts stays pending until they add up.
- ``unknown`` (no answer, and the venue could not be asked yet): the order stays pending; the
  execution thread looks it up by client id and reports what happened, never sending it twice.

Reconciliation at start (:meth:`OandaBroker.restore`) and whenever the venue answers again after
an outage: the venue is the truth. Orders the journal holds open are looked up by client id (at
start, 404: the venue never got them, so they are lost; later, an order whose outcome is unknown
is sent again); the transactions since the cursor the trader persisted are read, so fills that
happened meanwhile (ours, or a stop-loss, or a manual trade) come back as fills; the venue's net
positions are then compared with the books once those fills are applied, and any difference the
transactions do not explain halts trading with the difference in the reason.

Money: a fill's ``booked`` is OANDA's own figure in the account currency (its ``pl`` plus
financing less commission); ``account()`` is the venue's balance at start plus every fill booked
since, and the open positions' PnL converted as OANDA converts it. Positions (average price,
realised PnL) stay in each instrument's quote currency, as the paper broker keeps them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from osm.core import wire
from osm.core.config import TraderConfig
from osm.core.dtypes import valid_quotes
from osm.live.adapters.base import Book, Broker, Ended, Trade, mark_to_market, rate
from osm.live.adapters.oanda import parsing as P
from osm.live.adapters.oanda.config import OandaConfig, load_token, settings
from osm.live.adapters.oanda.execution import OandaExecution

log = logging.getLogger("osm.oanda")

VENUE = "venue"  # the brain of fills that are no order of ours
# Fills that close one trade by its own exit order, named as the paper broker names them.
_EXITS = {
    "STOP_LOSS_ORDER": "stop_loss",
    "TAKE_PROFIT_ORDER": "take_profit",
    "TRAILING_STOP_LOSS_ORDER": "trailing_stop_loss",
}


def oanda_config(config: TraderConfig) -> OandaConfig:
    """The ``trader.adapter`` section as an :class:`OandaConfig`, with the fix when it is wrong."""
    return settings("trader.adapter", config.adapter)


class OandaBroker(Broker):
    """Market orders on one OANDA account, reported back as fills and expiries."""

    def __init__(self, config: TraderConfig) -> None:
        self.oanda = oanda_config(config)
        self.cursor = ""  # the last venue transaction reported; the trader persists it
        self.halt_reason: str | None = None  # set by restore on a difference it cannot explain
        self._events: queue.Queue[P.OrderEvent] = queue.Queue()
        self._pending: dict[str, wire.Order] = {}
        self._filled: dict[str, int] = {}  # client id -> units filled so far (partials)
        self._owners: dict[str, tuple[str, str]] = {}  # trade id -> (client id, brain) of ours
        self._fills: list[wire.Fill] = []
        self._expired: list[Ended] = []
        self._books: dict[str, Book] = {}
        self._quotes: dict[str, tuple[int, float, float]] = {}
        self.currency = "USD"  # the account's, from the venue at restore
        self._balance = math.nan
        self.reconciliations = 0  # with the venue: at start, and after every outage
        # The owner of a journaled fill id; the trader sets it (see Broker): nothing, alone.
        self.journaled: Callable[[str], tuple[str, str] | None] = lambda fill_id: None
        self._execution = OandaExecution(self.oanda, load_token(), self._events.put)

    # -- the Broker contract ----------------------------------------------------------------------

    def submit(self, order: wire.Order) -> None:
        self._pending[order.client_id] = order
        exits: dict[str, float | None] = {"stop_loss": None, "take_profit": None}
        if order.stop_loss is not None or order.take_profit is not None:
            quote = self._quotes.get(order.instrument)
            if quote is None:
                why = "no quote yet to place its stop-loss / take-profit from"
                self._pending.pop(order.client_id)
                self._expired.append(Ended(order, why, code="no_quote"))
                return
            side = 1 if order.units > 0 else -1
            price = quote[2] if side > 0 else quote[1]  # where it fills, as near as known
            for name, sign in (("stop_loss", -1), ("take_profit", 1)):
                distance = getattr(order, name)
                if distance is not None:
                    exits[name] = price + sign * side * distance
            bad = {k: v for k, v in exits.items() if v is not None and not v > 0}
            if bad:
                why = (
                    f"{', '.join(bad)} at {order.instrument} {price} would be a price of "
                    f"{', '.join(f'{v:.5g}' for v in bad.values())}: give a distance in price "
                    "units (0.0020 is 20 pips on EUR_USD), smaller than the price"
                )
                self._pending.pop(order.client_id)
                self._expired.append(Ended(order, why, code="bad_order"))
                return
        self._execution.submit(order, **exits)

    def on_quotes(self, instrument: str, ticks: np.ndarray) -> int:
        valid = valid_quotes(ticks["bid"], ticks["ask"])
        if valid.any():
            last = ticks[np.flatnonzero(valid)[-1]]
            self._quotes[instrument] = (int(last["time"]), float(last["bid"]), float(last["ask"]))
        return int(len(ticks) - valid.sum())

    def take_fills(self) -> list[wire.Fill]:
        self._take_events()
        fills, self._fills = self._fills, []
        return fills

    def cancel(self, client_id: str) -> bool:
        if client_id not in self._pending:
            return False
        self._execution.cancel(client_id)
        return True

    def take_expired(self) -> list[Ended]:
        self._take_events()
        expired, self._expired = self._expired, []
        return expired

    def restore(
        self,
        books: dict[str, Book],
        balance: float,
        open_orders: list[wire.Order],
        trades: Mapping[str, list[Trade]] | None = None,
    ) -> list[str]:
        """Reconcile with the venue (see the module's docstring); return the lost client ids.
        The venue keeps its trades and their exits: `trades` is not needed."""
        self._books = {name: dataclasses.replace(book) for name, book in books.items()}
        ex = self._execution
        ex.cursor = self.cursor
        lost = []
        for order in open_orders:
            if ex.never_received(order.client_id):
                lost.append(order.client_id)
            else:
                self._pending[order.client_id] = order
        ex.reconcile()  # what happened while the trader was away, then the venue's positions
        ex.start()
        summary = ex.summary().get("account", {})
        self.currency = str(summary.get("currency", self.currency))
        self._balance = float(summary.get("balance", math.nan))
        return lost

    def pending(self) -> list[wire.Order]:
        return [
            msgspec.structs.replace(order, units=order.units - self._filled.get(client_id, 0))
            for client_id, order in self._pending.items()
        ]

    def positions(self) -> list[wire.Position]:
        out = []
        for name, book in self._books.items():
            time_ns, bid, ask = self._quotes.get(name, (0, math.nan, math.nan))
            out.append(book.position(name, bid, ask, time_ns))
        return out

    def account(self) -> dict[str, Any]:
        """The venue's balance at start plus what every fill since booked, and the open
        positions' PnL at the last quotes, all in the account currency."""
        unrealized, _ = mark_to_market(self._books, self._quotes, self.currency)
        return {
            "broker": "oanda",
            "account": self._execution.account,
            "currency": self.currency,
            "balance": self._balance,
            "unrealized": unrealized,
            "equity": self._balance + unrealized,
            "cursor": self.cursor,
            "orders_unresolved": len(self._execution.unresolved),
            "venue_down": self._execution.down,
            "reconciliations": self.reconciliations,
        }

    def close(self) -> None:
        self._execution.stop()

    # -- outcomes ---------------------------------------------------------------------------------

    def _take_events(self) -> None:
        cursor = self._execution.cursor  # first: every event up to it is queued by now
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            self._on_event(event)
        if self._execution.error is not None and self.halt_reason is None:
            self.halt_reason = f"OANDA orders stopped: {self._execution.error}"
        self.cursor = cursor

    def _on_event(self, event: P.OrderEvent) -> None:
        order = self._pending.get(event.client_id)
        if event.kind in (P.FILLED, P.PARTIALLY_FILLED):
            self._fill(event, order)
            if order is not None and self._filled.get(event.client_id) == order.units:
                self._done(event.client_id)
        elif event.kind == P.REJECTED and order is not None:
            self._done(event.client_id)
            self._expired.append(
                Ended(order, f"OANDA rejected it: {event.reason}", code="venue_rejected")
            )
        elif event.kind == P.CANCELLED and order is not None:
            filled = self._done(event.client_id)
            rest = msgspec.structs.replace(order, units=order.units - filled)
            why = f"OANDA cancelled {'the rest' if filled else 'it'}: {event.reason}"
            self._expired.append(Ended(rest, why, "cancelled", "cancelled"))
        elif event.kind == P.RECONCILED:
            self._owners.update(event.owners)
            self._compare(event.positions)
        elif event.kind == P.UNKNOWN:
            log.warning("order %s: outcome unknown (%s); OANDA is asked again", event.client_id,
                        event.reason)  # fmt: skip

    def _compare(self, venue: dict[str, int]) -> None:
        """Halt on a difference between the books (every event up to the venue's read applied)
        and the venue's net positions: no transaction explains it."""
        self.reconciliations += 1
        ours = {name: book.units for name, book in self._books.items()}
        differ = {
            name: (ours.get(name, 0), venue.get(name, 0))
            for name in sorted(set(ours) | set(venue))
            if ours.get(name, 0) != venue.get(name, 0)
        }
        if differ and self.halt_reason is None:
            self.halt_reason = "reconciliation: journal and OANDA disagree on " + ", ".join(
                f"{name} (journal {mine:+d} units, OANDA {theirs:+d})"
                for name, (mine, theirs) in differ.items()
            )
            log.error("%s; trading halted until the difference is understood", self.halt_reason)

    def _done(self, client_id: str) -> int:
        """Forget a pending order that will fill no more; return the units it filled."""
        self._pending.pop(client_id, None)
        return self._filled.pop(client_id, 0)

    def _owner(self, trade_id: str) -> tuple[str, str] | None:
        """(client id, brain) of ours that opened a trade: known since it opened (or was open at
        the start), else from the journal (a trade that opened and closed while the trader was
        down: OANDA's trade id is its opening fill's transaction id)."""
        owner = self._owners.get(trade_id) or self.journaled(trade_id)
        if owner is None or owner[1] == VENUE or "/" in owner[0]:
            return None  # not a trade of ours, or a fill that closed one
        return owner

    def _fill(self, event: P.OrderEvent, order: wire.Order | None) -> None:
        if self.journaled(event.transaction_id) is not None:
            # Read again after a restart (the cursor persisted lags the fill by one poll): the
            # journal has it, and so the books restored from it. Counted here, it would make the
            # books differ from the venue's and halt trading on nothing.
            log.info("fill %s of %s is journaled already", event.transaction_id, event.client_id)
            return
        owner = next(filter(None, map(self._owner, event.trade_ids)), None)
        if order is not None:
            client_id, brain = event.client_id, order.brain
            self._filled[client_id] = self._filled.get(client_id, 0) + event.units
        elif _ours(event):
            # An order of ours that is not open here and whose fill the journal does not hold
            # (the journal was restored from a backup older than the order; the order was
            # refused at a restart, after it was sent): the venue's position all the same, so
            # its brain's (the order's tag), for the trader to journal (or adopt, with its
            # order). Once: the journal keys it by its transaction id, `journaled` above.
            client_id, brain = event.client_id, event.tag
            log.warning("fill %s of %s (%s): an order of ours not open here; adopted",
                        event.transaction_id, client_id, brain)  # fmt: skip
        elif owner is not None and event.reason in _EXITS:  # the exit of a trade of ours
            client_id, brain = f"{owner[0]}/{_EXITS[event.reason]}", owner[1]
        else:  # a trade placed by hand, or what closed one: no order of ours
            client_id, brain = f"{VENUE}-{event.transaction_id}", VENUE
            if event.client_id:  # a client id of no order we know, with no brain to name
                log.warning("fill %s of %s, an order with no tag: adopted as the venue's",
                            event.transaction_id, event.client_id)  # fmt: skip
        if event.trade_opened and brain != VENUE and "/" not in client_id:
            self._owners[event.trade_opened] = (client_id, brain)
        # OANDA books the fill's PnL, financing and commission in the account currency itself.
        booked = event.pl + event.financing - event.commission
        self._balance += booked
        to_account = rate(event.instrument, event.price, self._quotes, self.currency)
        commission = (
            event.commission / to_account if math.isfinite(to_account) else event.commission
        )
        book = self._books.setdefault(event.instrument, Book())
        book.apply(event.units, event.price, commission)
        self._fills.append(
            wire.Fill(
                client_id,
                brain,
                event.instrument,
                event.units,
                event.price,
                event.time_ns,
                commission,
                booked,
                event.transaction_id,
            )  # fmt: skip
        )


def _ours(event: P.OrderEvent) -> bool:
    """Whether a fill is of an order we sent: a client id we could have given (no '/', which
    names a trade's exit) and a tag, the brain we send as each order's."""
    return bool(event.client_id and event.tag) and "/" not in event.client_id


def create(config: TraderConfig) -> OandaBroker:
    """The broker registry's factory for ``broker = "oanda"``."""
    return OandaBroker(config)


def check(config: TraderConfig, home: Path) -> None:
    """Raise a ConfigError, with the fix, if the oanda broker could not start from `home`."""
    oanda_config(config).account_id()
    load_token(home)
