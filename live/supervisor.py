"""The supervisor: a detached daemon that owns the run directory and keeps every process alive.

:func:`up` (behind ``osm up``) plans the endpoints once, writes ``config.json`` and
``endpoints.json``, and launches the daemon as ``python -m osm.live.supervisor --home DIR --detach``:
a new session and a second fork, so it outlives the terminal or notebook that started it, with its
stdio in ``logs/supervisor.log``. The daemon writes ``supervisor.pid``, starts the router, the
trader, every feeder and every brain as ``python -m osm.live.process`` children, collects their
heartbeats on the telemetry PULL socket, and answers :class:`~osm.core.wire.Command` ``status`` and
``stop`` on ``supervisor_control``. A child that exits with an error, or stops heartbeating for
several intervals, is killed and started again after an exponential backoff, at most
``max_restarts`` times; one that exits with :data:`~osm.core.errors.EXIT_CONFIG` (it cannot run as
configured) is not restarted but marked ``failed``, with its last log line as the reason. Every
child gets the config's ``python_path`` on its PYTHONPATH, so strategies import as they did in
``osm up``. Stopping sends SIGTERM to every child (producers first), SIGKILL after a
grace period, and removes ``endpoints.json`` and the pid file.

A feeder starts only once every brain trading one of its instruments is warm (its heartbeat counts a
warm-up) or not coming (failed, exited, stopped, a job outside its window), or has run WARM_WAIT_S
without warming up: a replay then waits for its brains instead of racing them, and they decide its
first bar as they decide its last. The brains waited for are the configured ones and the jobs
enabled at start whose parameters name one of the feed's instruments (live brains run by papermill,
started before the feeders). A restarted feeder does not wait again.

Endpoints are planned once per system, so a restarted child binds or connects the same addresses
and its peers reconnect by themselves.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hmac
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import zmq

from osm.core import config as cfg
from osm.core import wire
from osm.core.errors import EXIT_CONFIG, OsmError
from osm.core.rundir import PRIVATE_DIR, PRIVATE_FILE, PRIVATE_UMASK, RunDir, write_atomic
from osm.live import preflight, priority
from osm.live.bus import plan_endpoints
from osm.live.client import Client, alive, running_pid
from osm.live.jobs import JobRunner
from osm.live.process import configure_logging
from osm.live.service import PROCESS_TOKEN_ENV, Service

STALL_INTERVALS = 10  # heartbeat intervals without a beat before a process counts as hung
MIN_STALL_S = 5.0  # ...but never less: a loaded machine delays beats by seconds
STARTUP_GRACE_S = 60.0  # the first beat may wait for numba, pandas and pyarrow imports
WARM_WAIT_S = 60.0  # longest a feeder waits for a running brain to warm up before it starts
_GONE = ("failed", "exited", "stopped", "waiting")  # waiting: a job whose window is closed
BACKOFF_CAP_S = 10.0  # longest wait before a restart
HEALTHY_S = 30.0  # a process up this long has its backoff reset
STOP_GRACE_S = 10.0  # SIGTERM to SIGKILL, per stopping phase
CHECK_S = 0.1  # how often children are looked at


@dataclass
class Child:
    """One supervised process and what the supervisor knows of it."""

    role: str
    name: str
    popen: subprocess.Popen | None = None
    state: str = "starting"  # waiting, starting, running, backoff, failed, exited, stopped
    started: float = 0.0  # monotonic time of the last launch
    restarts: int = 0
    failures: int = 0  # consecutive, for the backoff
    next_start: float = 0.0
    exit_code: int | None = None
    reason: str = ""  # why it was last restarted or given up
    last_beat: float | None = None  # monotonic time of the last heartbeat of this incarnation
    counters: dict[str, int] = field(default_factory=dict)
    carried: collections.Counter[str] = field(default_factory=collections.Counter)
    waits_for: tuple[str, ...] = ()  # brains to be warm before the first launch (of a feeder)
    token: str = ""  # the secret of this incarnation: its heartbeats carry it, a forger's cannot

    def totals(self) -> collections.Counter[str]:
        """Counters summed over every incarnation (a crash must not hide its rejects)."""
        return self.carried + collections.Counter(self.counters)


class Supervisor(Service):
    """The daemon's service loop: children, telemetry and the control socket."""

    role = "supervisor"

    def __init__(
        self,
        rundir: RunDir,
        config: cfg.SystemConfig,
        endpoints: dict[str, Any],
        cpu_priority: str = "normal",
    ):
        super().__init__("supervisor", rundir, config, endpoints)
        self.cpu_priority = cpu_priority  # as osm.live.priority.apply set it
        self.stall_s = max(STALL_INTERVALS * config.heartbeat_s, MIN_STALL_S)
        self.children = [Child("router", "router"), Child("trader", "trader")]
        self.children += [
            Child(
                "feeder",
                f.name,
                waits_for=tuple(b.name for b in config.brains if b.instrument in f.instruments),
            )
            for f in config.feeds
        ]
        self.children += [Child("brain", b.name) for b in config.brains]
        self._by_name = {c.name: c for c in self.children}
        self._next_check = 0.0
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        search = os.pathsep.join([*config.python_path, *inherited])
        self._child_env = {**os.environ, "PYTHONPATH": search} if search else None

    def setup(self) -> None:
        self._telemetry_in = self.bus.bind(zmq.PULL, "telemetry")
        self._control = self.bus.bind(zmq.REP, "supervisor_control")
        self.on(self._telemetry_in, self._on_telemetry)
        self.on(self._control, self._on_control)
        self.jobs = self._job_runner()
        self.jobs.watch()  # live-brain jobs start now, so that a replay can wait for them
        feeds = {f.name: f for f in self.config.feeds}
        for child in self.children:
            if child.role == "feeder":
                instruments = feeds[child.name].instruments
                child.waits_for += tuple(
                    name
                    for name, run in self.jobs.runs.items()
                    if run.job.parameters.get("instrument") in instruments
                )
            if child.waits_for:
                child.state = "waiting"
                child.reason = f"for {', '.join(child.waits_for)} to warm up"
            else:
                self._launch(child)

    def _job_runner(self) -> JobRunner:
        """The jobs of ``db/jobs.sqlite`` (papermill notebooks): see :mod:`osm.live.jobs`."""
        return JobRunner(
            self.rundir,
            self.config.max_restarts,
            self.config.restart_backoff_s,
            self.stall_s,
            env=self._child_env,
        )

    def idle(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_S
            for child in self.children:
                self._watch(child, now)
            self.jobs.watch()

    def teardown(self) -> None:
        self.jobs.stop_all()  # a job's brain is a producer too, and its summary needs the trader
        # Producers first, so the trader and router see the last orders and ticks they were sent.
        producers = [c for c in self.children if c.role in ("brain", "feeder")]
        self._terminate(producers)
        self._terminate([c for c in self.children if c not in producers])
        remove_run_files(self.rundir, self.bus.endpoints)

    # -- children ------------------------------------------------------------------------------

    def _launch(self, child: Child) -> None:
        if child.state == "backoff":
            child.restarts += 1
            child.carried += collections.Counter(child.counters)
        command = [sys.executable, "-m", "osm.live.process", child.role, child.name]
        command += ["--home", str(self.rundir.home)]
        child.token = secrets.token_hex(16)
        with open(self.rundir.log_path(child.name), "ab") as log:
            child.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**(self._child_env or os.environ), PROCESS_TOKEN_ENV: child.token},
            )
        child.state, child.started, child.last_beat = "starting", time.monotonic(), None
        child.counters, child.exit_code = {}, None
        self.log.info("started %s %s (pid %d)", child.role, child.name, child.popen.pid)

    def _watch(self, child: Child, now: float) -> None:
        if child.popen is None:
            if child.state == "backoff" and now >= child.next_start:
                self._launch(child)
            elif child.state == "waiting" and self._brains_ready(child, now):
                child.reason = ""
                self._launch(child)
            return
        code = child.popen.poll()
        if code is not None:
            child.popen, child.exit_code = None, code
            if code == 0:
                child.state = "exited"
                self.log.info("%s %s finished (exit 0); not restarted", child.role, child.name)
            elif code == EXIT_CONFIG:
                child.state, child.reason = "failed", _last_line(self.rundir.log_path(child.name))
                self.log.error(
                    "%s %s cannot run as configured; not restarted: %s",
                    child.role,
                    child.name,
                    child.reason,
                )
            else:
                self._failed(child, f"exited with code {code}", now)
            return
        silent = now - (child.last_beat if child.last_beat is not None else child.started)
        limit = self.stall_s if child.last_beat is not None else STARTUP_GRACE_S
        if silent > limit:
            child.popen.kill()
            child.exit_code = child.popen.wait()
            child.popen = None
            self._failed(child, f"no heartbeat for {silent:.0f} s; killed", now)
        elif child.last_beat is not None and now - child.started > HEALTHY_S:
            child.failures = 0

    def _brains_ready(self, child: Child, now: float) -> bool:
        """Whether every brain `child` waits for is warm or gone; or, running, too slow to warm."""
        # A job's run (None once the job is removed) or a configured brain's child.
        brains = {n: self._by_name.get(n) or self.jobs.runs.get(n) for n in child.waits_for}
        cold = {
            name: b
            for name, b in brains.items()
            if b is not None and not b.counters.get("warmups") and b.state not in _GONE
        }
        if not cold:
            return True
        if any(b.state != "running" or now - b.started < WARM_WAIT_S for b in cold.values()):
            return False
        names = ", ".join(cold)
        self.log.warning("%s starts although %s did not warm up", child.name, names)
        return True

    def _failed(self, child: Child, reason: str, now: float) -> None:
        child.reason = reason
        if child.restarts >= self.config.max_restarts:
            child.state = "failed"
            self.log.error(
                "%s %s %s; gave up after %d restarts (max_restarts); see logs/%s.log",
                child.role,
                child.name,
                reason,
                child.restarts,
                child.name,
            )
            return
        child.failures += 1
        delay = min(self.config.restart_backoff_s * 2 ** (child.failures - 1), BACKOFF_CAP_S)
        child.state, child.next_start = "backoff", now + delay
        self.log.warning("%s %s %s; restarting in %.1f s", child.role, child.name, reason, delay)

    def _terminate(self, children: list[Child]) -> None:
        running = [c for c in children if c.popen is not None]
        for child in running:
            child.popen.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            try:
                child.exit_code = child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("%s did not stop within %.0f s; killing", child.name, STOP_GRACE_S)
                child.popen.kill()
                child.exit_code = child.popen.wait()
            child.popen, child.state = None, "stopped"
        for child in children:
            if child.state in ("backoff", "waiting"):
                child.state = "stopped"

    # -- sockets -------------------------------------------------------------------------------

    def _on_telemetry(self, parts: list[bytes]) -> None:
        beat = self.expect(parts, wire.Heartbeat, "on the telemetry socket")
        if beat is None:
            return
        if beat.process == self.name:
            return  # our own beat, looped back through the socket every service has
        if self.jobs.heartbeat(beat):
            return
        child = self._by_name.get(beat.process)
        if child is None:
            self.reject("unknown_process", f"heartbeat from {beat.process!r} (pid {beat.pid})")
        elif child.popen is None or child.popen.pid != beat.pid:
            self.counters["stale_heartbeats"] += 1  # the last words of a replaced incarnation
        elif not hmac.compare_digest(beat.token.encode(), child.token.encode()):
            self.reject("forged_heartbeat", f"a heartbeat for {beat.process!r} without its token")
        else:
            child.last_beat, child.counters = time.monotonic(), dict(beat.counters)
            if child.state == "starting":
                child.state = "running"

    def _on_control(self, parts: list[bytes]) -> None:
        # A REP socket must answer every request, or it can never receive again.
        reply = wire.Reply(False, error="internal error; see logs/supervisor.log")
        try:
            reply = self._command(parts)
        finally:
            self._control.send_multipart(wire.frames("reply", reply))

    def _command(self, parts: list[bytes]) -> wire.Reply:
        decoded = self.decode(parts)
        if decoded is None:
            return wire.Reply(False, error="malformed request: send [topic, wire.Command]")
        command = decoded[1]
        if not isinstance(command, wire.Command):
            self.reject("unexpected_message", f"{type(command).__name__} on the control socket")
            return wire.Reply(False, error=f"expected a Command, got {type(command).__name__}")
        if command.name == "status":
            return wire.Reply(True, data=self.status())
        if command.name == "stop":
            self.log.info("stop requested")
            self.stop()
            return wire.Reply(True, data={"stopping": True})
        self.reject("unknown_command", command.name)
        return wire.Reply(False, error=f"unknown command {command.name!r}; known: status, stop")

    def status(self) -> dict[str, Any]:
        """Describe the system: the supervisor and, per process, its health and counters.

        A process's ``counters`` and ``messages`` are those of its current incarnation (a
        feeder's ``acked`` is its position now, not a sum of positions); ``counters_total`` sums
        every incarnation, and ``rejected`` counts refused inputs over all of them, so a crash
        does not hide what was refused before it.
        """
        now = time.monotonic()
        processes = []
        for child in self.children:
            totals = child.totals()
            current = collections.Counter(child.counters)
            processes.append(
                {
                    "name": child.name,
                    "role": child.role,
                    "state": child.state,
                    "pid": child.popen.pid if child.popen else None,
                    "uptime_s": round(now - child.started, 3) if child.popen else None,
                    "restarts": child.restarts,
                    "exit_code": child.exit_code,
                    "reason": child.reason,
                    "heartbeat_age_s": (
                        None if child.last_beat is None else round(now - child.last_beat, 3)
                    ),
                    "messages": current["messages_in"],
                    "rejected": sum(v for k, v in totals.items() if k.startswith("rejected.")),
                    "counters": dict(current),
                    "counters_total": dict(totals),
                }
            )
        return {
            "home": str(self.rundir.home),
            "pid": os.getpid(),
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3),
            "transport": self.config.transport,
            "host": self.config.host,
            "curve": self.bus.curve,
            "priority": self.cpu_priority,
            "counters": dict(self.counters),
            "rejected": sum(v for k, v in self.counters.items() if k.startswith("rejected.")),
            "processes": processes,
            "jobs": self.jobs.status(),
        }


# -- the run directory -----------------------------------------------------------------------


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.kill(pid, signum)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def orphans(rundir: RunDir) -> list[psutil.Process]:
    """Processes of this run directory left behind by a supervisor that died without stopping them."""
    home = str(rundir.home)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if "osm.live.process" in line and line[-2:] == ["--home", home]:
            found.append(process)
    return found


def remove_run_files(rundir: RunDir, endpoints: dict[str, Any] | None) -> None:
    """Remove what says a system is running: endpoints.json and the ipc socket files."""
    rundir.endpoints_path.unlink(missing_ok=True)
    for address in (endpoints or {}).values():
        if isinstance(address, str) and address.startswith("ipc://"):
            Path(address[6:]).unlink(missing_ok=True)


def clean_stale(rundir: RunDir) -> None:
    """Remove the traces of a supervisor that is gone: orphaned children, pid and endpoints."""
    leftover = orphans(rundir)
    for process in leftover:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(leftover, timeout=3)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    remove_run_files(rundir, rundir.read_endpoints())
    rundir.pid_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(rundir: RunDir) -> Iterator[None]:
    """Serialise `osm up` / `osm down` on one run directory (two terminals, two notebooks)."""
    rundir.home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(rundir.home / ".lock", os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prepare(rundir: RunDir, config: cfg.SystemConfig) -> None:
    tightened = rundir.secure()
    if tightened:
        logging.getLogger("osm.supervisor").warning(
            "%s was readable by others: took group and other permissions off %d paths (%s)",
            rundir.home, len(tightened), ", ".join(tightened[:5]),
        )  # fmt: skip
    clean_stale(rundir)
    endpoints = plan_endpoints(rundir, config)  # raises if CURVE keys are needed and missing
    write_atomic(rundir.config_path, cfg.dump(config))
    rundir.write_endpoints(endpoints)


def _last_line(path: Path) -> str:
    """The last line of a log: what a process that exits with EXIT_CONFIG wrote last."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _log_tail(rundir: RunDir, lines: int = 5) -> str:
    try:
        text = rundir.log_path("supervisor").read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text[-lines:])


class Up(NamedTuple):
    """What :func:`up` did."""

    pid: int  # the supervisor's
    started: bool  # False: a system was running already and `up` attached to it
    set_aside: Path | None = None  # where `fresh` moved the previous run's data, if any


def up(
    rundir: RunDir, config: cfg.SystemConfig, timeout_s: float = 60.0, fresh: bool = False
) -> Up:
    """Start a detached supervisor running `config`, or find the one already running.

    Nothing starts unless :func:`osm.live.preflight.check` passes. With `fresh`, a system that is
    not running has its bars, feed positions and orders moved aside before it starts
    (:meth:`~osm.core.rundir.RunDir.set_aside`); a running one is left as it is.
    """
    with _locked(rundir):
        pid = running_pid(rundir)
        if pid is not None:
            return Up(pid, False)
        preflight.check(rundir, config, fresh)
        set_aside = rundir.set_aside() if fresh else None
        _prepare(rundir, config)
        launcher = subprocess.run(
            [sys.executable, "-m", "osm.live.supervisor", "--home", str(rundir.home), "--detach"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            start_new_session=True,
            timeout=timeout_s,
        )
        try:
            pid = int(launcher.stdout)
        except ValueError:
            detail = launcher.stderr.decode(errors="replace").strip() or _log_tail(rundir)
            raise OsmError(f"the supervisor could not be launched: {detail}") from None
        deadline = time.monotonic() + timeout_s
        with Client(rundir.home, timeout_s=1.0) as client:
            while time.monotonic() < deadline and alive(pid):
                with contextlib.suppress(OsmError):
                    client.status()
                    return Up(pid, True, set_aside)
                time.sleep(0.1)
        why = f"did not come up within {timeout_s:.0f} s" if alive(pid) else "exited at start"
        raise OsmError(
            f"the supervisor {why}; logs/supervisor.log in {rundir.home} ends: {_log_tail(rundir)}"
        )


def down(rundir: RunDir, timeout_s: float = 60.0) -> bool:
    """Stop the system of `rundir` and wait until it is gone; return False if none was running."""
    if not rundir.home.is_dir():
        return False  # nothing to stop, and no folder to create
    with _locked(rundir):
        pid = running_pid(rundir)
        if pid is None:
            clean_stale(rundir)
            return False
        try:
            with Client(rundir.home, timeout_s=5.0) as client:
                client.request("stop")
        except OsmError:
            _signal(pid, signal.SIGTERM)  # the control socket is wedged; the signal still works
        if not _wait_gone(pid, timeout_s):
            _signal(pid, signal.SIGKILL)
        clean_stale(rundir)
        return True


def run_foreground(rundir: RunDir, config: cfg.SystemConfig, fresh: bool = False) -> int:
    """Run the supervisor in this process (``osm up --foreground``), logging to stderr too."""
    with _locked(rundir):
        pid = running_pid(rundir)
        if pid is not None:
            raise OsmError(f"a supervisor (pid {pid}) already runs in {rundir.home}; `osm down`")
        preflight.check(rundir, config, fresh)
        if fresh:
            rundir.set_aside()
        _prepare(rundir, config)
    return _serve(rundir, foreground=True)


def _serve(rundir: RunDir, foreground: bool) -> int:
    os.umask(PRIVATE_UMASK)  # the daemon's children inherit it: whatever they create is private
    configure_logging(rundir, "supervisor")
    if foreground:
        logging.getLogger().addHandler(logging.StreamHandler())
    log = logging.getLogger("osm.supervisor")
    write_atomic(rundir.pid_path, f"{os.getpid()}\n".encode())
    try:
        config = cfg.load(cfg.SystemConfig, rundir.config_path.read_bytes())
        endpoints = rundir.read_endpoints()
        if endpoints is None:
            raise OsmError(f"no endpoints.json in {rundir.home}; start the system with `osm up`")
        # Before any thread or child: each inherits it.
        cpu_priority = priority.apply(config)
        return Supervisor(rundir, config, endpoints, cpu_priority).run()
    except (OsmError, zmq.ZMQError) as exc:
        log.error("supervisor cannot run: %s", exc)
        return EXIT_CONFIG
    finally:
        if rundir.pid_path.exists() and rundir.pid_path.read_text().strip() == str(os.getpid()):
            rundir.pid_path.unlink()


def _detach(rundir: RunDir) -> None:
    """Fork once more and leave the parent: the daemon is re-parented and has no terminal.

    The parent prints the daemon's pid for :func:`up`, which waits for it to answer. The daemon
    waits until it is re-parented: every service stops when its parent changes (an orphan must not
    trade unwatched), and the daemon must take its final parent, not the one about to exit, as its
    own.
    """
    launcher = os.getpid()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    deadline = time.monotonic() + 10.0
    while os.getppid() == launcher and time.monotonic() < deadline:
        time.sleep(0.001)
    os.setsid()  # a session of its own, however it was launched (see osm.live.priority)
    os.umask(PRIVATE_UMASK)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    log = os.open(rundir.log_path("supervisor"), flags, PRIVATE_FILE)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    os.chdir(rundir.home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="osm.live.supervisor")
    parser.add_argument("--home", required=True)
    parser.add_argument("--detach", action="store_true", help="fork into the background")
    args = parser.parse_args(argv)
    rundir = RunDir(args.home)
    if args.detach:
        _detach(rundir)
    return _serve(rundir, foreground=False)


if __name__ == "__main__":
    sys.exit(main())
