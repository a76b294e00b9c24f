"""The OANDA broker as the trader drives it: the :class:`~osm.live.adapters.base.Broker` contract
over :class:`~osm.live.adapters.oanda.execution.OandaExecution`.

Every network call runs on the execution's own thread; the trader's loop only enqueues orders and
drains the outcomes that thread reported, so a slow or dead venue never stalls quotes, commands or
heartbeats. Outcomes become what the trader journals:

- ``filled`` / ``partially_filled``: a :class:`wire.Fill` of the units the venue filled, at its
  price. A fill with no client id of ours (a stop-loss, a take-profit, a trade placed by hand) is
  reported under the client id ``venue-<transaction id>`` and the brain ``venue``; the trader
  adopts it into the journal.
- ``rejected`` / ``cancelled`` (nothing filled): the order expires with the venue's reason, so the
  trader journals it refused and tells its brain.
- ``unknown`` (no answer, and the venue could not be asked yet): the order stays pending; the
  execution thread looks it up by client id and reports what happened, never sending it twice.

Reconciliation at start (:meth:`OandaBroker.restore`): the venue is the truth. Orders the journal
holds open are looked up by client id (404: the venue never got them, so they are lost); the
transactions since the cursor the trader persisted are read, so fills that happened while the
trader was down (ours, or a stop-loss, or a manual trade) come back as fills; the venue's net
positions are then compared with the journal's books plus those fills, and any difference the
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
import os
import queue
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from osm.core import wire
from osm.core.config import TraderConfig
from osm.core.dtypes import valid_quotes
from osm.core.errors import ConfigError
from osm.core.instruments import conversion
from osm.core.instruments import instrument as instrument_spec
from osm.live.adapters.base import Book
from osm.live.adapters.oanda import parsing as P
from osm.live.adapters.oanda.config import OandaConfig, load_token
from osm.live.adapters.oanda.execution import OandaExecution

log = logging.getLogger("osm.oanda")

VENUE = "venue"  # the brain of fills that are no order of ours


def oanda_config(config: TraderConfig) -> OandaConfig:
    """The ``trader.adapter`` section as an :class:`OandaConfig`, with the fix when it is wrong."""
    settings = dict(config.adapter)
    if "environment" not in settings and os.environ.get("OANDA_ENVIRONMENT"):
        settings["environment"] = os.environ["OANDA_ENVIRONMENT"]
    try:
        return msgspec.convert(settings, OandaConfig)
    except (msgspec.ValidationError, ConfigError) as exc:
        raise ConfigError(
            f"trader.adapter (the oanda broker's settings): {exc}; it takes "
            f"{', '.join(OandaConfig.__struct_fields__)}"
        ) from None


class OandaBroker:
    """Market orders on one OANDA account, reported back as fills and expiries."""

    def __init__(self, config: TraderConfig) -> None:
        self.oanda = oanda_config(config)
        self.cursor = ""  # the last venue transaction reported; the trader persists it
        self.halt_reason: str | None = None  # set by restore on a difference it cannot explain
        self._events: queue.Queue[P.OrderEvent] = queue.Queue()
        self._pending: dict[str, wire.Order] = {}
        self._filled: dict[str, int] = {}  # client id -> units filled so far (partials)
        self._fills: list[wire.Fill] = []
        self._expired: list[tuple[wire.Order, str]] = []
        self._books: dict[str, Book] = {}
        self._quotes: dict[str, tuple[int, float, float]] = {}
        self.currency = "USD"  # the account's, from the venue at restore
        self._balance = math.nan
        self._execution = OandaExecution(self.oanda, load_token(), self._events.put)

    # -- the Broker contract ----------------------------------------------------------------------

    def submit(self, order: wire.Order) -> None:
        self._pending[order.client_id] = order
        self._execution.submit(order)

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

    def take_expired(self) -> list[tuple[wire.Order, str]]:
        self._take_events()
        expired, self._expired = self._expired, []
        return expired

    def restore(
        self, books: dict[str, Book], balance: float, open_orders: list[wire.Order]
    ) -> list[str]:
        """Reconcile with the venue (see the module's docstring); return the lost client ids."""
        self._books = {name: dataclasses.replace(book) for name, book in books.items()}
        ex = self._execution
        ex.cursor = self.cursor
        lost = []
        for order in open_orders:
            if ex.never_received(order.client_id):
                lost.append(order.client_id)
            else:
                self._pending[order.client_id] = order
        expected = {name: book.units for name, book in self._books.items()}
        if ex.cursor:  # what happened while the trader was away, before the thread polls on
            events, last = ex.transactions_since(ex.cursor)
            for event in events:
                ex.report(event)
                if event.kind in (P.FILLED, P.PARTIALLY_FILLED):
                    expected[event.instrument] = expected.get(event.instrument, 0) + event.units
            ex.advance(last)
        ex.start()  # with no cursor persisted (a first start) it begins at the venue's last
        venue = {name: units for name, (units, _) in ex.open_positions().items()}
        differ = {
            name: (expected.get(name, 0), venue.get(name, 0))
            for name in sorted(set(expected) | set(venue))
            if expected.get(name, 0) != venue.get(name, 0)
        }
        if differ:
            self.halt_reason = "reconciliation: journal and OANDA disagree on " + ", ".join(
                f"{name} (journal {ours:+d} units, OANDA {theirs:+d})"
                for name, (ours, theirs) in differ.items()
            )
            log.error("%s; trading halted until the difference is understood", self.halt_reason)
        summary = ex.summary().get("account", {})
        self.currency = str(summary.get("currency", self.currency))
        self._balance = float(summary.get("balance", math.nan))
        return lost

    def pending(self) -> list[wire.Order]:
        return list(self._pending.values())

    def positions(self) -> list[wire.Position]:
        out = []
        for name, book in self._books.items():
            time_ns, bid, ask = self._quotes.get(name, (0, math.nan, math.nan))
            out.append(book.position(name, bid, ask, time_ns))
        return out

    def account(self) -> dict[str, Any]:
        """The venue's balance at start plus what every fill since booked, and the open
        positions' PnL at the last quotes, all in the account currency."""
        unrealized = 0.0
        for name, book in self._books.items():
            _, bid, ask = self._quotes.get(name, (0, math.nan, math.nan))
            if book.units and math.isfinite(bid):
                unrealized += book.unrealized(bid, ask) * self._rate(name, (bid + ask) / 2)
        return {
            "broker": "oanda",
            "account": self._execution.account,
            "currency": self.currency,
            "balance": self._balance,
            "unrealized": unrealized,
            "equity": self._balance + unrealized,
            "cursor": self.cursor,
            "orders_unresolved": len(self._execution.unresolved),
        }

    def _rate(self, instrument: str, price: float) -> float:
        mids = {name: (q[1] + q[2]) / 2 for name, q in self._quotes.items()}
        mids[instrument] = price
        return conversion(instrument_spec(instrument).quote, self.currency, mids)

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
            if event.kind == P.FILLED and order is not None:
                self._pending.pop(event.client_id, None)
        elif event.kind in (P.REJECTED, P.CANCELLED) and order is not None:
            self._pending.pop(event.client_id, None)
            if not self._filled.get(event.client_id):
                self._expired.append((order, f"OANDA {event.kind} it: {event.reason}"))
        elif event.kind == P.UNKNOWN:
            log.warning("order %s: outcome unknown (%s); OANDA is asked again", event.client_id,
                        event.reason)  # fmt: skip

    def _fill(self, event: P.OrderEvent, order: wire.Order | None) -> None:
        if order is None:  # a stop-loss, take-profit or manual trade: no order of ours
            client_id, brain = f"{VENUE}-{event.transaction_id}", VENUE
        else:
            client_id, brain = event.client_id, order.brain
            self._filled[client_id] = self._filled.get(client_id, 0) + event.units
        # OANDA books the fill's PnL, financing and commission in the account currency itself.
        booked = event.pl + event.financing - event.commission
        self._balance += booked
        rate = self._rate(event.instrument, event.price)
        commission = event.commission / rate if math.isfinite(rate) else event.commission
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
            )  # fmt: skip
        )


def create(config: TraderConfig) -> OandaBroker:
    """The broker registry's factory for ``broker = "oanda"``."""
    return OandaBroker(config)


def check(config: TraderConfig, home: Path) -> None:
    """Raise a ConfigError, with the fix, if the oanda broker could not start from `home`."""
    oanda_config(config).account_id()
    load_token(home)
