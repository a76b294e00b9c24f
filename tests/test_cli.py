"""The `osm` command line as a user runs it: real subprocesses, a real detached supervisor."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osm.core.rundir import RunDir
from osm.live import supervisor
from osm.live.client import alive
from tests.conftest import ROOT
from tests.generated_data import synthetic_ticks
from tests.live_helpers import wait_for
from tests.system_helpers import (
    OSM,
    UP_TIMEOUT_S,
    osm,
    process,
    running_system,
    status,
    stop,
    write_config,
)

FAST_MARKET = ["--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1"]
BRAIN = ["--brain", "osm.strategies.sma_cross:SmaCross", "--param", "fast=3", "--param", "slow=8"]


@pytest.fixture
def system(home):
    yield from running_system(home)


def osm_in(folder: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``osm ARGS --home HOME`` from `folder`, as a user in that folder would."""
    command = [str(OSM)] if OSM.exists() else [sys.executable, "-m", "osm.live.cli"]
    return subprocess.run(
        [*command, *args, "--home", str(home)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        env={**os.environ, "OSM_HOME": "/nonexistent-osm-home"},
    )


def write_ticks(path: Path, start: str, minutes: int) -> Path:
    """A CSV of the synthetic market's EUR_USD ticks (time_utc, bid, ask) from `start`."""
    end = (dt.datetime.fromisoformat(start) + dt.timedelta(minutes=minutes)).isoformat()
    synthetic_ticks(start, end).to_csv(path, index=False)
    return path


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The stderr of a refused command, checked to be one line and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def test_up_status_down_and_a_second_up_attaches(home, system):
    started = system()
    assert "osm started in" in started.stdout
    pid = int((home / "supervisor.pid").read_text())

    listed = osm(home, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["pid"] == pid and report["transport"] == "ipc" and not report["curve"]
    by_name = {p["name"]: p for p in report["processes"]}
    assert set(by_name) == {"router", "trader", "synthetic"}
    for p in by_name.values():
        assert p["state"] == "running" and alive(p["pid"]) and p["restarts"] == 0
        assert p["heartbeat_age_s"] is not None and p["uptime_s"] > 0
        assert p["rejected"] == 0 and isinstance(p["messages"], int)
    table = osm(home, "status").stdout
    assert "RESTARTS" in table and re.search(r"^router\s+router\s+running", table, re.M)

    again = osm(home, "up")
    assert again.returncode == 0, again.stderr
    assert (
        f"already running in {RunDir(home).home} (supervisor pid {pid}); attached" in again.stdout
    )
    assert "ignored" not in again.stderr  # no flags, nothing ignored
    assert int((home / "supervisor.pid").read_text()) == pid
    assert process(home, "router")["pid"] == by_name["router"]["pid"]  # nothing was restarted

    flagged = osm(home, "up", "--speed", "60", "--granularities", "S5", "M1", "--fresh")
    assert flagged.returncode == 0, flagged.stderr
    assert "ignored --speed 60 --granularities S5 M1 --fresh" in flagged.stderr
    assert "`osm down" in flagged.stderr and "first" in flagged.stderr
    assert process(home, "router")["pid"] == by_name["router"]["pid"]
    assert not (home / "old").exists()  # --fresh did not touch the running system

    down = osm(home, "down")
    assert down.returncode == 0 and "osm stopped" in down.stdout
    assert not alive(pid)
    assert not (home / "supervisor.pid").exists() and not (home / "endpoints.json").exists()
    assert not any(alive(p["pid"]) for p in by_name.values())
    assert not supervisor.orphans(RunDir(home))
    assert "not running" in osm(home, "down").stdout
    assert "osm up" in one_line_error(osm(home, "status"))


def test_down_on_a_missing_folder_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "home"
    done = osm(missing, "down")
    assert done.returncode == 0 and "not running" in done.stdout
    assert not (tmp_path / "no").exists()
    assert "osm up" in one_line_error(osm(missing, "status"))
    assert not (tmp_path / "no").exists()


def test_a_stale_pid_file_is_cleaned_up(home, system):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "supervisor.pid").write_text(f"{dead.pid}\n")
    (home / "endpoints.json").write_text(json.dumps({"supervisor_control": "ipc:///nowhere"}))

    assert "died" in one_line_error(osm(home, "status"))
    assert "not running" in osm(home, "down").stdout  # down cleans up what is left
    assert not (home / "supervisor.pid").exists() and not (home / "endpoints.json").exists()

    (home / "supervisor.pid").write_text(f"{dead.pid}\n")
    assert "osm started in" in system().stdout
    pid = int((home / "supervisor.pid").read_text())
    assert pid != dead.pid and status(home)["pid"] == pid


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status"], "osm up"),
        (["bars", "EUR_USD", "m1"], "Did you mean 'M1'"),
        (["bars", "EURUSD", "M1"], "Did you mean 'EUR_USD'"),
        (["up", "--feed", "replay"], "file"),
        (["up", "--feed", "replay", "--file", "/nonexistent.csv"], "no such file"),
        (["up", "--instrument", "EUR_XYZ"], "unknown instrument"),
        (["up", "--granularities", "M3"], "unknown granularity"),
        (["up", *BRAIN[:2], "--param", "fats=3"], "Did you mean 'fast'"),
        (["up", "--brain", "osm.strategies.nope:Nope"], "cannot import strategy module"),
        (["up", "--transport", "tcp", "--host", "0.0.0.0"], "osm keys"),
        (["up", "--feed", "replai"], "unknown source 'replai'. Did you mean 'replay'?"),
        (["up", "--speed", "-1"], "feeds[0].speed must be >= 0"),
        (["up", *BRAIN, "--size", "0"], "brains[0].size must be >= 1 (units at target 1.0)"),
        (
            ["up", *BRAIN, "--granularities", "S5", "--brain-granularity", "M1"],
            "the router builds only S5; add M1 to router.granularities",
        ),
        (["frobnicate"], "invalid choice"),
        (["bars", "EUR_USD"], "required"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(home, args, expected):
    try:
        assert expected in one_line_error(osm(home, *args))
        assert not (home / "supervisor.pid").exists()
    finally:
        stop(home)  # a mistake let through must not leave a system running


def test_a_config_file_mistake_names_the_field_path(home):
    config = write_config(home, trader={"risk": {"max_ordr": 5}})
    error = one_line_error(osm(home, "up", "--config", str(config)))
    assert "unknown field `trader.risk.max_ordr`. Did you mean 'max_order'?" in error
    config = write_config(home, trader={"risk": {"max_order": -5}})
    assert "trader.risk.max_order must be >= 1" in one_line_error(
        osm(home, "up", "--config", str(config))
    )
    assert not (home / "supervisor.pid").exists()


def test_a_file_that_is_not_ticks_or_bars_is_refused_before_anything_starts(home, tmp_path):
    ohlc = tmp_path / "ohlc.csv"
    ohlc.write_text("time,open,high,low,close\n2024-03-05T08:00:00Z,1.1,1.2,1.0,1.15\n")
    for path in (ROOT / "README.md", ohlc):
        began = time.monotonic()
        error = one_line_error(osm(home, "up", "--feed", "replay", "--file", str(path)))
        assert f"feed 'replay' (replay, {path})" in error
        assert time.monotonic() - began < 30  # no 90 s wait for processes that never come up
        assert not (home / "supervisor.pid").exists() and not (home / "logs").exists()
        assert not supervisor.orphans(RunDir(home))


STRATEGY = """
import numpy as np

from osm.strategies import Param, Strategy


class Flip(Strategy):
    every = Param(2, low=1, high=100)

    def target(self, bars, ind):
        return np.where((bars.time // 60_000_000_000 // self.every) % 2 == 0, 1.0, -1.0)
"""

REFUSES_LIVE = """
import sys

import numpy as np

from osm.core.errors import ConfigError
from osm.strategies import Strategy


class NeedsKeys(Strategy):
    def check(self):
        # Passes the check in `osm up`, refuses in the brain process: a mistake only it can see.
        if getattr(sys.modules["__main__"].__spec__, "name", "") == "osm.live.process":
            raise ConfigError("no signal keys here; put them in keys/signal.key")

    def target(self, bars, ind):
        return np.zeros(len(bars.close))
"""


def test_a_strategy_in_the_current_folder_runs_as_a_brain(home, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "mine.py").write_text(STRATEGY)
    try:
        done = osm_in(folder, home, "up", *FAST_MARKET, "--brain", "mine:Flip")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads((home / "config.json").read_text())["python_path"] == [str(folder)]
        brain = wait_for(lambda: process(home, "mine")["messages"], 60, "bars reaching the brain")
        assert brain and process(home, "mine")["restarts"] == 0
        assert process(home, "mine")["state"] == "running"
    finally:
        stop(home)
    # Elsewhere the module is not found, and `osm up` says so before anything starts.
    assert "cannot import strategy module 'mine'" in one_line_error(
        osm_in(tmp_path, home, "up", *FAST_MARKET, "--brain", "mine:Flip")
    )


def test_a_process_that_cannot_run_as_configured_stops_the_start(home, tmp_path):
    (tmp_path / "refuses.py").write_text(REFUSES_LIVE)
    try:
        done = osm_in(tmp_path, home, "up", *FAST_MARKET, "--brain", "refuses:NeedsKeys")
        error = one_line_error(done)
        assert "brain refuses cannot run as configured, so the system was stopped" in error
        assert "no signal keys here; put them in keys/signal.key" in error
        assert not (home / "supervisor.pid").exists() and not supervisor.orphans(RunDir(home))
        log = (home / "logs" / "refuses.log").read_text()
        assert log.count("cannot start") == 1  # refused once, never restarted
        told = (home / "logs" / "supervisor.log").read_text()
        assert "brain refuses cannot run as configured; not restarted" in told
    finally:
        stop(home)


def test_a_replay_into_a_run_directory_with_newer_ticks_is_refused_until_fresh(home, tmp_path):
    newer = write_ticks(tmp_path / "newer.csv", "2024-03-05T08:00:00+00:00", 4)
    older = write_ticks(tmp_path / "older.csv", "2024-03-04T08:00:00+00:00", 4)
    replay = ["--feed", "replay", "--speed", "0", "--granularities", "M1"]
    try:
        assert osm(home, "up", *replay, "--file", str(newer)).returncode == 0
        wait_for(lambda: process(home, "replay")["counters"].get("finished"), 60, "the replay")
        osm(home, "down")

        # The same feed with another file: its saved position belongs to the first one.
        error = one_line_error(osm(home, "up", *replay, "--file", str(older)))
        assert "feed 'replay' has a new source" in error and "osm up --fresh" in error
        # A new feed whose ticks are older than the router's: each would be out of order.
        error = one_line_error(osm(home, "up", "--start", "2024-03-04T08:00:00Z"))
        assert "starts at 2024-03-04T08:00:00Z but" in error
        assert "already has EUR_USD ticks up to 2024-03-05T08:03:" in error
        assert "out of order" in error and "--home DIR" in error and "--fresh" in error
        assert not (home / "supervisor.pid").exists()

        # --fresh sets nothing aside for a system that would not start anyway.
        one_line_error(osm(home, "up", *replay, "--file", str(ROOT / "README.md"), "--fresh"))
        assert not (home / "old").exists() and (home / "store").exists()

        done = osm(home, "up", *replay, "--file", str(older), "--fresh")
        assert done.returncode == 0, done.stdout + done.stderr
        old = next((home / "old").iterdir())
        assert f"the previous run's bars, feed positions and orders are in {old}" in done.stdout
        assert {p.name for p in old.iterdir()} >= {"store", "state"}
        wait_for(lambda: process(home, "replay")["counters"].get("finished"), 60, "the replay")
        bars = json.loads(osm(home, "bars", "EUR_USD", "M1", "--count", "10", "--json").stdout)
        assert [b["time"] for b in bars] == [f"2024-03-04T08:0{m}:00Z" for m in range(3)]
        assert process(home, "replay")["rejected"] == 0
    finally:
        stop(home)


def test_keys_are_written_private_and_not_replaced_silently(home):
    done = osm(home, "keys")
    assert done.returncode == 0, done.stderr
    keys = home / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    before = (keys / "server.key_secret").read_bytes()
    assert "--force" in one_line_error(osm(home, "keys"))
    assert (keys / "server.key_secret").read_bytes() == before
    assert osm(home, "keys", "--force").returncode == 0
    assert (keys / "server.key_secret").read_bytes() != before


def test_bars_orders_positions_halt_resume_flatten(home, system):
    system(*FAST_MARKET, *BRAIN)

    def closed_bars():
        done = osm(home, "bars", "EUR_USD", "M1", "--count", "3", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if len(json.loads(done.stdout)) == 3 else None

    bars = wait_for(closed_bars, 60, "three closed M1 bars")
    assert [b["complete"] for b in bars] == [True] * 3
    assert [b["time"] for b in bars] == sorted(b["time"] for b in bars)
    for b in bars:  # ISO-8601 UTC, at a minute's open, in the simulated March 2024
        assert re.fullmatch(r"2024-03-05T08:\d\d:00Z", b["time"]), b["time"]
    assert all(b["bid_low"] <= b["bid_close"] <= b["bid_high"] < b["ask_high"] for b in bars)
    table = osm(home, "bars", "EUR_USD", "M1", "--count", "2").stdout
    assert "TIME (UTC)" in table and len(table.strip().splitlines()) == 4
    csv_text = osm(home, "bars", "EUR_USD", "M1", "--count", "2", "--csv").stdout
    assert csv_text.splitlines()[0].startswith("time,bid_open,") and len(csv_text.splitlines()) == 3
    assert re.match(r"2024-03-05T08:\d\d:00Z,1\.\d+,", csv_text.splitlines()[1])

    def held():
        rows = json.loads(osm(home, "positions", "--json").stdout)
        return [r for r in rows if r["instrument"] == "EUR_USD" and r["units"]]

    assert abs(wait_for(held, 60, "the brain's first position")[0]["units"]) == 10_000
    orders = json.loads(osm(home, "orders", "--json").stdout)
    assert any(o["status"] == "filled" and o["brain"] == "sma_cross" for o in orders)

    assert osm(home, "halt").returncode == 0
    refused = osm(home, "order", "EUR_USD", "1000")
    assert refused.returncode == 1 and "halt" in refused.stderr
    assert "TRADING HALTED (halted by command)" in osm(home, "status").stdout
    report = json.loads(osm(home, "status", "--json").stdout)
    assert (report["halted"], report["halt_reason"]) == (True, "halted by command")

    # The halt is in the trader's journal: it outlives the system, and `osm up` says so.
    assert osm(home, "down").returncode == 0
    again = system(*FAST_MARKET, *BRAIN)
    assert "TRADING HALTED (halted by command)" in again.stdout and "osm resume" in again.stdout
    assert osm(home, "resume").returncode == 0
    report = json.loads(osm(home, "status", "--json").stdout)
    assert (report["halted"], report["halt_reason"]) == (False, "")
    assert "HALTED" not in osm(home, "status").stdout
    accepted = osm(home, "order", "EUR_USD", "1000")
    assert accepted.returncode == 0 and "accepted: +1000 EUR_USD" in accepted.stdout
    client_id = accepted.stdout.split()[1]

    def status_of(client_id: str) -> str:
        orders = json.loads(osm(home, "orders", "--json").stdout)
        return next(o["status"] for o in orders if o["client_id"] == client_id)

    wait_for(lambda: status_of(client_id) == "filled", 30, "the order filled")
    late = osm(home, "cancel", client_id)  # filled already: nothing to cancel
    assert late.returncode == 1 and f"order {client_id!r} is filled, not open" in late.stderr
    unknown = osm(home, "cancel", "no-such-order", "--json")
    assert unknown.returncode == 1 and "no order 'no-such-order'" in unknown.stderr
    assert json.loads(unknown.stdout)["cancelled"] is False

    osm(home, "halt")  # the brain must not reopen what flatten closes
    assert osm(home, "flatten").returncode == 0
    wait_for(lambda: not held(), 60, "flat positions after flatten")
