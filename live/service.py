"""The shape every live process shares: one poll loop, handlers per socket, heartbeats, counters.

A service binds or connects its sockets in :meth:`Service.setup`, registers one handler per readable
socket with :meth:`Service.on`, and does periodic work in :meth:`Service.idle`. SIGTERM and SIGINT
stop the loop cleanly (:meth:`Service.teardown` runs).

One policy for errors, in every process:

- Garbage is input, not a bug. The loop decodes nothing itself; a handler that meets a malformed
  frame or a message it cannot take calls :meth:`Service.reject`, which counts it by reason and logs
  it, and the process carries on.
- Anything a handler or :meth:`Service.idle` raises is a bug or a failure the process cannot reason
  about (a journal that cannot write). Carrying on would leave the message half-applied (fills taken
  from the broker and never journaled), so the process crashes instead: it logs the traceback and
  one line saying what failed, skips its teardown (which might persist the half-applied state), and
  exits with :data:`CRASHED`. The supervisor restarts it, and the new process recovers from its
  journal exactly as after a ``kill -9``.

Logs are throttled in one place, :class:`RepeatFilter`: a message logged again and again (a refused
target per bar of a fast replay) is written once per :data:`REPEAT_S`, with the count of the repeats
held back in between.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import psutil
import zmq

from osm.core import wire
from osm.core.config import SystemConfig
from osm.core.rundir import RunDir
from osm.live.bus import Bus, monitor_event

Handler = Callable[[list[bytes]], None]
M = TypeVar("M", bound=wire.Message)
CRASHED = 1  # exit status of a process whose handler or idle work raised
REPEAT_S = 10.0  # a repeated log message is written at most once this often
PROCESS_TOKEN_ENV = "OSM_PROCESS_TOKEN"  # the supervisor's secret for one child, in its heartbeats
# The supervisor's pid, given to a job: its brain runs in papermill's kernel, the supervisor's
# grandchild, whose parent outlives a supervisor killed with -9. Read (and removed) by the job's
# brain only (osm.live.jobbrain), so nothing a job starts inherits it.
SUPERVISOR_PID_ENV = "OSM_SUPERVISOR_PID"
_NUMBERS = re.compile(r"\d+")
_SNDMORE = int(zmq.SNDMORE)


class RepeatFilter(logging.Filter):
    """Let a repeated log message through once per `interval_s` and count the repeats in between.

    Messages are the same if they come from one logger at one level and read the same but for
    their numbers ("target b1-1399017540000000000 refused: 120 orders already sent..." once per
    bar), or carry the same ``repeat_key`` in ``extra``. The first message let through after
    repeats were held back ends with how many there were; :meth:`flush` logs the counts still
    held (when the process stops).
    """

    def __init__(self, interval_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s, self._clock = interval_s, clock
        self._seen: dict[tuple, list] = {}  # key: [last let through, held, level, message]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        same = getattr(record, "repeat_key", None) or _NUMBERS.sub("#", message)
        key = (record.name, record.levelno, same)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg, record.args = f"{message} [and {_held(seen[1], now - seen[0])}]", None
        if len(self._seen) > 10_000:  # messages that vary (not templated) must not pile up
            self._seen = {k: v for k, v in self._seen.items() if v[1]}
        self._seen[key] = [now, 0, record.levelno, message]
        return True

    def flush(self, log: logging.Logger) -> None:
        """Log, for every message with repeats held back, how many there were."""
        now = self._clock()
        for key, (then, held, level, message) in list(self._seen.items()):
            if held:
                self._seen[key] = [now, 0, level, message]
                text = f"{_held(held, now - then)}: {message}"
                log.log(level, "%s", text, extra={"repeat_key": ("flush", key)})


def _held(count: int, seconds: float) -> str:
    return f"{count} more like it in the last {seconds:.0f} s, not logged"


def now_ns() -> int:
    return time.time_ns()


def started_at(pid: int) -> float | None:
    """When process `pid` started (None: no such process, or a zombie, i.e. it has exited)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """Send `frames` as one multipart message, as ``sock.send_multipart`` does.

    The hot paths send with this: pyzmq's ``send_multipart`` combines its flags as ``IntFlag``
    enums and checks every frame's type in Python, which costs more (~15 us a message) than
    the sends themselves. Frames here are bytes from :func:`osm.core.wire.frames`.
    """
    flags, last = int(flags), len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | _SNDMORE if i < last else flags)


class Service:
    """Base of feeder, router, trader and brain processes."""

    role = "service"

    def __init__(self, name: str, rundir: RunDir, config: SystemConfig, endpoints: dict[str, Any]):
        self.name, self.rundir, self.config = name, rundir, config
        self.log = logging.getLogger(f"osm.{name}")
        self.bus = Bus(rundir, endpoints)
        self.counters: collections.Counter[str] = collections.Counter()
        self._watched: tuple[int, float | None] | None = None  # see watch()
        self.started_ns = now_ns()
        self._handlers: dict[zmq.Socket, Handler] = {}
        self._poller = zmq.Poller()
        self._running = False
        self.crash: Exception | None = None  # what ended the last run with CRASHED
        self.repeats = RepeatFilter()
        self._telemetry = self.bus.connect(zmq.PUSH, "telemetry")
        self._telemetry.setsockopt(zmq.SNDHWM, 10)
        self._next_heartbeat = 0.0
        self._parent_stopped = False

    def setup(self) -> None:
        """Create sockets and register handlers."""

    def idle(self) -> None:
        """Periodic work between messages (at least every `poll_ms`)."""

    def teardown(self) -> None:
        """Release what setup acquired (sockets are closed by the bus)."""

    poll_ms = 50

    def on(self, sock: zmq.Socket, handler: Handler) -> None:
        self._handlers[sock] = handler
        self._poller.register(sock, zmq.POLLIN)

    def receive_waiting(self, sock: zmq.Socket) -> None:
        """Hand the messages waiting on `sock` to its handler: a burst before polling again,
        bounded so one socket cannot starve the others."""
        handler = self._handlers[sock]
        for _ in range(1000):
            # ZMQ_EVENTS says whether a message waits: cheaper than the zmq.Again a last
            # non-blocking recv would raise after every message.
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            self.counters["messages_in"] += 1
            handler(parts)

    def reject(self, reason: str, detail: str = "") -> None:
        """Count a refused input by reason and log it (repeats throttled per reason)."""
        self.counters[f"rejected.{reason}"] += 1
        self.log.warning(
            "rejected (%s, %d so far): %s",
            reason,
            self.counters[f"rejected.{reason}"],
            detail,
            extra={"repeat_key": f"rejected.{reason}"},
        )

    def decode(self, parts: list[bytes]) -> tuple[str, wire.AnyMessage] | None:
        """Parse [topic, payload] frames, or count the frame as malformed and return None."""
        try:
            return wire.parse(parts)
        except wire.WireError as exc:
            self.reject("malformed", str(exc))
            return None

    def expect(self, parts: list[bytes], kind: type[M], where: str) -> M | None:
        """The `kind` message in [topic, payload] frames; count anything else and return None."""
        decoded = self.decode(parts)
        if decoded is None:
            return None
        message = decoded[1]
        if not isinstance(message, kind):
            self.reject("unexpected_message", f"{type(message).__name__} {where}")
            return None
        return message

    def rows(self, message: wire.Ticks | wire.Bars) -> np.ndarray | None:
        """The array a Ticks or Bars message carries, or None after counting it as malformed."""
        try:
            return message.array()
        except wire.WireError as exc:
            self.reject("malformed", str(exc))
            return None

    def _on_monitor(self, parts: list[bytes]) -> None:
        """Count a peer refused at the handshake of a bound socket (garbage, a wrong CURVE key)."""
        event = monitor_event(parts)
        if event == "peers_disconnected":
            self.counters[event] += 1
        elif event:
            where = bytes(parts[1]).decode(errors="replace") if len(parts) > 1 else "?"
            self.reject(event, f"a peer of {where} failed its handshake")

    def heartbeat(self) -> None:
        beat = wire.Heartbeat(
            self.name, os.getpid(), now_ns(), self.started_ns, dict(self.counters),
            os.environ.get(PROCESS_TOKEN_ENV, ""),
        )  # fmt: skip
        # Supervisor away: heartbeats are advisory, never block the process on them.
        with contextlib.suppress(zmq.Again):
            send_frames(self._telemetry, wire.frames(f"heartbeat.{self.name}", beat), zmq.NOBLOCK)

    def _check_parent_stopped(self, parent: int) -> None:
        """Log (once per stop) a supervisor that is stopped (SIGSTOP): it restarts nobody then.

        The process keeps running: trading on is safer than stopping every process because the
        watcher is paused, and a stopped parent is still there to be resumed (``kill -CONT``).
        """
        try:
            with open(f"/proc/{parent}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # no /proc (macOS) or the parent just went: the getppid check sees that
        stopped = state in (b"T", b"t")
        if stopped and not self._parent_stopped:
            self.counters["supervisor_stopped"] += 1
            self.log.error(
                "supervisor pid %d is stopped (SIGSTOP?): nothing restarts a crashed process "
                "until it continues (kill -CONT %d); carrying on",
                parent, parent,
            )  # fmt: skip
        elif self._parent_stopped and not stopped:
            self.log.warning("supervisor pid %d continues", parent)
        self._parent_stopped = stopped

    def stop(self, *_: object) -> None:
        self._running = False

    def run(self) -> int:
        """Set up, then serve until stopped; return the exit status (0, or CRASHED)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.log.addFilter(self.repeats)
        try:
            return self._serve()
        finally:
            self.log.removeFilter(self.repeats)

    def run_embedded(self) -> None:
        """Serve in this thread of a host process (a notebook kernel) until stopped.

        Unlike :meth:`run`, SIGINT is left to the host (a kernel's interrupt); SIGTERM stops the
        loop while it runs and gets its previous handler back after. An exception that crashes the
        loop is raised here, so the host fails with it (papermill then saves the output notebook
        with the error).
        """
        previous = signal.signal(signal.SIGTERM, self.stop)
        self.log.addFilter(self.repeats)
        try:
            if self._serve() == CRASHED and self.crash is not None:
                raise self.crash
        finally:
            self.log.removeFilter(self.repeats)
            signal.signal(signal.SIGTERM, previous)

    def watch(self, supervisor: int) -> None:
        """Watch `supervisor`, not the parent, for the supervisor's end: a job's brain, in
        papermill's kernel, is its grandchild (its pid and start time tell a reused pid apart)."""
        self._watched = (supervisor, started_at(supervisor))

    def _supervisor_gone(self, parent: int) -> bool:
        if self._watched is None:
            return os.getppid() != parent
        pid, started = self._watched
        return started is None or started_at(pid) != started

    def _serve(self) -> int:
        parent = os.getppid() if self._watched is None else self._watched[0]
        self.setup()
        for monitor, _ in self.bus.monitors:
            self.on(monitor, self._on_monitor)
        self._running = True
        self.log.info("%s %s started (pid %d)", self.role, self.name, os.getpid())
        where = "starting"
        try:
            while self._running:
                for sock, _ in self._poller.poll(self.poll_ms):
                    where = f"in {self._handlers[sock].__name__}"
                    self.receive_waiting(sock)
                where = "in idle"
                self.idle()
                if time.monotonic() >= self._next_heartbeat:
                    self._next_heartbeat = time.monotonic() + self.config.heartbeat_s
                    self.heartbeat()
                    if self._supervisor_gone(parent):
                        # The supervisor died (even by kill -9): no orphan keeps trading unwatched.
                        self.log.error("parent process %d is gone; stopping", parent)
                        self._running = False
                    self._check_parent_stopped(parent)
        except Exception as exc:
            self.crash = exc
            # Leave as a kill -9 would: teardown might persist what the failed step half-applied.
            first = next(iter(str(exc).splitlines()), "")
            line = f"{self.role} {self.name} crashed {where}: {type(exc).__name__}: {first}"
            self.repeats.flush(self.log)
            self.log.critical("%s; exiting to be restarted", line, exc_info=True)
            print(f"osm {line}", file=sys.stderr, flush=True)  # the last line, after the traceback
            self.bus.close()
            return CRASHED
        self.teardown()
        self.heartbeat()
        self.bus.close()
        self.repeats.flush(self.log)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counters.items()) if v)
        self.log.info("%s %s stopped (%s)", self.role, self.name, counts or "nothing counted")
        return 0
