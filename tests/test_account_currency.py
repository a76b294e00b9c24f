"""PnL booked in the account currency: a USD_JPY round trip on a USD account, on both brokers.

OANDA books a USD_JPY trade's realised PnL (yen) in dollars at the price it closed at. The paper
broker must book the same figure, the OANDA broker must report the venue's own, and a journal replay
after a restart must give the same balance.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from osm.core import wire
from osm.core.config import TraderConfig
from osm.core.dtypes import as_ticks
from osm.core.instruments import conversion
from osm.live.adapters.base import Book
from osm.live.adapters.oanda.broker import OandaBroker
from osm.live.adapters.oanda.fake import FakeV20
from osm.live.adapters.paper import PaperBroker, PaperConfig
from osm.live.journal import Journal

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
TOKEN = "tok-currency-41d2-secret"
S = 10**9
OPEN, CLOSE = (149.990, 150.000), (150.990, 151.000)  # (bid, ask): bought at 150.000, sold 150.990
UNITS = 10_000
EXPECTED_USD = UNITS * (150.990 - 150.000) / 150.990  # 9,900 yen at the closing price


def test_conversion_direct_inverse_same_and_unknown():
    assert conversion("USD", "USD", {}) == 1.0
    assert conversion("JPY", "USD", {"USD_JPY": 150.0}) == pytest.approx(1 / 150.0)
    assert conversion("GBP", "USD", {"GBP_USD": 1.25}) == 1.25
    assert math.isnan(conversion("JPY", "USD", {"EUR_USD": 1.1}))


def journal_balance(tmp_path, fills: list[wire.Fill]) -> float:
    journal = Journal(tmp_path / "journal.sqlite", 100_000.0)
    book = Book()
    for fill in fills:
        journal.record(wire.Order(fill.brain, fill.instrument, fill.units, fill.client_id), "order",
                       "new", fill.time_ns)  # fmt: skip
        book.apply(fill.units, fill.price, fill.commission)
        assert journal.record_fill(fill, book, fill.time_ns)
    balance = journal.rebuild(time.time_ns()).balance
    journal.close()
    return balance


def test_paper_books_a_usd_jpy_round_trip_in_dollars_as_oanda_does(tmp_path):
    broker = PaperBroker(PaperConfig(currency="USD"))
    fills = []
    for i, ((bid, ask), units) in enumerate(((OPEN, UNITS), (CLOSE, -UNITS)), start=1):
        broker.on_quotes("USD_JPY", as_ticks(np.array([i * S]), np.array([bid]), np.array([ask])))
        broker.submit(wire.Order("b", "USD_JPY", units, f"b-{i}", i * S))
        fills += broker.take_fills()
    assert fills[0].booked == 0.0
    assert fills[1].booked == pytest.approx(EXPECTED_USD, rel=1e-12)
    account = broker.account()
    assert account["currency"] == "USD"
    assert account["balance"] == pytest.approx(100_000 + EXPECTED_USD, rel=1e-12)
    assert journal_balance(tmp_path, fills) == pytest.approx(account["balance"], rel=1e-12)


def test_the_oanda_broker_books_the_venues_own_figure(tmp_path, monkeypatch):
    fake = FakeV20(token=TOKEN).start()
    monkeypatch.setenv("OANDA_ACCESS_TOKEN", TOKEN)
    adapter = {"account": fake.account, "environment": fake.url, "poll_s": 0.1,
               "backoff_s": 0.0, "backoff_cap_s": 0.0}  # fmt: skip
    broker = OandaBroker(TraderConfig(broker="oanda", adapter=adapter))
    try:
        assert broker.restore({}, 0.0, []) == []
        fills: list[wire.Fill] = []
        for i, ((bid, ask), units) in enumerate(((OPEN, UNITS), (CLOSE, -UNITS)), start=1):
            fake.push_price("USD_JPY", bid, ask)
            broker.submit(wire.Order("b", "USD_JPY", units, f"b-{i}"))
            deadline = time.monotonic() + 10
            while len(fills) < i and time.monotonic() < deadline:
                fills += broker.take_fills()
                time.sleep(0.01)
        assert [f.units for f in fills] == [UNITS, -UNITS]
        assert fills[1].booked == pytest.approx(EXPECTED_USD, abs=1e-4)  # the venue rounds to 4
        assert broker.account()["balance"] == pytest.approx(fake.balance, abs=1e-9)
        assert fake.balance == pytest.approx(100_000 + EXPECTED_USD, abs=1e-4)
        assert journal_balance(tmp_path, fills) == pytest.approx(fake.balance, abs=1e-9)
    finally:
        broker.close()
        fake.stop()
