"""The paper broker: the execution rule, netting accounting against an oracle, backtest parity."""

from __future__ import annotations

import numpy as np
import pytest

from osm.core import wire
from osm.core.config import TraderConfig
from osm.core.dtypes import as_ticks, empty_bars
from osm.live.adapters import Book, brokers
from osm.live.adapters.paper import PaperBroker, PaperConfig, QuoteRing

S = 1_000_000_000


def order(units: int, after_ns: int, cid: str = "c", instrument: str = "EUR_USD") -> wire.Order:
    return wire.Order("b", instrument, units, cid, after_ns)


def quotes(times, bids, spread: float = 0.0002) -> np.ndarray:
    bids = np.asarray(bids, dtype=float)
    return as_ticks(np.asarray(times, dtype=np.int64), bids, bids + spread)


def test_fills_at_first_quote_at_or_after_after_ns_buying_ask_selling_bid():
    broker = PaperBroker(PaperConfig(commission=1e-4))
    broker.on_quotes("EUR_USD", quotes([1 * S, 2 * S, 3 * S], [1.1000, 1.2000, 1.3000]))
    broker.submit(order(1000, 2 * S, "buy"))  # the quote at exactly 2 s, not the latest
    broker.submit(order(-500, 2 * S + 1, "sell"))  # strictly after 2 s: the 3 s quote
    buy, sell = broker.take_fills()
    assert (buy.client_id, buy.time_ns, buy.price) == ("buy", 2 * S, pytest.approx(1.2002))
    assert buy.commission == pytest.approx(1000 * 1.2002 * 1e-4)
    assert (sell.client_id, sell.time_ns, sell.price) == ("sell", 3 * S, pytest.approx(1.3000))
    assert sell.commission == pytest.approx(500 * 1.3 * 1e-4)
    assert broker.take_fills() == []


def test_order_waits_for_its_quote_and_after_zero_means_now():
    broker = PaperBroker(PaperConfig())
    broker.on_quotes("EUR_USD", quotes([1 * S, 2 * S], [1.1, 1.2]))
    broker.submit(order(10, 5 * S, "later"))
    broker.submit(order(-10, 0, "now"))
    (now,) = broker.take_fills()
    assert (now.client_id, now.time_ns, now.price) == ("now", 2 * S, 1.2)
    assert [o.client_id for o in broker.pending()] == ["later"]
    broker.on_quotes("EUR_USD", quotes([4 * S], [1.3]))
    assert broker.take_fills() == []
    broker.on_quotes("GBP_USD", quotes([6 * S], [1.5]))  # another instrument's quote: no fill
    assert broker.take_fills() == []
    broker.on_quotes("EUR_USD", quotes([6 * S, 7 * S], [1.4, 1.5]))
    (later,) = broker.take_fills()
    assert (later.time_ns, later.price) == (6 * S, pytest.approx(1.4002))
    assert broker.pending() == []


def test_bad_quotes_are_refused_and_counted_never_filled_at():
    broker = PaperBroker(PaperConfig())
    t = np.array([1, 2, 3, 4, 5, 6, 3, 7], dtype=np.int64) * S
    bid = np.array([1.1, np.nan, 1.1, -1.0, 1.1, 1.1, 1.1, 1.2])
    ask = np.array([1.2, 1.2, 1.0, 1.2, np.inf, 1.2, 1.2, 1.3])
    # refused: NaN bid, crossed (ask < bid), negative, infinite ask, time 3 after time 6
    assert broker.on_quotes("EUR_USD", as_ticks(t, bid, ask)) == 5
    assert broker.on_quotes("EUR_USD", quotes([5 * S], [1.0])) == 1  # earlier than the last (7 s)
    broker.submit(order(1, 2 * S))
    (fill,) = broker.take_fills()
    assert (fill.time_ns, fill.price) == (6 * S, 1.2)


def test_quote_ring_stays_bounded_and_finds_what_a_scan_finds():
    rng = np.random.default_rng(3)
    ring = QuoteRing(capacity=50)
    kept_t: list[int] = []
    clock = 0
    for _ in range(200):
        n = int(rng.integers(1, 80))
        t = clock + np.cumsum(rng.integers(0, 3, n))  # repeated times are allowed
        clock = int(t[-1])
        assert ring.append(quotes(t, np.full(n, 1.1))) == 0
        kept_t = (kept_t + t.tolist())[-50:]
        assert len(ring) == len(kept_t) <= 50
        assert ring.times.tolist() == kept_t
        for after in rng.integers(kept_t[0], clock + 3, 5):
            scan = next((i for i, x in enumerate(kept_t) if x >= after), None)
            assert ring.index_for(int(after)) == scan


def test_late_order_beyond_the_ring_fills_at_the_oldest_quote_held_and_is_counted():
    broker = PaperBroker(PaperConfig(quotes=10))
    broker.on_quotes("EUR_USD", quotes(np.arange(1, 31) * S, np.linspace(1.1, 1.2, 30)))
    broker.submit(order(1, 5 * S))
    (fill,) = broker.take_fills()
    assert fill.time_ns == 21 * S and broker.late_fills == 1


def test_book_netting_by_hand():
    book = Book()
    assert book.apply(10_000, 1.10) == 0.0
    book.apply(10_000, 1.20)
    assert (book.units, book.average_price) == (20_000, pytest.approx(1.15))
    assert book.apply(-15_000, 1.30) == pytest.approx(15_000 * 0.15)
    assert (book.units, book.average_price) == (5_000, pytest.approx(1.15))
    assert book.apply(-10_000, 1.00) == pytest.approx(5_000 * -0.15)  # closes 5k, opens 5k short
    assert (book.units, book.average_price) == (-5_000, pytest.approx(1.00))
    assert book.unrealized(0.98, 0.99) == pytest.approx(-5_000 * (0.99 - 1.00))
    book.apply(5_000, 1.01)
    assert (book.units, book.average_price) == (0, 0.0)
    assert book.realized == pytest.approx(2250 - 750 - 50)


@pytest.mark.parametrize("seed", range(5))
def test_accounting_matches_a_cash_flow_oracle(seed):
    """Per instrument, in its quote currency: realised - commission + unrealised (netting, average
    price) equals the cash flows + the position at the closing price, computed the slow way from
    every fill. The account (USD) books each fill's PnL converted at that fill, as OANDA does:
    USD_JPY's yen at the fill price."""
    rng = np.random.default_rng(seed)
    commission = 3e-5
    broker = PaperBroker(PaperConfig(commission=commission, balance=50_000.0))
    names = ("EUR_USD", "USD_JPY")
    cash, fees = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    units, clock, booked = dict.fromkeys(names, 0), 0, 0.0
    for i in range(300):
        instrument = "EUR_USD" if rng.random() < 0.6 else "USD_JPY"
        base = 1.1 if instrument == "EUR_USD" else 110.0
        clock += int(rng.integers(1, 5)) * S
        bid = base * (1 + rng.normal(0, 0.01))
        broker.on_quotes(instrument, quotes([clock], [bid], spread=base * 2e-4))
        size = int(rng.integers(-30, 31)) * 1000
        if size:
            broker.submit(order(size, clock, f"o{i}", instrument))
        for fill in broker.take_fills():
            fee = abs(fill.units) * fill.price * commission
            cash[fill.instrument] -= fill.units * fill.price + fee
            fees[fill.instrument] += fee
            assert fill.commission == pytest.approx(fee)
            units[fill.instrument] += fill.units
            booked += fill.booked
        unrealized_usd = 0.0
        for p in broker.positions():
            assert p.units == units[p.instrument]
            _, b, a = broker._rings[p.instrument].latest()
            marked = p.units * (b if p.units > 0 else a)
            equity = p.realized - fees[p.instrument] + p.unrealized
            assert equity == pytest.approx(cash[p.instrument] + marked, rel=1e-12, abs=1e-6)
            unrealized_usd += p.unrealized / ((b + a) / 2 if p.instrument == "USD_JPY" else 1.0)
        account = broker.account()
        assert account["balance"] == pytest.approx(50_000.0 + booked, rel=1e-12)
        assert account["unrealized"] == pytest.approx(unrealized_usd, rel=1e-12, abs=1e-9)
        assert account["balance"] + account["unrealized"] == pytest.approx(account["equity"])


def random_bars(n: int, seed: int, gap_every: int = 0) -> np.ndarray:
    """Contiguous M1 bars (with a weekend-like gap every `gap_every` bars) of a random walk."""
    rng = np.random.default_rng(seed)
    bars = empty_bars(n)
    steps = np.ones(n, dtype=np.int64)
    if gap_every:
        steps[::gap_every] = 50
    bars["time"] = 1_400_000_040 * S + np.cumsum(steps) * 60 * S
    mid = 1.3 + np.cumsum(rng.normal(0, 2e-4, 2 * n)).reshape(n, 2)
    spread = rng.uniform(0.5e-4, 2e-4, (n, 2))
    bars["bid_open"], bars["ask_open"] = mid[:, 0] - spread[:, 0] / 2, mid[:, 0] + spread[:, 0] / 2
    bars["bid_close"], bars["ask_close"] = (
        mid[:, 1] - spread[:, 1] / 2,
        mid[:, 1] + spread[:, 1] / 2,
    )
    return bars


def bar_ticks(bars: np.ndarray, i: int) -> np.ndarray:
    """A bar as two quotes: its open at its open time, its close 30 s later."""
    b = bars[i]
    return as_ticks(
        np.array([b["time"], b["time"] + 30 * S]),
        np.array([b["bid_open"], b["bid_close"]]),
        np.array([b["ask_open"], b["ask_close"]]),
    )


@pytest.mark.parametrize("orders_late", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_fills_and_equity_as_backtest_nb(seed, orders_late):
    """Targets decided at each bar close and sent with after_ns = the next bar's open fill as the
    backtest fills them, even when every order reaches the broker after all the quotes."""
    from osm.research.nb import FILL_DTYPE, backtest_nb

    n, commission, cash = 400, 2e-5, 100_000.0
    bars = random_bars(n, seed, gap_every=97)
    rng = np.random.default_rng(seed + 10)
    target = (rng.integers(-2, 3, n) * 5000).astype(float)
    target[rng.random(n) < 0.1] = np.nan
    equity = np.zeros(n)
    expected = np.zeros(n, dtype=FILL_DTYPE)
    count = backtest_nb(
        bars["bid_open"], bars["ask_open"], bars["bid_close"], bars["ask_close"],
        target, commission, 0.0, cash, equity, expected,
    )  # fmt: skip
    expected = expected[:count]

    broker = PaperBroker(PaperConfig(commission=commission, balance=cash))
    wanted = np.nan_to_num(target)
    orders = [
        order(int(wanted[t] - (wanted[t - 1] if t else 0)), int(bars["time"][t + 1]), f"t{t}")
        for t in range(n - 1)
    ]
    fills, paper_equity = [], []
    if orders_late:
        for i in range(n):
            broker.on_quotes("EUR_USD", bar_ticks(bars, i))
        for o in orders:
            if o.units:
                broker.submit(o)
        fills = broker.take_fills()
    else:
        for i in range(n):
            broker.on_quotes("EUR_USD", bar_ticks(bars, i))
            fills += broker.take_fills()
            paper_equity.append(broker.account()["equity"])
            if i < n - 1 and orders[i].units:
                broker.submit(orders[i])
    index = {int(t): i for i, t in enumerate(bars["time"])}
    got = [(index[f.time_ns], f.units, f.price, f.commission) for f in fills]
    want = [(int(r["bar"]), int(r["units"]), r["price"], r["commission"]) for r in expected]
    assert len(got) == len(want) > 50
    assert [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose([g[2:] for g in got], [w[2:] for w in want], rtol=1e-12)
    if not orders_late:
        np.testing.assert_allclose(paper_equity, equity, rtol=1e-12)
    else:
        assert broker.account()["equity"] == pytest.approx(equity[-1], rel=1e-12)


def test_registry_builds_paper_and_names_the_known_brokers():
    broker = brokers.create(TraderConfig(commission=1e-5, balance=5.0))
    assert isinstance(broker, PaperBroker) and broker.config.commission == 1e-5
    with pytest.raises(KeyError, match="'paper'"):
        brokers.create(TraderConfig(broker="papr"))
