"""Jobs: notebooks the supervisor runs with papermill (live brains first), and their store.

**The store** is ``db/jobs.sqlite`` in the run directory (SQLite, WAL): one row per job with its
notebook, its papermill parameters (JSON), an optional window (:mod:`osm.live.schedule`: a start
and a stop cron), whether it is enabled, and what the supervisor last said of it (state, restarts,
reason). The command line (``osm promote``, ``osm jobs``, ``osm schedule``) writes it while the
system runs; the supervisor reads it every RELOAD_S, so a job added, stopped, rescheduled or
removed is acted on within a second.

**The runner** (:class:`JobRunner`, driven by the supervisor's loop) starts each enabled job as
``python -m papermill NOTEBOOK runs/JOB/STAMP.ipynb -f runs/JOB/STAMP.parameters.json`` in a
process group of its own, papermill's output (and its kernel's) in ``runs/JOB/STAMP.log`` through
a :class:`~osm.live.logfiles.LogPump`. The run directory and the job's name are injected as the
parameters ``home`` and ``job``; each incarnation gets a fresh secret in ``OSM_PROCESS_TOKEN``,
which papermill's kernel inherits: the brain in the kernel heartbeats with it,
and the runner knows the beat for the job's by that token alone (the kernel is a grandchild, in a
session jupyter_client made for it, so neither its pid nor its process group is the job's). The
supervisor's pid, in ``OSM_SUPERVISOR_PID``, is what the brain watches: it stops when the
supervisor is gone, as every process of the system does.

The job's process tree (papermill, the kernel, anything the kernel starts) is looked up every
TREE_S and remembered; stopping a job sends SIGTERM to everything below papermill (the brain ends
its loop, the summary cell runs, papermill writes the output notebook and exits), then SIGKILL to
whatever of the remembered tree is left after STOP_GRACE_S, so no kernel outlives its job, even
when papermill itself was killed.

A job that exits non-zero, or stops heartbeating, is restarted after an exponential backoff, at
most ``max_restarts`` times in a row: a job that then beats for HEALTHY_S (counted from its first
heartbeat, not from its start: a slow kernel start is not health) has the count of its restarts
toward the cap reset, so a brain that crashes once a day is never given up. A job
whose notebook failed with a configuration error (a missing or wrong parameter) would fail again
and is marked failed at once, with the error as its reason.

**A window** makes a job run only while it is open: the runner starts the job when it opens (once
per opening: a job that finishes inside its window waits for the next), stops it as it closes
(the same SIGTERM as `osm jobs stop`, so the summary is written and papermill exits 0; the job is
then ``waiting``), restarts a crash only while the window is open and leaves a crash after the
close to the next opening. Windows are judged on ``now()``, an injectable UTC clock; backoff and
heartbeats on the monotonic ``clock``.

**Logs** go through a :class:`~osm.live.logfiles.LogPump` and rotate without losing a line
(:mod:`osm.live.logfiles`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hmac
import json
import logging
import logging.handlers
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil

from osm.core import wire
from osm.core.errors import CONFIG_ERRORS, ConfigError, UnknownNameError
from osm.core.rundir import RunDir, write_atomic
from osm.live.logfiles import LOG_BACKUPS, LOG_MAX_BYTES, LogPump, tail
from osm.live.schedule import Window, WindowState, window_at
from osm.live.schedule import window as checked_window
from osm.live.service import PROCESS_TOKEN_ENV, SUPERVISOR_PID_ENV

RELOAD_S = 1.0  # how often the store is read for added, stopped and removed jobs
TREE_S = 1.0  # how often a job's process tree is looked up
STARTUP_GRACE_S = 180.0  # papermill, a kernel, numba and pandas imports and the warm-up
STOP_GRACE_S = 15.0  # SIGTERM to SIGKILL: time for the summary cell and the output notebook
HEALTHY_S = 30.0  # a job beating this long has its restarts toward the cap forgiven
BACKOFF_CAP_S = 30.0
KEEP_RUNS = 100  # archived runs kept per job; older ones are deleted as a new one starts
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
_CONFIG_ERROR_NAMES = {cls.__name__ for cls in CONFIG_ERRORS} | {"UsageError"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    notebook TEXT NOT NULL,
    parameters TEXT NOT NULL,
    schedule TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'registered',
    restarts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
"""


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the store holds it."""

    name: str
    notebook: str  # a notebook shipped in osm.live.notebooks by stem ("live_brain"), or a path
    parameters: dict[str, Any] = {}
    schedule: Window | None = None  # runs only while open; None: whenever enabled
    enabled: bool = True
    state: str = "registered"  # what the supervisor last said: see JobRunner
    restarts: int = 0
    reason: str = ""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"a job name is a letter then up to 63 letters, digits, '_' or '-', got {name!r}"
        )
    return name


def notebook_path(notebook: str) -> Path:
    """The file of a job's notebook: a shipped one by stem, else the path itself."""
    shipped = NOTEBOOKS / f"{notebook}.ipynb"
    if "/" not in notebook and shipped.exists():
        return shipped
    path = Path(notebook).expanduser()
    if not path.is_file():
        names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
        raise UnknownNameError("notebook (a shipped one, or a path to an .ipynb)", notebook, names)
    return path.resolve()


class JobStore:
    """The jobs table of one run directory; open, use and close it in one thread."""

    def __init__(self, rundir: RunDir) -> None:
        self.path = rundir.db / "jobs.sqlite"
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # private, whatever the umask
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add(self, job: Job, replace: bool = False) -> None:
        """Register `job`; with `replace`, a job of that name is replaced (and enabled), keeping
        its window unless `job` gives one."""
        check_name(job.name)
        notebook_path(job.notebook)
        existing = self.get(job.name)
        if existing is not None and not replace:
            raise ConfigError(
                f"a job named {job.name!r} exists; remove it (osm jobs remove {job.name}) or "
                "pass --replace"
            )
        window = job.schedule or (existing.schedule if existing else None)
        if window is not None:
            window = checked_window(window.start, window.stop)
        now = time.time_ns()
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (name, notebook, parameters, schedule, enabled, state, "
            "restarts, reason, created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, 'registered', 0, '',"
            " ?, ?)",
            (
                job.name,
                job.notebook,
                json.dumps(job.parameters),
                _encode_window(window),
                int(job.enabled),
                now,
                now,
            ),
        )

    def remove(self, name: str) -> None:
        if self._db.execute("DELETE FROM jobs WHERE name = ?", (name,)).rowcount == 0:
            raise UnknownNameError("job", name, [j.name for j in self.list()])

    def enable(self, name: str, enabled: bool) -> None:
        """Start (`enabled`) or stop a job; starting one also clears its restarts and reason."""
        sql = "UPDATE jobs SET enabled = ?, updated_ns = ?" + (
            ", restarts = 0, reason = '', state = 'registered'" if enabled else ""
        )
        changed = self._db.execute(f"{sql} WHERE name = ?", (int(enabled), time.time_ns(), name))
        if changed.rowcount == 0:
            raise UnknownNameError("job", name, [j.name for j in self.list()])

    def schedule(self, name: str, window: Window | None) -> None:
        """Give a job the `window` it runs in (checked), or None to run it whenever enabled."""
        if window is not None:
            window = checked_window(window.start, window.stop)
        changed = self._db.execute(
            "UPDATE jobs SET schedule = ?, updated_ns = ? WHERE name = ?",
            (_encode_window(window), time.time_ns(), name),
        )
        if changed.rowcount == 0:
            raise UnknownNameError("job", name, [j.name for j in self.list()])

    def report(self, name: str, state: str, restarts: int, reason: str) -> None:
        """What the supervisor says of a job (a removed job's report is dropped)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, restarts = ?, reason = ?, updated_ns = ? WHERE name = ?",
            (state, restarts, reason, time.time_ns(), name),
        )

    def get(self, name: str) -> Job | None:
        return next((j for j in self.list() if j.name == name), None)

    def list(self) -> list[Job]:
        rows = self._db.execute(
            "SELECT name, notebook, parameters, schedule, enabled, state, restarts, reason "
            "FROM jobs ORDER BY name"
        ).fetchall()
        return [
            Job(
                name=name,
                notebook=notebook,
                parameters=json.loads(parameters),
                schedule=None if schedule is None else msgspec.json.decode(schedule, type=Window),
                enabled=bool(enabled),
                state=state,
                restarts=restarts,
                reason=reason,
            )
            for name, notebook, parameters, schedule, enabled, state, restarts, reason in rows
        ]


def _encode_window(window: Window | None) -> str | None:
    return None if window is None else msgspec.json.encode(window).decode()


def runs_dir(rundir: RunDir, job: str) -> Path:
    """Where a job's runs are archived: ``runs/JOB/`` (output notebooks, parameters, logs)."""
    return rundir.folder("runs", check_name(job))


def prune_runs(folder: Path, keep: int = KEEP_RUNS) -> int:
    """Delete every file of the archived runs in `folder` but the newest `keep`; return how many
    runs went. A run is its stamp's files (notebook, parameters, logs, result); others stay."""
    stamps = sorted(p.stem for p in folder.glob("*.ipynb"))
    old = stamps[: max(0, len(stamps) - keep)]
    for stamp in old:
        for path in folder.glob(f"{glob.escape(stamp)}.*"):
            path.unlink(missing_ok=True)
    return len(old)


def list_runs(rundir: RunDir, job: str | None = None) -> list[dict[str, Any]]:
    """Every archived run (of `job`, else of all jobs), oldest first."""
    root = rundir.home / "runs"
    folders = [root / job] if job else sorted(p for p in root.glob("*") if p.is_dir())
    runs = []
    for folder in folders:
        for output in sorted(folder.glob("*.ipynb")):
            log = output.with_suffix(".log")
            try:
                result = json.loads(output.with_suffix(".result.json").read_text())
            except (OSError, ValueError):
                result = {}  # still running, or its supervisor died
            runs.append(
                {
                    "job": folder.name,
                    "stamp": output.stem,
                    "notebook": str(output),
                    "log": str(log) if log.exists() else None,
                    "exit_code": result.get("exit_code"),
                    "error": notebook_error(output) or result.get("error"),
                }
            )
    return runs


def notebook_error(path: Path) -> str | None:
    """``"Name: value"`` of the first error an executed notebook holds, or None."""
    try:
        cells = json.loads(path.read_text()).get("cells", [])
    except (OSError, ValueError):
        return None
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"
    return None


@dataclass
class Run:
    """One job as the runner tracks it: its current incarnation and its history."""

    job: Job
    popen: subprocess.Popen | None = None
    # registered (not started yet), starting, running, backoff, failed, exited, stopped, waiting
    # (for its window to open)
    state: str = "registered"
    token: str = ""
    started: float = 0.0
    last_beat: float | None = None
    first_beat: float | None = None  # of this incarnation: healthy is counted from it
    failures: int = 0  # consecutive, for the backoff
    restarts: int = 0  # every restart
    recent: int = 0  # restarts toward the cap: reset after HEALTHY_S of healthy running
    next_start: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    output: Path | None = None
    opened: dt.datetime | None = None  # the opening of the window it last started in
    window: WindowState | None = None  # of job.schedule, judged again when it changes
    tree: dict[int, float] = field(default_factory=dict)  # pid: create time, below papermill
    next_tree: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    pid: int | None = None  # the brain's (the kernel's), from its heartbeats
    pump: LogPump | None = None  # of this incarnation's log, until its output is all written


class JobRunner:
    """The supervisor's jobs: started, watched, restarted and stopped from its loop thread."""

    def __init__(
        self,
        rundir: RunDir,
        max_restarts: int,
        backoff_s: float,
        stall_s: float,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utc_now,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        self.rundir, self.max_restarts, self.backoff_s, self.stall_s = (
            rundir,
            max_restarts,
            backoff_s,
            stall_s,
        )
        self.env = dict(env or os.environ)
        self.clock, self.now = clock, now
        self.log_max_bytes, self.log_backups = log_max_bytes, log_backups
        self.log = logging.getLogger("osm.jobs")
        self.runs: dict[str, Run] = {}
        self.store = JobStore(rundir)
        self._next_reload = 0.0

    # -- the loop --------------------------------------------------------------------------------

    def watch(self) -> None:
        """Pick up changes of the store, then start, check and restart every job."""
        now = self.clock()
        if now >= self._next_reload:
            self._next_reload = now + RELOAD_S
            self._sync(now)
        for run in self.runs.values():
            self._watch(run, now)

    def heartbeat(self, beat: wire.Heartbeat) -> bool:
        """Take `beat` if it is a job's (True), whatever the pid it comes from."""
        run = self.runs.get(beat.process)
        if run is None:
            return False
        if run.popen is not None and hmac.compare_digest(beat.token.encode(), run.token.encode()):
            run.last_beat, run.counters, run.pid = self.clock(), dict(beat.counters), beat.pid
            if run.first_beat is None:
                run.first_beat = run.last_beat
            if run.state == "starting":
                run.state = "running"
                self._report(run)
        return True  # a previous incarnation's last words, or a forger's: not this job's beat

    def stop_all(self) -> None:
        for run in self.runs.values():
            self._stop(run, "stopped")
        self.store.close()

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "name": name,
                "role": "job",
                "state": run.state,
                "pid": run.popen.pid if run.popen else None,
                "brain_pid": run.pid if run.popen else None,
                "uptime_s": round(now - run.started, 3) if run.popen else None,
                "restarts": run.restarts,
                "exit_code": run.exit_code,
                "reason": run.reason,
                "heartbeat_age_s": None if run.last_beat is None else round(now - run.last_beat, 3),
                "output": str(run.output) if run.output else None,
                "counters": run.counters,
                "window_open": None if run.window is None else run.window.open,
            }
            for name, run in sorted(self.runs.items())
        ]

    # -- one job ---------------------------------------------------------------------------------

    def _sync(self, now: float) -> None:
        jobs = {job.name: job for job in self.store.list()}
        for name in list(self.runs):
            if name not in jobs:
                self._stop(self.runs.pop(name), "removed")
        for name, job in jobs.items():
            run = self.runs.get(name)
            if not job.enabled:
                if run is not None and run.state not in ("stopped",):
                    self._stop(run, "stopped")
                continue
            restart = run is not None and run.popen is None and job.state == "registered"
            if run is None or (restart and run.state in ("stopped", "failed", "exited", "waiting")):
                self.runs[name] = Run(job)  # started by _watch, now or when its window opens
            else:
                if job.schedule != run.job.schedule:
                    run.window = None
                run.job = job

    def _window(self, run: Run) -> WindowState | None:
        """Where the job's window is now (None: it has none), judged again when it changes."""
        if run.job.schedule is None:
            run.window = None
            return None
        now = self.now()
        if run.window is None or now >= run.window.changes:
            run.window = window_at(run.job.schedule, now)
        return run.window

    def _launch(self, run: Run) -> None:
        job = run.job
        run.opened = run.window.opened if run.window is not None else None  # one try per window
        folder = runs_dir(self.rundir, job.name)
        prune_runs(folder, KEEP_RUNS - 1)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        run.output = folder / f"{stamp}.ipynb"
        parameters = {**job.parameters, "job": job.name, "home": str(self.rundir.home)}
        params_path = folder / f"{stamp}.parameters.json"
        write_atomic(params_path, json.dumps(parameters, indent=1).encode())
        try:
            notebook = notebook_path(job.notebook)
        except UnknownNameError as exc:
            run.state, run.reason = "failed", str(exc)
            self._report(run)
            return
        command = [sys.executable, "-m", "papermill", str(notebook), str(run.output)]
        command += ["-f", str(params_path), "-k", "python3", "--no-progress-bar", "--log-output"]
        run.token = secrets.token_hex(16)
        pump = LogPump(folder / f"{stamp}.log", self.log_max_bytes, self.log_backups, self.log)
        try:
            run.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=pump.write_fd,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env={
                    **self.env,
                    PROCESS_TOKEN_ENV: run.token,
                    SUPERVISOR_PID_ENV: str(os.getpid()),
                },
                # Its own process group, so a signal to ours does not reach it, in our session,
                # so a background priority reaches it (osm.live.priority).
                process_group=0,
            )
        finally:
            pump.release()  # papermill holds it now (if it started): the pipe ends with the job
        run.pump = pump
        run.state, run.started, run.last_beat, run.first_beat = "starting", self.clock(), None, None
        run.exit_code, run.tree, run.next_tree, run.counters = None, {}, 0.0, {}
        self.log.info(
            "started job %s (papermill pid %d) -> %s", job.name, run.popen.pid, run.output
        )
        self._report(run)

    def _watch(self, run: Run, now: float) -> None:
        window = self._window(run)
        if run.popen is None:
            self._idle(run, window, now)
            return
        if now >= run.next_tree:
            run.next_tree = now + TREE_S
            self._remember_tree(run)
        code = run.popen.poll()
        if code is not None:
            run.popen, run.exit_code = None, code
            self._kill_tree(run)  # papermill is gone: nothing of its tree may stay
            error = self._ended(run)
            if code == 0:
                run.state, run.reason = "exited", ""
                self.log.info("job %s finished (exit 0); not restarted", run.job.name)
                self._report(run)
            elif error and error.partition(":")[0] in _CONFIG_ERROR_NAMES:
                run.state, run.reason = "failed", error
                self.log.error("job %s cannot run as given; not restarted: %s", run.job.name, error)
                self._report(run)
            elif window is not None and not window.open:
                self._wait(run, window, f"{error or f'exited with code {code}'} after its window")
            else:
                self._failed(run, error or f"papermill exited with code {code}", now)
            return
        if window is not None and not window.open:
            self._stop(run, "waiting")
            self._wait(run, window, "its window closed")
            return
        silent = now - (run.last_beat if run.last_beat is not None else run.started)
        limit = self.stall_s if run.last_beat is not None else STARTUP_GRACE_S
        if silent > limit:
            self._kill_tree(run, papermill=True)
            run.exit_code = run.popen.wait()
            run.popen = None
            self._ended(run)
            self._failed(run, f"no heartbeat for {silent:.0f} s; killed", now)
        elif run.first_beat is not None and now - run.first_beat > HEALTHY_S:
            run.failures = run.recent = 0

    def _idle(self, run: Run, window: WindowState | None, now: float) -> None:
        """A job with no process: start it, restart it after its backoff, or leave it."""
        if run.state == "backoff":
            if window is not None and not window.open:
                self._wait(run, window, f"{run.reason}; not restarted")
            elif now >= run.next_start:
                run.restarts += 1
                run.recent += 1
                self._launch(run)
        elif run.state not in ("registered", "waiting", "exited", "failed"):
            return  # stopped: until `osm jobs start`
        elif window is None:
            if run.state not in ("exited", "failed"):  # failed: until `osm jobs start`
                self._launch(run)
        elif window.open and window.opened != run.opened:
            # A new window is a new session: no backoff or cap left from the last one, and a job
            # that failed in it is tried again (as cron would).
            run.failures = run.recent = 0
            self._launch(run)
        elif not window.open and run.state == "registered":
            self._wait(run, window, "its window is closed")

    def _wait(self, run: Run, window: WindowState, why: str) -> None:
        """Leave the job until its window next opens."""
        run.state, run.reason = "waiting", f"{why}; opens {_utc(window.next_open)}"
        self.log.info("job %s waits: %s", run.job.name, run.reason)
        self._report(run)

    def _ended(self, run: Run) -> str | None:
        """Archive how the run ended beside its notebook; return its error (None: none)."""
        if run.pump is not None:  # the tree is gone: the pipe ends, the log gets its last lines
            run.pump.close()
            run.pump = None
        if run.output is None:
            return None
        error = notebook_error(run.output)
        if error is None and run.exit_code is not None and run.exit_code < 0:
            error = f"papermill was killed by {signal.Signals(-run.exit_code).name}"
        elif error is None and run.exit_code:
            # papermill's: "DeadKernelError..."; the file may have just rotated after it
            lines = tail(run.output.with_suffix(".log"), 5)
            error = next((line.strip() for line in reversed(lines) if line.strip()), None)
        result = {"exit_code": run.exit_code, "error": error}
        with contextlib.suppress(OSError):
            write_atomic(run.output.with_suffix(".result.json"), json.dumps(result).encode())
        return error

    def _failed(self, run: Run, reason: str, now: float) -> None:
        run.reason = reason
        if run.recent >= self.max_restarts:
            run.state = "failed"
            self.log.error(
                "job %s %s; gave up after %d restarts in a row (max_restarts)",
                run.job.name,
                reason,
                run.recent,
            )
        else:
            run.failures += 1
            delay = min(self.backoff_s * 2 ** (run.failures - 1), BACKOFF_CAP_S)
            run.state, run.next_start = "backoff", now + delay
            self.log.warning("job %s %s; restarting in %.1f s", run.job.name, reason, delay)
        self._report(run)

    def _stop(self, run: Run, state: str) -> None:
        """Stop a job's tree: SIGTERM below papermill, wait for the output, then SIGKILL."""
        popen = run.popen
        if popen is not None:
            self._remember_tree(run)
            for process in self._alive(run):
                with contextlib.suppress(psutil.Error):
                    process.terminate()
            try:
                run.exit_code = popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.log.warning(
                    "job %s did not stop within %.0f s; killing", run.job.name, STOP_GRACE_S
                )
                self._kill_tree(run, papermill=True)
                run.exit_code = popen.wait()
            self._kill_tree(run)
            run.popen = None
            self._ended(run)
        run.state = state
        self.log.info("job %s %s", run.job.name, state)
        if state != "removed":
            self._report(run)

    def _remember_tree(self, run: Run) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(run.popen.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    run.tree.setdefault(child.pid, child.create_time())

    def _alive(self, run: Run) -> list[psutil.Process]:
        """The remembered processes of the job's tree that still run (not a reused pid)."""
        found = []
        for pid, created in run.tree.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() == created:
                    found.append(process)
        return found

    def _kill_tree(self, run: Run, papermill: bool = False) -> None:
        if papermill and run.popen is not None:
            self._remember_tree(run)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.popen.pid, signal.SIGKILL)
        left = self._alive(run)
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(left, timeout=5)

    def _report(self, run: Run) -> None:
        try:
            self.store.report(run.job.name, run.state, run.restarts, run.reason)
        except sqlite3.Error as exc:  # the status socket still says it; the table is advisory
            self.log.warning("cannot record job %s in the store: %s", run.job.name, exc)


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
