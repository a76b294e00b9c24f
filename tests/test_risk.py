"""Pre-trade risk: each limit refuses with a reason that names it and the setting to change."""

from __future__ import annotations

from osm.core.config import RiskLimits
from osm.live.risk import Risk

S = 1_000_000_000
T0 = 1_400_000_000 * S  # market time of the newest quote
AT = {"at_ns": T0}


def risk(**limits) -> Risk:
    return Risk(RiskLimits(**limits))


def test_max_order_refuses_either_side():
    r = risk(max_order=100)
    assert r.check("EUR_USD", 100, 0, **AT) is None and r.check("EUR_USD", -100, 0, **AT) is None
    for units in (101, -101):
        refusal = r.check("EUR_USD", units, 0, **AT)
        assert refusal.code == "max_order"
        assert "max_order 100" in refusal.text and "trader.risk.max_order" in refusal.text


def test_max_position_counts_what_is_held_and_lets_a_position_shrink():
    r = risk(max_position=1000, max_order=10_000)
    assert r.check("EUR_USD", 400, 600, **AT) is None
    refusal = r.check("EUR_USD", 401, 600, **AT)
    assert refusal.code == "max_position" and "would be 1001" in refusal.text
    assert "trader.risk.max_position" in refusal.text
    assert r.check("EUR_USD", -2000, 1000, **AT) is None  # 1000 long to 1000 short: allowed
    assert r.check("EUR_USD", -2001, 1000, **AT).code == "max_position"
    assert (
        r.check("EUR_USD", -100, 5000, **AT) is None
    )  # over the limit (lowered since) but reducing


def test_rate_limit_is_a_sliding_minute_of_market_time():
    r = risk(max_orders_per_minute=3)
    for k in range(3):
        assert r.check("EUR_USD", 1, 0, at_ns=T0 + 10 * k * S) is None
        r.record("b1", T0 + 10 * k * S)
    refusal = r.check("EUR_USD", 1, 0, at_ns=T0 + 30 * S)
    assert refusal.code == "rate" and "max_orders_per_minute" in refusal.text
    assert "market time" in refusal.text
    assert r.check("EUR_USD", -1, 1, at_ns=T0 + 30 * S, flatten=True) is None  # never limited
    assert r.check("EUR_USD", 1, 0, at_ns=T0 + 60 * S) is None  # the first is a minute old
    assert r.orders_last_minute(T0 + 60 * S) == 2
    assert r.orders_last_minute(T0 + 20 * S) == 3


def test_a_replay_deciding_bar_after_bar_in_a_burst_is_not_limited_a_fast_brain_is():
    r = risk(max_orders_per_minute=2)
    now = T0 + 10_000 * 60 * S  # the replay's quotes have run far ahead of the brain
    for bar in range(1, 500):  # one order a bar, sent within the same wall-clock instant
        at = r.market_time("b1", T0 + bar * 60 * S, now)
        assert at == T0 + bar * 60 * S
        assert r.check("EUR_USD", 1, 0, at_ns=at) is None
        r.record("b1", at)
    # Three orders about one minute of market are too many, however slowly they come.
    at = r.market_time("b2", T0 + 30 * S, now)
    r.record("b2", at)
    r.record("b2", r.market_time("b2", T0 + 40 * S, now))
    assert r.check("EUR_USD", 1, 0, at_ns=r.market_time("b2", T0 + 50 * S, now)).code == "rate"


def test_market_time_believes_no_future_and_no_going_back():
    r = risk(max_orders_per_minute=2)
    now = T0
    # A decision claimed for the future counts now; an order without one counts now too.
    assert r.market_time("b1", T0 + 3600 * S, now) == T0
    assert r.market_time("cli", 0, now) == T0
    r.record("b1", T0)
    # Once b1 has traded now, older decision times count now as well: the limit holds.
    assert r.market_time("b1", T0 - 3600 * S, now) == T0
    r.record("b1", r.market_time("b1", T0 - 7200 * S, now))
    refusal = r.check("EUR_USD", 1, 0, at_ns=r.market_time("b1", T0 - 10_800 * S, now))
    assert refusal.code == "rate"
    # Without quotes the clock stands still: every order counts in the same minute.
    still = risk(max_orders_per_minute=2)
    for _ in range(2):
        still.record("cli", still.market_time("cli", 0, 0))
    assert still.check("EUR_USD", 1, 0, at_ns=still.market_time("cli", 0, 0)).code == "rate"


def test_halt_refuses_all_but_flatten_until_resumed():
    r = risk(max_order=100)
    r.halt("drawdown")
    refusal = r.check("EUR_USD", 1, 0, **AT)
    assert refusal.code == "halted" and "drawdown" in refusal.text and "resume" in refusal.text
    assert r.check("EUR_USD", -50, 50, flatten=True, **AT) is None
    assert r.check("EUR_USD", -500, 500, flatten=True, **AT).code == "max_order"  # sizes still hold
    r.resume()
    assert r.check("EUR_USD", 1, 0, **AT) is None and not r.halted
