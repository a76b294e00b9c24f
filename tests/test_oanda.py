"""The OANDA adapter: recorded payloads parsed into osm types, then the real oandapyV20 client
against the fake v20 server on 127.0.0.1 with faults injected (nothing in oandapyV20 is mocked)."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
from oandapyV20.endpoints.responses import orders as r_orders
from oandapyV20.endpoints.responses import positions as r_positions
from oandapyV20.endpoints.responses import pricing as r_pricing
from oandapyV20.endpoints.responses import trades as r_trades
from oandapyV20.endpoints.responses import transactions as r_transactions

from osm.core.dtypes import BAR_DTYPE
from osm.core.errors import ConfigError
from osm.live.adapters.oanda import parsing as P
from osm.live.adapters.oanda.config import OandaConfig, Secret, load_token, make_api
from osm.live.adapters.oanda.data import PriceStream, fetch_candles
from osm.live.adapters.oanda.fake import FakeV20
from osm.live.adapters.oanda.ratelimit import RateLimiter

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
TOKEN = "tok-3f9a1c-secret-b7e2"


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def fake():
    server = FakeV20(token=TOKEN, heartbeat_s=0.1).start()
    yield server
    server.stop()


def config_for(fake: FakeV20, **kw) -> OandaConfig:
    base = dict(account=fake.account, environment=fake.url, instruments=["EUR_USD"],
                request_timeout_s=2.0, stream_silence_s=0.5, backoff_s=0.0, backoff_cap_s=0.0,
                connections_per_s=2.0)  # fmt: skip
    base.update(kw)
    return OandaConfig(**base)


# -- (1) recorded payloads ------------------------------------------------------------------------

STREAM_LINES = [
    '{"type":"HEARTBEAT","time":"2016-10-27T08:38:44.327443673Z"}',
    '{"status":"tradeable","asks":[{"price":"1.09188","liquidity":10000000},{"price":"1.09190",'
    '"liquidity":10000000}],"closeoutBid":"1.09173","bids":[{"price":"1.09177","liquidity":'
    '10000000},{"price":"1.09175","liquidity":10000000}],"instrument":"EUR_USD","time":'
    '"2016-10-27T08:38:45.664613867Z","closeoutAsk":"1.09192","type":"PRICE"}',
]


def test_time_is_exact_to_the_nanosecond():
    assert P.parse_time("2016-10-27T08:38:45.664613867Z") == 1477557525_664613867
    assert P.parse_time("2017-01-03T00:00:00Z") == 1483401600_000000000
    assert P.parse_time("1477557525.664613867") == 1477557525_664613867
    assert P.format_time(1477557525_664613867) == "2016-10-27T08:38:45.664613867Z"


def test_stream_lines_of_the_reference():
    assert P.parse_price(json.loads(STREAM_LINES[0])) is None
    assert P.is_heartbeat(json.loads(STREAM_LINES[0]))
    assert P.parse_price(json.loads(STREAM_LINES[1])) == (
        "EUR_USD", 1477557525_664613867, 1.09177, 1.09188,
    )  # fmt: skip
    untyped = json.loads(STREAM_LINES[1])
    del untyped["type"]
    untyped["asks"][0]["liquidity"] = 10000000.0
    assert P.parse_price(untyped)[2:] == (1.09177, 1.09188)
    halted = {**json.loads(STREAM_LINES[1]), "bids": []}
    assert P.parse_price(halted) is None


def test_shipped_pricing_stream_example_parses():
    lines = r_pricing.responses["_v3_accounts_accountID_pricing_stream"]["response"]
    parsed = [P.parse_price(line) for line in lines]
    prices = [p for p in parsed if p is not None]
    assert prices and all(ask >= bid > 0 for _, _, bid, ask in prices)
    assert sum(P.is_heartbeat(line) for line in lines) == len(lines) - len(prices)


def test_candles_ba_into_bars_incomplete_left_out():
    body = {
        "candles": [
            {"ask": {"c": "1.31469", "h": "1.31520", "l": "1.31467", "o": "1.31509"},
             "bid": {"c": "1.31454", "h": "1.31502", "l": "1.31450", "o": "1.31493"},
             "complete": True, "time": "2016-10-17T15:00:00.000000000Z", "volume": 70},
            {"ask": {"c": "1.3", "h": "1.3", "l": "1.3", "o": "1.3"},
             "bid": {"c": "1.2", "h": "1.2", "l": "1.2", "o": "1.2"},
             "complete": False, "time": "2016-10-17T15:01:00.000000000Z", "volume": 3},
        ],
        "granularity": "M1", "instrument": "USD_CAD",
    }  # fmt: skip
    bars = P.parse_candles(body)
    assert bars.dtype == BAR_DTYPE and len(bars) == 1
    row = bars[0]
    assert row["time"] == P.parse_time("2016-10-17T15:00:00Z")
    assert (row["bid_open"], row["bid_high"], row["bid_low"], row["bid_close"]) == (
        1.31493, 1.31502, 1.31450, 1.31454,
    )  # fmt: skip
    assert (row["ask_open"], row["ask_close"], row["ticks"], row["complete"]) == (
        1.31509, 1.31469, 70, True,
    )  # fmt: skip
    assert len(P.parse_candles(body, include_incomplete=True)) == 2
    mid_only = {"candles": [{"mid": {"o": "1"}, "complete": True, "time": "2017-01-03T00:00:00Z"}]}
    with pytest.raises(ValueError, match="price='BA'"):
        P.parse_candles(mid_only)


FILLED_201 = {
    "orderFillTransaction": {
        "accountBalance": "102107.4442", "instrument": "EUR_USD", "batchID": "7578", "pl": "0.0000",
        "accountID": "101-004-1435156-001", "units": "10000",
        "tradeOpened": {"tradeID": "7579", "units": "10000"}, "financing": "0.0000",
        "price": "1.05563", "userID": 1435156, "orderID": "7578",
        "time": "2017-03-09T13:22:13.832587780Z", "id": "7579", "type": "ORDER_FILL",
        "reason": "MARKET_ORDER",
    },
    "lastTransactionID": "7581",
    "orderCreateTransaction": {
        "timeInForce": "FOK", "instrument": "EUR_USD", "batchID": "7578",
        "accountID": "101-004-1435156-001", "units": "10000",
        "takeProfitOnFill": {"timeInForce": "GTC", "price": "1.10000"},
        "time": "2017-03-09T13:22:13.832587780Z", "userID": 1435156, "positionFill": "DEFAULT",
        "id": "7578", "type": "MARKET_ORDER",
        "stopLossOnFill": {"timeInForce": "GTC", "price": "1.05000"}, "reason": "CLIENT_ORDER",
    },
    "relatedTransactionIDs": ["7578", "7579", "7580", "7581"],
}  # fmt: skip

CANCELLED_201 = {
    "orderCancelTransaction": {
        "time": "2017-03-09T13:17:59.319422181Z", "userID": 1435156, "batchID": "7576",
        "orderID": "7576", "id": "7577", "type": "ORDER_CANCEL",
        "accountID": "101-004-1435156-001", "reason": "STOP_LOSS_ON_FILL_LOSS",
    },
    "lastTransactionID": "7577",
    "orderCreateTransaction": {
        "timeInForce": "FOK", "instrument": "EUR_USD", "batchID": "7576",
        "accountID": "101-004-1435156-001", "units": "10000",
        "time": "2017-03-09T13:17:59.319422181Z", "userID": 1435156, "positionFill": "DEFAULT",
        "id": "7576", "type": "MARKET_ORDER", "reason": "CLIENT_ORDER",
    },
    "relatedTransactionIDs": ["7576", "7577"],
}  # fmt: skip


def test_order_filled_201_gives_accepted_then_filled():
    accepted, filled = P.parse_order_response(FILLED_201, client_id="b1-7")
    assert (accepted.kind, accepted.client_id, accepted.units, accepted.order_id) == (
        P.ACCEPTED, "b1-7", 10000, "7578",
    )  # fmt: skip
    assert filled.kind == P.FILLED and filled.client_id == "b1-7"
    assert (filled.units, filled.price, filled.transaction_id, filled.trade_ids) == (
        10000, 1.05563, "7579", ("7579",),
    )  # fmt: skip
    assert filled.time_ns == P.parse_time("2017-03-09T13:22:13.832587780Z")


def test_order_cancelled_201_is_not_a_fill():
    events = P.parse_order_response(CANCELLED_201, client_id="b1-8")
    assert [e.kind for e in events] == [P.ACCEPTED, P.CANCELLED]
    assert events[1].reason == "STOP_LOSS_ON_FILL_LOSS" and events[1].client_id == "b1-8"


def test_order_rejected_and_error_bodies():
    body = {
        "orderRejectTransaction": {"type": "MARKET_ORDER_REJECT", "id": "12", "units": "-5",
                                   "instrument": "EUR_USD", "rejectReason": "PRICE_PRECISION_EXCEEDED",
                                   "time": "2017-03-09T13:17:59.319422181Z"},
        "relatedTransactionIDs": ["12"], "lastTransactionID": "12",
        "errorCode": "PRICE_PRECISION_EXCEEDED", "errorMessage": "too precise",
    }  # fmt: skip
    [event] = P.parse_order_response(body, client_id="c")
    assert (event.kind, event.reason, event.units, event.client_id) == (
        P.REJECTED, "PRICE_PRECISION_EXCEEDED", -5, "c",
    )  # fmt: skip
    [bad] = P.parse_order_response(
        {"errorMessage": "Invalid value specified for 'order.instrument'"}, "d"
    )
    assert bad.kind == P.REJECTED and "order.instrument" in bad.reason
    assert P.error_body("<html>502 Bad Gateway</html>")["errorMessage"].startswith("<html>")
    assert P.error_reason(
        {"lastTransactionID": "1168", "errorMessage": "The order ID specified does not exist",
         "errorCode": "NO_SUCH_ORDER"}
    ) == "NO_SUCH_ORDER: The order ID specified does not exist"  # fmt: skip


def test_partial_fill_is_reported_as_such():
    body = json.loads(json.dumps(FILLED_201))
    body["orderFillTransaction"]["units"] = "4000"
    _, fill = P.parse_order_response(body, "x")
    assert fill.kind == P.PARTIALLY_FILLED and fill.units == 4000


def test_shipped_order_and_transaction_examples():
    create = r_orders.responses["_v3_accounts_accountID_orders_create"]["response"]
    assert P.parse_order_response(create, "x") == []  # a LIMIT order: not our market vocabulary
    txs = r_transactions.responses["_v3_accounts_transaction_sinceid"]["response"]["transactions"]
    events = [P.parse_transaction(t) for t in txs]
    cancel = next(e for e in events if e is not None and e.kind == P.CANCELLED)
    assert (
        cancel.client_id == "myID" and cancel.order_id == "2307" and cancel.transaction_id == "2308"
    )
    trades = P.parse_trades(r_trades.responses["_v3_accounts_accountID_trades"]["response"])
    assert [(t.id, t.instrument, t.units, t.price) for t in trades] == [
        ("2315", "DE30_EUR", 10, 10678.3), ("2313", "EUR_USD", 100, 1.09448),
    ]  # fmt: skip
    positions = P.parse_positions(
        r_positions.responses["_v3_accounts_accountID_positions"]["response"]
    )
    assert positions["DE30_EUR"] == (-20, 10581.5)


def test_stop_loss_fill_without_client_id():
    tx = {"type": "ORDER_FILL", "id": "90", "orderID": "88", "instrument": "EUR_USD",
          "units": "-100", "price": "1.05000", "reason": "STOP_LOSS_ORDER", "pl": "-5.6300",
          "time": "2017-03-09T13:22:13.832587780Z",
          "tradesClosed": [{"tradeID": "7579", "units": "-100"}]}  # fmt: skip
    event = P.parse_transaction(tx)
    assert (event.kind, event.client_id, event.reason, event.pl, event.trade_ids) == (
        P.FILLED, "", "STOP_LOSS_ORDER", -5.63, ("7579",),
    )  # fmt: skip


# -- credentials ----------------------------------------------------------------------------------


def test_token_from_env_or_0600_file_and_never_shown(tmp_path, monkeypatch):
    for var in ("OANDA_ACCESS_TOKEN", "OANDA_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="no OANDA token"):
        load_token(tmp_path)
    path = tmp_path / "keys" / "oanda.token"
    path.parent.mkdir()
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_token(tmp_path)
    assert TOKEN not in str(info.value)
    path.chmod(0o600)
    secret = load_token(tmp_path)
    assert secret.reveal() == TOKEN
    assert TOKEN not in repr(secret) + str(secret) + f"{secret}" + repr([secret])
    monkeypatch.setenv("OANDA_ACCESS_TOKEN", "env-token")
    assert load_token(tmp_path).reveal() == "env-token"


def test_config_is_strict():
    with pytest.raises(ConfigError, match="environment"):
        OandaConfig(environment="prod")
    with pytest.raises(Exception, match="instrument"):
        OandaConfig(instruments=["EURUSD"])


def test_rate_limiter_paces_with_an_injected_clock():
    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(10.0, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(6):
        limiter.acquire()
    assert now[0] == pytest.approx(0.4)  # 2 free, then one per 0.1 s
    assert len(waits) == 4


# -- (2) the fake server: candles and the pricing stream ------------------------------------------


def test_auth_header_and_401(fake):
    from oandapyV20.endpoints import accounts
    from oandapyV20.exceptions import V20Error

    cfg = config_for(fake)
    api = make_api(cfg, Secret(TOKEN), 2.0)
    body = api.request(accounts.AccountSummary(fake.account))
    assert body["account"]["currency"] == "USD" and body["lastTransactionID"] == fake.last_id
    assert fake.requests[-1][2]["Authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(V20Error) as info:
        make_api(cfg, Secret("wrong"), 2.0).request(accounts.AccountSummary(fake.account))
    assert info.value.code == 401


def test_history_of_12000_h1_candles_complete_in_order_without_duplicates(fake):
    start = P.parse_time("2024-01-01T00:00:00Z")
    fake.set_candles("EUR_USD", "H1", start, 12_001, open_last=True)
    api = make_api(config_for(fake), Secret(TOKEN), 5.0)
    bars = fetch_candles(api, "EUR_USD", "H1", start)
    expected = [c["time_ns"] for c in fake.candles[("EUR_USD", "H1")] if c["complete"]]
    assert len(bars) == 12_000
    assert bars["time"].tolist() == expected
    assert bars["complete"].all() and (np.diff(bars["time"]) > 0).all()
    pages = [r for r in fake.requests if r[1].endswith("/candles")]
    assert len(pages) == 3


def test_history_survives_a_small_page(fake):
    start = P.parse_time("2024-01-01T00:00:00Z")
    fake.set_candles("EUR_USD", "M1", start, 250, open_last=False)
    api = make_api(config_for(fake), Secret(TOKEN), 5.0)
    bars = fetch_candles(api, "EUR_USD", "M1", start, page=100)
    assert len(bars) == 250 and len(np.unique(bars["time"])) == 250


def _collect(fake, **kw):
    got: list[tuple] = []
    stream = PriceStream(config_for(fake, **kw), Secret(TOKEN), lambda *t: got.append(t))
    return got, stream


def test_stream_delivers_prices_in_order_and_skips_heartbeats(fake):
    got, stream = _collect(fake)
    stream.start()
    try:
        wait_for(lambda: fake._subscribers)
        for i in range(20):
            fake.push_price("EUR_USD", 1.1 + i * 1e-5, 1.1002 + i * 1e-5)
        wait_for(lambda: len(got) == 20)
        wait_for(lambda: stream.heartbeats >= 2)
        assert [round(b, 5) for _, _, b, _ in got] == [round(1.1 + i * 1e-5, 5) for i in range(20)]
        assert stream.reconnects == 0
    finally:
        stream.stop()


def test_stream_survives_stall_cut_end_and_429_losing_nothing_sent(fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.arm("stream", "cut")  # connection 1: prices, then half a line and a reset
    fake.arm("stream", "status", 429)  # 2: refused
    fake.arm("stream", "stall")  # 3: the snapshot, then silence on an open socket
    fake.arm("stream", "end")  # 4: the snapshot, then a clean end
    got, stream = _collect(fake, backoff_s=0.01, backoff_cap_s=0.04)
    stream.start()
    try:
        n = 0

        def burst(k):
            nonlocal n
            wait_for(lambda: fake._subscribers)
            for _ in range(k):
                n += 1
                fake.push_price("EUR_USD", 1.1 + n * 1e-5, 1.1002 + n * 1e-5)

        burst(5)  # then half a line and a reset
        wait_for(lambda: stream.reconnects == 4 and len(fake.sent) == 4)  # the 429 had none
        burst(7)  # on a healthy connection
        wait_for(lambda: len(got) >= 12)
        time.sleep(0.3)
        delivered = [round(b, 5) for _, _, b, _ in got]
        sent = [round(P.parse_price(json.loads(s))[2], 5) for conn in fake.sent for s in conn]
        assert delivered == sent  # every whole line sent is delivered once, in order
        assert delivered[:5] == [round(1.1 + i * 1e-5, 5) for i in range(1, 6)]
        assert delivered[-7:] == [round(1.1 + i * 1e-5, 5) for i in range(6, 13)]
        # doubling while nothing arrives (the 429), back to the start after a line was received
        assert stream.backoffs == [0.01, 0.02, 0.01, 0.01] and stream.reconnects == 4
        assert stream.gaps and all(b >= a for a, b in stream.gaps)
        assert any("gap of" in r.getMessage() for r in caplog.records)
        assert TOKEN not in caplog.text
    finally:
        stream.stop()


def test_stream_401_is_fatal_not_a_retry_storm(fake):
    fatal = []
    stream = PriceStream(config_for(fake), Secret("revoked"), lambda *t: None, fatal.append)
    stream.start()
    wait_for(lambda: fatal)
    stream._thread.join(2)
    assert not stream.alive and stream.reconnects == 0
    assert "401" in str(fatal[0]) and "revoked" not in str(fatal[0])
    assert sum(r[1].endswith("/pricing/stream") for r in fake.requests) == 1


# -- (3) execution: outcomes, lost responses, rate limit ------------------------------------------

from osm.core import wire  # noqa: E402
from osm.live.adapters.oanda.execution import OandaExecution  # noqa: E402


@pytest.fixture
def execution(fake):
    events: list[P.OrderEvent] = []
    fake.push_price("EUR_USD", 1.10000, 1.10020)
    ex = OandaExecution(config_for(fake, request_timeout_s=0.5, poll_s=0.1), Secret(TOKEN),
                        events.append)  # fmt: skip
    ex.start()
    yield ex, events
    ex.stop()


def _order(cid: str, units: int = 1000) -> wire.Order:
    return wire.Order("b1", "EUR_USD", units, cid)


def _posts(fake) -> int:
    return sum(1 for m, p, _ in fake.requests if m == "POST" and p.endswith("/orders"))


def test_market_order_with_sl_tp_accepted_then_filled(fake, execution):
    ex, events = execution
    ex.submit(_order("b1-1"), stop_loss=1.05, take_profit=1.2)
    wait_for(lambda: any(e.kind == P.FILLED for e in events))
    accepted, filled = events[:2]
    assert (accepted.kind, accepted.client_id, accepted.units) == (P.ACCEPTED, "b1-1", 1000)
    assert (filled.client_id, filled.units, filled.price) == ("b1-1", 1000, 1.1002)
    [trade] = ex.open_trades()
    assert (trade.client_id, trade.units, trade.stop_loss, trade.take_profit) == (
        "b1-1", 1000, 1.05, 1.2,
    )  # fmt: skip
    assert ex.open_positions() == {"EUR_USD": (1000, 1.1002)}
    time.sleep(0.3)  # a few polls: the same transactions are not reported twice
    assert [e.kind for e in events] == [P.ACCEPTED, P.FILLED]
    assert ex.cursor == fake.last_id


def test_rejected_and_cancelled_carry_the_venue_reason(fake, execution):
    ex, events = execution
    fake.arm("orders", "reject", "INSUFFICIENT_MARGIN")
    fake.arm("orders", "cancel", "STOP_LOSS_ON_FILL_LOSS")
    ex.submit(_order("r"))
    ex.submit(_order("c"))
    wait_for(lambda: any(e.kind == P.CANCELLED for e in events))
    kinds = [(e.kind, e.client_id, e.reason) for e in events if e.kind != P.ACCEPTED]
    assert kinds == [(P.REJECTED, "r", "INSUFFICIENT_MARGIN"),
                     (P.CANCELLED, "c", "STOP_LOSS_ON_FILL_LOSS")]  # fmt: skip
    assert fake.net_units("EUR_USD") == 0


def test_partial_fill(fake, execution):
    ex, events = execution
    fake.arm("orders", "partial", 400)
    ex.submit(_order("p"))
    wait_for(lambda: any(e.kind == P.CANCELLED for e in events))
    assert [(e.kind, e.units) for e in events] == [
        (P.ACCEPTED, 1000), (P.PARTIALLY_FILLED, 400), (P.CANCELLED, 0),
    ]  # fmt: skip


@pytest.mark.parametrize("fault", [("drop",), ("delay", 1.0)])
def test_lost_response_is_looked_up_not_resent(fake, execution, fault):
    ex, events = execution
    fake.arm("orders", *fault)  # the fake fills it, then the answer never arrives in time
    ex.submit(_order("lost-1"))
    wait_for(lambda: any(e.kind == P.FILLED for e in events))
    assert _posts(fake) == 1 and ex.sent["lost-1"] == 1
    assert any(p.endswith("/orders/@lost-1") for _, p, _ in fake.requests)
    assert fake.net_units("EUR_USD") == 1000
    assert [(e.kind, e.client_id) for e in events] == [(P.ACCEPTED, "lost-1"), (P.FILLED, "lost-1")]


def test_5xx_before_the_venue_got_it_is_resent_once(fake, execution):
    ex, events = execution
    fake.arm("orders", "status", 503)
    ex.submit(_order("r-503"))
    wait_for(lambda: any(e.kind == P.FILLED for e in events))
    assert _posts(fake) == 2 and fake.net_units("EUR_USD") == 1000
    assert len([o for o in fake.orders.values() if o["clientExtensions"]["id"] == "r-503"]) == 1


def test_429_on_create_backs_off_and_sends_again(fake, execution):
    ex, events = execution
    fake.arm("orders", "status", 429, times=2)
    ex.submit(_order("rl"))
    wait_for(lambda: any(e.kind == P.FILLED for e in events))
    assert _posts(fake) == 3 and fake.net_units("EUR_USD") == 1000


def test_stop_loss_and_manual_trade_reported_without_client_id(fake, execution):
    ex, events = execution
    ex.submit(_order("sl", 500), stop_loss=1.09)
    wait_for(lambda: any(e.kind == P.FILLED for e in events))
    trade_id = ex.open_trades()[0].id
    fake.trigger_stop_loss(trade_id)
    fake.open_manual_trade("EUR_USD", -300)
    wait_for(lambda: sum(e.kind == P.FILLED for e in events) == 3)
    stop, manual = [e for e in events if e.kind == P.FILLED][1:]
    assert (stop.client_id, stop.reason, stop.units, stop.price, stop.trade_ids) == (
        "", "STOP_LOSS_ORDER", -500, 1.09, (trade_id,),
    )  # fmt: skip
    assert (manual.client_id, manual.units) == ("", -300)
    assert ex.open_positions() == {"EUR_USD": (-300, 1.09)}
    events_since, last = ex.transactions_since("0")
    assert last == fake.last_id and len([e for e in events_since if e.kind == P.FILLED]) == 3


def _order_lookups(fake) -> list[str]:
    return [p for m, p, _ in fake.requests if m == "GET" and "/orders/" in p]


def test_a_fill_of_ours_names_its_brain_even_when_its_order_came_before_the_cursor(fake, execution):
    ex, events = execution
    ex.submit(_order("b1-open"))  # its response: the create transaction, with the tag
    wait_for(lambda: any(e.kind == P.FILLED for e in events))
    fake.open_manual_trade("EUR_USD", 5000)  # so that the sell below only reduces
    fake.arm("orders", "hold", 300)  # 300 of the 1000 sold, the rest left open
    ex.submit(wire.Order("b9", "EUR_USD", -1000, "b9-held"))
    wait_for(lambda: any(e.kind == P.PARTIALLY_FILLED for e in events))
    ours = [(e.client_id, e.units, e.tag) for e in events if e.kind != P.ACCEPTED and e.client_id]
    assert ours == [("b1-open", 1000, "b1"), ("b9-held", -300, "b9")]
    ex.stop()
    # A trader that never saw the order (its journal restored from an older backup) reads the
    # rest's fill: it opens no trade and its create transaction is before the cursor.
    seen: list[P.OrderEvent] = []
    later = OandaExecution(config_for(fake, poll_s=0.1), Secret(TOKEN), seen.append)
    later.start()
    try:
        lookups = len(_order_lookups(fake))
        fake.fill_held("b9-held")
        [rest] = wait_for(lambda: [e for e in seen if e.kind == P.FILLED])
        assert (rest.client_id, rest.units, rest.trade_opened, rest.tag) == (
            "b9-held", -700, "", "b9",
        )  # fmt: skip
        order_id = fake.find_order("@b9-held")["id"]
        assert _order_lookups(fake)[lookups:] == [f"/v3/accounts/{fake.account}/orders/{order_id}"]
        time.sleep(0.3)  # polls read nothing new, and ask nothing again
        assert len(_order_lookups(fake)) == lookups + 1 and seen == [rest]
    finally:
        later.stop()


def test_token_never_in_logs_reprs_or_errors(fake, caplog):
    caplog.set_level(logging.DEBUG)
    events: list = []
    cfg = config_for(fake, poll_s=0.1)
    ex = OandaExecution(cfg, Secret(TOKEN), events.append)
    ex.start()
    fake.token = "rotated"  # our token is now refused
    ex.submit(_order("x"))
    wait_for(lambda: not ex.alive)
    text = caplog.text + repr(ex) + repr(cfg) + str(ex.error) + repr(ex.error)
    assert "refused the token (401)" in str(ex.error)
    assert TOKEN not in text
    ex.stop()
