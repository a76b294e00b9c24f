"""The trader process: orders and targets in, risk, journal, broker, fills and positions out.

Sockets (one owner: the loop thread)::

    ROUTER trader_orders   in:  [topic, Order | Target | Command]  (a REQ client's empty
                                delimiter frame is kept and echoed)
                           out: [b"order_reply", OrderReply] or [b"reply", Reply]
    SUB    router_bars     in:  tick.<INSTRUMENT> Ticks, the quotes the paper broker fills at
    DEALER router_history  out: [b"quoted", Quoted]  (a flat-out replay only; no answer)
    PUB    trader_events   out: fill.<brain> Fill, position.<INSTRUMENT> Position (on each fill
                                and every second while held), order.<brain> OrderReply

A Target asks for a position: the order sent is the target minus what that brain holds and has
pending in the instrument. The order rate is limited in market time, the clock of the quotes
received (see :mod:`osm.live.risk`). Every order's intent is committed to the journal before the
broker sees it, so a kill -9 at any instant leaves each client id journaled once and executed at
most once; on restart positions are rebuilt from the journaled fills and open orders handed back to
the broker. A trader that cannot journal what happened (a fill) crashes, as every live process does
on an error it cannot reason about (:mod:`osm.live.service`), and its restart recovers the same way.
Commands: status, halt, resume, flatten, cancel, orders, fills, positions (see `_command`); their
arguments are checked against the handlers' signatures and types.

An order is judged with the quotes already come (they are taken first): the router publishes a
bar's quotes before the bar. While a flat-out replay runs (a feed at speed 0), the trader tells
the router how far it has taken each instrument's quotes (``wire.Quoted`` on its history socket,
when that moves and every QUOTED_EVERY_S), and the replay waits for it as for its brains.

A Target whose ``previous_id`` is not journaled is refused unjournaled (``out_of_order``): the
decision before it was lost on the way (a trader that died holding it), and the brain sends from
that one again; so a brain's decisions are journaled in the order it made them, even with many in
flight.

A decision is for its bar. A Target or Order whose ``after_ns`` is set is refused, journaled as
refused with the reason, counted and answered when

- its instrument is quoted by none of the configured feeds (``unknown_instrument``; a trader run
  without feeds takes every known instrument): nothing would ever fill it;
- its ``after_ns`` lies more than ``max_decision_ahead_s`` after the market clock (the wall clock
  before the first quote) (``future_decision``): it could only fill in years;
- it is a target older than one the same brain already had executed for the instrument
  (``stale_decision``): a resent target must not undo a newer one;
- its fill quote, the first at or after ``after_ns``, comes more than its validity later in market
  time (``stale_decision``): the validity is ``max_decision_age_s`` or, when longer, one bar of the
  deciding brain's configured granularity. The paper broker knows that quote when the order arrives
  (it keeps recent quotes) or learns it when the quote comes; an order that waits past its validity
  expires then, and is journaled, counted and published on ``order.<brain>`` the same way. This is
  what keeps targets queued while the trader was down from all filling at its first quote.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import math
import os
import sqlite3
import time
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from osm.core import wire
from osm.core.dtypes import valid_quotes
from osm.core.errors import UnknownNameError
from osm.core.granularity import step_ns, trading_deadline
from osm.core.instruments import INSTRUMENTS
from osm.live.adapters import Book, brokers
from osm.live.adapters.base import Ended
from osm.live.journal import OPEN, Journal
from osm.live.priority import REPLAYS
from osm.live.risk import Refusal, Risk
from osm.live.service import Service, now_ns, send_frames

POSITIONS_EVERY_S = 1.0
QUOTED_EVERY_S = 1.0  # within the router's pace timeout
_INT64 = 2**63


def _fits(value: int) -> bool:
    """Whether `value` fits the journal's 64-bit integers (msgpack carries up to 2**64 - 1)."""
    return -_INT64 <= value < _INT64


class Trader(Service):
    role = "trader"

    def setup(self) -> None:
        config = self.config.trader
        self.risk = Risk(config.risk)
        self.journal = Journal(
            self.rundir.db / f"{self.name}.sqlite", config.balance, config.journal_sync
        )
        self.broker = brokers.create(config)
        self._books: dict[str, Book] = {}
        self._brain_units: collections.Counter[tuple[str, str]] = collections.Counter()
        self._unmarked: list[str] = []  # client ids submitted since the last drain
        self._market_ns = 0  # time of the newest valid quote: the market's clock
        feeds = self.config.feeds
        self._quoted = sorted({i for f in feeds for i in f.instruments}) if feeds else INSTRUMENTS
        self._validity_ns = {
            b.name: max(int(config.risk.max_decision_age_s * 1e9), step_ns(b.granularity) or 0)
            for b in self.config.brains
        }
        self._default_validity_ns = int(config.risk.max_decision_age_s * 1e9)
        self._ahead_ns = int(config.risk.max_decision_ahead_s * 1e9)
        self._decided: dict[tuple[str, str], int] = {}  # newest target's after_ns per brain
        self._cursor = ""  # the broker's transaction cursor as last persisted
        self.broker.expiry = self._deadline
        self.broker.journaled = self.journal.fill_owner
        self._recover()
        self._next_positions = 0.0
        self._requests = self.bus.bind(zmq.ROUTER, "trader_orders")
        self._events = self.bus.bind(zmq.PUB, "trader_events")
        self._quotes = self.bus.connect(zmq.SUB, "router_bars")
        self._quotes.setsockopt(zmq.SUBSCRIBE, b"tick.")
        self.on(self._requests, self._on_request)
        self.on(self._quotes, self._on_quotes)
        # A flat-out replay waits for the trader's quotes as for its brains (wire.Quoted).
        flat_out = any(f.speed == 0 and f.kind in REPLAYS for f in feeds)
        self._router = self.bus.connect(zmq.DEALER, "router_history") if flat_out else None
        self._quoted_ns: dict[str, int] = {}  # per instrument, the newest valid quote taken
        self._told_quoted: dict[str, tuple[int, float]] = {}  # what the router last heard, when
        self._commands: dict[str, Callable[..., Any]] = {
            "status": self._status,
            "halt": self._halt,
            "resume": self._resume,
            "flatten": self._flatten,
            "cancel": self._cancel,
            "orders": self.journal.orders,
            "fills": self.journal.fills,
            "positions": self._positions,
        }

    def teardown(self) -> None:
        self.broker.close()
        self.journal.close()

    def idle(self) -> None:
        self._drain()
        self._follow_broker()
        if time.monotonic() >= self._next_positions:
            self._next_positions = time.monotonic() + POSITIONS_EVERY_S
            for position in self.broker.positions():
                if position.units:
                    self._publish(f"position.{position.instrument}", position)
        for instrument in self._quoted_ns:
            self._tell_quoted(instrument)

    def _tell_quoted(self, instrument: str) -> None:
        """Tell the router how far the quotes of `instrument` are taken, when that moves and
        every QUOTED_EVERY_S (the router forgets a silent follower), if a flat-out replay runs."""
        if self._router is None:
            return
        until_ns, now = self._quoted_ns[instrument], time.monotonic()
        told_ns, told_at = self._told_quoted.get(instrument, (0, 0.0))
        if until_ns == told_ns and now - told_at < QUOTED_EVERY_S:
            return
        message = wire.Quoted(instrument, until_ns)
        try:  # a router away: said again later
            send_frames(self._router, [b"quoted", *wire.frames("quoted", message)], zmq.NOBLOCK)
        except zmq.Again:
            self.counters["quoted_dropped"] += 1
        self._told_quoted[instrument] = (until_ns, now)

    def _deadline(self, order: wire.Order) -> int | None:
        """The last market instant `order` may fill at; None: whenever (an order for now)."""
        if order.after_ns <= 0:
            return None
        validity = self._validity_ns.get(order.brain, self._default_validity_ns)
        return trading_deadline(order.after_ns, validity, self.config.router.alignment)

    def _recover(self) -> None:
        now = now_ns()
        recovered = self.journal.rebuild(now)
        self._books, self._brain_units = recovered.books, recovered.brain_units
        self._decided = self.journal.decided()
        open_orders = []
        for order in self.journal.open_orders():
            refusal = self._implausible(order)
            if refusal is None:
                open_orders.append(order)
                continue
            self.journal.mark(order.client_id, "refused", now, f"expired: {refusal.text}")
            self.reject(refusal.code, f"{order.client_id} (open at restart): {refusal.text}")
        # A venue's: reconciliation reads its transactions since the last one journaled.
        self.broker.cursor = self._cursor = self.journal.get_meta("broker_cursor") or ""
        lost = set(
            self.broker.restore(recovered.books, recovered.balance, open_orders, recovered.trades)
        )
        for order in open_orders:
            if order.client_id in lost:
                reason = "the broker neither holds nor filled it after a restart"
                self.journal.mark(order.client_id, "lost", now, reason)
            else:
                self.journal.mark(order.client_id, "sent", now)
        halted = self.journal.get_meta("halted")
        if halted is not None:
            self.risk.halt(halted)
        self._follow_broker()
        self.log.info(
            "recovered %d positions, %d open orders (%d lost)%s",
            sum(1 for b in self._books.values() if b.units), len(open_orders), len(lost),
            "; trading is halted" if halted is not None else "",
        )  # fmt: skip

    # -- requests ---------------------------------------------------------------------------

    def _on_request(self, parts: list[bytes]) -> None:
        # A DEALER sends [topic, payload]; a REQ adds an empty delimiter the reply must carry.
        split = 2 if len(parts) == 4 and parts[1] == b"" else 1
        envelope, body = parts[:split], parts[split:]
        decoded = self.decode(body)
        if decoded is None:
            reply = wire.Reply(False, error="malformed request: send osm.core.wire.frames(...)")
            self._reply(envelope, "reply", reply)
            return
        _, message = decoded
        if isinstance(message, wire.Order | wire.Target):
            # The quotes already come first: the router publishes a bar's quotes before the bar,
            # so those its decision saw are (nearly always) here.
            self.receive_waiting(self._quotes)
            self._reply(envelope, "order_reply", self._order(message))
            self._drain()  # after the reply: the requester need not wait for the fill's commit
        elif isinstance(message, wire.Command):
            self._reply(envelope, "reply", self._command(message))
        else:
            self.reject("unexpected_message", type(message).__name__)
            error = f"the trader takes Order, Target or Command, not {type(message).__name__}"
            self._reply(envelope, "reply", wire.Reply(False, error=error))

    def _reply(self, envelope: list[bytes], topic: str, message: wire.Message) -> None:
        send_frames(self._requests, [*envelope, *wire.frames(topic, message)])

    def _order(self, message: wire.Order | wire.Target) -> wire.OrderReply:
        kind = "target" if isinstance(message, wire.Target) else "order"
        target = message.units if kind == "target" else None
        order = wire.Order(
            message.brain, message.instrument, message.units, message.client_id,
            message.after_ns, message.stop_loss, message.take_profit,
        )  # fmt: skip
        if not message.client_id or "/" in message.client_id:
            text = (
                "client_id must be a non-empty string unique to this order, without '/' (it "
                f"names a trade's exit: <client id>/stop_loss), got {message.client_id!r}"
            )
            return self._refuse(order, kind, target, Refusal("bad_order", text), journal=False)
        if not (_fits(message.units) and _fits(message.after_ns)):
            text = (
                f"units and after_ns must fit in 64 bits, got {message.units}, {message.after_ns}"
            )
            return self._refuse(order, kind, target, Refusal("bad_order", text), journal=False)
        for name in ("stop_loss", "take_profit"):
            distance = getattr(message, name)
            if distance is not None and not (math.isfinite(distance) and distance > 0):
                text = f"{name} is a price distance from the fill, > 0 or None; got {distance}"
                return self._refuse(order, kind, target, Refusal("bad_order", text), False)
        known = self.journal.lookup(message.client_id)
        if known is not None:
            text = (
                f"client id {message.client_id!r} is already journaled ({known['status']}, "
                f"{known['units']} units); a client id is executed at most once"
            )
            return self._refuse(order, kind, target, Refusal("duplicate", text), journal=False)
        previous = message.previous_id if isinstance(message, wire.Target) else ""
        if previous and self.journal.lookup(previous) is None:
            text = (
                f"the decision before it, {previous!r}, has not reached the trader (lost on the "
                "way): send from that one again"
            )
            return self._refuse(order, kind, target, Refusal("out_of_order", text), journal=False)
        refusal = self._implausible(order)
        if refusal is not None:
            return self._refuse(order, kind, target, refusal)
        if target is not None:
            newest = self._decided.get((order.brain, order.instrument), 0)
            if 0 < order.after_ns < newest:
                text = (
                    f"stale decision: a target for after_ns={newest} of {order.brain} in "
                    f"{order.instrument} came first; this one (after_ns={order.after_ns}) is older"
                )
                return self._refuse(order, kind, target, Refusal("stale_decision", text))
            self._decided[(order.brain, order.instrument)] = max(newest, order.after_ns)
            held, _ = self._projected(message.brain, message.instrument)
            order = msgspec.structs.replace(order, units=target - held)
            if order.units == 0:
                self.journal.record(order, kind, "noop", now_ns(), target)
                return self._announce(wire.OrderReply(order.client_id, True, units=0), order)
        elif order.units == 0:
            text = "an order needs non-zero units (positive buys, negative sells)"
            return self._refuse(order, kind, target, Refusal("bad_order", text))
        return self._execute(order, kind, target)

    def _implausible(self, order: wire.Order) -> Refusal | None:
        """Refuse an order nothing could fill: an instrument no feed quotes, a far-future time."""
        if order.instrument not in self._quoted:
            text = str(UnknownNameError("instrument", order.instrument, self._quoted))
            if order.instrument in INSTRUMENTS:
                text = (
                    f"no configured feed quotes {order.instrument} (quoted: "
                    f"{', '.join(self._quoted)}); add it to a feed's instruments in config.json"
                )
            return Refusal("unknown_instrument", text)
        clock = self._market_ns or now_ns()
        if order.after_ns > clock + self._ahead_ns:
            text = (
                f"after_ns={order.after_ns} is {(order.after_ns - clock) / 1e9:.0f} s after the "
                f"market clock {clock}, beyond trader.risk.max_decision_ahead_s "
                f"{self._ahead_ns / 1e9:.0f}: it could not fill in time"
            )
            return Refusal("future_decision", text)
        return None

    def _projected(self, brain: str, instrument: str) -> tuple[int, int]:
        """Units of `instrument` held by `brain` and by the account, counting pending orders."""
        mine = self._brain_units[(brain, instrument)]
        total = self._books[instrument].units if instrument in self._books else 0
        for order in self.broker.pending():
            if order.instrument == instrument:
                total += order.units
                mine += order.units if order.brain == brain else 0
        return mine, total

    def _follow_broker(self) -> None:
        """Persist a venue broker's transaction cursor once the fills up to it are journaled (the
        last :meth:`_drain` did that), and halt on what the broker cannot reconcile."""
        cursor = self.broker.cursor
        if cursor and cursor != self._cursor:
            self.journal.set_meta("broker_cursor", cursor)
            self._cursor = cursor
        reason = self.broker.halt_reason
        if reason:
            self.broker.halt_reason = None
            self._halt(reason)

    def _execute(
        self, order: wire.Order, kind: str, target: int | None, flatten: bool = False
    ) -> wire.OrderReply:
        _, total = self._projected(order.brain, order.instrument)
        at_ns = self.risk.market_time(order.brain, order.after_ns, self._market_ns)
        refusal = self.risk.check(
            order.instrument, order.units, total, at_ns=at_ns, flatten=flatten
        )
        if refusal is not None:
            return self._refuse(order, kind, target, refusal)
        now = now_ns()
        if not self.journal.record(order, kind, "new", now, target):
            text = f"client id {order.client_id!r} is already journaled"
            return self._refuse(order, kind, target, Refusal("duplicate", text), journal=False)
        self.broker.submit(order)
        expired = self._expire()  # the paper broker may know at once that its quote is too late
        ended = expired.get(order.client_id)
        if ended is not None:  # journaled, counted and published by _expire
            return wire.OrderReply(order.client_id, False, ended.reason, order.units, ended.code)
        self._unmarked.append(order.client_id)
        self.risk.record(order.brain, at_ns)
        self.counters["orders_sent"] += 1
        return self._announce(wire.OrderReply(order.client_id, True, units=order.units), order)

    def _refuse(
        self,
        order: wire.Order,
        kind: str,
        target: int | None,
        refusal: Refusal,
        journal: bool = True,
    ) -> wire.OrderReply:
        if journal:
            self.journal.record(order, kind, "refused", now_ns(), target, refusal.text)
        self.reject(refusal.code, f"{order.client_id}: {refusal.text}")
        reply = wire.OrderReply(order.client_id, False, refusal.text, order.units, refusal.code)
        return self._announce(reply, order)

    def _expire(self) -> dict[str, Ended]:
        """Journal, count and publish the orders that ended without filling in full (expired,
        refused by the venue, cancelled); return them by client id."""
        expired = self.broker.take_expired()
        if not expired:
            return {}
        now = now_ns()
        for order, why, status, code in expired:
            self.journal.mark(order.client_id, status, now, why)
            self.reject(code, f"{order.client_id}: {why}")
            self._announce(wire.OrderReply(order.client_id, False, why, order.units, code), order)
        return {ended.order.client_id: ended for ended in expired}

    def _announce(self, reply: wire.OrderReply, order: wire.Order) -> wire.OrderReply:
        self._publish(f"order.{order.brain}", reply)
        return reply

    def _publish(self, topic: str, message: wire.Message) -> None:
        send_frames(self._events, wire.frames(topic, message))

    # -- quotes and fills -------------------------------------------------------------------

    def _on_quotes(self, parts: list[bytes]) -> None:
        message = self.expect(parts, wire.Ticks, "on the quote socket")
        if message is None:
            return
        if message.instrument not in INSTRUMENTS:
            self.reject("unknown_instrument", f"quotes for {message.instrument!r}")
            return
        ticks = self.rows(message)
        if ticks is None:
            return
        valid = valid_quotes(ticks["bid"], ticks["ask"])
        if valid.any():
            newest = int(ticks["time"][valid].max())
            self._market_ns = max(self._market_ns, newest)
            instrument = message.instrument
            self._quoted_ns[instrument] = max(self._quoted_ns.get(instrument, 0), newest)
            self._tell_quoted(instrument)
        refused = self.broker.on_quotes(message.instrument, ticks)
        if refused:
            self.counters["quotes_refused"] += refused
            self.reject("bad_quote", f"{refused} of {len(ticks)} {message.instrument} quotes")
        self._drain()

    def _drain(self) -> None:
        """Mark the orders submitted since the last drain sent, then journal and publish the
        broker's new fills, each exactly once.

        "sent" only informs: recovery treats a "new" order the same way. So it is written off the
        order's path, and not at all for an order whose fill is committed just below.
        """
        expired = self._expire()
        fills = self.broker.take_fills()
        if self._unmarked:
            filled = {fill.client_id for fill in fills} | expired.keys()
            now = now_ns()
            for client_id in self._unmarked:
                if client_id not in filled:
                    self.journal.mark(client_id, "sent", now)
            self._unmarked.clear()
        if not fills:
            return
        touched = set()
        for fill in fills:
            book = dataclasses.replace(self._books.get(fill.instrument, Book()))
            book.apply(fill.units, fill.price, fill.commission)
            try:
                recorded = self.journal.record_fill(fill, book, now_ns())
            except sqlite3.IntegrityError:
                if self.journal.lookup(fill.client_id) is not None:
                    raise  # the order is there: not a fill to adopt, a fault to crash on
                # No order journaled: the broker's own (a stop-loss, a take-profit, a trade placed
                # by hand) or one of ours the journal lost. It is the account's position all the
                # same, so it is journaled.
                recorded = self.journal.record_fill(fill, book, now_ns(), adopt=True)
                self.counters["fills_adopted"] += 1
                self.log.info(
                    "adopted a fill of no journaled order: %s %+d %s at %s",
                    fill.client_id, fill.units, fill.instrument, fill.price,
                )  # fmt: skip
            if not recorded:
                self.reject("duplicate_fill", f"{fill.client_id} ({fill.fill_id})")
                continue
            self._books[fill.instrument] = book
            self._brain_units[(fill.brain, fill.instrument)] += fill.units
            self.counters["fills"] += 1
            self._publish(f"fill.{fill.brain}", fill)
            touched.add(fill.instrument)
        for position in self.broker.positions():
            if position.instrument in touched:
                self._publish(f"position.{position.instrument}", position)

    # -- commands ---------------------------------------------------------------------------

    def _command(self, command: wire.Command) -> wire.Reply:
        """Run a command whose arguments match its handler's signature and types; a handler that
        raises after that is a bug, and crashes the trader like any other."""
        handler = self._commands.get(command.name)
        if handler is None:
            self.reject("unknown_command", command.name)
            error = str(UnknownNameError("trader command", command.name, self._commands))
            return wire.Reply(False, error=error)
        try:
            args = inspect.signature(handler).bind(**command.args).arguments
            hints = typing.get_type_hints(handler, include_extras=True)
            args = {k: msgspec.convert(v, hints.get(k, Any)) for k, v in args.items()}
        except (TypeError, msgspec.ValidationError) as exc:
            self.reject("bad_command", f"{command.name}: {exc}")
            return wire.Reply(False, error=f"bad arguments for {command.name!r}: {exc}")
        return wire.Reply(True, data=handler(**args))

    def _status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": os.getpid(),
            "broker": self.config.trader.broker,
            "halted": self.risk.halted,
            "halt_reason": self.risk.halt_reason,
            "account": self.broker.account(),
            "open_orders": len(self.broker.pending()),
            "market_time_ns": self._market_ns,
            "orders_last_minute": self.risk.orders_last_minute(self._market_ns),
            "limits": msgspec.to_builtins(self.risk.limits),
            "counters": dict(self.counters),
        }

    def _halt(self, reason: str = "halted by command") -> dict[str, Any]:
        self.risk.halt(reason)
        self.journal.set_meta("halted", reason)  # a restart must not silently lift the halt
        self.log.warning("trading halted: %s", reason)
        return {"halted": True, "reason": reason}

    def _resume(self) -> dict[str, Any]:
        self.risk.resume()
        self.journal.set_meta("halted", None)
        self.log.warning("trading resumed")
        return {"halted": False}

    def _flatten(self, instrument: str | None = None) -> list[dict[str, Any]]:
        """Close every brain's position in `instrument` (default all) with market orders (allowed
        while halted, split to respect max_order); return one row per order sent or refused."""
        held: dict[tuple[str, str], int] = dict(self._brain_units)
        for order in self.broker.pending():
            key = (order.brain, order.instrument)
            held[key] = held.get(key, 0) + order.units
        stamp, rows = now_ns(), []
        largest = self.risk.limits.max_order
        for (brain, held_instrument), units in sorted(held.items()):
            if instrument not in (None, held_instrument):
                continue
            remaining, part = -units, 0
            while remaining:
                chunk = max(-largest, min(largest, remaining))
                client_id = f"flatten-{stamp}-{brain}-{held_instrument}-{part}"
                order = wire.Order(brain, held_instrument, chunk, client_id)
                reply = self._execute(order, "flatten", None, flatten=True)
                self._drain()  # the next chunk's risk check counts this one's fill
                where = {"instrument": held_instrument, "brain": brain}
                rows.append(msgspec.to_builtins(reply) | where)
                if not reply.accepted:
                    break
                remaining, part = remaining - chunk, part + 1
        self.log.warning("flatten sent %d orders", len(rows))
        return rows

    def _cancel(self, client_id: str) -> dict[str, Any]:
        """Cancel an order not yet filled in full. It is journaled cancelled and its brain told
        (as of an expiry) once the broker confirms: at once on paper, when the venue answers
        on OANDA (then `status` is still open in the reply; ``osm orders`` shows the outcome)."""
        known = self.journal.lookup(client_id)
        if known is None or known["status"] not in OPEN:
            why = (
                f"no order {client_id!r} in the journal"
                if known is None
                else f"order {client_id!r} is {known['status']}, not open: nothing to cancel"
            )
            return {"client_id": client_id, "cancelled": False, "status": "", "reason": why}
        if not self.broker.cancel(client_id):
            why = f"the broker holds no pending order {client_id!r} (it may have just filled)"
            return {"client_id": client_id, "cancelled": False, "status": known["status"],
                    "reason": why}  # fmt: skip
        self._drain()
        status = self.journal.lookup(client_id)["status"]
        self.log.warning("cancel of %s requested: %s", client_id, status)
        why = "" if status == "cancelled" else "cancel sent; the venue's answer follows (orders)"
        return {"client_id": client_id, "cancelled": status == "cancelled", "status": status,
                "reason": why}  # fmt: skip

    def _positions(self) -> list[dict[str, Any]]:
        by_brain: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (brain, instrument), units in self._brain_units.items():
            if units:
                by_brain[instrument][brain] = units
        return [
            msgspec.to_builtins(p) | {"brains": by_brain.get(p.instrument, {})}
            for p in self.broker.positions()
        ]
