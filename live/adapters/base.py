"""What the trader expects of a broker adapter, and the netting arithmetic every broker shares.

Orders and fills cross this boundary as :class:`osm.core.wire.Order` and :class:`osm.core.wire.Fill`,
so the trader journals and publishes exactly what the broker reports. An adapter may fill an order
at once, later (on a quote, on a transaction stream), or report it unknown after a restart; the
trader only ever learns of fills by draining :meth:`Broker.take_fills`.

An adapter subclasses :class:`Broker` (a Protocol, so a structural match type-checks too), which
gives the optional abilities their defaults: no transaction cursor, nothing to halt on, no
expiries, nothing to cancel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from osm.core import wire
from osm.core.instruments import conversion
from osm.core.instruments import instrument as instrument_spec

Quote = tuple[int, float, float]  # time ns, bid, ask


@dataclass
class Book:
    """The net position of one instrument, accounted as OANDA does (average price, FIFO-free).

    Adding to a position moves the average price; reducing it realises
    ``closed units * (price - average) * side`` and keeps the average; crossing zero opens the
    remainder at the fill price. Prices, PnL and commission are in the instrument's quote currency.
    """

    units: int = 0
    average_price: float = 0.0
    realized: float = 0.0
    commission: float = 0.0

    def apply(self, units: int, price: float, commission: float = 0.0) -> float:
        """Book a fill of signed `units` at `price`; return the PnL it realised."""
        self.commission += commission
        if units == 0:
            return 0.0
        if self.units == 0 or (self.units > 0) == (units > 0):
            total = abs(self.units) + abs(units)
            self.average_price = (self.average_price * abs(self.units) + price * abs(units)) / total
            self.units += units
            return 0.0
        closed = min(abs(units), abs(self.units))
        side = 1 if self.units > 0 else -1
        pnl = closed * (price - self.average_price) * side
        self.realized += pnl
        self.units += units
        if self.units == 0:
            self.average_price = 0.0
        elif (self.units > 0) != (side > 0):  # crossed zero: the rest opens at this price
            self.average_price = price
        return pnl

    def unrealized(self, bid: float, ask: float) -> float:
        """PnL of closing now: a long sells at the bid, a short buys at the ask."""
        if self.units == 0 or not (math.isfinite(bid) and math.isfinite(ask)):
            return 0.0
        close = bid if self.units > 0 else ask
        return self.units * (close - self.average_price)

    def position(self, instrument: str, bid: float, ask: float, time_ns: int) -> wire.Position:
        return wire.Position(
            instrument, self.units, self.average_price, self.realized,
            self.unrealized(bid, ask), time_ns,
        )  # fmt: skip


def rate(instrument: str, price: float, quotes: Mapping[str, Quote], currency: str) -> float:
    """The rate turning `instrument`'s quote currency into `currency`, as OANDA books PnL: the
    instrument's own pair at `price` (a fill's price), any other pair at the mid of its last
    quote in `quotes`; NaN when no quoted pair converts."""
    mids = {name: (bid + ask) / 2 for name, (_, bid, ask) in quotes.items()}
    mids[instrument] = price
    return conversion(instrument_spec(instrument).quote, currency, mids)


def mark_to_market(
    books: Mapping[str, Book], quotes: Mapping[str, Quote], currency: str, margin_rate: float = 0.0
) -> tuple[float, float]:
    """Unrealised PnL and margin (`margin_rate` of the notional) of the open `books` at their
    last quotes, in `currency`, each converted at its own mid; a book never quoted counts 0."""
    unrealized = margin = 0.0
    for instrument, book in books.items():
        _, bid, ask = quotes.get(instrument, (0, math.nan, math.nan))
        if not (book.units and math.isfinite(bid)):
            continue
        mid = (bid + ask) * 0.5
        converted = rate(instrument, mid, quotes, currency)
        unrealized += book.unrealized(bid, ask) * converted
        margin += abs(book.units) * mid * margin_rate * converted
    return unrealized, margin


EXITS = ("stop_loss", "take_profit")  # a trade's exit orders; its closing fill is `<id>/<exit>`


@dataclass
class Trade:
    """An open trade: the units one fill opened, less what later fills the other way closed
    (FIFO), with the exit prices of its order's stop-loss and take-profit (NaN: none)."""

    client_id: str
    brain: str
    units: int
    opened_ns: int
    stop_loss: float = math.nan
    take_profit: float = math.nan


def trade_fill(
    trades: list[Trade], client_id: str, brain: str, units: int, price: float, time_ns: int,
    stop_loss: float | None = None, take_profit: float | None = None,
) -> None:  # fmt: skip
    """Apply a fill to one instrument's open `trades` (oldest first), as OANDA's netting does.

    A fill named ``<client id>/stop_loss`` or ``/take_profit`` closes that client id's trade.
    Any other closes trades oldest first; the units left open a trade whose exits lie the
    `stop_loss` / `take_profit` price distances from `price`. The paper broker trades this way,
    and the journal replays its fills this way after a restart, so both hold the same trades.
    """
    opener, _, exit_kind = client_id.rpartition("/")
    if exit_kind in EXITS:
        for trade in trades:
            if trade.client_id == opener:
                trades.remove(trade)
                return
    remaining = units
    for trade in trades:
        if remaining and (trade.units > 0) != (remaining > 0):
            closed = min(abs(remaining), abs(trade.units))
            side = 1 if trade.units > 0 else -1
            trade.units -= side * closed
            remaining += side * closed
    trades[:] = [t for t in trades if t.units]
    if remaining:
        side = 1 if remaining > 0 else -1
        trades.append(
            Trade(
                client_id, brain, remaining, time_ns,
                math.nan if stop_loss is None else price - side * stop_loss,
                math.nan if take_profit is None else price + side * take_profit,
            )
        )  # fmt: skip


class Ended(NamedTuple):
    """An order that ended without filling in full: the journal marks it `status` ("refused":
    expired or refused by the venue; "cancelled") and counts it as `code`."""

    order: wire.Order
    reason: str
    status: str = "refused"
    code: str = "stale_decision"


class Broker(Protocol):
    """A broker adapter as the trader drives it (one thread: the trader's loop).

    The attributes are optional abilities, with the defaults of a broker that has none:
    `cursor` is a venue's last transaction seen ('': none), which the trader persists once the
    fills up to it are journaled and hands back before :meth:`restore`; `halt_reason` is set by
    a broker that found a difference it cannot explain (the trader halts and clears it);
    `expiry`, set by the trader, gives each order the last market instant it may fill at (None:
    whenever), for a broker that lets decisions expire; `journaled`, set by the trader, gives
    the (client id, brain) of the journaled fill with a fill id, None if none is, for a broker
    that may read a fill again (a venue's transactions after a restart): it books only what
    the journal does not hold, so its books are the journal's and a repeat changes nothing, and
    it finds whose trade a fill it never saw opened.
    """

    cursor: str = ""
    halt_reason: str | None = None
    expiry: Callable[[wire.Order], int | None]  # set by the trader before restore
    journaled: Callable[[str], tuple[str, str] | None]  # set by the trader before restore

    def submit(self, order: wire.Order) -> None:
        """Send a market order; its fill comes back through :meth:`take_fills`."""

    def on_quotes(self, instrument: str, ticks: np.ndarray) -> int:
        """Take quotes from the router (TICK_DTYPE rows); return how many were rejected as bad."""

    def take_fills(self) -> list[wire.Fill]:
        """Fills that happened since the last call, in the order they happened."""

    def restore(
        self,
        books: dict[str, Book],
        balance: float,
        open_orders: list[wire.Order],
        trades: Mapping[str, list[Trade]] | None = None,
    ) -> list[str]:
        """Adopt the state journaled before a restart (`trades`: the open trades per instrument
        with their exits, as the journal's fills left them; a venue keeps its own); return
        client ids of open orders the broker neither holds nor filled, which the trader marks
        lost."""

    def positions(self) -> list[wire.Position]:
        """Every instrument held or traded, with unrealised PnL at the last quote."""

    def account(self) -> dict[str, Any]:
        """Balance, unrealised PnL, equity, margin: JSON-able numbers."""

    def pending(self) -> list[wire.Order]:
        """Orders sent and not yet filled, each with the units still to fill."""

    def cancel(self, client_id: str) -> bool:
        """Cancel the pending order `client_id`; False if the broker holds no such order (or
        cannot cancel). The outcome comes back through :meth:`take_expired` (cancelled) or, if
        the venue filled it first, :meth:`take_fills`."""
        return False

    def take_expired(self) -> list[Ended]:
        """Orders that ended without filling in full since the last call (expired, refused or
        cancelled), in the order they ended."""
        return []

    def close(self) -> None:
        """Release connections; the broker is not used again."""
