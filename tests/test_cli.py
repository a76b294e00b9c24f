"""The `osm` command line as a user runs it: real subprocesses, a real detached supervisor."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from osm.core.rundir import RunDir
from osm.live import supervisor
from osm.live.client import alive
from tests.live_helpers import wait_for
from tests.system_helpers import osm, process, running_system, status

FAST_MARKET = ["--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1"]
BRAIN = ["--brain", "osm.strategies.sma_cross:SmaCross", "--param", "fast=3", "--param", "slow=8"]


@pytest.fixture
def system(home):
    yield from running_system(home)


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
    assert int((home / "supervisor.pid").read_text()) == pid
    assert process(home, "router")["pid"] == by_name["router"]["pid"]  # nothing was restarted

    down = osm(home, "down")
    assert down.returncode == 0 and "osm stopped" in down.stdout
    assert not alive(pid)
    assert not (home / "supervisor.pid").exists() and not (home / "endpoints.json").exists()
    assert not any(alive(p["pid"]) for p in by_name.values())
    assert not supervisor.orphans(RunDir(home))
    assert "not running" in osm(home, "down").stdout
    assert "osm up" in one_line_error(osm(home, "status"))


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
        (["frobnicate"], "invalid choice"),
        (["bars", "EUR_USD"], "required"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(home, args, expected):
    assert expected in one_line_error(osm(home, *args))
    assert not (home / "supervisor.pid").exists()


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
    assert all(b["bid_low"] <= b["bid_close"] <= b["bid_high"] < b["ask_high"] for b in bars)
    table = osm(home, "bars", "EUR_USD", "M1", "--count", "2").stdout
    assert "TIME (UTC)" in table and len(table.strip().splitlines()) == 4
    csv_text = osm(home, "bars", "EUR_USD", "M1", "--count", "2", "--csv").stdout
    assert csv_text.splitlines()[0].startswith("time,bid_open,") and len(csv_text.splitlines()) == 3

    def held():
        rows = json.loads(osm(home, "positions", "--json").stdout)
        return [r for r in rows if r["instrument"] == "EUR_USD" and r["units"]]

    assert abs(wait_for(held, 60, "the brain's first position")[0]["units"]) == 10_000
    orders = json.loads(osm(home, "orders", "--json").stdout)
    assert any(o["status"] == "filled" and o["brain"] == "sma_cross" for o in orders)

    assert osm(home, "halt").returncode == 0
    refused = osm(home, "order", "EUR_USD", "1000")
    assert refused.returncode == 1 and "halt" in refused.stderr
    assert osm(home, "resume").returncode == 0
    accepted = osm(home, "order", "EUR_USD", "1000")
    assert accepted.returncode == 0 and "accepted: +1000 EUR_USD" in accepted.stdout

    osm(home, "halt")  # the brain must not reopen what flatten closes
    assert osm(home, "flatten").returncode == 0
    wait_for(lambda: not held(), 60, "flat positions after flatten")


def test_demo_runs_shows_bars_and_a_position_change_and_stops(tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("osm")), "demo", "--seconds", "20"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert len(re.findall(r"^  bar   \d{4}-\d\d-\d\d \d\d:\d\d:00  O 1\.\d{5}", out, re.M)) >= 5
    assert re.search(r"^  position EUR_USD \+0 -> [+-]10000 ", out, re.M), out
    assert "system stopped" in out
    home = Path(re.search(r"run directory (\S+)", out).group(1))
    assert not home.exists()  # the temporary run directory is gone, and its processes with it
    assert not supervisor.orphans(RunDir(home))
