"""The shape every live process shares: one poll loop, handlers per socket, heartbeats, counters.

A service binds or connects its sockets in :meth:`Service.setup`, registers one handler per readable
socket with :meth:`Service.on`, and does periodic work in :meth:`Service.idle`. The loop decodes
nothing itself; a handler that meets garbage calls :meth:`Service.reject`, which counts it by reason
and logs it (rate-limited), and the process carries on. SIGTERM and SIGINT stop the loop cleanly.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import zmq

from osm.core import wire
from osm.core.config import SystemConfig
from osm.core.rundir import RunDir
from osm.live.bus import Bus

Handler = Callable[[list[bytes]], None]
M = TypeVar("M", bound=wire.Message)


def now_ns() -> int:
    return time.time_ns()


class Service:
    """Base of feeder, router, trader and brain processes."""

    role = "service"

    def __init__(self, name: str, rundir: RunDir, config: SystemConfig, endpoints: dict[str, Any]):
        self.name, self.rundir, self.config = name, rundir, config
        self.log = logging.getLogger(f"osm.{name}")
        self.bus = Bus(rundir, endpoints)
        self.counters: collections.Counter[str] = collections.Counter()
        self.started_ns = now_ns()
        self._handlers: dict[zmq.Socket, Handler] = {}
        self._poller = zmq.Poller()
        self._running = False
        self._last_reject_log: dict[str, float] = {}
        self._telemetry = self.bus.connect(zmq.PUSH, "telemetry")
        self._telemetry.setsockopt(zmq.SNDHWM, 10)
        self._next_heartbeat = 0.0

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

    def reject(self, reason: str, detail: str = "") -> None:
        """Count a refused input by reason and log it, at most once a second per reason."""
        self.counters[f"rejected.{reason}"] += 1
        now = time.monotonic()
        if now - self._last_reject_log.get(reason, 0.0) >= 1.0:
            self._last_reject_log[reason] = now
            self.log.warning(
                "rejected (%s, %d so far): %s", reason, self.counters[f"rejected.{reason}"], detail
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

    def heartbeat(self) -> None:
        beat = wire.Heartbeat(
            self.name, os.getpid(), now_ns(), self.started_ns, dict(self.counters)
        )
        # Supervisor away: heartbeats are advisory, never block the process on them.
        with contextlib.suppress(zmq.Again):
            self._telemetry.send_multipart(wire.frames(f"heartbeat.{self.name}", beat), zmq.NOBLOCK)

    def stop(self, *_: object) -> None:
        self._running = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        parent = os.getppid()
        self.setup()
        self._running = True
        self.log.info("%s %s started (pid %d)", self.role, self.name, os.getpid())
        try:
            while self._running:
                for sock, _ in self._poller.poll(self.poll_ms):
                    # Drain a burst before polling again; bounded so one socket cannot starve others.
                    for _ in range(1000):
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self.counters["messages_in"] += 1
                        try:
                            self._handlers[sock](parts)
                        except Exception:
                            # A bug met by one message must not take the process down with it.
                            self.counters["errors"] += 1
                            self.log.exception("handler failed on a message; carrying on")
                self.idle()
                if time.monotonic() >= self._next_heartbeat:
                    self._next_heartbeat = time.monotonic() + self.config.heartbeat_s
                    self.heartbeat()
                    if os.getppid() != parent:
                        # The supervisor died (even by kill -9): no orphan keeps trading unwatched.
                        self.log.error("parent process %d is gone; stopping", parent)
                        self._running = False
        finally:
            self.teardown()
            self.heartbeat()
            self.bus.close()
            self.log.info("%s %s stopped", self.role, self.name)
        return 0
