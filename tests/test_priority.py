"""A flat-out replay runs at background priority, every thread of every process; nothing else does,
and the user's own session is never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from osm.core import config as cfg
from osm.live.priority import BACKGROUND_NICE, is_background
from osm.live.service import SUPERVISOR_PID_ENV, started_at
from tests.live_helpers import autogroup_nice, wait_for
from tests.system_helpers import osm, running_system, status

MARKET = ["--start", "2024-03-05T08:00:00Z", "--granularities", "M1"]


@pytest.fixture
def system(home):
    yield from running_system(home)


def config(speed: float = 0, kind: str = "synthetic", **system) -> cfg.SystemConfig:
    feed = {"name": "f", "kind": kind, "speed": speed, "file": "x.csv"}
    return cfg.load(cfg.SystemConfig, {"feeds": [feed], **system})


@pytest.mark.parametrize(
    ("fields", "background"),
    [
        ({}, True),  # synthetic flat out, paper
        ({"kind": "replay"}, True),
        ({"speed": 1}, False),  # paced: a rehearsal of live
        ({"speed": 60}, False),
        ({"kind": "oanda"}, False),  # a live market has no speed
        ({"trader": {"broker": "oanda"}}, False),  # real orders
        ({"priority": "normal"}, False),
        ({"speed": 1, "priority": "background"}, True),
        ({"trader": {"broker": "oanda"}, "priority": "background"}, True),
    ],
)
def test_auto_priority_is_background_only_for_a_flat_out_replay_into_paper(fields, background):
    assert is_background(config(**fields)) is background


def test_a_misspelled_priority_is_refused_with_the_choices():
    with pytest.raises(
        cfg.ConfigError, match="priority must be one of auto, background, normal, got .low."
    ):
        config(priority="low")


def niceness(pid: int) -> set[int]:
    """The nice value of every thread of `pid` (field 19 of /proc/PID/task/TID/stat)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values.add(int(fields[16]))
    return values


linux_only = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
# Already as low as the system would go: nothing the tests see could tell a change.
niced = pytest.mark.skipif(os.nice(0) >= BACKGROUND_NICE, reason="the tests run niced already")


@linux_only
@niced
def test_a_flat_out_replay_runs_every_thread_at_background_priority_and_says_so(system, home):
    mine = os.nice(0), autogroup_nice("self")
    system("--speed", "0", *MARKET)
    state = status(home)
    assert state["priority"] == "background"
    pids = [state["pid"], *(p["pid"] for p in state["processes"])]
    assert len(pids) == 4  # supervisor, router, trader, feeder
    for pid in pids:  # zmq's I/O threads included: each inherits the nice value it started with
        assert niceness(pid) == {BACKGROUND_NICE}, pid
    # The supervisor leads a session of its own, so it has an autogroup wherever they are on.
    assert autogroup_nice(state["pid"]) in (BACKGROUND_NICE, None)
    assert (os.nice(0), autogroup_nice("self")) == mine  # the user's session is left alone
    assert "background priority" in osm(home, "status").stdout


@linux_only
@niced
def test_a_flat_out_replay_asked_for_normal_priority_keeps_it(system, home):
    own = os.nice(0)
    system("--speed", "0", "--priority", "normal", *MARKET)
    state = status(home)
    assert state["priority"] == "normal"
    for pid in [state["pid"], *(p["pid"] for p in state["processes"])]:
        assert niceness(pid) == {own}, pid
    assert "priority" not in osm(home, "status").stdout.splitlines()[0]


def test_the_supervisor_pid_a_job_is_given_is_no_other_process_s_business(system, home):
    """Only a job's brain watches OSM_SUPERVISOR_PID: a system started from inside a job (its
    environment holds a dead pid there) watches its own supervisor."""
    os.environ[SUPERVISOR_PID_ENV] = "999999"
    try:
        system("--speed", "60", *MARKET)
    finally:
        del os.environ[SUPERVISOR_PID_ENV]
    state = status(home)
    assert [p["state"] for p in state["processes"]] == ["running"] * 3


def test_an_exited_process_not_yet_reaped_has_no_start_time():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "a zombie")
        assert started_at(child.pid) is None  # a zombie supervisor is a gone one
    finally:
        child.wait()
    assert started_at(os.getpid()) == psutil.Process().create_time()
