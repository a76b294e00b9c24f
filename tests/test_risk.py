"""Pre-trade risk: each limit refuses with a reason that names it and the setting to change."""

from __future__ import annotations

from osm.core.config import RiskLimits
from osm.live.risk import Risk


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def risk(**limits) -> tuple[Risk, Clock]:
    clock = Clock()
    return Risk(RiskLimits(**limits), clock=clock), clock


def test_max_order_refuses_either_side():
    r, _ = risk(max_order=100)
    assert r.check("EUR_USD", 100, 0) is None and r.check("EUR_USD", -100, 0) is None
    for units in (101, -101):
        refusal = r.check("EUR_USD", units, 0)
        assert refusal.code == "max_order"
        assert "max_order 100" in refusal.text and "trader.risk.max_order" in refusal.text


def test_max_position_counts_what_is_held_and_lets_a_position_shrink():
    r, _ = risk(max_position=1000, max_order=10_000)
    assert r.check("EUR_USD", 400, 600) is None
    refusal = r.check("EUR_USD", 401, 600)
    assert refusal.code == "max_position" and "would be 1001" in refusal.text
    assert "trader.risk.max_position" in refusal.text
    assert r.check("EUR_USD", -2000, 1000) is None  # 1000 long to 1000 short: allowed
    assert r.check("EUR_USD", -2001, 1000).code == "max_position"
    assert r.check("EUR_USD", -100, 5000) is None  # over the limit (lowered since) but reducing


def test_rate_limit_is_a_sliding_minute_of_orders_sent():
    r, clock = risk(max_orders_per_minute=3)
    for _ in range(3):
        assert r.check("EUR_USD", 1, 0) is None
        r.record()
        clock.now += 10
    refusal = r.check("EUR_USD", 1, 0)
    assert refusal.code == "rate" and "max_orders_per_minute" in refusal.text
    assert r.check("EUR_USD", -1, 1, flatten=True) is None  # flattening is never rate-limited
    clock.now += 30.5  # the first order is now more than a minute old
    assert r.check("EUR_USD", 1, 0) is None
    assert r.orders_last_minute() == 2


def test_halt_refuses_all_but_flatten_until_resumed():
    r, _ = risk(max_order=100)
    r.halt("drawdown")
    refusal = r.check("EUR_USD", 1, 0)
    assert refusal.code == "halted" and "drawdown" in refusal.text and "resume" in refusal.text
    assert r.check("EUR_USD", -50, 50, flatten=True) is None
    assert r.check("EUR_USD", -500, 500, flatten=True).code == "max_order"  # sizes still hold
    r.resume()
    assert r.check("EUR_USD", 1, 0) is None and not r.halted
