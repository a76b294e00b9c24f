"""The supervisor keeps the system alive: dead and hung processes are restarted, with a cap."""

from __future__ import annotations

import os
import signal

import pytest

from osm.live.client import Client, alive
from tests.live_helpers import wait_for
from tests.system_helpers import osm, process, running_system, status, stop, write_config

FAST_MARKET = ["--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "S5"]


@pytest.fixture
def system(home):
    yield from running_system(home)


def restarted(home, name: str, old_pid: int, restarts: int):
    """The process `name` runs again under a new pid after `restarts` restarts, or None."""
    p = process(home, name)
    fresh = p["state"] == "running" and p["pid"] not in (None, old_pid)
    return p if fresh and p["restarts"] == restarts else None


def newest_bar(home) -> int:
    with Client(home) as client:
        bars = client.bars("EUR_USD", "S5", 1)
    return int(bars["time"][-1]) if len(bars) else 0


def test_kill_9_of_router_then_trader_restarts_each_and_bars_flow_again(home, system):
    system(*FAST_MARKET)
    for name in ("router", "trader"):
        before = process(home, name)
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(
            lambda n=name, b=before: restarted(home, n, b["pid"], 1), 60, f"{name} restarted"
        )
        assert "exited with code -9" in after["reason"]
        assert not alive(before["pid"])
    seen = wait_for(lambda: newest_bar(home), 60, "a closed bar")
    wait_for(lambda: newest_bar(home) > seen, 60, "bars closing after the restarts")
    others = {p["name"]: p["restarts"] for p in status(home)["processes"]}
    assert others == {"router": 1, "trader": 1, "synthetic": 0}


def test_a_hung_process_is_killed_and_restarted(home, system):
    # heartbeat_s 0.5: a process silent for 10 intervals (at least 5 s) counts as hung
    system("--config", str(write_config(home, heartbeat_s=0.5)))
    before = process(home, "synthetic")
    os.kill(before["pid"], signal.SIGSTOP)
    try:
        after = wait_for(
            lambda: restarted(home, "synthetic", before["pid"], 1), 60, "the hung feeder restarted"
        )
    finally:
        if alive(before["pid"]):
            os.kill(before["pid"], signal.SIGKILL)
    assert "no heartbeat" in after["reason"]
    assert not alive(before["pid"])


def test_a_process_that_keeps_crashing_is_given_up_after_max_restarts(home):
    config = write_config(
        home,
        max_restarts=2,
        restart_backoff_s=0.1,
        feeds=[{"name": "replay", "kind": "replay", "file": str(home / "vanished.csv")}],
    )
    try:
        done = osm(home, "up", "--config", str(config))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "not every process came up: replay (failed" in done.stderr
        feeder = process(home, "replay")
        assert feeder["state"] == "failed" and feeder["restarts"] == 2 and feeder["pid"] is None
        assert feeder["exit_code"] not in (0, None)
        assert process(home, "router")["state"] == "running"  # the rest of the system lives on
    finally:
        stop(home)
