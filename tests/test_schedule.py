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
import subprocess
import sys
import time
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
from osm.live.jobs import HEALTHY_S, Job, JobRunner, JobStore, list_runs, prune_runs
from osm.live.logfiles import LogPump, generations, rotating_handler
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


WRITER = (  # numbered lines, one write each, in bursts: a process logging while rotations happen
    "import os, sys, time\n"
    "for i in range(int(sys.argv[1])):\n"
    "    os.write(1, b'n=%08d\\n' % i)\n"
    "    if i % 10 == 9:\n"
    "        time.sleep(0.0001)\n"
)


def _numbers(path: Path) -> list[int]:
    """The numbers WRITER wrote, as they stand across the log's generations, oldest first."""
    text = "".join(p.read_text() for p in generations(path) if p.exists())
    written = [line for line in text.splitlines() if "n=" in line]
    assert all(re.fullmatch(r"n=\d{8}", line) for line in written), "a line was cut"
    return [int(line[2:]) for line in written]


def test_a_job_log_rotated_many_times_while_its_kernel_writes_loses_no_line(
    home, tmp_path, runners, monkeypatch
):
    # The kernel starts WRITER on the fd the job's log came in through, so a child process
    # writes the log while the runner rotates it.
    monkeypatch.setattr(jobs, "TREE_S", 0.0)  # look at the job at every step
    lines = 100_000
    cell = (
        "import io, subprocess, sys\n"
        "try:\n"
        "    out = sys.stdout.fileno()  # ipykernel's copy of its fd 1, when it captures fd 1\n"
        "except io.UnsupportedOperation:\n"
        "    out = 1  # not captured (so under pytest): fd 1 is the job's log\n"
        f"done = subprocess.run([sys.executable, '-c', {WRITER!r}, '{lines}'], stdout=out,"
        " check=True)"
    )
    notebook = _notebook(tmp_path / "writer.ipynb", [cell])
    runner = runners(home, log_max_bytes=10_000, log_backups=500)
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="n1", notebook=str(notebook)))
    runner.watch()
    run = runner.runs["n1"]
    log = run.output.with_suffix(".log")
    wait_for(_stepped(runner, lambda: run.popen is None), KERNEL_S, "the writer's notebook to end")
    assert (run.state, run.exit_code) == ("exited", 0)

    assert _numbers(log) == list(range(lines))  # each once, in order: none lost, none twice
    files = [p for p in generations(log) if p.exists()]
    assert len(files) > 30  # 100,000 lines of 11 bytes, rotated every 10,000 bytes or so
    assert not log.with_name(f"{log.name}.500").exists()  # none dropped: all are counted
    assert "Ending Cell" in log.read_text()  # papermill's last words, written before the end


def test_the_log_pump_rotates_at_line_ends_and_loses_or_repeats_nothing(tmp_path):
    path = tmp_path / "run.log"
    pump = LogPump(path, max_bytes=1_000, backups=100, log=logging.getLogger("test.pump"))
    try:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, "5000"], stdout=pump.write_fd)
    finally:
        pump.release()
    assert writer.wait(30) == 0
    pump.close()
    assert not pump._thread.is_alive()
    assert _numbers(path) == list(range(5000))
    files = generations(path)
    assert pump.rotations == len(files) - 1 >= 50
    # Every full generation ends at the first line end past 1,000 bytes; the last one is shorter.
    assert all(1_000 <= p.stat().st_size < 1_011 for p in files[:-1])
    assert all(p.read_bytes().endswith(b"\n") for p in files)
    assert all(p.stat().st_mode & 0o077 == 0 for p in files)


def test_the_log_pump_cuts_output_without_line_ends_at_twice_its_size(tmp_path):
    """A progress bar's carriage returns, or binary output, never end a line: one file must not
    grow without bound all the same."""
    path = tmp_path / "run.log"
    pump = LogPump(path, max_bytes=1_000, backups=100, log=logging.getLogger("test.pump"))
    spinner = "import sys\nfor i in range(20_000): sys.stdout.write(f'\\r{i:06d}')"
    try:
        writer = subprocess.Popen([sys.executable, "-c", spinner], stdout=pump.write_fd)
    finally:
        pump.release()
    assert writer.wait(30) == 0
    pump.close()
    files = generations(path)
    assert pump.rotations == len(files) - 1 >= 50
    assert all(p.stat().st_size <= 2_000 for p in files)
    text = b"".join(p.read_bytes() for p in files).decode()
    assert text == "".join(f"\r{i:06d}" for i in range(20_000))  # nothing lost or repeated


def test_the_log_pump_copies_any_byte_and_never_blocks_its_writer(tmp_path):
    path = tmp_path / "run.log"
    pump = LogPump(path, max_bytes=300, backups=100, log=logging.getLogger("test.pump"))
    garbage = bytes(range(256)) * 4  # not UTF-8, NULs, line ends here and there
    try:
        code = f"import os; os.write(1, {garbage!r}); os.write(1, b'no line end')"
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=pump.write_fd)
    finally:
        pump.release()
    assert writer.wait(30) == 0
    pump.close()
    files = generations(path)
    assert len(files) == 2  # rotated at the first line end past 300 bytes (522), once
    assert b"".join(p.read_bytes() for p in files) == garbage + b"no line end"
    assert files[0].read_bytes().endswith(b"\n") and files[0].stat().st_size == 523

    # A log that cannot be written (a full disk): the job's writes are dropped, counted and
    # logged, never left in a pipe that fills up and blocks the job.
    full = LogPump(Path("/dev/full"), max_bytes=2**30, backups=3, log=logging.getLogger("t"))
    try:
        code = "import os\nfor _ in range(64): os.write(1, b'x' * 16383 + b'\\n')"
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=full.write_fd)
    finally:
        full.release()
    assert writer.wait(30) == 0  # 1 MiB through a 64 KiB pipe: it was read all along
    full.close()
    assert full.dropped == 64 * 16384


def test_a_log_pump_left_with_a_writer_stops_when_closed(tmp_path):
    path = tmp_path / "run.log"
    pump = LogPump(path, max_bytes=10_000, backups=3, log=logging.getLogger("test.pump"))
    code = "import os, time; os.write(1, b'before the end\\n'); time.sleep(60)"
    try:
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=pump.write_fd)
    finally:
        pump.release()
    try:
        wait_for(lambda: path.read_bytes() == b"before the end\n", 30, "the first line")
        started = time.monotonic()
        pump.close(timeout_s=0.5)  # a process of the job's that outlived it holds the pipe
        assert not pump._thread.is_alive() and time.monotonic() - started < 3
    finally:
        writer.kill()
        writer.wait()


def brain_log(path: Path, logger: str, count: int, filler: str, backups: int) -> None:
    """Log `count` numbered decisions to `path` as a job's brain does, rotating at 1,000 bytes."""
    handler = rotating_handler(path, max_bytes=1_000, backups=backups)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        for i in range(count):
            log.warning("decision %03d %s", i, filler)
    finally:
        log.removeHandler(handler)
        handler.close()


def test_osm_logs_shows_the_last_lines_across_rotated_files(home, capsys):
    path = RunDir(home).log_path("b1")
    brain_log(path, "test_schedule.logs", 60, "x" * 20, backups=3)
    current = path.read_text().splitlines()
    assert 0 < len(current) < 25 and path.with_name("b1.log.2").exists()  # 25 spans 3 files
    wanted = [f"decision {i:03d} {'x' * 20}" for i in range(35, 60)]

    assert cli.main(["logs", "b1", "--lines", "25", "--home", str(home)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert [line.partition("test_schedule.logs: ")[2] for line in shown] == wanted
    assert shown[-len(current) :] == current

    assert cli.main(["logs", "b1", "--lines", "0", "--home", str(home)]) == 2
    assert "--lines must be at least 1, got 0" in capsys.readouterr().err

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.run_line_magic("load_ext", "osm")
        tail = shell.run_line_magic("osm", f"logs b1 --lines 25 --home {home}")
        assert tail.lines == shown and repr(tail) == "\n".join(shown)
        with pytest.raises(OsmUsageError, match="no log named 'b2'"):
            shell.run_line_magic("osm", f"logs b2 --home {home}")
    finally:
        shell.run_line_magic("unload_ext", "osm")
        InteractiveShell.clear_instance()


def test_the_brain_log_rotates_at_its_limit(tmp_path):
    path = tmp_path / "b1.log"
    brain_log(path, "test_schedule.rotation", 100, "x" * 40, backups=2)
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
