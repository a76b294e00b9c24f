"""Paper execution: orders fill at the first quote at or after their `after_ns`, as in a backtest.

A target decided at the close of bar t carries ``after_ns`` = that close; the backtest fills it at
the open of bar t+1, which is the first quote at or after the close. The paper broker keeps recent
quotes per instrument, so an order that reaches it after its quote (a slow brain, ticks replayed
as fast as possible) still fills at that quote; an order whose quote has not arrived yet waits for
it. Buys pay the ask, sells get the bid, commission is a fraction of notional. ``after_ns <= 0``
means now: the last quote held.

A decision is for its bar: :attr:`PaperBroker.expiry` (set by the trader from its risk limits)
gives each order the last market instant it may fill at. An order whose quote comes later (the
trader was down while the market moved on, or the quote rolled out of the ring) does not fill: it
expires, and :meth:`PaperBroker.take_expired` hands it back with the reason, once.

Each fill that opens units opens a trade, as on OANDA; fills the other way close trades oldest
first. An order's `stop_loss` / `take_profit` distances become its trade's exit prices; the first
quote from the trade's own on that reaches one (a long's bid, a short's ask) closes the trade at
that quote, as a fill of the order's brain named ``<client id>/stop_loss`` or ``/take_profit``. The
journal keeps each order's distances, so after a restart the trader hands back the same open trades
with the same exits, replayed from the fills (:func:`osm.live.adapters.base.trade_fill`, which both
use).

Events happen in quote order, as at a venue: within a batch of quotes, an order fills and a trade
exits at its own quote, and each sees what the earlier ones left (a stop-loss reached at one quote
closes its trade before an opposite order filling at a later quote could net it away). At one quote,
a trade's exit comes before an order that fills at that quote: the exit rests at the venue and fires
as the quote arrives, while the order is served at the quote once it is there (time priority), so
the order then opens the other way rather than closing the trade. Orders due at one quote fill in
the order sent; as a trade's exits are live from the quote it opened at, the trade one of them opens
may exit before the next one fills. A late order, filled at a quote already held, opens a trade
whose exits are looked for in the quotes held after it. Only accepted quotes (see
:meth:`QuoteRing.accept`) fill or exit anything.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from osm.core import wire
from osm.core.config import TraderConfig
from osm.core.dtypes import valid_quotes
from osm.core.instruments import instrument as instrument_spec
from osm.live.adapters.base import (
    Book,
    Broker,
    Ended,
    Quote,
    Trade,
    mark_to_market,
    rate,
    trade_fill,
)
from osm.live.adapters.paper.config import PaperConfig

_NEVER = np.iinfo(np.int64).min
log = logging.getLogger("osm.paper")


class QuoteRing:
    """The last `capacity` valid quotes of one instrument, oldest first, in contiguous arrays.

    The buffers hold twice `capacity`; when they fill, the newest quotes move to the front (one
    O(capacity) copy every `capacity` appends), so lookups are a `searchsorted` over one view.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._time = np.empty(2 * capacity, dtype=np.int64)
        self._bid = np.empty(2 * capacity, dtype=np.float64)
        self._ask = np.empty(2 * capacity, dtype=np.float64)
        self._start = self._end = 0
        self.last_time = _NEVER  # newest accepted quote; older ones are refused
        self.dropped_until = _NEVER  # newest quote rolled out of the window

    def __len__(self) -> int:
        return self._end - self._start

    def accept(self, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Time, bid and ask of the quotes of TICK_DTYPE `ticks` the ring would keep.

        Refused: a non-finite or non-positive price, ask < bid, or a time before the last accepted.
        Hand what this returns to :meth:`extend` before accepting more.
        """
        t, b, a = ticks["time"], ticks["bid"], ticks["ask"]
        ok = valid_quotes(b, a)
        t, b, a = t[ok], b[ok], a[ok]
        # A quote is in order if no earlier accepted quote is later; refused quotes never raise the
        # running maximum (they are below it), so one cumulative maximum decides them all.
        before = np.maximum.accumulate(np.concatenate(([self.last_time], t)))[:-1]
        keep = t >= before
        return t[keep], b[keep], a[keep]

    def extend(self, t: np.ndarray, b: np.ndarray, a: np.ndarray) -> None:
        """Keep quotes :meth:`accept` returned (the newest `capacity` of them if more)."""
        if len(t) == 0:
            return
        if len(t) > self.capacity:
            self.dropped_until = int(t[-self.capacity - 1])
            t, b, a = t[-self.capacity :], b[-self.capacity :], a[-self.capacity :]
        n = len(t)
        if self._end + n > len(self._time):
            held = min(len(self), self.capacity - n)
            if len(self) > held:
                self.dropped_until = max(self.dropped_until, int(self._time[self._end - held - 1]))
            for buf in (self._time, self._bid, self._ask):
                buf[:held] = buf[self._end - held : self._end]
            self._start, self._end = 0, held
        for buf, values in ((self._time, t), (self._bid, b), (self._ask, a)):
            buf[self._end : self._end + n] = values
        self._end += n
        if len(self) > self.capacity:
            self._start = self._end - self.capacity
            self.dropped_until = max(self.dropped_until, int(self._time[self._start - 1]))
        self.last_time = int(t[-1])

    def append(self, ticks: np.ndarray) -> int:
        """Keep the quotes of TICK_DTYPE `ticks` that :meth:`accept` accepts; return how many it
        refused."""
        t, b, a = self.accept(ticks)
        self.extend(t, b, a)
        return len(ticks) - len(t)

    @property
    def times(self) -> np.ndarray:
        return self._time[self._start : self._end]

    @property
    def bids(self) -> np.ndarray:
        return self._bid[self._start : self._end]

    @property
    def asks(self) -> np.ndarray:
        return self._ask[self._start : self._end]

    def index_for(self, after_ns: int) -> int | None:
        """Index of the quote an order with this `after_ns` fills at, or None if not arrived yet."""
        if len(self) == 0:
            return None
        if after_ns <= 0:
            return len(self) - 1
        i = int(np.searchsorted(self.times, after_ns, side="left"))
        return i if i < len(self) else None

    def quote(self, i: int) -> tuple[int, float, float]:
        j = self._start + i
        return int(self._time[j]), float(self._bid[j]), float(self._ask[j])

    def latest(self) -> tuple[int, float, float] | None:
        return self.quote(len(self) - 1) if len(self) else None


class _Exit(NamedTuple):
    """Where a trade's stop-loss or take-profit is first reached in a run of quotes."""

    index: int  # of the quote in the run
    time_ns: int
    price: float  # a long's bid, a short's ask
    kind: str  # "stop_loss" or "take_profit"
    trade: Trade


def _first_exit(
    trade: Trade, times: np.ndarray, bids: np.ndarray, asks: np.ndarray, start: int
) -> _Exit | None:
    """The first quote from index `start` on, and not before the trade opened, that reaches its
    stop-loss or take-profit; None if none does (or it has neither)."""
    if math.isnan(trade.stop_loss) and math.isnan(trade.take_profit):
        return None
    side = 1 if trade.units > 0 else -1
    close = (bids if side > 0 else asks)[start:]
    with np.errstate(invalid="ignore"):  # an exit not set (NaN) is never reached
        stop = (close - trade.stop_loss) * side <= 0
        take = (close - trade.take_profit) * side >= 0
    reached = np.flatnonzero((stop | take) & (times[start:] >= trade.opened_ns))
    if not len(reached):
        return None
    i = int(reached[0])
    kind = "stop_loss" if stop[i] else "take_profit"
    return _Exit(start + i, int(times[start + i]), float(close[i]), kind, trade)


class PaperBroker(Broker):
    """A simulated broker: fills per DESIGN section 3, netting positions, balance and margin."""

    def __init__(self, config: PaperConfig) -> None:
        self.config = config
        self._rings: dict[str, QuoteRing] = {}
        self._books: dict[str, Book] = {}
        self._trades: dict[str, list[Trade]] = {}  # open trades per instrument, oldest first
        self._pending: list[wire.Order] = []  # in submission order, which is fill order
        self._fills: list[wire.Fill] = []
        self._expired: list[Ended] = []
        # The last market instant an order may fill at (None: any time), set by the trader.
        self.expiry: Callable[[wire.Order], int | None] = lambda order: None
        self._balance = config.balance
        self.late_fills = 0  # fills whose exact quote had rolled out of the ring
        self.unconverted = 0  # fills whose PnL no quote could convert into the account currency

    @classmethod
    def from_trader(cls, config: TraderConfig) -> PaperBroker:
        return cls(PaperConfig.from_trader(config))

    def submit(self, order: wire.Order) -> None:
        self._pending.append(order)
        ring = self._rings.get(order.instrument)
        if ring is not None:
            # The quotes are the ring's: only an order just sent can fill at one of them (the
            # others wait for theirs), and the trade it opens is watched from its quote on; the
            # trades already open have been watched through every quote held.
            self._run(order.instrument, ring.times, ring.bids, ring.asks, 0, watch=[])

    def on_quotes(self, instrument: str, ticks: np.ndarray) -> int:
        ring = self._rings.get(instrument)
        if ring is None:
            ring = self._rings[instrument] = QuoteRing(self.config.quotes)
        times, bids, asks = ring.accept(ticks)
        ring.extend(times, bids, asks)
        # The ring ends with the batch (its newest `capacity` quotes if more): a ring index is
        # the batch index this far from its end.
        watch = list(self._trades.get(instrument, []))
        self._run(instrument, times, bids, asks, len(times) - len(ring), watch)
        return len(ticks) - len(times)

    def take_fills(self) -> list[wire.Fill]:
        fills, self._fills = self._fills, []
        return fills

    def cancel(self, client_id: str) -> bool:
        for order in self._pending:
            if order.client_id == client_id:
                self._pending.remove(order)
                self._expired.append(Ended(order, "cancelled on request", "cancelled", "cancelled"))
                return True
        return False

    def take_expired(self) -> list[Ended]:
        expired, self._expired = self._expired, []
        return expired

    def restore(
        self,
        books: dict[str, Book],
        balance: float,
        open_orders: list[wire.Order],
        trades: Mapping[str, list[Trade]] | None = None,
    ) -> list[str]:
        # The paper broker's book lives in the trader's journal: the open orders are still its own
        # and fill at the first quote at or after their after_ns that reaches the new process,
        # and the open trades (the journal's replay of the fills) close at their exits.
        self._books = copy.deepcopy(books)
        if trades is None:  # a caller with no trades: each position one trade with no exits
            trades = {name: [Trade("", "", b.units, 0)] for name, b in books.items() if b.units}
        self._trades = {
            name: [dataclasses.replace(t) for t in held] for name, held in trades.items() if held
        }
        self._balance = balance
        self._pending = list(open_orders)
        return []

    def pending(self) -> list[wire.Order]:
        return list(self._pending)

    def positions(self) -> list[wire.Position]:
        out = []
        for instrument, book in sorted(self._books.items()):
            time_ns, bid, ask = self._last(instrument)
            out.append(book.position(instrument, bid, ask, time_ns))
        return out

    def account(self) -> dict[str, Any]:
        """Balance, unrealised PnL, equity and margin in the account currency (an open position
        converted at the current mid); realised PnL and commission per instrument are in its
        quote currency, in :meth:`positions`."""
        unrealized, margin = mark_to_market(
            self._books, self._quotes(), self.config.currency, self.config.margin_rate
        )
        equity = self._balance + unrealized
        return {
            "currency": self.config.currency,
            "balance": self._balance,
            "unrealized": unrealized,
            "equity": equity,
            "margin_used": margin,
            "margin_available": equity - margin,
            "open_orders": len(self._pending),
            "late_fills": self.late_fills,
            "unconverted_fills": self.unconverted,
        }

    def close(self) -> None:
        self._pending.clear()

    def _quotes(self) -> dict[str, Quote]:
        """The last quote of every instrument quoted."""
        return {name: q for name, ring in self._rings.items() if (q := ring.latest()) is not None}

    def _last(self, instrument: str) -> Quote:
        ring = self._rings.get(instrument)
        latest = ring.latest() if ring is not None else None
        return latest if latest is not None else (0, float("nan"), float("nan"))

    def _run(
        self,
        instrument: str,
        times: np.ndarray,
        bids: np.ndarray,
        asks: np.ndarray,
        base: int,
        watch: list[Trade],
    ) -> None:
        """Fill the orders of `instrument` whose quote has come and close the trades whose exits
        the quotes (`times`, `bids`, `asks`) reach, one event at a time in quote order.

        `base` turns an index of the instrument's ring into an index of these quotes (a negative
        one: a quote before them). `watch`: the open trades whose exits these quotes may reach; a
        trade an order opens here is watched from the quote it opened at.
        """
        due = self._due(instrument)
        trades = self._trades.setdefault(instrument, [])
        exits = [hit for t in watch if (hit := _first_exit(t, times, bids, asks, 0)) is not None]
        k = 0
        while exits or k < len(due):
            # An exit is computed once per trade (its quotes and prices do not change); a trade
            # an order closed in the meantime no longer exits. Each hit holds its trade, so no
            # new trade can take its id.
            held = {id(t) for t in trades}
            exits = [hit for hit in exits if id(hit.trade) in held]
            if exits:
                j = min(range(len(exits)), key=lambda j: exits[j].index)  # ties: oldest trade
                if k == len(due) or exits[j].index <= due[k][0] + base:  # exits first at a quote
                    self._exit(instrument, trades, exits.pop(j))
                    continue
            if k == len(due):
                break
            i, order, quote = due[k]
            k += 1
            newest = trades[-1] if trades else None
            self._fill(order, *quote)
            # FIFO closes the oldest first, so a new last trade is the one this order opened.
            if trades and trades[-1] is not newest:
                hit = _first_exit(trades[-1], times, bids, asks, max(i + base, 0))
                if hit is not None:
                    exits.append(hit)

    def _due(self, instrument: str) -> list[tuple[int, wire.Order, Quote]]:
        """Take the orders of `instrument` whose quote the ring holds out of the pending ones,
        each with its ring index and quote, in quote order (at one quote, in the order sent);
        the stale ones expire instead."""
        ring = self._rings[instrument]
        due, waiting = [], []
        for order in self._pending:
            i = ring.index_for(order.after_ns) if order.instrument == instrument else None
            if i is None:
                waiting.append(order)
                continue
            quote = ring.quote(i)
            deadline = self.expiry(order)
            if deadline is not None and quote[0] > deadline:
                late_s = (quote[0] - order.after_ns) / 1e9
                why = (
                    f"stale decision: its first quote at or after after_ns={order.after_ns} "
                    f"came {late_s:.0f} s of market time later, past its validity "
                    f"({(deadline - order.after_ns) / 1e9:.0f} s; trader.risk.max_decision_age_s)"
                )
                self._expired.append(Ended(order, why))
                continue
            if 0 < order.after_ns <= ring.dropped_until:
                self.late_fills += 1
            due.append((i, order, quote))
        self._pending = waiting
        due.sort(key=lambda d: d[0])  # stable: the order sent at one quote
        return due

    def _fill(self, order: wire.Order, time_ns: int, bid: float, ask: float) -> None:
        price = ask if order.units > 0 else bid
        self._book(order.client_id, order.brain, order.instrument, order.units, price, time_ns)
        trade_fill(
            self._trades.setdefault(order.instrument, []), order.client_id, order.brain,
            order.units, price, time_ns, order.stop_loss, order.take_profit,
        )  # fmt: skip

    def _exit(self, instrument: str, trades: list[Trade], hit: _Exit) -> None:
        """Close what is left of a trade at its stop-loss or take-profit."""
        trade = hit.trade
        client_id = f"{trade.client_id}/{hit.kind}"
        self._book(client_id, trade.brain, instrument, -trade.units, hit.price, hit.time_ns)
        trade_fill(trades, client_id, trade.brain, -trade.units, hit.price, hit.time_ns)

    def _book(
        self, client_id: str, brain: str, instrument: str, units: int, price: float, time_ns: int
    ) -> None:
        """Book a fill on the account and report it (its fill id is its client id: the paper
        broker fills an order once, and closes a trade by its stop-loss or take-profit once)."""
        fee = abs(units) * price * self.config.commission
        book = self._books.setdefault(instrument, Book())
        pnl = book.apply(units, price, fee) - fee  # in the quote currency
        booked = pnl * rate(instrument, price, self._quotes(), self.config.currency)
        # Unconvertible: booked as it is, as a journal replay books a fill without `booked`.
        self._balance += booked if math.isfinite(booked) else pnl
        if not math.isfinite(booked):
            self.unconverted += 1
            log.warning(
                "%s: PnL of %s booked unconverted: no quote converts %s into %s; quote a pair "
                "of the two", instrument, client_id, instrument_spec(instrument).quote,
                self.config.currency,
            )  # fmt: skip
        converted = booked if math.isfinite(booked) else None
        self._fills.append(
            wire.Fill(
                client_id, brain, instrument, units, price, time_ns, fee, converted, client_id
            )
        )
