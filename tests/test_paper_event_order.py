"""The paper broker processes a batch of quotes in quote order: an order fills and a trade exits at
its own quote, each after what came before it, checked by hand and against a quote-by-quote oracle.

The rule at one quote: the exits of the trades open at it first, then the orders due at it in the
order sent (a trade one of them opens is open for the next).
"""

from __future__ import annotations

import numpy as np
import pytest

from osm.core import wire
from osm.core.dtypes import as_ticks
from osm.live.adapters.base import Trade, trade_fill
from osm.live.adapters.paper import PaperBroker, PaperConfig

S = 1_000_000_000
SPREAD = 0.0002
DISTANCE = 0.0005  # of every exit in the hand-made cases


def quotes(times, bids, spread: float = SPREAD) -> np.ndarray:
    bids = np.asarray(bids, dtype=float)
    return as_ticks(np.asarray(times, dtype=np.int64), bids, bids + spread)


def order(units: int, after_ns: int, cid: str, **exits: float) -> wire.Order:
    return wire.Order("b", "EUR_USD", units, cid, after_ns, **exits)


def summary(fills: list[wire.Fill]) -> list[tuple[str, int, float, int]]:
    return [(f.client_id, f.units, f.price, f.time_ns // S) for f in fills]


def opened(side: int) -> PaperBroker:
    """A broker holding one trade of `side` * 1000 units opened at 1 s (bid 1.1000, ask 1.1002),
    its stop-loss and take-profit DISTANCE away."""
    broker = PaperBroker(PaperConfig())
    broker.on_quotes("EUR_USD", quotes([1 * S], [1.1000]))
    broker.submit(order(side * 1000, 1 * S, "t", stop_loss=DISTANCE, take_profit=DISTANCE))
    [fill] = broker.take_fills()
    assert fill.price == (1.1002 if side > 0 else 1.1000)
    return broker


def reaching(side: int, kind: str) -> float:
    """A bid at which the trade of `opened(side)` reaches its `kind` exit (a long closes at the
    bid, a short at the ask); the bid 1.1000 reaches neither."""
    up = (side > 0) == (kind == "take_profit")
    return 1.1010 if up else 1.0990


def close_price(side: int, bid: float) -> float:
    """What a trade of `side` closes at, and so what an order the other way fills at."""
    return bid if side > 0 else bid + SPREAD


def units_held(broker: PaperBroker) -> int:
    return sum(p.units for p in broker.positions())


CASES = [(side, kind) for side in (1, -1) for kind in ("stop_loss", "take_profit")]


@pytest.mark.parametrize(("side", "kind"), CASES)
def test_an_exit_at_an_earlier_quote_comes_before_an_opposite_order_at_a_later_one(side, kind):
    broker = opened(side)
    broker.submit(order(-side * 1000, 5 * S, "o"))  # waits for its quote
    bids = [1.1000, reaching(side, kind), 1.1000, 1.1000, 1.1000]
    broker.on_quotes("EUR_USD", quotes(np.arange(1, 6) * S + S, bids))  # 2 s .. 6 s
    # The exit at 3 s closes the trade; the order at 5 s then opens the other way.
    assert summary(broker.take_fills()) == [
        (f"t/{kind}", -side * 1000, close_price(side, bids[1]), 3),
        ("o", -side * 1000, close_price(side, 1.1000), 5),
    ]
    assert units_held(broker) == -side * 1000
    assert [(t.client_id, t.units) for t in broker._trades["EUR_USD"]] == [("o", -side * 1000)]


@pytest.mark.parametrize(("side", "kind"), CASES)
def test_an_order_at_an_earlier_quote_comes_before_an_exit_at_a_later_one(side, kind):
    broker = opened(side)
    broker.submit(order(-side * 400, 3 * S, "o"))  # closes 400 of the trade first
    bids = [1.1000, 1.1000, 1.1000, reaching(side, kind), 1.1000]
    broker.on_quotes("EUR_USD", quotes(np.arange(1, 6) * S + S, bids))
    assert summary(broker.take_fills()) == [
        ("o", -side * 400, close_price(side, 1.1000), 3),
        (f"t/{kind}", -side * 600, close_price(side, bids[3]), 5),  # what the order left
    ]
    assert units_held(broker) == 0


@pytest.mark.parametrize(("side", "kind"), CASES)
@pytest.mark.parametrize("sent", ["before", "after"])
def test_at_one_quote_the_exit_comes_first_whenever_the_order_was_sent(side, kind, sent):
    """The exit rests at the venue and fires as the quote comes; the order is served at that
    quote: so the trade exits, and the order opens the other way. The same whether the order
    waited for the quote or reached the broker after it (then it fills late, at that quote)."""
    broker = opened(side)
    late = order(-side * 1000, 3 * S, "o")
    if sent == "before":
        broker.submit(late)
    bids = [1.1000, reaching(side, kind), 1.1000]
    broker.on_quotes("EUR_USD", quotes([2 * S, 3 * S, 4 * S], bids))
    if sent == "after":
        broker.submit(late)
    assert summary(broker.take_fills()) == [
        (f"t/{kind}", -side * 1000, close_price(side, bids[1]), 3),
        ("o", -side * 1000, close_price(side, bids[1]), 3),
    ]
    assert units_held(broker) == -side * 1000


def test_a_trade_an_order_opens_is_open_for_the_next_order_at_the_same_quote():
    broker = PaperBroker(PaperConfig())
    # A stop inside the spread: the quote the long opens at (at the ask) already reaches it.
    broker.submit(order(1000, 3 * S, "a", stop_loss=SPREAD / 2))
    broker.submit(order(-1000, 3 * S, "b"))
    broker.on_quotes("EUR_USD", quotes([2 * S, 3 * S], [1.1000, 1.1010]))
    assert summary(broker.take_fills()) == [
        ("a", 1000, 1.1010 + SPREAD, 3),
        ("a/stop_loss", -1000, 1.1010, 3),
        ("b", -1000, 1.1010, 3),  # opens a short: "a" is closed already
    ]
    assert units_held(broker) == -1000


def test_orders_due_in_one_batch_fill_in_quote_order_not_in_the_order_sent():
    broker = PaperBroker(PaperConfig())
    broker.submit(order(-1000, 4 * S, "later", take_profit=DISTANCE))
    broker.submit(order(1000, 2 * S, "sooner", take_profit=DISTANCE))
    broker.on_quotes("EUR_USD", quotes([2 * S, 3 * S, 4 * S], [1.1000, 1.1000, 1.1000]))
    # FIFO: the sell at 4 s closes the long the buy at 2 s opened; no trade is left.
    assert summary(broker.take_fills()) == [
        ("sooner", 1000, 1.1000 + SPREAD, 2),
        ("later", -1000, 1.1000, 4),
    ]
    assert broker._trades["EUR_USD"] == []


def test_a_late_order_s_trade_exits_at_the_quote_held_that_reaches_its_exit():
    broker = PaperBroker(PaperConfig())
    broker.on_quotes("EUR_USD", quotes(np.arange(1, 7) * S, [1.1, 1.1, 1.1, 1.099, 1.098, 1.1]))
    broker.submit(order(1000, 2 * S, "late", stop_loss=DISTANCE))  # its quote is 4 quotes back
    assert summary(broker.take_fills()) == [
        ("late", 1000, 1.1 + SPREAD, 2),
        ("late/stop_loss", -1000, 1.099, 4),
    ]
    broker.on_quotes("EUR_USD", quotes([7 * S], [1.097]))
    assert broker.take_fills() == [] and units_held(broker) == 0


def test_a_refused_quote_reaches_no_exit():
    broker = opened(1)
    broker.on_quotes("EUR_USD", quotes([5 * S], [1.1000]))
    # 4 s comes after 5 s: refused, as its fill would be; so is its exit.
    assert broker.on_quotes("EUR_USD", quotes([4 * S, 6 * S], [1.0990, 1.1000])) == 1
    assert broker.take_fills() == []


# The slow oracle: one quote at a time, in plain Python.


def oracle(times, bids, asks, orders: list[wire.Order]) -> list[tuple[str, int, float, int]]:
    """Fills of `orders` (all sent before the first quote) over these quotes: at each quote, the
    exits of the open trades it reaches (oldest first), then each order due at it in the order
    sent, each followed by the exits of what it opened."""
    trades: list[Trade] = []
    todo = list(orders)
    fills = []

    def exit_reached(t: int, bid: float, ask: float) -> None:
        for trade in list(trades):
            side = 1 if trade.units > 0 else -1
            close = bid if side > 0 else ask
            stop = (close - trade.stop_loss) * side <= 0  # False for NaN
            take = (close - trade.take_profit) * side >= 0
            if (stop or take) and t >= trade.opened_ns:
                cid = f"{trade.client_id}/{'stop_loss' if stop else 'take_profit'}"
                fills.append((cid, -trade.units, close, t))
                trade_fill(trades, cid, trade.brain, -trade.units, close, t)

    for quote in zip(times.tolist(), bids.tolist(), asks.tolist(), strict=True):
        t, bid, ask = quote
        exit_reached(*quote)
        for o in [o for o in todo if o.after_ns <= t]:
            todo.remove(o)
            price = ask if o.units > 0 else bid
            fills.append((o.client_id, o.units, price, t))
            trade_fill(trades, o.client_id, o.brain, o.units, price, t, o.stop_loss, o.take_profit)
            exit_reached(*quote)
    return fills


def random_market(seed: int):
    rng = np.random.default_rng(seed)
    n = 400
    times = (1 + np.cumsum(rng.integers(0, 3, n))) * S  # repeated times too
    bids = np.round(1.1 + np.cumsum(rng.normal(0, 2e-4, n)), 5)
    asks = np.round(bids + rng.uniform(0.5e-4, 3e-4, n), 5)
    orders = []
    for k in range(60):
        # At a quote's time (ties with exits at one quote) or between two.
        after = int(rng.choice(times)) + (0 if rng.random() < 0.7 else S // 2)
        exits = {
            name: float(np.round(rng.uniform(1e-4, 8e-4), 5))
            for name in ("stop_loss", "take_profit")
            if rng.random() < 0.8
        }
        units = int(rng.choice([-1, 1])) * int(rng.integers(1, 4)) * 1000
        orders.append(order(units, after, f"o{k}", **exits))
    return rng, times, bids, asks, orders


@pytest.mark.parametrize("seed", range(12))
def test_any_batching_fills_as_the_quote_by_quote_oracle(seed):
    rng, times, bids, asks, orders = random_market(seed)
    want = oracle(times, bids, asks, orders)
    assert sum("/" in cid for cid, *_ in want) >= 10  # exits happen, between orders
    ticks = as_ticks(times, bids, asks)
    cuts = np.sort(rng.choice(np.arange(1, len(ticks)), 15, replace=False))
    for batches in ([ticks], np.split(ticks, cuts), np.split(ticks, np.arange(1, len(ticks)))):
        broker = PaperBroker(PaperConfig())
        for o in orders:
            broker.submit(o)
        for batch in batches:
            broker.on_quotes("EUR_USD", batch)
        got = [(f.client_id, f.units, f.price, f.time_ns) for f in broker.take_fills()]
        assert got == want, len(batches)
        assert units_held(broker) == sum(units for _, units, _, _ in want)
        held = [(t.client_id, t.units) for t in broker._trades["EUR_USD"]]
        oracle_trades: list[Trade] = []
        for cid, units, price, t in want:
            trade_fill(oracle_trades, cid, "b", units, price, t)
        assert held == [(t.client_id, t.units) for t in oracle_trades]
