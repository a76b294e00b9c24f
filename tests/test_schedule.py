"""Job windows, restarts and logs under clocks the test controls.

A window is judged by croniter on an injected UTC clock, so the FX week opens and closes in
seconds; the restart cap decays on an injected monotonic clock. The jobs are real papermill runs
of purpose-built notebooks (one that runs until SIGTERM, one whose strategy cell raises), driven
by a :class:`JobRunner` the test steps, as the supervisor's loop would.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from osm.core import wire
from osm.core.errors import ConfigError
from osm.core.rundir import RunDir
from osm.live import cli, jobs
from osm.live.jobs import (
    HEALTHY_S,
    Job,
    JobRunner,
    JobStore,
    list_runs,
    prune_runs,
    rotate,
    rotating_handler,
)
from osm.live.schedule import FX_WEEK, Window, window, window_at
from osm.magics import OsmUsageError
from tests.live_helpers import wait_for

FX = Window(start=FX_WEEK[0], stop=FX_WEEK[1])
SATURDAY = dt.datetime(2024, 3, 2, 12, 0, tzinfo=dt.UTC)
SUNDAY_OPEN = dt.datetime(2024, 3, 3, 21, 0, tzinfo=dt.UTC)
WEDNESDAY = dt.datetime(2024, 3, 6, 12, 0, tzinfo=dt.UTC)
FRIDAY_CLOSE = dt.datetime(2024, 3, 8, 21, 0, tzinfo=dt.UTC)
NEXT_SUNDAY_OPEN = dt.datetime(2024, 3, 10, 21, 0, tzinfo=dt.UTC)
NEXT_FRIDAY_CLOSE = dt.datetime(2024, 3, 15, 21, 0, tzinfo=dt.UTC)
KERNEL_S = 120  # a kernel's start on a shared, busy machine

SLEEPER = [
    "import signal\nimport threading\nfrom pathlib import Path\n\n"
    "stopped = threading.Event()\n"
    "signal.signal(signal.SIGTERM, lambda *_: stopped.set())\n"
    "print('chatter ' * chatter)\n"
    "with open('starts.txt', 'a') as starts:\n"
    "    starts.write(job + '\\n')\n"
    "while not stopped.wait(0.05):\n"
    "    pass",
]
BROKEN = [
    "class Exploding:\n"
    "    def target(self, bars):\n"
    "        raise ZeroDivisionError(f'the strategy blew up at bar {bars}')\n",
    "Exploding().target(42)",
]


def _notebook(path: Path, cells: list[str]) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.metadata["language_info"] = {"name": "python"}
    parameters = nbformat.v4.new_code_cell("job = None\nhome = None\nchatter = 0")
    parameters.metadata["tags"] = ["parameters"]
    summary = nbformat.v4.new_code_cell("print(f'summary: {job} stopped by SIGTERM')")
    summary.metadata["tags"] = ["summary"]
    notebook.cells = [parameters, *map(nbformat.v4.new_code_cell, cells), summary]
    nbformat.write(notebook, path)
    return path


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self, at: object) -> None:
        self.at = at

    def __call__(self) -> object:
        return self.at


@pytest.fixture
def sleeper(tmp_path) -> Path:
    return _notebook(tmp_path / "sleeper.ipynb", SLEEPER)


@pytest.fixture
def broken(tmp_path) -> Path:
    return _notebook(tmp_path / "broken.ipynb", BROKEN)


@pytest.fixture
def runners():
    """JobRunners made by the test, every job of theirs stopped whatever happened."""
    made: list[JobRunner] = []

    def make(home: Path, **kwargs: object) -> JobRunner:
        settings = {"max_restarts": 3, "backoff_s": 0.01, "stall_s": 600.0, **kwargs}
        made.append(JobRunner(RunDir(home), **settings))
        return made[-1]

    yield make
    for runner in made:
        runner.stop_all()


def _starts(home: Path, job: str) -> int:
    path = home / "runs" / job / "starts.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _stepped(runner: JobRunner, check):
    """A wait_for predicate that steps the runner first, as the supervisor's loop does (and
    fails at once on a job failed unexpectedly)."""

    def step():
        runner.watch()
        done = check()
        gone = [f"{n}: {r.reason}" for n, r in runner.runs.items() if r.state == "failed"]
        if gone and not done:
            raise AssertionError(f"a job failed: {gone}")
        return done

    return step


def _stored(home: Path, name: str) -> Job:
    with JobStore(RunDir(home)) as store:
        return store.get(name)


# -- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "is_open", "changes"),
    [
        (SATURDAY, False, SUNDAY_OPEN),
        (SUNDAY_OPEN - dt.timedelta(seconds=1), False, SUNDAY_OPEN),
        (SUNDAY_OPEN, True, FRIDAY_CLOSE),
        (WEDNESDAY, True, FRIDAY_CLOSE),
        (FRIDAY_CLOSE - dt.timedelta(minutes=1), True, FRIDAY_CLOSE),
        (FRIDAY_CLOSE, False, NEXT_SUNDAY_OPEN),
    ],
)
def test_the_fx_week_window_is_open_from_sunday_to_friday_21_utc(at, is_open, changes):
    state = window_at(FX, at)
    assert (state.open, state.changes) == (is_open, changes)
    assert state.opened == (SUNDAY_OPEN if is_open else None)


@pytest.mark.parametrize(
    ("start", "stop", "says"),
    [
        ("0 25 * * 0", "0 21 * * 5", "--start '0 25 * * 0' is not a cron expression croniter"),
        ("0 21 * * 0", "0 21", "--stop '0 21' is not a cron expression of five fields"),
        ("0 21 * * 0 *", "0 21 * * 5", "e.g. '0 21 * * 0': quote it as one argument"),
        ("0 0 30 2 *", "0 21 * * 5", "--start '0 0 30 2 *' is not a cron expression croniter"),
        ("0 21 * * 0", "0  21 * * 0", "both '0 21 * * 0', so the window never opens"),
    ],
)
def test_a_bad_window_is_refused_with_how_to_write_one(start, stop, says):
    with pytest.raises(ConfigError) as refused:
        window(start, stop)
    assert says in str(refused.value)


def test_a_window_starts_and_stops_a_job_and_a_crash_after_the_close_is_not_restarted(
    home, sleeper, runners
):
    now = Clock(SATURDAY)
    runner = runners(home, now=now, log_max_bytes=2_000)
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="w1", notebook=str(sleeper), parameters={"chatter": 600}, schedule=FX))

    runner.watch()  # Saturday: the market is shut
    run = runner.runs["w1"]
    assert (run.state, run.popen) == ("waiting", None)
    assert _stored(home, "w1").reason == "its window is closed; opens 2024-03-03 21:00 UTC"

    now.at = SUNDAY_OPEN
    runner.watch()
    assert run.state == "starting" and run.popen is not None
    wait_for(_stepped(runner, lambda: _starts(home, "w1") == 1), KERNEL_S, "the first start")
    first = run.output
    wait_for(
        _stepped(runner, lambda: first.with_suffix(".log.1").exists()),
        30,
        "papermill's log, 600 chatters long, rotated at 2000 bytes",
    )
    assert "chatter chatter" in first.with_suffix(".log.1").read_text()

    now.at = WEDNESDAY
    runner.watch()
    assert run.popen is not None  # open all week

    now.at = FRIDAY_CLOSE
    runner.watch()  # stops it: SIGTERM, the summary cell, papermill exits 0
    assert (run.state, run.popen, run.exit_code, run.restarts) == ("waiting", None, 0, 0)
    assert _stored(home, "w1").reason == "its window closed; opens 2024-03-10 21:00 UTC"
    [stopped] = list_runs(RunDir(home), "w1")
    assert (stopped["exit_code"], stopped["error"]) == (0, None)
    cells = json.loads(first.read_text())["cells"]
    summary = next(c for c in cells if "summary" in c["metadata"].get("tags", []))
    assert "".join(summary["outputs"][0]["text"]) == "summary: w1 stopped by SIGTERM\n"
    runner.watch()
    assert run.popen is None and _starts(home, "w1") == 1  # closed stays closed

    now.at = NEXT_SUNDAY_OPEN
    runner.watch()
    assert run.popen is not None and run.output != first
    wait_for(
        _stepped(runner, lambda: _starts(home, "w1") == 2 and run.tree),
        KERNEL_S,
        "the second start, its kernel remembered",
    )
    tree = [psutil.Process(pid) for pid in run.tree]
    os.killpg(run.popen.pid, signal.SIGKILL)
    run.popen.wait()
    now.at = NEXT_FRIDAY_CLOSE + dt.timedelta(seconds=30)  # the crash is seen after the close
    runner.watch()
    assert (run.state, run.popen, run.restarts) == ("waiting", None, 0)
    assert _stored(home, "w1").reason == (
        "papermill was killed by SIGKILL after its window; opens 2024-03-17 21:00 UTC"
    )
    assert psutil.wait_procs(tree, timeout=10)[1] == []  # the kernel went with papermill
    for _ in range(20):
        runner.watch()
    assert run.popen is None and len(list_runs(RunDir(home), "w1")) == 2


def test_a_window_given_or_cleared_while_the_job_runs_is_acted_on(home, sleeper, runners):
    runner = runners(home, now=Clock(SATURDAY))
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="c1", notebook=str(sleeper)))
        runner.watch()
        run = runner.runs["c1"]
        wait_for(_stepped(runner, lambda: _starts(home, "c1") == 1), KERNEL_S, "the start")

        store.schedule("c1", FX)  # closed on Saturdays
        wait_for(_stepped(runner, lambda: run.state == "waiting"), 30, "the job stopped")
        assert (run.popen, run.exit_code, run.restarts) == (None, 0, 0)

        store.schedule("c1", None)  # runs whenever enabled again
        wait_for(_stepped(runner, lambda: _starts(home, "c1") == 2), KERNEL_S, "the restart")
        assert run.state == "starting" and run.restarts == 0
    assert [r["exit_code"] for r in list_runs(RunDir(home), "c1")] == [0, None]


def test_the_restart_cap_decays_after_a_healthy_period(home, broken, runners):
    clock = Clock(1_000.0)
    now = Clock(WEDNESDAY)
    runner = runners(home, max_restarts=1, clock=clock, now=now)
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="d1", notebook=str(broken), schedule=FX))

    def crashed(restarts: int) -> None:
        wait_for(lambda: run.popen.poll() is not None, KERNEL_S, "the strategy cell to raise")
        runner.watch()
        assert (run.state, run.restarts) == ("backoff", restarts)
        clock.at += 1.0  # past the backoff
        runner.watch()
        assert (run.state, run.restarts) == ("starting", restarts + 1)  # in its window: again

    runner.watch()
    run = runner.runs["d1"]
    assert run.state == "starting"
    crashed(0)
    assert run.recent == 1  # one restart toward the cap of one

    beat = {"process": "d1", "pid": run.popen.pid, "time_ns": 0, "started_ns": 0}
    clock.at += HEALTHY_S + 1  # a kernel slow to start...
    runner.heartbeat(wire.Heartbeat(**beat, token=run.token))
    runner.watch()
    assert (run.state, run.recent) == ("running", 1)  # ...is not a healthy one
    clock.at += HEALTHY_S + 1  # beating for longer than HEALTHY_S
    runner.heartbeat(wire.Heartbeat(**beat, token=run.token))
    runner.watch()
    assert (run.state, run.recent) == ("running", 0)  # forgiven
    crashed(1)  # so a second crash is restarted, the cap of one notwithstanding

    wait_for(lambda: run.popen.poll() is not None, KERNEL_S, "the third crash")
    runner.watch()  # no healthy period this time: the cap holds
    assert (run.state, run.restarts, run.popen) == ("failed", 2, None)
    assert run.reason == "ZeroDivisionError: the strategy blew up at bar 42"
    clock.at += 60.0
    runner.watch()
    assert run.state == "failed" and len(list_runs(RunDir(home), "d1")) == 3
    now.at = FRIDAY_CLOSE
    runner.watch()
    assert run.state == "failed"  # the window closes: nothing to stop, nothing started
    now.at = NEXT_SUNDAY_OPEN  # a new window is a new session: tried again, the cap afresh
    runner.watch()
    assert (run.state, run.recent) == ("starting", 0)
    crashed(2)  # and restarted once more within it


def test_a_broken_notebook_is_restarted_to_the_cap_then_failed_with_its_error_shown(
    home, broken, runners, capsys
):
    runner = runners(home, max_restarts=2)
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="b1", notebook=str(broken)))
    run = wait_for(
        _stepped(runner, lambda: runner.runs["b1"].state == "failed" and runner.runs["b1"]),
        3 * KERNEL_S,
        "the job to fail three times",
    )
    error = "ZeroDivisionError: the strategy blew up at bar 42"
    assert (run.restarts, run.reason) == (2, error)

    assert cli.main(["jobs", "--home", str(home)]) == 0
    listed = capsys.readouterr().out
    row = next(line for line in listed.splitlines() if line.startswith("b1 "))
    assert f"failed ({error})" in row and " always " in row

    runs = list_runs(RunDir(home), "b1")
    assert [(r["exit_code"] != 0, r["error"]) for r in runs] == [(True, error)] * 3
    cells = json.loads(Path(runs[-1]["notebook"]).read_text())["cells"]
    [failed] = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert (failed["ename"], failed["evalue"]) == ("ZeroDivisionError", error.partition(": ")[2])
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(failed["traceback"]))  # no colours
    assert "raise ZeroDivisionError(f'the strategy blew up at bar {bars}')" in traceback
    assert cells[-1]["outputs"] == []  # the summary never ran


# -- the command line and the magic ----------------------------------------------------------


def test_osm_schedule_sets_lists_and_clears_a_window(home, monkeypatch, capsys):
    monkeypatch.setattr(jobs, "utc_now", lambda: SATURDAY)
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="b1", notebook="live_brain"))
        store.add(Job(name="nightly", notebook="live_brain"))
    fx = ["--start", FX_WEEK[0], "--stop", FX_WEEK[1]]
    assert cli.main(["schedule", "b1", *fx, "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("job b1: window set")
    assert out.splitlines()[2].split() == [
        "b1", *FX_WEEK[0].split(), *FX_WEEK[1].split(), "closed", "2024-03-03", "21:00:00"
    ]  # fmt: skip
    assert out.splitlines()[3].split()[:4] == ["nightly", "always", "(no", "window)"]
    assert _stored(home, "b1").schedule == FX

    assert cli.main(["jobs", "--home", str(home)]) == 0
    assert "0 21 * * 0 .. 0 21 * * 5 (closed)" in capsys.readouterr().out

    assert cli.main(["schedule", "b1", "--start", "0 21 * * 0", "--home", str(home)]) == 2
    assert "needs both --start and --stop, e.g. the FX week" in capsys.readouterr().err
    assert cli.main(["schedule", "b1", "--start", "0 21", "--stop", "x", "--home", str(home)]) == 2
    assert "--start '0 21' is not a cron expression of five fields" in capsys.readouterr().err
    assert cli.main(["schedule", "b2", "--clear", "--home", str(home)]) == 2
    assert "unknown job 'b2'" in capsys.readouterr().err
    assert _stored(home, "b1").schedule == FX  # a refusal changes nothing

    assert cli.main(["schedule", "b1", "--clear", "--home", str(home)]) == 0
    assert _stored(home, "b1").schedule is None


def test_the_schedule_magic_is_the_command(home, monkeypatch):
    monkeypatch.setattr(jobs, "utc_now", lambda: WEDNESDAY)
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="b1", notebook="live_brain"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.run_line_magic("load_ext", "osm")
        fx = f"--start '{FX_WEEK[0]}' --stop '{FX_WEEK[1]}'"
        frame = shell.run_line_magic("osm", f"schedule b1 {fx} --home {home}")
        assert isinstance(frame, pd.DataFrame)
        assert frame.loc["b1", "schedule"] == {"start": FX_WEEK[0], "stop": FX_WEEK[1]}
        assert bool(frame.loc["b1", "window_open"]) is True
        assert frame.loc["b1", "next_close"] == FRIDAY_CLOSE.isoformat()
        with pytest.raises(OsmUsageError, match="%osm schedule b1 needs --start CRON"):
            shell.run_line_magic("osm", f"schedule b1 --home {home}")
        with pytest.raises(OsmUsageError, match="not a cron expression of five fields"):
            shell.run_line_magic("osm", f"schedule b1 --start 0 --stop '0 21 * * 5' --home {home}")
    finally:
        shell.run_line_magic("unload_ext", "osm")
        InteractiveShell.clear_instance()


# -- logs ------------------------------------------------------------------------------------


def test_a_log_past_its_limit_rotates_and_the_writer_writes_on(tmp_path):
    path = tmp_path / "run.log"
    with open(path, "ab", buffering=0) as writer:  # as papermill's stdout holds it
        writer.write(b"a" * 150)
        assert rotate(path, max_bytes=200, backups=2) is False
        writer.write(b"b" * 100)
        assert rotate(path, max_bytes=200, backups=2) is True
        writer.write(b"c" * 10)
        for letter in b"de":
            writer.write(bytes([letter]) * 300)
            assert rotate(path, max_bytes=200, backups=2) is True
    assert path.read_bytes() == b""
    assert path.with_name("run.log.1").read_bytes() == b"e" * 300
    assert path.with_name("run.log.2").read_bytes() == b"c" * 10 + b"d" * 300
    assert not path.with_name("run.log.3").exists()  # the oldest ("a" and "b") dropped: two kept


def test_the_brain_log_rotates_at_its_limit(tmp_path):
    path = tmp_path / "b1.log"
    handler = rotating_handler(path, max_bytes=1_000, backups=2)
    log = logging.getLogger("test_schedule.rotation")
    log.addHandler(handler)
    try:
        for i in range(100):
            log.warning("decision %03d %s", i, "x" * 40)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1.log", "b1.log.1", "b1.log.2"]
    assert all(p.stat().st_size <= 1_000 for p in tmp_path.iterdir())
    assert "decision 099" in path.read_text()


def test_only_the_newest_runs_are_kept(tmp_path):
    stamps = [f"20261130T1200{s:02d}.000000Z" for s in range(5)]
    for stamp in stamps:
        for suffix in (".ipynb", ".parameters.json", ".log", ".log.1", ".result.json"):
            (tmp_path / f"{stamp}{suffix}").write_text("x")
    (tmp_path / "params_schedule.json").write_text("{}")  # not a run's: stays
    assert prune_runs(tmp_path, keep=2) == 3
    left = sorted(p.name for p in tmp_path.iterdir())
    kept = sorted(f"{s}{x}" for s in stamps[-2:] for x in (".ipynb", ".parameters.json", ".log",
                                                           ".log.1", ".result.json"))  # fmt: skip
    assert left == sorted([*kept, "params_schedule.json"])
    assert prune_runs(tmp_path, keep=2) == 0
