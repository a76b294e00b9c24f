"""A fake OANDA v20 server on 127.0.0.1 for tests: the real routes, codes, bodies and streams.

It speaks the wire contract of ``shared/reference/oanda-v20.md`` (JSON bodies, 201 for order
create, ``lastTransactionID`` on every response, error bodies with ``errorCode``/``errorMessage``,
chunked line-delimited pricing with ``HEARTBEAT`` lines) and keeps a small netting book (trades,
transactions) so order lookups, reconciliation reads and ``sinceid`` agree with what it did.

Faults are armed per route with :meth:`FakeV20.arm` and consumed one per request:

``("status", code)``        reply `code` with a JSON error body (HTML for 502)
``("delay", seconds)``      do the work, then wait before replying (a lost response on timeout)
``("drop",)``               do the work, then close the socket without a reply
``("reject", reason)``      order create: 400 with an ``orderRejectTransaction``
``("cancel", reason)``      order create: 201 with an ``orderCancelTransaction``
``("rest",)``               order create: 201, the order left pending (a market not trading)
``("partial", units)``      order create: fill only `units` of it, cancel the rest
``("partials", units)``     order create: fill `units` of it (the order's side, in the reply), then the rest in a
                            second ``ORDER_FILL`` (in the transactions only)
``("hold", units)``         order create: fill `units` of it (the order's side), leave the rest open until
                            :meth:`FakeV20.fill_held` fills it (a later ``ORDER_FILL``)
``("stall",)``              stream: send the snapshot, then nothing (socket left open)
``("cut",)``                stream: after the snapshot and queued prices, half a line, then a reset
``("end",)``                stream: after the snapshot and queued prices, a clean end

An outage covers every REST route until it is lifted: set :attr:`FakeV20.down` to ``("drop",)``
(the socket closes before any work is done) or ``("status", code)``; ``None`` lifts it.

Routes are the keys ``candles``, ``stream``, ``orders``, ``order``, ``cancel``, ``trades``,
``positions``, ``transactions``, ``summary``. Every price line the stream wrote whole is kept per connection in
:attr:`FakeV20.sent`, so a test can compare what the client received with what was sent.
"""

from __future__ import annotations

import collections
import json
import queue
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from osm.live.adapters.oanda.parsing import format_time, parse_time

_GRANULARITY_S = {"S5": 5, "M1": 60, "M5": 300, "M15": 900, "H1": 3600, "H4": 14400, "D": 86400}


class FakeV20:
    """The server and its state; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self, token: str = "fake-token", account: str = "101-004-0000000-001",
        heartbeat_s: float = 0.2, currency: str = "USD", balance: float = 100_000.0,
    ) -> None:  # fmt: skip
        self.token, self.account, self.heartbeat_s = token, account, heartbeat_s
        self.currency, self.balance = currency, balance
        self.lock = threading.RLock()
        self.faults: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.down: tuple | None = None  # an outage of every REST route (see the module's doc)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.transactions: list[dict[str, Any]] = []
        self.orders: dict[str, dict[str, Any]] = {}  # id -> order
        self.trades: list[dict[str, Any]] = []  # open trades, oldest first
        self.prices: dict[str, tuple[float, float]] = {}
        self.candles: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.sent: list[list[str]] = []  # per stream connection: price lines written whole
        self._subscribers: list[queue.Queue] = []
        self._next_id = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeV20:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-v20", daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)

    # -- knobs ------------------------------------------------------------------------------------

    def arm(self, route: str, *fault: Any, times: int = 1) -> None:
        with self.lock:
            for _ in range(times):
                self.faults[route].append(fault)

    def _fault(self, route: str) -> tuple | None:
        with self.lock:
            return self.faults[route].popleft() if self.faults[route] else None

    def push_price(
        self, instrument: str, bid: float, ask: float, time_ns: int | None = None
    ) -> None:
        """Quote `instrument`; every open stream sends it."""
        line = {
            "type": "PRICE", "instrument": instrument,
            "time": format_time(time_ns if time_ns is not None else time.time_ns()),
            "bids": [{"price": f"{bid:.5f}", "liquidity": 10000000}],
            "asks": [{"price": f"{ask:.5f}", "liquidity": 10000000.0}],
            "closeoutBid": f"{bid:.5f}", "closeoutAsk": f"{ask:.5f}",
            "status": "tradeable", "tradeable": True,
        }  # fmt: skip
        with self.lock:
            self.prices[instrument] = (bid, ask)
            self._last_line = line
            for q in self._subscribers:
                q.put(line)

    def set_candles(
        self, instrument: str, granularity: str, start_ns: int, count: int, open_last: bool = True
    ) -> None:
        """`count` candles from `start_ns`, weekends left out; the last is incomplete if `open_last`."""
        step = _GRANULARITY_S[granularity] * 1_000_000_000
        out, t, i = [], start_ns, 0
        while len(out) < count:
            weekday = time.gmtime(t // 1_000_000_000).tm_wday
            if weekday != 5:  # no Saturday candles: gaps are not errors
                p = 1.1 + (i % 97) * 1e-4
                out.append({
                    "time_ns": t, "volume": 10 + i % 50, "complete": True,
                    "bid": {k: f"{p:.5f}" for k in "ohlc"},
                    "ask": {k: f"{p + 2e-4:.5f}" for k in "ohlc"},
                })  # fmt: skip
                i += 1
            t += step
        if open_last and out:
            out[-1]["complete"] = False
        self.candles[(instrument, granularity)] = out

    def _id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def _tx(self, **fields: Any) -> dict[str, Any]:
        tx = {"id": self._id(), "accountID": self.account, "userID": 1,
              "time": format_time(time.time_ns()), **fields}  # fmt: skip
        tx.setdefault("batchID", tx["id"])
        self.transactions.append(tx)
        return tx

    @property
    def last_id(self) -> str:
        return str(self._next_id)

    # -- book -------------------------------------------------------------------------------------

    def net_units(self, instrument: str) -> int:
        with self.lock:
            return sum(t["units"] for t in self.trades if t["instrument"] == instrument)

    def _fill(
        self, order: dict[str, Any], units: int, reason: str, batch: str, trade_id: str = ""
    ) -> dict[str, Any]:
        """Fill `units` of `order`, closing open trades FIFO (or only `trade_id`'s, an exit's)."""
        instrument = order["instrument"]
        bid, ask = self.prices.get(instrument, (1.1, 1.1002))
        price = ask if units > 0 else bid
        remaining, closed, pl = units, [], 0.0
        for trade in [
            t for t in self.trades
            if t["instrument"] == instrument and trade_id in ("", t["id"])
        ]:  # fmt: skip
            if remaining == 0 or (trade["units"] > 0) == (remaining > 0):
                continue
            take = min(abs(remaining), abs(trade["units"])) * (1 if remaining > 0 else -1)
            trade_pl = -take * (price - trade["price"])
            if instrument.split("_")[0] == self.currency:
                trade_pl /= price  # quote currency into the account currency, as OANDA books it
            trade_pl = round(trade_pl, 4)  # the account currency's precision: what is booked
            pl += trade_pl
            trade["units"] += take
            remaining -= take
            closed.append(
                {"tradeID": trade["id"], "units": str(take), "realizedPL": f"{trade_pl:.4f}"}
            )
        self.trades = [t for t in self.trades if t["units"] != 0]
        self.balance += pl
        fill = self._tx(
            type="ORDER_FILL", orderID=order["id"], instrument=instrument, units=str(units),
            price=f"{price:.5f}", reason=reason, pl=f"{pl:.4f}", financing="0.0000",
            commission="0.0000", accountBalance=f"{self.balance:.4f}", batchID=batch,
        )  # fmt: skip
        client = (order.get("clientExtensions") or {}).get("id")
        if client:
            fill["clientOrderID"] = client
        if closed:
            fill["tradesClosed"] = closed
        if remaining:
            trade = {"id": fill["id"], "instrument": instrument, "units": remaining,
                     "price": price, "openTime": fill["time"], "clientExtensions":
                     order.get("tradeClientExtensions") or order.get("clientExtensions")}  # fmt: skip
            fill["tradeOpened"] = {"tradeID": trade["id"], "units": str(remaining)}
            if trade["clientExtensions"]:  # v20's TradeOpen carries the trade's extensions
                fill["tradeOpened"]["clientExtensions"] = trade["clientExtensions"]
            for key, kind in (("stopLossOnFill", "STOP_LOSS"), ("takeProfitOnFill", "TAKE_PROFIT")):
                if order.get(key):
                    tx = self._tx(type=f"{kind}_ORDER", tradeID=trade["id"], reason="ON_FILL",
                                  price=order[key]["price"], timeInForce="GTC", batchID=batch)  # fmt: skip
                    trade[f"{kind[0].lower()}{kind.title().replace('_', '')[1:]}Order"] = {
                        "id": tx["id"], "price": order[key]["price"], "state": "PENDING"}  # fmt: skip
            self.trades.append(trade)
        order.update(state="FILLED", fillingTransactionID=fill["id"], filledTime=fill["time"])
        return fill

    def open_manual_trade(self, instrument: str, units: int) -> str:
        """A trade placed by hand on the venue (no client id); returns the id of the trade it
        opened ('' when it only closed units of open trades)."""
        with self.lock:
            tx = self._tx(type="MARKET_ORDER", instrument=instrument, units=str(units),
                          timeInForce="FOK", positionFill="DEFAULT", reason="CLIENT_ORDER")  # fmt: skip
            order = {
                "id": tx["id"],
                "instrument": instrument,
                "units": str(units),
                "type": "MARKET",
            }
            self.orders[tx["id"]] = order
            fill = self._fill(order, units, "MARKET_ORDER", tx["id"])
            return fill.get("tradeOpened", {}).get("tradeID", "")  # "": it only reduced trades

    def fill_held(self, client_id: str) -> None:
        """Fill the rest of the order `client_id` that the fault ``hold`` left open."""
        with self.lock:
            order = self.find_order(f"@{client_id}")
            batch = str(self._next_id + 1)  # the fill's own id: it opens its own batch
            self._fill(order, order.pop("held"), "MARKET_ORDER", batch)

    def trigger_stop_loss(self, trade_id: str) -> None:
        """The stop-loss of `trade_id` fires: its trade closes at the stop price."""
        with self.lock:
            trade = next(t for t in self.trades if t["id"] == trade_id)
            stop = float(trade["stopLossOrder"]["price"])
            self.prices[trade["instrument"]] = (stop, stop)
            order = {"id": trade["stopLossOrder"]["id"], "instrument": trade["instrument"]}
            self._fill(order, -trade["units"], "STOP_LOSS_ORDER", order["id"], trade["id"])

    # -- routes -----------------------------------------------------------------------------------

    def create_order(self, body: dict[str, Any], fault: tuple | None) -> tuple[int, dict[str, Any]]:
        order = body.get("order") if isinstance(body, dict) else None
        if not isinstance(order, dict) or order.get("type") != "MARKET":
            return 400, {"errorMessage": "Invalid value specified for 'order.type'"}
        instrument = order.get("instrument", "")
        if not re.fullmatch(r"[A-Z0-9]+_[A-Z0-9]+", instrument):
            return 400, {"errorMessage": "Invalid value specified for 'order.instrument'"}
        try:
            units = int(order.get("units", ""))
        except ValueError:
            units = 0
        if units == 0:
            return 400, {"errorMessage": "Invalid value specified for 'order.units'"}
        with self.lock:
            if fault and fault[0] == "reject":
                reject = self._tx(type="MARKET_ORDER_REJECT", instrument=instrument,
                                  units=str(units), reason="CLIENT_ORDER", rejectReason=fault[1],
                                  clientExtensions=order.get("clientExtensions"))  # fmt: skip
                return 400, {"orderRejectTransaction": reject, "relatedTransactionIDs": [reject["id"]],
                             "lastTransactionID": self.last_id, "errorCode": fault[1],
                             "errorMessage": "The order was rejected"}  # fmt: skip
            fields = {k: v for k, v in order.items() if k != "type"}
            create = self._tx(type="MARKET_ORDER", reason="CLIENT_ORDER", **fields)
            stored = {**order, "id": create["id"], "state": "PENDING", "createTime": create["time"]}
            self.orders[create["id"]] = stored
            reply: dict[str, Any] = {"orderCreateTransaction": create}
            if fault and fault[0] == "cancel":
                cancel = self._tx(type="ORDER_CANCEL", orderID=create["id"], reason=fault[1],
                                  batchID=create["id"])  # fmt: skip
                stored.update(state="CANCELLED", cancellingTransactionID=cancel["id"])
                reply["orderCancelTransaction"] = cancel
            elif not (fault and fault[0] == "rest"):  # resting: left pending, unfilled
                filled = units
                if fault and fault[0] == "partial":
                    filled = fault[1]
                if fault and fault[0] in ("partials", "hold"):
                    filled = abs(fault[1]) if units > 0 else -abs(fault[1])
                reply["orderFillTransaction"] = self._fill(
                    stored, filled, "MARKET_ORDER", create["id"]
                )
                if fault and fault[0] == "partials":
                    self._fill(stored, units - filled, "MARKET_ORDER", create["id"])
                elif fault and fault[0] == "hold":  # the rest stays open: fill_held fills it
                    stored.update(state="PENDING", held=units - filled)
                elif filled != units:
                    cancel = self._tx(type="ORDER_CANCEL", orderID=create["id"],
                                      reason="INSUFFICIENT_LIQUIDITY", batchID=create["id"])  # fmt: skip
                    reply["orderCancelTransaction"] = cancel
            reply["relatedTransactionIDs"] = [
                t["id"] for t in self.transactions if t.get("batchID") == create["id"]
            ]
            reply["lastTransactionID"] = self.last_id
            return 201, reply

    def cancel_order(self, ref: str) -> tuple[int, dict[str, Any]]:
        """Cancel a pending order (by id or ``@clientID``); 404 for one filled or unknown."""
        with self.lock:
            order = self.find_order(ref)
            if order is None or order["state"] != "PENDING":
                return 404, {"errorMessage": "The order ID specified does not exist",
                             "errorCode": "ORDER_DOESNT_EXIST", "lastTransactionID": self.last_id}  # fmt: skip
            cancel = self._tx(type="ORDER_CANCEL", orderID=order["id"], reason="CLIENT_REQUEST")
            client = (order.get("clientExtensions") or {}).get("id")
            if client:
                cancel["clientOrderID"] = client
            order.update(state="CANCELLED", cancellingTransactionID=cancel["id"])
            return 200, {"orderCancelTransaction": cancel, "relatedTransactionIDs": [cancel["id"]],
                         "lastTransactionID": self.last_id}  # fmt: skip

    def find_order(self, ref: str) -> dict[str, Any] | None:
        with self.lock:
            if ref.startswith("@"):
                for order in self.orders.values():
                    if (order.get("clientExtensions") or {}).get("id") == ref[1:]:
                        return order
                return None
            return self.orders.get(ref)

    def candle_page(self, instrument: str, q: dict[str, str]) -> tuple[int, dict[str, Any]]:
        granularity = q.get("granularity", "S5")
        if granularity not in _GRANULARITY_S:
            return 400, {
                "errorMessage": f"Invalid value specified for 'granularity': {granularity}"
            }
        if "count" in q and "from" in q and "to" in q:
            return 400, {"errorMessage": "'count' cannot be specified when 'to' and 'from' are"}
        count = int(q.get("count", 500))
        if not 0 < count <= 5000:
            return 400, {"errorMessage": "Maximum value for 'count' exceeded"}
        price = q.get("price", "M")
        rows = self.candles.get((instrument, granularity), [])
        if "from" in q:
            start = parse_time(q["from"])
            include = q.get("includeFirst", "true") == "true"
            rows = [c for c in rows if c["time_ns"] > start or (include and c["time_ns"] == start)]
        if "to" in q:
            end = parse_time(q["to"])
            rows = [c for c in rows if c["time_ns"] < end]  # exclusive, see the reference
            if "from" not in q:
                rows = rows[-count:]
        if not ("from" in q and "to" in q):
            rows = rows[:count] if "from" in q else rows[-count:]
        out = []
        for c in rows:
            candle = {
                "complete": c["complete"],
                "volume": c["volume"],
                "time": format_time(c["time_ns"]),
            }
            if "B" in price:
                candle["bid"] = c["bid"]
            if "A" in price:
                candle["ask"] = c["ask"]
            if "M" in price:
                candle["mid"] = c["bid"]
            out.append(candle)
        return 200, {"instrument": instrument, "granularity": granularity, "candles": out}

    def open_trades_body(self) -> dict[str, Any]:
        with self.lock:
            trades = []
            for t in self.trades:
                item = {"id": t["id"], "instrument": t["instrument"], "price": f"{t['price']:.5f}",
                        "openTime": t["openTime"], "initialUnits": str(t["units"]),
                        "currentUnits": str(t["units"]), "state": "OPEN", "realizedPL": "0.0000",
                        "unrealizedPL": "0.0000", "financing": "0.0000"}  # fmt: skip
                if t.get("clientExtensions"):
                    item["clientExtensions"] = t["clientExtensions"]
                for key in ("stopLossOrder", "takeProfitOrder"):
                    if key in t:
                        item[key] = t[key]
                trades.append(item)
            return {"trades": trades, "lastTransactionID": self.last_id}

    def positions_body(self) -> dict[str, Any]:
        with self.lock:
            out = []
            for name in sorted({t["instrument"] for t in self.trades}):
                mine = [t for t in self.trades if t["instrument"] == name]
                sides = {}
                for side, keep in (("long", lambda u: u > 0), ("short", lambda u: u < 0)):
                    ts = [t for t in mine if keep(t["units"])]
                    units = sum(t["units"] for t in ts)
                    sides[side] = {"units": str(units), "pl": "0.0000", "unrealizedPL": "0.0000",
                                   "resettablePL": "0.0000"}  # fmt: skip
                    if ts:
                        avg = sum(t["price"] * t["units"] for t in ts) / units
                        sides[side].update(
                            averagePrice=f"{avg:.5f}", tradeIDs=[t["id"] for t in ts]
                        )
                out.append({"instrument": name, **sides, "pl": "0.0000", "unrealizedPL": "0.0000",
                            "resettablePL": "0.0000"})  # fmt: skip
            return {"positions": out, "lastTransactionID": self.last_id}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeV20
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet: tests read fake.requests instead
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int) -> None:
        if status == 502:
            data = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        messages = {401: "Insufficient authorization to perform request.",
                    404: "The order ID specified does not exist", 429: "Too many requests",
                    503: "Service unavailable"}  # fmt: skip
        body = {"errorMessage": messages.get(status, "Internal server error")}
        if status == 404:
            body["errorCode"] = "NO_SUCH_ORDER"
        body["lastTransactionID"] = self.fake.last_id
        self._json(status, body)

    def _route(self, method: str) -> None:
        fake = self.fake
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with fake.lock:
            fake.requests.append((method, url.path, dict(self.headers)))
        if self.headers.get("Authorization") != f"Bearer {fake.token}":
            return self._error(401)
        body: Any = {}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                return self._json(400, {"errorMessage": "Invalid JSON body"})
        path = url.path
        m = re.fullmatch(r"/v3/instruments/([A-Z0-9_]+)/candles", path)
        if m and method == "GET":
            return self._serve("candles", lambda f: fake.candle_page(m.group(1), q))
        prefix = f"/v3/accounts/{fake.account}"
        if not path.startswith(prefix):
            if path.startswith("/v3/accounts/"):
                return self._json(403, {"errorMessage": "The provided request was forbidden."})
            return self._json(404, {"errorMessage": f"no route {path}"})
        rest = path[len(prefix) :]
        if rest == "/pricing/stream" and method == "GET":
            return self._stream(q)
        if rest == "/orders" and method == "POST":
            return self._serve("orders", lambda f: fake.create_order(body, f))
        m = re.fullmatch(r"/orders/([^/]+)", rest)
        if m and method == "GET":

            def lookup(_f):
                order = fake.find_order(m.group(1))
                if order is None:
                    return 404, {"errorMessage": "The order ID specified does not exist",
                                 "errorCode": "NO_SUCH_ORDER", "lastTransactionID": fake.last_id}  # fmt: skip
                return 200, {"order": order, "lastTransactionID": fake.last_id}

            return self._serve("order", lookup)
        m = re.fullmatch(r"/orders/([^/]+)/cancel", rest)
        if m and method == "PUT":
            return self._serve("cancel", lambda f: fake.cancel_order(m.group(1)))
        if rest == "/openTrades" and method == "GET":
            return self._serve("trades", lambda f: (200, fake.open_trades_body()))
        if rest == "/openPositions" and method == "GET":
            return self._serve("positions", lambda f: (200, fake.positions_body()))
        if rest == "/transactions/sinceid" and method == "GET":

            def since(_f):
                with fake.lock:
                    first = int(q.get("id", "0"))
                    txs = [t for t in fake.transactions if int(t["id"]) > first]
                    return 200, {"transactions": txs, "lastTransactionID": fake.last_id}

            return self._serve("transactions", since)
        m = re.fullmatch(r"/transactions/(\d+)", rest)
        if m and method == "GET":

            def one(_f):
                tx = next((t for t in fake.transactions if t["id"] == m.group(1)), None)
                if tx is None:
                    return 404, {
                        "errorMessage": "Transaction not found",
                        "errorCode": "NO_SUCH_TRANSACTION",
                    }
                return 200, {"transaction": tx, "lastTransactionID": fake.last_id}

            return self._serve("transactions", one)
        if rest == "/summary" and method == "GET":

            def summary(_f):
                with fake.lock:
                    return 200, {"account": {"id": fake.account, "currency": fake.currency,
                                             "balance": f"{fake.balance:.4f}",
                                             "openTradeCount": len(fake.trades),
                                             "lastTransactionID": fake.last_id},
                                 "lastTransactionID": fake.last_id}  # fmt: skip

            return self._serve("summary", summary)
        return self._json(405 if rest in ("/orders", "/openTrades") else 404,
                          {"errorMessage": f"no route {method} {path}"})  # fmt: skip

    def _serve(self, route: str, work) -> None:
        outage = self.fake.down
        if outage is not None and outage[0] == "status":
            return self._error(outage[1])
        if outage is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        fault = self.fake._fault(route)
        if fault and fault[0] == "status":
            return self._error(fault[1])
        status, body = work(
            fault
            if fault and fault[0] in ("reject", "cancel", "rest", "partial", "partials", "hold")
            else None
        )
        if fault and fault[0] == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault[0] == "delay":
            time.sleep(fault[1])
        self._json(status, body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, q: dict[str, str]) -> None:
        fake = self.fake
        fault = fake._fault("stream")
        if fault and fault[0] == "status":
            return self._error(fault[1])
        wanted = set(q.get("instruments", "").split(","))
        inbox: queue.Queue = queue.Queue()
        with fake.lock:
            sent: list[str] = []
            fake.sent.append(sent)
            fake._subscribers.append(inbox)
            snapshot = [
                getattr(fake, "_last_line", None)
            ] if getattr(fake, "_last_line", None) else []  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in snapshot:
                if line["instrument"] in wanted:
                    text = json.dumps(line, separators=(",", ":"))
                    self._chunk(text.encode() + b"\n")
                    sent.append(text)
            if fault and fault[0] == "stall":
                while not fake._stop.is_set() and not fake._stop.wait(0.05):
                    pass
                return
            while not fake._stop.is_set():
                try:
                    line = inbox.get(timeout=fake.heartbeat_s)
                except queue.Empty:
                    if fault and fault[0] in ("cut", "end"):
                        break
                    hb = {"type": "HEARTBEAT", "time": format_time(time.time_ns())}
                    self._chunk(json.dumps(hb).encode() + b"\n")
                    continue
                if line["instrument"] not in wanted:
                    continue
                text = json.dumps(line, separators=(",", ":"))
                self._chunk(text.encode() + b"\n")
                sent.append(text)
            if fault and fault[0] == "cut":
                partial = b'{"type":"PRICE","instrument":"EUR_USD","bids":[{"pri'
                self.wfile.write(f"{len(partial) + 20:x}\r\n".encode() + partial)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
        except OSError:
            self.close_connection = True
        finally:
            with fake.lock:
                fake._subscribers.remove(inbox)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")
