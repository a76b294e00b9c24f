"""The whole system under faults: kill -9 of the router, then of the trader, during a replay loses
no closed bar, stores none twice, and journals every order exactly once, the same as a run
without faults."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from osm.core.dtypes import TICK_DTYPE
from osm.live.store import read_bars
from tests.live_helpers import wait_for
from tests.system_helpers import osm, process, running_system, status, write_config

TICKS = 12_000  # about ten hours of May 2014 EUR_USD
SPEED = 2_000.0  # market seconds per second: the replay lasts about twenty seconds
HEAD_START_S = 8 * 3600  # a lone first tick this far ahead: the brain is warm before bars close
GRANULARITIES = ["M1", "M5"]
ORDER_COLUMNS = "client_id, brain, instrument, kind, target, units, status"


@pytest.fixture
def system(home):
    yield from running_system(home)


@pytest.fixture
def clean_system(tmp_path_factory):
    """A second run directory and system, for the run without faults."""
    home = Path(tmp_path_factory.mktemp("osm", numbered=True))
    for up in running_system(home):
        yield home, up


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory, ticks_file) -> Path:
    """About ten hours of ticks (TICKS of them, real or generated), after a lone tick HEAD_START_S
    earlier, as a CSV of int64 ns times."""
    frame = pd.read_csv(ticks_file)
    times = pd.to_datetime(frame["time_utc"], utc=True).dt.as_unit("ns").astype("int64")
    # Thin a denser market (the generated one) to TICKS spanning the same ten hours.
    ten_hours = int((times < times.iloc[0] + 10 * 3600 * 10**9).sum())
    every = max(1, round(ten_hours / TICKS))
    frame, times = frame.iloc[::every].head(TICKS), times.iloc[::every].head(TICKS)
    ticks = np.zeros(len(frame), TICK_DTYPE)
    ticks["time"], ticks["bid"], ticks["ask"] = times, frame["bid"], frame["ask"]
    lone = ticks[:1].copy()
    lone["time"] -= HEAD_START_S * 10**9
    ticks = np.concatenate([lone, ticks])
    path = tmp_path_factory.mktemp("replay") / "ticks.csv"
    pd.DataFrame({n: ticks[n] for n in TICK_DTYPE.names}).to_csv(path, index=False)
    return path


def run_replay(home: Path, replay_file: Path, system, faults: list[str]) -> dict:
    """Replay the file with a brain trading it, kill -9 each of `faults` in turn during the replay,
    wait until every bar is decided, stop the system and return what it stored and journaled."""
    config = write_config(
        home,
        feeds=[{"name": "replay", "kind": "replay", "file": str(replay_file), "speed": SPEED}],
        router={"granularities": GRANULARITIES},
        # The replay runs 2000x: a second without the trader is half an hour of market, after
        # which a decision is stale and refused (tests/test_trader.py shows it). Here every
        # decision stays valid, so the faulty run must journal exactly what the clean one does.
        trader={"risk": {"max_orders_per_minute": 1_000_000, "max_decision_age_s": 86_400}},
        brains=[
            {
                "name": "sma",
                "strategy": "osm.strategies.sma_cross:SmaCross",
                "params": {"fast": 3, "slow": 8},
                "granularity": "M1",
            }
        ],
    )
    system("--config", str(config))

    def sent() -> int:
        return process(home, "replay")["counters"].get("ticks_sent", 0)

    for i, name in enumerate(faults, start=1):
        wait_for(lambda i=i: sent() >= TICKS * i // 3, 60, f"{i}/{len(faults) + 1} of the replay")
        victim = process(home, name)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(
            lambda n=name, v=victim: (
                (p := process(home, n))["state"] == "running" and p["pid"] != v["pid"]
            ),
            60,
            f"{name} restarted",
        )
    wait_for(
        lambda: process(home, "replay")["counters"].get("finished"), 180, "the end of the replay"
    )
    db = home / "db" / "trader.sqlite"

    def decided_last_bar() -> bool:
        last = read_bars(home, "EUR_USD", "M1")["time"][-1]
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT 1 FROM orders WHERE client_id = ?", (f"sma-{last}",))
            return row.fetchone() is not None

    wait_for(decided_last_bar, 60, "the brain's decision on the last closed bar")
    restarts = {p["name"]: p["restarts"] for p in status(home)["processes"]}
    assert osm(home, "down").returncode == 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        orders = con.execute(f"SELECT {ORDER_COLUMNS} FROM orders ORDER BY client_id").fetchall()
    stored = {}
    for g in GRANULARITIES:
        folder = home / "store" / "bars" / "instrument=EUR_USD" / f"granularity={g}"
        times = [pq.read_table(p, columns=["time"])["time"] for p in folder.glob("*/*.parquet")]
        raw = np.concatenate([t.to_numpy().astype("int64") for t in times])
        assert len(np.unique(raw)) == len(raw), f"a {g} bar is stored twice"
        stored[g] = read_bars(home, "EUR_USD", g)
        assert len(stored[g]) == len(raw)
    return {"bars": stored, "orders": orders, "restarts": restarts}


def test_kill_9_of_router_and_trader_during_a_replay_loses_and_repeats_nothing(
    home, replay_file, system, clean_system
):
    clean = run_replay(clean_system[0], replay_file, clean_system[1], faults=[])
    faulty = run_replay(home, replay_file, system, faults=["router", "trader"])

    assert clean["restarts"] == {"router": 0, "trader": 0, "replay": 0, "sma": 0}
    assert faulty["restarts"]["router"] == 1 and faulty["restarts"]["trader"] == 1
    for g in GRANULARITIES:
        assert len(clean["bars"][g]) > 100
        np.testing.assert_array_equal(faulty["bars"][g], clean["bars"][g], err_msg=g)
    # The orders that trade are the same, each once. Which decisions that repeat the target went
    # to the trader too (as no-ops) depends on how the bars came together, which the faults move.
    traded = {
        run: [o for o in r["orders"] if o[6] != "noop"]
        for run, r in (("clean", clean), ("faulty", faulty))
    }
    assert [o[0] for o in traded["faulty"]] == [o[0] for o in traded["clean"]]
    assert traded["faulty"] == traded["clean"]
    assert sum(1 for o in traded["clean"] if o[6] == "filled") >= 5
