"""A live OANDA feed backfills the router's store from candles: at start, and after a stream gap.

Real processes (`osm up --feed oanda`), the real oandapyV20 client, the fake v20 server serving
candles. The router keeps only complete bars on its grid, closed by the clock, that it has none
of; a backfill a feed could not have sent (no token, a replay feed, bad bars) is refused and
counted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from osm.core import wire
from osm.core.dtypes import empty_bars
from osm.core.rundir import RunDir
from osm.live.adapters.oanda.fake import FakeV20
from osm.live.bus import feed_token
from osm.live.client import Client
from tests.live_helpers import wait_for
from tests.system_helpers import process, running_system, write_config

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
TOKEN = "tok-osm-backfill-51ab-secret"
S5, M1 = 5 * 10**9, 60 * 10**9


@pytest.fixture
def fake(monkeypatch):
    server = FakeV20(token=TOKEN, heartbeat_s=0.2).start()
    monkeypatch.setenv("OANDA_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", server.account)
    monkeypatch.setenv("OANDA_ENVIRONMENT", server.url)
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "osm"


@pytest.fixture
def system(home: Path):
    yield from running_system(home)


def router(home: Path) -> dict:
    return process(home, "router")["counters"]


def as_bars(fake: FakeV20, granularity: str) -> np.ndarray:
    """The fake's complete candles as BAR_DTYPE rows."""
    rows = [c for c in fake.candles[("EUR_USD", granularity)] if c["complete"]]
    bars = empty_bars(len(rows))
    bars["time"] = [c["time_ns"] for c in rows]
    for side in ("bid", "ask"):
        for key, name in zip("ohlc", ("open", "high", "low", "close"), strict=True):
            bars[f"{side}_{name}"] = [float(c[side][key]) for c in rows]
    bars["ticks"], bars["complete"] = [c["volume"] for c in rows], True
    return bars


def test_the_store_is_backfilled_at_start_and_bad_backfills_are_refused(home, fake, system):
    now = time.time_ns()
    minute = now - now % M1
    fake.set_candles("EUR_USD", "M1", minute - 400 * M1, 401)  # 400 complete, this minute's open
    feed = {"name": "oanda", "kind": "oanda", "speed": 0}
    # A window of 300 bars: the start asks the last 300, in messages of 256 bars (the feed's
    # batch, the longest message the router takes); older bars live in the store only.
    path = write_config(home, feeds=[feed], router={"granularities": ["S5", "M1"], "history": 300})
    system("--config", str(path))
    candles = as_bars(fake, "M1")
    wait_for(lambda: router(home).get("bars_backfilled", 0) >= 300, 60, "the start's backfill")

    def stored(count: int = 1000) -> np.ndarray:
        with Client(home, timeout_s=10) as client:
            bars = client.bars("EUR_USD", "M1", count)
        return bars[bars["time"] < minute]  # a bar the router closes by the clock may follow

    np.testing.assert_array_equal(stored(), candles[-300:])
    assert router(home)["bars_backfilled"] == 300

    # Sent as the feed would (its token): the 100 older bars, then what a feed could not have
    # sent, each refused and counted, and bars the router has (in its window, in this very
    # burst, in its store), counted as known and not stored twice.
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(RunDir(home).read_endpoints()["router_ticks"])
    token = feed_token(RunDir(home), "oanda")
    router_pid = process(home, "router")["pid"]
    bad = empty_bars(8)
    old = minute - 500 * M1
    bad["time"] = [old, old + M1 + 7, old + 2 * M1, old + 3 * M1, old + 5 * M1, old + 4 * M1,
                   minute + 5 * M1, 2**63 - 1]  # fmt: skip
    for field in bad.dtype.names[1:9]:
        bad[field] = 1.1
    bad["ask_low"] = bad["ask_open"] = bad["ask_close"] = bad["ask_high"] = 1.1002
    bad["complete"] = True
    bad["ask_close"][0] = 1.0  # ask below bid
    bad["complete"][2] = False  # still forming at the venue
    # [1] off the minute grid, [5] before the bar preceding it, [6] not over yet, [7] at the end
    # of time; [3] and [4] are good

    def backfill(token: str, granularity: str, bars: np.ndarray) -> None:
        message = wire.Backfill.of("oanda", token, wire.Bars.of("EUR_USD", granularity, bars))
        dealer.send_multipart(wire.frames("backfill.EUR_USD", message))

    try:
        backfill(token, "M1", candles[:100])
        backfill(token, "M1", candles[:1])  # known: in this burst, not journaled yet
        backfill("", "M1", bad)  # no token
        backfill(token, "H4", bad)  # a granularity the router does not build
        backfill(token, "M1", bad)
        backfill(token, "M1", candles[-1:])  # known: in the window
        wait_for(lambda: router(home).get("backfill_known", 0) >= 2, 30, "the known bars seen")
        backfill(token, "M1", candles[1:2])  # known: in the store only, not in the window
        wait_for(lambda: router(home).get("backfill_known", 0) >= 3, 30, "the stored bar seen")
    finally:
        dealer.close()
    counters = router(home)
    assert counters["rejected.forged_feed"] == 1
    assert counters["rejected.backfill"] == 8 + 6  # the H4 message whole, six bad M1 bars
    assert (counters["bars_backfilled"], counters["backfill_known"]) == (300 + 100 + 2, 3)
    after = stored()
    good = bad[[3, 4]]
    np.testing.assert_array_equal(after[~np.isin(after["time"], good["time"])], candles)
    np.testing.assert_array_equal(after[np.isin(after["time"], good["time"])], good)
    assert process(home, "router")["pid"] == router_pid  # nothing of it crashed the router


def test_a_stream_gap_is_backfilled_from_candles(home, fake, system, monkeypatch):
    # The feed's settings from its config section, not the environment: a 12 s watchdog, so
    # that bars open and close within the gap (after the start's backfill was asked).
    monkeypatch.delenv("OANDA_ACCOUNT")
    monkeypatch.delenv("OANDA_ENVIRONMENT")
    adapter = {"account": fake.account, "environment": fake.url, "stream_silence_s": 12.0}
    feed = {"name": "oanda", "kind": "oanda", "speed": 0, "adapter": adapter}
    path = write_config(home, feeds=[feed], router={"granularities": ["S5"]})
    now = time.time_ns()
    first = now - now % S5 - 12 * S5
    fake.set_candles("EUR_USD", "S5", first, 200)  # a minute before the start, then 15 more
    fake.push_price("EUR_USD", 1.3, 1.3002)  # the snapshot each connection sends first
    fake.arm("stream", "stall")  # the snapshot, then silence until the watchdog
    system("--config", str(path))
    wait_for(lambda: fake._subscribers, 60, "the feeder's pricing stream")
    gap_start = time.time_ns()
    wait_for(lambda: len(fake.sent) == 2 and fake._subscribers, 60, "a connection after the stall")
    gap_end = time.time_ns()
    # Every S5 bar from the first candle to the gap's end: the tick's own bar (the snapshot,
    # refused again as out of order on each connection), the rest from candles; some of them
    # opened after the stream stalled, so only the gap's backfill can have brought them.
    span = set(range(first, gap_end - gap_end % S5 - S5 + 1, S5))
    assert any(t > gap_start for t in span)
    with Client(home, timeout_s=10) as client:

        def complete() -> tuple[np.ndarray] | None:
            bars = client.bars("EUR_USD", "S5", 500)
            return (bars,) if span <= set(bars["time"].tolist()) else None

        [bars] = wait_for(complete, 60, "every bar of the gap, backfilled")
    candles = as_bars(fake, "S5")
    times, closes = candles["time"], candles["bid_close"]
    assert len(np.unique(bars["time"])) == len(bars)
    from_candles = np.isin(bars["time"], times) & (bars["ticks"] != 1)
    index = np.searchsorted(times, bars["time"][from_candles])
    np.testing.assert_allclose(bars["bid_close"][from_candles], closes[index])
    stored = int(from_candles.sum())  # the counters come with the router's next heartbeat
    wait_for(lambda: router(home)["bars_backfilled"] == stored, 30, f"{stored} bars backfilled")
    assert "gap of" in (home / "logs" / "oanda.log").read_text()
