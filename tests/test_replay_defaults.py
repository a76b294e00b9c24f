"""The README's promise with nothing tuned: ``osm up --feed replay --speed 0 --brain ...`` gives the
backtest's fills, every one of them, on every run.

The system is started by the real command line, so the supervisor's start order is what is tested:
the feeder must hold the replay until the brain is warm (or the brain would take the first bars as
history and never decide them). The risk limits are the defaults, whose order rate is counted in
market time (a replay at speed 0 sends hours of decisions in a second). The trader's journal is
read once the replay is over and the brain has decided the last closed bar, and its fills must be
the backtest's, with nothing missing and nothing extra.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osm.research.backtest import backtest
from osm.research.data import load_bars
from tests.live_helpers import wait_for
from tests.system_helpers import process, running_system

BARS = 3_000  # about two days of M1 bars; the run takes some twenty seconds
STRATEGY = "osm.strategies.sma_cross:SmaCross"
PARAMS = {"fast": 5, "slow": 20}  # trades every few dozen bars: a hundred or so fills
BRAIN = "sma_cross"  # the name `osm up --brain` gives it


@pytest.fixture(scope="module")
def replay(m1_file, tmp_path_factory) -> tuple[np.ndarray, Path]:
    """The first BARS bars of the M1 file, as a bar CSV in its format."""
    bars = load_bars(m1_file)[:BARS]
    frame = pd.DataFrame({"time_utc": pd.to_datetime(bars["time"], utc=True)})
    for field in ("open", "high", "low", "close"):
        for side in ("bid", "ask"):
            frame[f"{side}_{field}"] = bars[f"{side}_{field}"]
    path = tmp_path_factory.mktemp("replay") / "m1.csv"
    frame.to_csv(path, index=False)
    return bars, path


@pytest.fixture
def system(home):
    yield from running_system(home)


def journal(home: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{home / 'db' / 'trader.sqlite'}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def test_replay_at_speed_0_with_default_limits_fills_like_the_backtest(home, system, replay):
    bars, path = replay
    expected = backtest(STRATEGY, bars, **PARAMS)
    records = expected.fill_records
    want = [
        (int(bars["time"][bar]), int(units), float(price))
        for bar, units, price in zip(
            records["bar"], records["units"], records["price"], strict=True
        )
    ]
    assert len(want) > 50, "pick parameters that trade, or the comparison proves little"

    params = [arg for name, value in PARAMS.items() for arg in ("--param", f"{name}={value}")]
    system("--feed", "replay", "--file", str(path), "--speed", "0", "--brain", STRATEGY, *params)

    # The last bar never closes (no later tick), so the brain's last decision is on the one before.
    last = f"{BRAIN}-{bars['time'][-2]}"

    def done() -> bool:
        if not process(home, "replay")["counters"].get("finished"):
            return False
        decided = journal(home, f"SELECT status FROM orders WHERE client_id = '{last}'")
        return bool(decided) and decided[0][0] not in ("new", "sent")

    wait_for(done, 120, "the end of the replay and the decision on its last closed bar")
    got = journal(home, "SELECT time_ns, units, price FROM fills ORDER BY seq")
    assert got == want

    # Decisions in bar order, each once, none refused: nothing was taken as history or
    # rate-limited. A decision that repeats the target is sent only at the end of a burst.
    orders = journal(home, "SELECT client_id, status FROM orders ORDER BY seq")
    bar_ids = [f"{BRAIN}-{t}" for t in bars["time"][:-1]]
    position = {cid: i for i, cid in enumerate(bar_ids)}
    indices = [position[cid] for cid, _ in orders]
    assert indices == sorted(set(indices)) and indices[-1] == len(bar_ids) - 1
    assert len(orders) >= len(want)
    assert {status for _, status in orders} <= {"filled", "noop"}
    decided = wait_for(
        lambda: (c := process(home, BRAIN)["counters"]).get("decisions") == len(bar_ids) and c,
        30,
        "the brain's count of its decisions: one per closed bar",
    )
    assert not decided.get("refused")
