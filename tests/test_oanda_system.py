"""The whole system trading on OANDA: real processes, the real oandapyV20 client, the fake v20 server.

`osm up` with ``trader.broker = "oanda"``: a brain's targets become market orders on the fake
venue, its fills come back through the transactions, and what the journal says agrees with the
venue's book after a manual trade, a halt, a flatten and a restart with trades made meanwhile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from osm.live.adapters.oanda.fake import FakeV20
from osm.live.client import Client
from tests.live_helpers import wait_for
from tests.system_helpers import osm, process, running_system, status, stop, write_config

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
TOKEN = "tok-osm-system-7c1d-secret"


@pytest.fixture
def fake():
    server = FakeV20(token=TOKEN, heartbeat_s=0.2).start()
    server.push_price("EUR_USD", 1.10000, 1.10020)
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("OANDA_ACCESS_TOKEN", TOKEN)  # the processes inherit it; never a parameter
    return tmp_path / "osm"


@pytest.fixture
def system(home: Path):
    yield from running_system(home)


def config(home: Path, fake: FakeV20, brain: bool = True) -> Path:
    """The system's config: a synthetic feed, the fake venue and, with `brain`, an SmaCross brain
    (without: only the orders a test sends itself)."""
    return write_config(
        home,
        feeds=[{"name": "synthetic", "speed": 30, "start": "2024-01-08T00:00:00Z"}],
        router={"granularities": ["S5"]},
        trader={
            "broker": "oanda",
            "adapter": {
                "account": fake.account,
                "environment": fake.url,
                "request_timeout_s": 2.0,
                "poll_s": 0.2,
                "backoff_s": 0.0,
                "backoff_cap_s": 0.0,
            },  # fmt: skip
            "risk": {"max_orders_per_minute": 1_000_000, "max_decision_age_s": 86_400},
        },
        brains=[
            {
                "name": "sma",
                "strategy": "osm.strategies.sma_cross:SmaCross",
                "params": {"fast": 2, "slow": 5},
                "granularity": "S5",
                "size": 1000,
            }
        ]
        if brain
        else [],
    )


def trader(home: Path) -> dict:
    return process(home, "trader")["counters"]


def journal_units(home: Path) -> int:
    with Client(home, timeout_s=10) as client:
        return sum(p["units"] for p in client.positions() if p["instrument"] == "EUR_USD")


def order_posts(fake: FakeV20) -> int:
    return sum(1 for m, p, _ in fake.requests if m == "POST" and p.endswith("/orders"))


def test_a_brain_trades_on_oanda_adopts_a_manual_trade_halts_and_flattens(home, fake, system):
    system("--config", str(config(home, fake)))
    wait_for(lambda: trader(home).get("fills", 0) >= 3, 120, "three fills from the venue")
    wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")

    fake.open_manual_trade("EUR_USD", 777)  # placed by hand on the venue: no order of ours
    wait_for(lambda: trader(home).get("fills_adopted", 0) == 1, 30, "the manual trade adopted")
    wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")

    with Client(home, timeout_s=10) as client:
        assert client.halt()["halted"]
    time.sleep(1.0)  # an order sent just before the halt may still be answered
    posts = order_posts(fake)
    refused = trader(home).get("rejected.halted", 0)
    wait_for(lambda: trader(home).get("rejected.halted", 0) >= refused + 2, 60, "targets refused")
    assert order_posts(fake) == posts, "an order reached the venue while halted"

    with Client(home, timeout_s=10) as client:
        rows = client.flatten()
    assert rows and all(row["accepted"] for row in rows), rows
    wait_for(lambda: fake.net_units("EUR_USD") == 0, 30, "the venue flat")
    wait_for(lambda: journal_units(home) == 0, 30, "the journal flat")

    with sqlite3.connect(f"file:{home / 'db' / 'trader.sqlite'}?mode=ro", uri=True) as db:
        ours = db.execute("SELECT COUNT(*) FROM fills WHERE brain = 'sma'").fetchone()[0]
        adopted = db.execute("SELECT units FROM orders WHERE reason LIKE 'adopted%'").fetchall()
        venue = db.execute("SELECT units FROM fills WHERE brain = 'venue'").fetchall()
    assert ours >= 3 and adopted == [(777,)]
    assert venue == [(777,), (-777,)]  # the manual trade, and the flatten that closed it
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*"))
    assert TOKEN not in logs + osm(home, "status").stdout


def test_an_order_filled_in_two_parts_is_journaled_part_by_part(home, fake, system):
    fake.arm("orders", "partials", 300)  # the first order: 300 units, then the rest
    system("--config", str(config(home, fake)))
    wait_for(lambda: trader(home).get("fills", 0) >= 3, 120, "the two parts and one more fill")
    wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")
    [first] = [o for o in fake.orders.values() if o.get("clientExtensions")][:1]
    client_id, units = first["clientExtensions"]["id"], int(first["units"])
    with sqlite3.connect(f"file:{home / 'db' / 'trader.sqlite'}?mode=ro", uri=True) as db:
        parts = db.execute(
            "SELECT fill_id, units FROM fills WHERE client_id = ? ORDER BY seq", (client_id,)
        ).fetchall()
        [status] = db.execute("SELECT status FROM orders WHERE client_id = ?", (client_id,))
    venue = [
        (t["id"], int(t["units"]))
        for t in fake.transactions
        if t["type"] == "ORDER_FILL" and t.get("clientOrderID") == client_id
    ]
    assert parts == venue and [u for _, u in parts] == [
        300 * np.sign(units),
        units - 300 * np.sign(units),
    ]
    assert status == ("filled",)
    assert trader(home).get("rejected.duplicate_fill", 0) == 0


def test_a_restart_adopts_what_happened_on_the_venue_meanwhile_and_halts_on_what_it_cannot(
    home, fake, system
):
    path = config(home, fake)
    system("--config", str(path))
    wait_for(lambda: trader(home).get("fills", 0) >= 2, 120, "two fills from the venue")
    assert osm(home, "down").returncode == 0
    fake.open_manual_trade("EUR_USD", -555)  # while nothing of ours runs
    system("--config", str(path))
    wait_for(lambda: trader(home).get("fills_adopted", 0) == 1, 60, "the manual trade adopted")
    wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")
    assert not trader_status(home)["halted"]
    assert osm(home, "down").returncode == 0

    with fake.lock:  # a trade with no transaction behind it: nothing can explain it
        fake.trades.append({"id": "9999", "instrument": "EUR_USD", "units": 1234,
                            "price": 1.1, "openTime": "2024-01-08T00:00:00.000000000Z"})  # fmt: skip
    system("--config", str(path))
    state = wait_for(lambda: (s := trader_status(home))["halted"] and s, 60, "a halt")
    found = re.search(r"EUR_USD \(journal ([-+]\d+) units, OANDA ([-+]\d+)\)", state["halt_reason"])
    assert found and int(found[2]) - int(found[1]) == 1234, state["halt_reason"]
    assert status(home)["processes"]


def test_after_an_outage_the_trader_reconciles_adopting_what_happened_and_halting_on_the_rest(
    home, fake, system
):
    system("--config", str(config(home, fake)))
    wait_for(lambda: trader(home).get("fills", 0) >= 1, 120, "a fill from the venue")

    fake.down = ("drop",)  # every REST call: the connection closes unanswered
    wait_for(lambda: account(home)["venue_down"], 60, "the trader sees OANDA down")
    reconciled = account(home)["reconciliations"]
    fake.open_manual_trade("EUR_USD", 321)  # meanwhile, by hand
    fake.down = None
    wait_for(lambda: account(home)["reconciliations"] > reconciled, 60, "a reconciliation")
    wait_for(lambda: trader(home).get("fills_adopted", 0) == 1, 30, "the manual trade adopted")
    wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")
    assert not trader_status(home)["halted"]

    fake.down = ("status", 503)
    wait_for(lambda: account(home)["venue_down"], 60, "the trader sees OANDA down again")
    with fake.lock:  # a position no transaction explains
        fake.trades.append({"id": "9999", "instrument": "EUR_USD", "units": -4321,
                            "price": 1.1, "openTime": "2024-01-08T00:00:00.000000000Z"})  # fmt: skip
    fake.down = None
    state = wait_for(lambda: (s := trader_status(home))["halted"] and s, 60, "a halt")
    found = re.search(r"EUR_USD \(journal ([-+]\d+) units, OANDA ([-+]\d+)\)", state["halt_reason"])
    assert found and int(found[2]) - int(found[1]) == -4321, state["halt_reason"]
    assert trader(home).get("fills_adopted", 0) == 1


@pytest.mark.parametrize("while_down", [False, True], ids=["running", "while_down"])
def test_a_stop_loss_on_a_brains_order_fires_and_the_closing_fill_is_that_brains(
    home, fake, system, while_down
):
    path = config(home, fake, brain=False)  # only this order: no brain's trades to net it against
    system("--config", str(path))
    wait_for(lambda: trader_status(home)["market_time_ns"], 60, "quotes")
    with Client(home, timeout_s=10) as client:
        reply = client.order("EUR_USD", 1500, brain="b7", client_id="b7-1", stop_loss=0.002)
        assert reply.accepted, reply
        wait_for(lambda: journal_units(home) == 1500, 30, "the order filled")
        [trade] = fake.trades
        assert trade["clientExtensions"]["id"] == "b7-1" and "stopLossOrder" in trade
        if not while_down:
            fake.trigger_stop_loss(trade["id"])
    if while_down:  # the exit is read at the restart, from the journal's record of the trade
        assert osm(home, "down").returncode == 0
        fake.trigger_stop_loss(trade["id"])
        system("--config", str(path))
    with Client(home, timeout_s=10) as client:
        wait_for(lambda: journal_units(home) == 0 == fake.net_units("EUR_USD"), 30, "stopped out")
        [position] = client.positions()
        fills = {f["client_id"]: (f["brain"], f["units"]) for f in client.fills()}
    assert position["brains"] == {}  # b7 holds nothing, as the venue says
    assert fills == {"b7-1": ("b7", 1500), "b7-1/stop_loss": ("b7", -1500)}
    wait_for(lambda: trader(home).get("fills_adopted", 0) == 1, 30, "the exit adopted, once")


def test_a_fill_of_an_order_the_restored_journal_lost_is_adopted_once_across_restarts(
    home, fake, system, tmp_path
):
    path = config(home, fake, brain=False)  # only this order
    system("--config", str(path))
    wait_for(lambda: trader_status(home)["market_time_ns"], 60, "quotes")
    journal = home / "db" / "trader.sqlite"
    backup = tmp_path / "backup.sqlite"

    def cursor(path: Path) -> str | None:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'broker_cursor'").fetchone()
        return row and row[0]

    wait_for(lambda: cursor(journal), 30, "the cursor persisted")
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db, sqlite3.connect(backup) as to:
        db.backup(to)  # taken before the order: it will know neither the order nor its fill
    before = cursor(backup)
    with Client(home, timeout_s=10) as client:
        assert client.order("EUR_USD", 1500, brain="b8", client_id="b8-1").accepted
    wait_for(lambda: journal_units(home) == 1500 == fake.net_units("EUR_USD"), 30, "the fill")
    [filled] = [t["id"] for t in fake.transactions if t["type"] == "ORDER_FILL"]
    assert int(before) < int(filled)  # so a trader started from the backup reads it
    assert osm(home, "down").returncode == 0
    for leftover in journal.parent.glob("trader.sqlite*"):
        leftover.unlink()
    journal.write_bytes(backup.read_bytes())  # the journal restored from the backup

    system("--config", str(path))  # the journal holds neither the fill nor its order
    wait_for(lambda: trader(home).get("fills_adopted", 0) == 1, 60, "the fill adopted")
    wait_for(
        lambda: journal_units(home) == 1500 == fake.net_units("EUR_USD"), 30, "journal = venue"
    )
    state = trader_status(home)
    assert not state["halted"], state["halt_reason"]
    with Client(home, timeout_s=10) as client:
        assert client.positions()[0]["brains"] == {"b8": 1500}  # the brain's, from the order's tag
        fills = [(f["client_id"], f["brain"], f["units"]) for f in client.fills()]
    assert fills == [("b8-1", "b8", 1500)]
    assert osm(home, "down").returncode == 0

    db = sqlite3.connect(journal)
    with db:  # a cursor that lags the fill: it is read yet again
        db.execute("UPDATE meta SET value = ? WHERE key = 'broker_cursor'", (before,))
    db.close()
    system("--config", str(path))
    wait_for(lambda: account(home)["reconciliations"] >= 1, 60, "the reconciliation at start")
    state = trader_status(home)
    assert not state["halted"], state["halt_reason"]
    assert trader(home).get("fills_adopted", 0) == 0 and trader(home).get("fills", 0) == 0
    assert journal_units(home) == 1500 == fake.net_units("EUR_USD")
    with Client(home, timeout_s=10) as client:
        assert [(f["client_id"], f["units"]) for f in client.fills()] == [("b8-1", 1500)]


def trader_status(home: Path) -> dict:
    with Client(home, timeout_s=10) as client:
        return client.trader("status")


def account(home: Path) -> dict:
    return trader_status(home)["account"]


@pytest.mark.parametrize("broker", ["paper", "oanda"])
def test_osm_up_on_oanda_prices_with_either_broker(home, fake, system, monkeypatch, broker):
    monkeypatch.setenv("OANDA_ACCOUNT", fake.account)
    monkeypatch.setenv("OANDA_ENVIRONMENT", fake.url)
    system(
        "--feed", "oanda", "--broker", broker, "--speed", "0", "--granularities", "S5",
        "--brain", "osm.strategies.sma_cross:SmaCross", "--param", "fast=2", "--param", "slow=5",
        "--size", "1000",
    )  # fmt: skip
    wait_for(lambda: fake._subscribers, 60, "the feeder's pricing stream")
    start = time.time_ns() - 3_600 * 10**9
    rng = np.random.default_rng(5)
    mid = 1.1 + np.cumsum(rng.normal(0, 2e-4, 600))
    for i, m in enumerate(mid):  # a second of market each, quoted an hour ago: S5 bars close
        fake.push_price("EUR_USD", round(m, 5), round(m + 2e-4, 5), start + i * 10**9)
        time.sleep(0.005)
    wait_for(lambda: trader(home).get("fills", 0) >= 2, 60, "fills on OANDA's prices")
    wait_for(
        lambda: process(home, "router")["counters"].get("bars_closed", 0) >= 100,
        30,
        "the S5 bars of ten minutes of OANDA prices",
    )
    venue = fake.net_units("EUR_USD")
    if broker == "paper":
        assert venue == 0 and order_posts(fake) == 0  # paper trading: nothing reaches the venue
    else:
        wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")


def test_kill_9_of_the_trader_between_the_send_and_the_response_sends_nothing_twice(
    home, fake, system
):
    system("--config", str(config(home, fake)))
    wait_for(lambda: trader(home).get("fills", 0) >= 2, 120, "two fills from the venue")
    known = set(fake.orders)
    fake.arm("orders", "delay", 6.0)  # the venue fills the next order, then answers 6 s later
    wait_for(lambda: set(fake.orders) - known, 60, "an order at the venue")
    [delayed] = [fake.orders[i]["clientExtensions"]["id"] for i in set(fake.orders) - known]
    victim = process(home, "trader")
    os.kill(victim["pid"], signal.SIGKILL)  # before the response: the fill was never heard of
    wait_for(
        lambda: (p := process(home, "trader"))["state"] == "running" and p["pid"] != victim["pid"],
        60,
        "the trader restarted",
    )
    with sqlite3.connect(f"file:{home / 'db' / 'trader.sqlite'}?mode=ro", uri=True) as db:
        wait_for(
            lambda: db.execute("SELECT 1 FROM fills WHERE client_id = ?", (delayed,)).fetchone(),
            60,
            "the fill of the order in flight journaled from the venue's transactions",
        )
    wait_for(lambda: journal_units(home) == fake.net_units("EUR_USD"), 30, "journal = venue")
    ids = [(o.get("clientExtensions") or {}).get("id") for o in list(fake.orders.values())]
    ids = [i for i in ids if i]
    assert len(ids) == len(set(ids)), "an order was sent twice"


def test_a_part_filled_order_open_across_a_kill_9_is_not_counted_twice(home, fake, system):
    path = config(home, fake, brain=False)  # only this order
    system("--config", str(path))
    wait_for(lambda: trader_status(home)["market_time_ns"], 60, "quotes")
    fake.arm("orders", "hold", 400)  # 400 of 1000 units in the response, the rest left open
    fake.arm("transactions", "status", 503, times=10**6)  # the cursor cannot pass the part
    with Client(home, timeout_s=10) as client:
        assert client.order("EUR_USD", 1000, brain="b8", client_id="b8-1").accepted
    wait_for(lambda: journal_units(home) == 400, 30, "the first part journaled")
    [part] = [t["id"] for t in fake.transactions if t.get("clientOrderID") == "b8-1"]
    journal = f"file:{home / 'db' / 'trader.sqlite'}?mode=ro"
    with sqlite3.connect(journal, uri=True) as db:
        [(cursor,)] = db.execute("SELECT value FROM meta WHERE key = 'broker_cursor'")
    assert int(cursor) < int(part)  # so the restart reads the part again
    victim = process(home, "trader")
    os.kill(victim["pid"], signal.SIGKILL)
    fake.faults["transactions"].clear()
    wait_for(
        lambda: (p := process(home, "trader"))["state"] == "running" and p["pid"] != victim["pid"],
        60,
        "the trader restarted",
    )
    wait_for(lambda: account(home)["cursor"] == fake.last_id, 30, "the part read again")
    assert journal_units(home) == 400 == fake.net_units("EUR_USD")
    assert trader_status(home)["open_orders"] == 1
    fake.fill_held("b8-1")
    wait_for(lambda: journal_units(home) == 1000 == fake.net_units("EUR_USD"), 30, "the rest")
    state = trader_status(home)
    assert not state["halted"], state["halt_reason"]
    assert state["open_orders"] == 0 and account(home)["reconciliations"] >= 1
    with sqlite3.connect(journal, uri=True) as db:
        parts = db.execute("SELECT fill_id, units FROM fills WHERE client_id = 'b8-1' ORDER BY seq")
        [status] = db.execute("SELECT status FROM orders WHERE client_id = 'b8-1'")
        parts = parts.fetchall()
    venue = [
        (t["id"], int(t["units"]))
        for t in fake.transactions
        if t["type"] == "ORDER_FILL" and t.get("clientOrderID") == "b8-1"
    ]
    assert parts == venue and [u for _, u in parts] == [400, 600] and status == ("filled",)


def test_a_live_feeds_bar_closes_by_the_clock_and_a_late_tick_is_refused(
    home, fake, system, monkeypatch
):
    monkeypatch.setenv("OANDA_ACCOUNT", fake.account)
    monkeypatch.setenv("OANDA_ENVIRONMENT", fake.url)
    system("--feed", "oanda", "--speed", "0", "--granularities", "S5", "M1")
    wait_for(lambda: fake._subscribers, 60, "the feeder's pricing stream")
    step = 5 * 10**9
    now = time.time_ns()
    open_ns = now - now % step
    for i, bid in enumerate((1.10000, 1.10010, 1.10005)):  # then nothing: a quiet market
        fake.push_price("EUR_USD", bid, bid + 2e-4, open_ns + i)
    with Client(home, timeout_s=10) as client:

        def closed() -> tuple[np.ndarray] | None:
            bars = client.bars("EUR_USD", "S5", 10)
            return (bars,) if len(bars) and int(bars["time"][-1]) == open_ns else None

        [bars] = wait_for(closed, 30, "the S5 bar closed by the clock, no later tick needed")
        assert int(bars["ticks"][-1]) == 3 and bars["bid_close"][-1] == pytest.approx(1.10005)
        fake.push_price("EUR_USD", 1.2, 1.2002, open_ns + 3)  # late: its bar is closed
        wait_for(
            lambda: process(home, "router")["counters"].get("rejected.out_of_order", 0) >= 1,
            30,
            "the late tick refused",
        )
        again = client.bars("EUR_USD", "S5", 10)
    assert list(again["time"]).count(open_ns) == 1, "a bar closed twice"
    assert process(home, "router")["counters"]["bars_closed_by_time"] >= 1


def test_a_stream_cut_refused_and_stalled_delivers_every_tick_to_the_router_once(
    home, fake, system, monkeypatch
):
    monkeypatch.setenv("OANDA_ACCOUNT", fake.account)
    monkeypatch.setenv("OANDA_ENVIRONMENT", fake.url)
    fake.arm("stream", "cut")  # connection 1: prices, then half a line and a reset
    fake.arm("stream", "status", 429)  # 2: refused
    fake.arm("stream", "stall")  # 3: the snapshot, then silence until the 10 s watchdog
    system("--feed", "oanda", "--speed", "0", "--granularities", "S5")
    wait_for(lambda: fake._subscribers, 60, "the feeder's pricing stream")
    for i in range(5):
        fake.push_price("EUR_USD", 1.1 + i * 1e-5, 1.1002 + i * 1e-5)
    # fake.sent has one list per connection that streamed: the 429 had none.
    wait_for(lambda: len(fake.sent) == 2 and fake._subscribers, 60, "the stalled connection")
    wait_for(lambda: len(fake.sent) == 3 and fake._subscribers, 60, "a healthy connection")
    for i in range(5, 12):
        fake.push_price("EUR_USD", 1.1 + i * 1e-5, 1.1002 + i * 1e-5)

    def router() -> dict:
        return process(home, "router")["counters"]

    def sent() -> int:  # distinct ticks the fake wrote whole (a new connection repeats the last)
        return len({json.loads(line)["time"] for lines in fake.sent for line in lines})

    wait_for(lambda: router().get("ticks_applied", 0) >= sent() >= 7, 60, "every tick sent")
    time.sleep(1.0)  # a tick delivered twice would be counted by now
    counters = router()
    assert counters["ticks_applied"] == sent(), counters
    with Client(home, timeout_s=10) as client:  # the bars close by the clock: all ticks in them
        wait_for(
            lambda: int(client.bars("EUR_USD", "S5", 100)["ticks"].sum()) == sent(),
            30,
            "the S5 bars of every tick sent",
        )
    log = (home / "logs" / "oanda.log").read_text()
    assert "gap of" in log and TOKEN not in log


def test_a_rejected_token_stops_osm_up_with_one_line_not_a_retry_storm(home, fake, monkeypatch):
    monkeypatch.setenv("OANDA_ACCESS_TOKEN", "not-the-token")
    try:
        done = osm(home, "up", "--config", str(config(home, fake)))
        assert done.returncode != 0
        assert "OANDA refused the token (401)" in done.stderr, done.stderr
        assert "not-the-token" not in done.stderr + done.stdout
        time.sleep(2.0)  # nothing retries behind our back
        assert len(fake.requests) <= 3, fake.requests
    finally:
        stop(home)
