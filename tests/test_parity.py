"""Parity: replaying bars through the live path gives the backtest's fills, bar for bar.

Real processes and sockets: a replay feeder, the router, a brain and the trader with its paper
broker. The fills the trader publishes are compared with `osm.research.backtest` of the same
strategy, parameters and bars: same time, side, units and price for every fill. Fills are collected
until the brain has decided the last closed bar and the journal holds no open order but that decision's,
so a missing fill and an extra one both fail the test.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
import zmq

from osm.core import wire
from osm.core.config import (
    BrainConfig,
    FeedConfig,
    RiskLimits,
    RouterConfig,
    SystemConfig,
    TraderConfig,
)
from osm.research.backtest import backtest
from osm.research.data import load_bars
from osm.strategies.base import load_strategy
from tests.conftest import REAL_DATA
from tests.live_helpers import LiveSystem, started_ok, wait_for

COMMISSION = 2e-5
SIZE = 10_000
STRATEGIES = {
    "osm.strategies.sma_cross:SmaCross": {"fast": 5, "slow": 20},
    "osm.strategies.donchian:Donchian": {"window": 20, "exit_window": 10, "max_hold": 60},
    "osm.strategies.bollinger:Bollinger": {"window": 20, "k": 1.5, "max_hold": 30},
    "osm.strategies.momentum:Momentum": {"lookback": 30, "threshold": 0.0},
}


@pytest.fixture(scope="module")
def day_of_m1(tmp_path_factory, m1_file) -> tuple[np.ndarray, str]:
    """Sixteen hours of M1 bars (real where present, else generated), as a bar CSV in the shared
    data's format."""
    bars = load_bars(m1_file)
    if REAL_DATA:
        start = np.datetime64("2014-05-06T00:00", "ns").astype(np.int64)
        day = bars[(bars["time"] >= start) & (bars["time"] < start + 16 * 3600 * 10**9)]
    else:
        day = bars[: 16 * 60]
    frame = pd.DataFrame({"time_utc": pd.to_datetime(day["time"], utc=True)})
    for field in ("open", "high", "low", "close"):
        for side in ("bid", "ask"):
            frame[f"{side}_{field}"] = day[f"{side}_{field}"]
    path = tmp_path_factory.mktemp("parity") / "day.csv"
    frame.to_csv(path, index=False)
    return day, str(path)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_replayed_bars_fill_like_the_backtest(strategy, day_of_m1, home):
    bars, path = day_of_m1
    params = STRATEGIES[strategy]
    expected = backtest(load_strategy(strategy)(**params), bars, size=SIZE, commission=COMMISSION)
    want = [
        (int(t), int(u), float(p))
        for t, u, p in zip(
            expected.fills["time"].astype("int64"),
            expected.fills["units"],
            expected.fills["price"],
            strict=True,
        )
    ]
    assert len(want) >= 5, "pick parameters that trade, or the comparison proves little"

    config = SystemConfig(
        feeds=[FeedConfig(name="replay", kind="replay", file=path, speed=0)],
        router=RouterConfig(granularities=["M1"], persist=False),
        trader=TraderConfig(
            commission=COMMISSION,
            risk=RiskLimits(max_orders_per_minute=1_000_000, max_order=10 * SIZE),
        ),
        brains=[
            BrainConfig(
                name="parity", strategy=strategy, params=params, size=SIZE, granularity="M1"
            )
        ],
    )
    system = LiveSystem(home, config)
    try:
        fills = system.socket(zmq.SUB, "trader_events")
        fills.setsockopt(zmq.SUBSCRIBE, b"fill.")
        for role, name in (("router", "router"), ("trader", "trader"), ("brain", "parity")):
            system.start(role, name)
            started_ok(system, name)
        system.start("feeder", "replay")
        got: list[tuple[int, int, float]] = []

        def collect() -> int:
            while fills.poll(0):
                _, fill = wire.parse(fills.recv_multipart())
                assert isinstance(fill, wire.Fill)
                got.append((fill.time_ns, fill.units, fill.price))
            for name in ("router", "trader", "parity"):
                system.alive(name)
            return len(got)

        # The file's last bar never closes (no later quote comes): the last decision is the one
        # before, whose fill is at the last bar's open.
        last = f"parity-{int(bars['time'][-2])}"
        journal = home / "db" / "trader.sqlite"
        wait_for(
            lambda: collect() >= 0 and settled(journal, last),
            120,
            f"the brain's decision on the last bar and no other open order (fills: {len(got)})",
        )
        wait_for(lambda: collect() == journaled_fills(journal), 30, "every journaled fill")
        quiet_until = time.monotonic() + 0.5  # an extra fill published late must still be seen
        while time.monotonic() < quiet_until:
            collect()
            time.sleep(0.05)
        assert got == want
        counters = system.counters("parity")
        assert counters.get("refused", 0) == 0, counters
    finally:
        system.close()


def settled(journal, last_client_id: str) -> bool:
    """The trader journaled `last_client_id` and every other order is in a final state."""
    if not journal.exists():
        return False
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as con:
        if con.execute("SELECT 1 FROM orders WHERE client_id = ?", (last_client_id,)).fetchone():
            open_orders = con.execute(
                "SELECT count(*) FROM orders WHERE status IN ('new', 'sent') AND client_id != ?",
                (last_client_id,),
            ).fetchone()[0]
            return open_orders == 0
    return False


def journaled_fills(journal) -> int:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as con:
        return con.execute("SELECT count(*) FROM fills").fetchone()[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_papermill_brain_fills_like_the_backtest(strategy, day_of_m1, home):
    """The same, with the brain a promoted job: the live-brain notebook run by papermill under the
    supervisor. Fills bar for bar, nothing after the last, and the summary cell's position and
    PnL equal the backtest's."""
    from osm.live import demo

    bars, _ = day_of_m1
    params = STRATEGIES[strategy]
    run = demo.replay_job(
        home, bars, strategy, params, size=SIZE, window=400, job="parity", commission=COMMISSION
    )
    assert not run.left_running
    parity = demo.check_parity(bars, strategy, params, SIZE, run, COMMISSION)
    assert parity.passed, parity.reason
    assert parity.fills >= 5, "pick parameters that trade, or the comparison proves little"
