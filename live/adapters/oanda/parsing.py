"""OANDA v20 wire payloads (JSON dicts as oandapyV20 returns them) into osm types.

Prices, units and money arrive as JSON strings; times as RFC 3339 with nanoseconds. Prices become
TICK_DTYPE rows (best bid, best ask), candles BAR_DTYPE rows (``price=BA``; incomplete candles are
left out), and order responses and transactions become :class:`OrderEvent` values, the outcome
vocabulary of the broker boundary (DESIGN section 9). Nothing here does I/O.
"""

from __future__ import annotations

import calendar
import json
import math
import time
from typing import Any

import msgspec
import numpy as np

from osm.core.dtypes import BAR_DTYPE, TICK_DTYPE

ACCEPTED = "accepted"
"""The venue created the order (an ``orderCreateTransaction``); its outcome follows."""
REJECTED = "rejected"
"""The venue refused the order; `reason` is its ``rejectReason`` or ``errorCode``."""
FILLED = "filled"
"""The order, or a stop-loss / take-profit / manual trade (empty `client_id`), filled in full."""
PARTIALLY_FILLED = "partially_filled"
"""Fewer units than ordered filled; the rest was cancelled or is still working."""
CANCELLED = "cancelled"
"""The venue cancelled the order; `reason` says why (``STOP_LOSS_ON_FILL_LOSS``, ...)."""
UNKNOWN = "unknown"
"""No answer (timeout, dropped connection) and the lookup by client id did not settle it."""
RECONCILED = "reconciled"
"""Not an order's: the venue's net `positions` as of `transaction_id`, read at start or once the
venue answers again after failures; every event up to that transaction was reported before."""

OUTCOMES = (ACCEPTED, REJECTED, FILLED, PARTIALLY_FILLED, CANCELLED, UNKNOWN)


class OrderEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing the venue reported about an order or a fill.

    `units` is signed: for ``accepted`` the units ordered, for fills the units filled. `pl` and
    `financing` are in the account currency, as OANDA books them. `transaction_id` is the venue's
    id of the transaction this event comes from ('' when it comes from no transaction, e.g.
    ``unknown``); reconciliation keeps the highest one as its cursor. `tag` is the
    ``clientExtensions.tag`` of the order (the brain we sent it for): an ``accepted`` event has it
    from the order's create transaction, a fill from the trade it opened, if any (the execution
    fills it in for the others; see :meth:`OandaExecution.report`).
    """

    kind: str
    client_id: str = ""
    instrument: str = ""
    units: int = 0
    price: float = math.nan
    reason: str = ""
    order_id: str = ""
    transaction_id: str = ""
    trade_ids: tuple[str, ...] = ()
    pl: float = 0.0
    financing: float = 0.0
    commission: float = 0.0
    time_ns: int = 0
    trade_opened: str = ""  # the id of the trade a fill opened
    tag: str = ""  # the order's clientExtensions.tag (the brain that sent it), where known
    positions: dict[str, int] = {}
    owners: dict[str, tuple[str, str]] = {}  # reconciled: open trade id -> (client id, brain)


def parse_time(text: str) -> int:
    """RFC 3339 (``2016-10-27T08:38:45.664613867Z``) or UNIX (``1477557525.664613867``) to ns UTC.

    Exact to the nanosecond (``datetime`` would truncate to microseconds).
    """
    if "T" not in text:
        seconds, _, fraction = text.partition(".")
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    if not text.endswith("Z"):
        raise ValueError(f"expected a UTC time ending in 'Z', got {text!r}")
    body = text[:-1]
    whole, _, fraction = body.partition(".")
    date, _, clock = whole.partition("T")
    year, month, day = (int(p) for p in date.split("-"))
    hour, minute, second = (int(p) for p in clock.split(":"))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def format_time(time_ns: int) -> str:
    """ns UTC to RFC 3339 with nanoseconds, as OANDA writes times."""
    seconds, nanos = divmod(int(time_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def _units(text: Any) -> int:
    value = float(text)  # "10000", "10000.0" and 10000 all occur
    if not value.is_integer():
        raise ValueError(f"fractional units {text!r}")
    return int(value)


def _float(text: Any, default: float = 0.0) -> float:
    return default if text is None else float(text)


# -- prices ---------------------------------------------------------------------------------------


def is_heartbeat(line: dict[str, Any]) -> bool:
    return line.get("type") == "HEARTBEAT"


def parse_price(line: dict[str, Any]) -> tuple[str, int, float, float] | None:
    """A pricing-stream or ``/pricing`` price as (instrument, time ns, best bid, best ask).

    None for a heartbeat, or a price with no bid or no ask (a halted market sends empty lists).
    A line without ``type`` is a price (OANDA's 2016 example). Liquidity is ignored.
    """
    kind = line.get("type", "PRICE")
    if kind != "PRICE":
        return None
    bids, asks = line.get("bids") or [], line.get("asks") or []
    if not bids or not asks:
        return None
    bid = max(float(b["price"]) for b in bids)
    ask = min(float(a["price"]) for a in asks)
    return line["instrument"], parse_time(line["time"]), bid, ask


def prices_to_ticks(prices: list[tuple[str, int, float, float]]) -> np.ndarray:
    """(instrument, time, bid, ask) tuples of one instrument into TICK_DTYPE rows."""
    out = np.zeros(len(prices), dtype=TICK_DTYPE)
    for i, (_, t, b, a) in enumerate(prices):
        out[i] = (t, b, a)
    return out


# -- candles --------------------------------------------------------------------------------------


def parse_candles(body: dict[str, Any], include_incomplete: bool = False) -> np.ndarray:
    """A ``price=BA`` candles response into BAR_DTYPE rows, oldest first.

    Candles with ``complete: false`` are left out unless `include_incomplete` (then marked so).
    ``volume`` (the tick count) goes into ``ticks``. A response without ``bid``/``ask`` (requested
    with the default ``price=M``) is refused: the platform trades bid and ask, never the mid.
    """
    rows = []
    for candle in body.get("candles", []):
        complete = bool(candle.get("complete", True))
        if not complete and not include_incomplete:
            continue
        if "bid" not in candle or "ask" not in candle:
            raise ValueError(
                "a candle without bid/ask prices: request candles with price='BA' "
                f"(got keys {sorted(candle)})"
            )
        b, a = candle["bid"], candle["ask"]
        rows.append(
            (
                parse_time(candle["time"]),
                float(b["o"]),
                float(b["h"]),
                float(b["l"]),
                float(b["c"]),
                float(a["o"]),
                float(a["h"]),
                float(a["l"]),
                float(a["c"]),
                int(candle.get("volume", 0)),
                complete,
            )  # fmt: skip
        )
    return np.array(rows, dtype=BAR_DTYPE) if rows else np.zeros(0, dtype=BAR_DTYPE)


# -- orders and transactions ----------------------------------------------------------------------


def _client_id(tx: dict[str, Any]) -> str:
    if tx.get("clientOrderID"):
        return str(tx["clientOrderID"])
    return str((tx.get("clientExtensions") or {}).get("id", ""))


def _tag(extensions: dict[str, Any] | None) -> str:
    return str((extensions or {}).get("tag", ""))


def order_tag(body: dict[str, Any]) -> str:
    """The ``clientExtensions.tag`` of an order lookup's body (``orders/{id}``); '' if none."""
    return _tag((body.get("order") or {}).get("clientExtensions"))


def _fill_event(tx: dict[str, Any], client_id: str, ordered: int | None) -> OrderEvent:
    units = _units(tx["units"])
    trades = []
    if tx.get("tradeOpened"):
        trades.append(str(tx["tradeOpened"]["tradeID"]))
    if tx.get("tradeReduced"):
        trades.append(str(tx["tradeReduced"]["tradeID"]))
    trades += [str(t["tradeID"]) for t in tx.get("tradesClosed") or []]
    partial = ordered is not None and abs(units) < abs(ordered)
    return OrderEvent(
        kind=PARTIALLY_FILLED if partial else FILLED,
        client_id=client_id or _client_id(tx),
        instrument=tx.get("instrument", ""),
        units=units,
        price=float(tx["price"]) if "price" in tx else _float(tx.get("fullVWAP"), math.nan),
        reason=tx.get("reason", ""),
        order_id=str(tx.get("orderID", "")),
        transaction_id=str(tx["id"]),
        trade_ids=tuple(trades),
        trade_opened=str((tx.get("tradeOpened") or {}).get("tradeID", "")),
        tag=_tag((tx.get("tradeOpened") or {}).get("clientExtensions")),
        pl=_float(tx.get("pl")),
        financing=_float(tx.get("financing")),
        commission=_float(tx.get("commission")),
        time_ns=parse_time(tx["time"]) if "time" in tx else 0,
    )


def parse_transaction(tx: dict[str, Any], ordered: int | None = None) -> OrderEvent | None:
    """One transaction as an event, or None for a kind that is no order outcome (heartbeats,
    funding, daily financing, stop-loss order creation...).

    ``MARKET_ORDER`` (and other ``*_ORDER`` created by a client) → accepted; ``ORDER_FILL`` →
    filled (partially when `ordered` is known and larger); ``ORDER_CANCEL`` → cancelled;
    ``*_ORDER_REJECT`` → rejected with its ``rejectReason``.
    """
    kind = tx.get("type", "")
    if kind == "ORDER_FILL":
        return _fill_event(tx, "", ordered)
    if kind == "ORDER_CANCEL":
        return OrderEvent(
            kind=CANCELLED,
            client_id=_client_id(tx),
            reason=tx.get("reason", ""),
            order_id=str(tx.get("orderID", "")),
            transaction_id=str(tx["id"]),
            time_ns=parse_time(tx["time"]) if "time" in tx else 0,
        )
    if kind.endswith("_ORDER_REJECT"):
        return OrderEvent(
            kind=REJECTED,
            client_id=_client_id(tx),
            instrument=tx.get("instrument", ""),
            units=_units(tx["units"]) if "units" in tx else 0,
            reason=tx.get("rejectReason", "") or tx.get("reason", ""),
            transaction_id=str(tx["id"]) if "id" in tx else "",
            time_ns=parse_time(tx["time"]) if "time" in tx else 0,
        )
    if kind == "MARKET_ORDER" and tx.get("reason") == "CLIENT_ORDER":
        return OrderEvent(
            kind=ACCEPTED,
            client_id=_client_id(tx),
            tag=_tag(tx.get("clientExtensions")),
            instrument=tx.get("instrument", ""),
            units=_units(tx["units"]),
            reason=tx.get("reason", ""),
            order_id=str(tx["id"]),
            transaction_id=str(tx["id"]),
            time_ns=parse_time(tx["time"]) if "time" in tx else 0,
        )
    return None


def parse_order_response(body: dict[str, Any], client_id: str = "") -> list[OrderEvent]:
    """The body of an order create (201, or a 400 with ``orderRejectTransaction``) as events.

    A 201 does not mean filled: it is accepted, then filled, or cancelled (a FOK order that could
    not fill, a stop-loss on the wrong side). Events carry `client_id` where the venue leaves it
    out (a fill of an order sent without clientExtensions).
    """
    events: list[OrderEvent] = []
    created = body.get("orderCreateTransaction")
    ordered = None
    if created:
        accepted = parse_transaction(created)
        if accepted is not None:
            ordered = accepted.units
            events.append(
                msgspec.structs.replace(accepted, client_id=accepted.client_id or client_id)
            )
    fill = body.get("orderFillTransaction")
    if fill:
        event = _fill_event(fill, _client_id(fill) or client_id, ordered)
        events.append(event)
    cancel = body.get("orderCancelTransaction")
    if cancel:
        event = parse_transaction(cancel)
        if event is not None:
            events.append(msgspec.structs.replace(event, client_id=event.client_id or client_id))
    reject = body.get("orderRejectTransaction")
    if reject:
        event = parse_transaction(reject)
        if event is not None:
            event = msgspec.structs.replace(
                event,
                client_id=event.client_id or client_id,
                reason=event.reason or body.get("errorCode", ""),
            )
            events.append(event)
    if not events and ("errorCode" in body or "errorMessage" in body):
        events.append(OrderEvent(kind=REJECTED, client_id=client_id, reason=error_reason(body)))
    return events


def error_reason(body: dict[str, Any]) -> str:
    """``errorCode: errorMessage`` of an error body, whichever parts it has."""
    code, message = body.get("errorCode", ""), body.get("errorMessage", "")
    return f"{code}: {message}" if code and message else code or message or "unknown error"


def error_body(text: str) -> dict[str, Any]:
    """The JSON of a V20Error's ``msg``, or ``{"errorMessage": <text, trimmed>}`` for HTML/garbage."""
    try:
        body = json.loads(text)
    except (ValueError, TypeError):
        return {"errorMessage": (text or "").strip()[:200]}
    return body if isinstance(body, dict) else {"errorMessage": str(body)[:200]}


def last_transaction_id(body: dict[str, Any]) -> str:
    return str(body.get("lastTransactionID", ""))


# -- reconciliation reads -------------------------------------------------------------------------


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """An open trade as the venue holds it (``openTrades``)."""

    id: str
    instrument: str
    units: int  # current, signed
    price: float
    open_time_ns: int
    client_id: str = ""  # the trade's clientExtensions.id ('' for a manual trade)
    tag: str = ""  # its clientExtensions.tag (our brain's name)
    stop_loss: float = math.nan
    take_profit: float = math.nan
    unrealized: float = 0.0


def parse_trades(body: dict[str, Any]) -> list[Trade]:
    out = []
    for t in body.get("trades", []):
        out.append(
            Trade(
                id=str(t["id"]),
                instrument=t["instrument"],
                units=_units(t["currentUnits"]),
                price=float(t["price"]),
                open_time_ns=parse_time(t["openTime"]),
                client_id=str((t.get("clientExtensions") or {}).get("id", "")),
                tag=str((t.get("clientExtensions") or {}).get("tag", "")),
                stop_loss=_float((t.get("stopLossOrder") or {}).get("price"), math.nan),
                take_profit=_float((t.get("takeProfitOrder") or {}).get("price"), math.nan),
                unrealized=_float(t.get("unrealizedPL")),
            )
        )
    return out


def parse_positions(body: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """Net units and average price per instrument (long and short sides netted)."""
    out = {}
    for p in body.get("positions", []):
        long_units = _units(p["long"]["units"])
        short_units = _units(p["short"]["units"])
        net = long_units + short_units
        side = p["long"] if net > 0 else p["short"]
        out[p["instrument"]] = (net, _float(side.get("averagePrice"), 0.0) if net else 0.0)
    return out
