"""The supervisor keeps the system alive: dead and hung processes are restarted, with a cap."""

from __future__ import annotations

import os
import signal
import stat

import pytest

from osm.core.errors import EXIT_CONFIG
from osm.live.client import Client, alive
from tests.generated_data import synthetic_ticks
from tests.live_helpers import wait_for
from tests.system_helpers import osm, process, running_system, status, write_config

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

    # Counters are the current incarnation's: a feeder's acked position is not summed over its
    # restarts (it would run ahead of the ticks sent); the totals are labelled as such.
    feeder = wait_for(lambda: process(home, "synthetic")["counters"].get("acked"), 60, "acks")
    pid = process(home, "synthetic")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: restarted(home, "synthetic", pid, 1), 60, "the feeder restarted")

    def acked_again():
        p = process(home, "synthetic")
        if p["restarts"] != 1 or p["counters"].get("acked", 0) <= feeder:
            return None
        return p

    p = wait_for(acked_again, 60, "the restarted feeder acking")
    acked, total = p["counters"]["acked"], p["counters_total"]["acked"]
    assert feeder < acked < total  # the sum counts the old incarnation's position again
    assert p["messages"] == p["counters"].get("messages_in", 0)


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


def test_a_process_that_keeps_crashing_is_given_up_after_max_restarts(home, system):
    system("--config", str(write_config(home, max_restarts=2, restart_backoff_s=0.1)))
    pid = process(home, "synthetic")["pid"]
    for restarts in (1, 2):
        os.kill(pid, signal.SIGKILL)
        pid = wait_for(
            lambda r=restarts, p=pid: restarted(home, "synthetic", p, r), 60, f"restart {restarts}"
        )["pid"]
    os.kill(pid, signal.SIGKILL)
    feeder = wait_for(
        lambda: (p := process(home, "synthetic"))["state"] == "failed" and p, 60, "given up"
    )
    assert feeder["restarts"] == 2 and feeder["pid"] is None and feeder["exit_code"] == -9
    assert "exited with code -9" in feeder["reason"]
    assert process(home, "router")["state"] == "running"  # the rest of the system lives on


def test_a_process_that_cannot_run_as_configured_is_not_restarted(home, system, tmp_path):
    data = tmp_path / "ticks.csv"
    synthetic_ticks("2024-03-05T08:00:00Z", "2024-03-05T09:00:00Z").to_csv(data, index=False)
    system("--feed", "replay", "--file", str(data), "--speed", "1", "--granularities", "M1")
    before = process(home, "replay")
    data.rename(tmp_path / "moved.csv")  # the file goes while the system runs
    os.kill(before["pid"], signal.SIGKILL)
    feeder = wait_for(
        lambda: (p := process(home, "replay"))["state"] == "failed" and p, 60, "the refusal"
    )
    # Restarted once after the kill; that start exits with EXIT_CONFIG, which is not retried.
    assert feeder["exit_code"] == EXIT_CONFIG and feeder["restarts"] == 1
    assert str(data) in feeder["reason"] and feeder["reason"].startswith("osm feeder replay:")
    log = (home / "logs" / "supervisor.log").read_text()
    assert "feeder replay cannot run as configured; not restarted" in log
    assert process(home, "router")["state"] == "running"
    assert process(home, "replay")["restarts"] == 1  # still: the supervisor moved on


def test_the_run_directory_is_private_to_its_owner_even_if_it_was_not(home, system):
    """``osm up`` in a home left world-readable tightens it (and says so), and everything the
    running system writes (journal, logs, bars, state, endpoints) is its owner's only."""
    (home / "logs").mkdir(parents=True)
    home.chmod(0o755)
    (home / "logs").chmod(0o755)
    old = home / "logs" / "old.log"
    old.write_text("from an earlier run\n")
    old.chmod(0o644)
    done = system(*FAST_MARKET)
    assert "took group and other permissions off 3 paths" in done.stderr
    wait_for(lambda: newest_bar(home), 60, "a closed bar")
    wait_for(lambda: (home / "db" / "trader.sqlite-wal").exists(), 60, "the trader's journal")
    wait_for(lambda: (home / "state").is_dir(), 60, "a feeder's acked position")
    seen = []
    for top, dirs, files in os.walk(home):
        for name in [".", *dirs, *files]:
            path = os.path.join(top, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            seen.append(os.path.relpath(path, home))
            assert not mode & 0o077, f"{path} is {oct(mode)}"
    expected = {"db/trader.sqlite", "logs/trader.log", "logs/old.log", "endpoints.json"}
    assert expected <= set(seen), seen
    assert any(p.startswith("store/") for p in seen) and len(seen) > 15


def test_a_stopped_supervisor_is_reported_and_its_children_trade_on(home, system):
    system(*FAST_MARKET)
    pid = status(home)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        done = osm(home, "status", "--timeout", "2")
        assert done.returncode != 0
        assert f"supervisor pid {pid}" in done.stderr and "stopped (SIGSTOP?)" in done.stderr
        log = home / "logs" / "router.log"
        wait_for(lambda: f"supervisor pid {pid} is stopped" in log.read_text(), 30, "the router")
        seen = wait_for(lambda: newest_bar(home), 60, "a closed bar")
        wait_for(lambda: newest_bar(home) > seen, 60, "bars closing without the supervisor")
    finally:
        os.kill(pid, signal.SIGCONT)
    router = wait_for(
        lambda: process(home, "router")["counters"].get("supervisor_stopped"), 30, "x"
    )
    assert router == 1 and process(home, "router")["restarts"] == 0
