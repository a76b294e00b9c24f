"""OANDA execution: market orders, their outcomes, and the reads reconciliation needs.

:class:`OandaExecution` does every network call on one thread it owns (``oanda-orders``); the
caller (the trader's loop) only enqueues with :meth:`submit` and receives
:class:`~osm.live.adapters.oanda.parsing.OrderEvent` values through `on_event`, called on that
thread (hand them to your own queue). Outcomes: ``accepted``, then ``filled`` /
``partially_filled`` / ``cancelled``; ``rejected`` with the venue's reason; ``unknown`` when no
answer came and the venue could not be asked yet.

An order whose response is lost (timeout, dropped connection, 5xx) is never resent blindly: it is
looked up by client id (``orders/@<clientID>``). If the venue has it, its transactions are read
(``transactions/sinceid``) and reported; only a 404 (the venue never got it) allows a resend, with
the same client id. A 429 on create means not executed: back off and send again. Between orders
the thread polls the transactions since the last seen id, which reports fills that are not ours
(stop-loss, take-profit, trades placed by hand) with an empty `client_id`; :attr:`cursor` is that
id, to be persisted by the caller. A 401/403 stops the thread with one clear line.

Reconciliation (:meth:`OandaExecution.reconcile`) reads the venue's net positions, reports the
transactions since the cursor up to the positions' own last transaction, then a ``reconciled``
event with those positions, so whoever applied the events before it can compare. The broker runs
it at start; the thread runs it again whenever the venue answers after a call that failed for
good (connection errors, 5xx, timeouts through every retry), after looking up its unknown orders.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import requests
from oandapyV20.endpoints import accounts as v20accounts
from oandapyV20.endpoints import orders as v20orders
from oandapyV20.endpoints import positions as v20positions
from oandapyV20.endpoints import trades as v20trades
from oandapyV20.endpoints import transactions as v20transactions
from oandapyV20.exceptions import V20Error

from osm.core import wire
from osm.core.instruments import instrument as instrument_spec
from osm.live.adapters.oanda import parsing as P
from osm.live.adapters.oanda.config import AuthError, OandaConfig, Secret, make_api, redact
from osm.live.adapters.oanda.ratelimit import RateLimiter

log = logging.getLogger("osm.oanda")

_RETRIES = 5


class _Transient(Exception):
    """A call that may be retried (429, 5xx, a transport error); `.reason` says which."""

    def __init__(self, reason: str, rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.rate_limited = reason, rate_limited


class OandaExecution:
    """Orders and account reads for one account, on a thread of its own."""

    def __init__(
        self,
        config: OandaConfig,
        token: Secret,
        on_event: Callable[[P.OrderEvent], None],
        cursor: str = "",
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config, self._token, self.on_event = config, token, on_event
        self.account = config.account_id()
        self._api = make_api(config, token, config.request_timeout_s)
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._limiter = RateLimiter(config.requests_per_s, burst=5, sleep=self._sleep)
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cursor = cursor  # last transaction id reported
        self._seen: set[str] = set()
        self._ordered: dict[str, int] = {}  # venue order id -> units ordered
        self._tags: dict[str, str] = {}  # client id -> its order's tag (the brain), once known
        self.unresolved: dict[str, dict[str, Any]] = {}  # client id -> order body, outcome unknown
        self.sent: dict[str, int] = {}  # client id -> creates sent (never above 1 without a 404)
        self.error: BaseException | None = None
        self.down = False  # a call failed through every retry and none has succeeded since
        self._recovered = False
        self._thread = threading.Thread(target=self._run, name="oanda-orders", daemon=True)

    def __repr__(self) -> str:
        return f"OandaExecution(account={self.account!r}, cursor={self.cursor!r})"

    # -- the caller's side (never blocks on the network) ------------------------------------------

    def start(self) -> OandaExecution:
        if not self.cursor:
            self.cursor = P.last_transaction_id(self.summary())
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._commands.put(("stop", None))
        self._thread.join(timeout)

    def submit(
        self, order: wire.Order, stop_loss: float | None = None, take_profit: float | None = None
    ) -> None:
        """Queue a market order (FOK) with ``clientExtensions.id = order.client_id``."""
        if order.units == 0:
            raise ValueError(f"order {order.client_id!r} has 0 units")
        digits = instrument_spec(order.instrument).precision
        body: dict[str, Any] = {
            "type": "MARKET", "timeInForce": "FOK", "instrument": order.instrument,
            "units": str(int(order.units)), "positionFill": "DEFAULT",
            "clientExtensions": {"id": order.client_id, "tag": order.brain[:100]},
            "tradeClientExtensions": {"id": order.client_id, "tag": order.brain[:100]},
        }  # fmt: skip
        for key, price in (("stopLossOnFill", stop_loss), ("takeProfitOnFill", take_profit)):
            if price is not None:
                if not (math.isfinite(price) and price > 0):
                    raise ValueError(f"{key} price must be a positive number, got {price!r}")
                body[key] = {"timeInForce": "GTC", "price": f"{price:.{digits}f}"}
        self._commands.put(("order", body))

    def cancel(self, client_id: str) -> None:
        """Queue a cancel of the order `client_id` (``orders/@<clientID>/cancel``)."""
        self._commands.put(("cancel", client_id))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    kind, payload = self._commands.get(timeout=self.config.poll_s)
                except queue.Empty:
                    kind, payload = "poll", None
                if kind == "stop":
                    return
                if kind == "order":
                    self._send(payload)
                elif kind == "cancel":
                    self._cancel(payload)
                else:
                    self._resolve_unknown()
                    self._poll()
                if self._recovered:  # the venue answers again: what happened meanwhile?
                    self._recovered = False
                    log.warning("OANDA answers again; reconciling")
                    self._resolve_unknown()
                    try:
                        self.reconcile()
                    except _Transient as exc:
                        log.info(
                            "reconciliation failed (%s); retried once OANDA answers", exc.reason
                        )
        except BaseException as exc:  # noqa: BLE001 - logged and kept, never silent
            self.error = exc
            log.error("oanda orders stopped: %s", redact(str(exc), self._token))

    def report(self, event: P.OrderEvent) -> None:
        """Hand `event` to `on_event` once (by transaction id).

        The cursor is not moved here: an order's response skips the transactions before its own
        (a stop-loss, a trade placed by hand), so only a read of every transaction since the
        cursor moves it (:meth:`advance`), after handing them over; a caller that reads
        :attr:`cursor` and then drains what `on_event` queued has every event up to it.

        A fill of a client id carries its order's tag (the brain it was sent for): its own, else
        the one the order's create transaction or a lookup of the order gave.
        """
        event = self._tagged(event)
        if event.transaction_id:
            if event.transaction_id in self._seen:
                return
            self._seen.add(event.transaction_id)
        if event.kind == P.ACCEPTED:
            self._ordered[event.order_id] = event.units
        self.on_event(event)

    def _tagged(self, event: P.OrderEvent) -> P.OrderEvent:
        """`event`, a fill of a client id given the tag known for it; remember a tag it has."""
        if not event.client_id:
            return event
        if event.tag:
            self._tags[event.client_id] = self._tags.get(event.client_id) or event.tag
            return event
        tag = self._tags.get(event.client_id, "")
        if tag and event.kind in (P.FILLED, P.PARTIALLY_FILLED):
            return msgspec.structs.replace(event, tag=tag)
        return event

    def _order_tag(self, event: P.OrderEvent) -> str:
        """Ask the venue for the tag of the order a fill belongs to ('' if it has none or no
        such order); a read, so :class:`_Transient` when the venue does not answer."""
        ref = event.order_id or f"@{event.client_id}"
        try:
            body = self._call(v20orders.OrderDetails(self.account, ref), missing_ok=True)
        except _Missing:
            return ""
        return P.order_tag(body)

    def advance(self, transaction_id: str) -> None:
        """Move the cursor to `transaction_id` if it is later: everything up to it was read."""
        if transaction_id and (not self.cursor or int(transaction_id) > int(self.cursor)):
            self.cursor = transaction_id

    def _send(self, body: dict[str, Any]) -> None:
        client_id = body["clientExtensions"]["id"]
        for attempt in range(_RETRIES):
            self.sent[client_id] = self.sent.get(client_id, 0) + 1
            self._limiter.acquire()
            try:
                reply = self._api.request(v20orders.OrderCreate(self.account, data={"order": body}))
            except V20Error as exc:
                if exc.code in (401, 403):
                    raise AuthError(
                        f"OANDA refused the token ({exc.code}); orders stopped"
                    ) from None
                reason_body = P.error_body(exc.msg)
                if exc.code == 429:  # not executed (assumed, per the contract): wait, send again
                    self._sleep(self.config.backoff_s * 2**attempt)
                    continue
                if exc.code < 500:
                    for event in P.parse_order_response(reason_body, client_id) or [
                        P.OrderEvent(
                            kind=P.REJECTED, client_id=client_id, reason=P.error_reason(reason_body)
                        )  # fmt: skip
                    ]:
                        self.report(event)
                    return
                reason = f"HTTP {exc.code}"
            except (requests.RequestException, ValueError) as exc:
                reason = type(exc).__name__
            else:
                for event in P.parse_order_response(reply, client_id):
                    self.report(event)
                self._poll()  # what happened before it, and moves the cursor past it
                return
            log.warning("order %s: no answer (%s); looking it up", client_id, reason)
            if not self._lookup(client_id, body):
                return  # known now (reported), or unknown (reported, retried by the poll)
        self.report(P.OrderEvent(kind=P.REJECTED, client_id=client_id, reason="rate_limited"))

    def _lookup(self, client_id: str, body: dict[str, Any]) -> bool:
        """Ask the venue about `client_id`; True if it never got it (so it may be resent)."""
        try:
            self._call(v20orders.OrderDetails(self.account, f"@{client_id}"), missing_ok=True)
        except _Missing:
            self.unresolved.pop(client_id, None)
            return True
        except _Transient as exc:
            self.unresolved[client_id] = body
            self.report(P.OrderEvent(kind=P.UNKNOWN, client_id=client_id, reason=exc.reason))
            return False
        self.unresolved.pop(client_id, None)
        self._poll()  # the venue has it: its transactions say what happened
        return False

    def _cancel(self, client_id: str) -> None:
        """Cancel at the venue; an order whose outcome is unknown and that the venue never got
        is dropped instead of resent. Repeating a cancel is harmless (the second gets a 404),
        so it retries like a read."""
        if client_id in self.unresolved and self.never_received(client_id):
            self.unresolved.pop(client_id, None)
            reason = "cancelled on request before OANDA got it"
            self.report(P.OrderEvent(kind=P.CANCELLED, client_id=client_id, reason=reason))
            return
        try:
            body = self._call(v20orders.OrderCancel(self.account, f"@{client_id}"), missing_ok=True)
        except _Missing:  # filled (or cancelled) already: its transaction says so
            log.warning("order %s: nothing to cancel at OANDA (filled or cancelled)", client_id)
            self._poll()
            return
        except _Transient as exc:
            log.warning("order %s: cancel not answered (%s); send it again", client_id, exc.reason)
            return
        for event in P.parse_order_response(body, client_id):
            self.report(event)

    def _resolve_unknown(self) -> None:
        for client_id, body in list(self.unresolved.items()):
            if self.never_received(client_id):
                self.unresolved.pop(client_id, None)
                self._send(body)

    def never_received(self, client_id: str) -> bool:
        """True only if the venue answers that it has no order `client_id` (a 404)."""
        try:
            body = self._call(
                v20orders.OrderDetails(self.account, f"@{client_id}"), missing_ok=True
            )
        except _Missing:
            return True
        except _Transient:
            return False
        self.unresolved.pop(client_id, None)
        if tag := P.order_tag(body):
            self._tags[client_id] = self._tags.get(client_id) or tag
        return False

    def _poll(self) -> None:
        try:
            events, last = self.transactions_since(self.cursor)
        except _Transient as exc:
            log.info("transactions poll failed (%s); next poll retries", exc.reason)
            return
        for event in events:
            self.report(event)
        self.advance(last)  # every transaction up to it was read, events or not

    # -- reads (any thread; reconciliation calls them at start) -----------------------------------

    def _call(self, endpoint: Any, missing_ok: bool = False) -> dict[str, Any]:
        """A read with retries: 429 backs off, 5xx and transport errors retry, 401/403 stop."""
        last = ""
        for attempt in range(_RETRIES):
            self._limiter.acquire()
            try:
                body = self._api.request(endpoint)
            except V20Error as exc:
                if exc.code in (401, 403):
                    raise AuthError(f"OANDA refused the token ({exc.code})") from None
                if exc.code == 404 and missing_ok:
                    raise _Missing() from None
                if exc.code < 500 and exc.code != 429:
                    raise
                last = f"HTTP {exc.code}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            else:
                if self.down:
                    self.down, self._recovered = False, True
                return body
            self._sleep(min(self.config.backoff_cap_s, self.config.backoff_s * 2**attempt))
        if not self.down:
            log.warning("OANDA does not answer (%s)", last)
        self.down = True
        raise _Transient(last)

    def summary(self) -> dict[str, Any]:
        return self._call(v20accounts.AccountSummary(self.account))

    def open_trades(self) -> list[P.Trade]:
        return P.parse_trades(self._call(v20trades.OpenTrades(self.account)))

    def open_positions(self) -> dict[str, tuple[int, float]]:
        return P.parse_positions(self._call(v20positions.OpenPositions(self.account)))

    def reconcile(self) -> None:
        """Report the transactions since the cursor (from the venue's last if there is none)
        up to a read of the net positions, then those positions and the owners of the open
        trades as a ``reconciled`` event."""
        body = self._call(v20positions.OpenPositions(self.account))
        last = P.last_transaction_id(body)
        if self.cursor:
            events, _ = self.transactions_since(self.cursor)
            for event in events:  # later ones are the next poll's: the positions predate them
                if int(event.transaction_id or 0) <= int(last):
                    self.report(event)
        self.advance(last)
        positions = {name: units for name, (units, _) in P.parse_positions(body).items()}
        owners = {t.id: (t.client_id, t.tag) for t in self.open_trades() if t.client_id}
        self.on_event(
            P.OrderEvent(kind=P.RECONCILED, transaction_id=last, positions=positions, owners=owners)
        )

    def transactions_since(self, since_id: str) -> tuple[list[P.OrderEvent], str]:
        """Order events in the transactions after `since_id`, and the venue's last id.

        A fill not reported yet, of a client id whose tag is not known (its order was created
        before `since_id`: by a trader whose journal lost it, say), is given its order's tag by
        a lookup at the venue, so the broker can tell whose it is.
        """
        body = self._call(
            v20transactions.TransactionsSinceID(self.account, params={"id": since_id or "0"})
        )
        events = []
        for tx in body.get("transactions", []):
            ordered = self._ordered.get(str(tx.get("orderID", "")))
            event = P.parse_transaction(tx, ordered)
            if event is None:
                continue
            event = self._tagged(event)
            if (
                event.kind in (P.FILLED, P.PARTIALLY_FILLED)
                and event.client_id
                and event.client_id not in self._tags  # '' once asked: it has none
                and event.transaction_id not in self._seen
            ):
                tag = self._tags[event.client_id] = self._order_tag(event)
                event = msgspec.structs.replace(event, tag=tag)
            events.append(event)
        return events, P.last_transaction_id(body)


class _Missing(Exception):
    """The venue answered 404: it does not have what was asked for."""
