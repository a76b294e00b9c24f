"""Start and stop real live processes for tests, and read their heartbeats.

A :class:`LiveSystem` writes config.json and endpoints.json into a run directory, starts processes
with ``python -m osm.live.process ROLE NAME --home DIR``, binds the telemetry PULL itself (standing
in for the supervisor) to read every heartbeat, and kills whatever it started on close.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from osm.core import wire
from osm.core.config import SystemConfig, dump
from osm.core.rundir import RunDir
from osm.live.bus import plan_endpoints


def autogroup_nice(pid: int | str) -> int | None:
    """The nice value of `pid`'s autogroup; None where there is none to read: a kernel without
    autogroups, or a session in the root group (it prints nothing, as in some containers)."""
    path = Path(f"/proc/{pid}/autogroup")
    text = path.read_text().split() if path.exists() else []
    return int(text[-1]) if text else None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(poll)


class LiveSystem:
    """Real feeder/router processes over real sockets in one run directory."""

    def __init__(self, home: Path, config: SystemConfig) -> None:
        self.rundir = RunDir(home)
        self.config = config
        self.rundir.config_path.write_bytes(dump(config))
        self.endpoints = plan_endpoints(self.rundir, config)
        self.rundir.write_endpoints(self.endpoints)
        self.context = zmq.Context()
        self.telemetry = self.context.socket(zmq.PULL)
        self.telemetry.setsockopt(zmq.LINGER, 0)
        self.telemetry.bind(self.endpoints["telemetry"])
        self.processes: dict[str, subprocess.Popen] = {}
        self.beats: dict[str, wire.Heartbeat] = {}
        self._sockets: list[zmq.Socket] = [self.telemetry]

    def start(self, role: str, name: str) -> subprocess.Popen:
        log = open(self.rundir.logs / f"{name}.stderr", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [sys.executable, "-m", "osm.live.process", role, name, "--home", str(self.rundir.home)],
            stdout=log,
            stderr=log,
        )
        log.close()
        self.processes[name] = process
        self.beats.pop(name, None)
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 20.0) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        code = process.wait(timeout)
        self.beats.pop(name, None)
        return code

    def socket(self, kind: int, name: str, **options: int) -> zmq.Socket:
        """A socket of the test connected to an endpoint, closed with the system; `options`
        (``RCVHWM=0``) are set before it connects, where they apply."""
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(getattr(zmq, option), value)
        sock.connect(self.endpoints[name])
        self._sockets.append(sock)
        return sock

    def bind(self, kind: int, name: str) -> zmq.Socket:
        """A socket of the test bound at an endpoint, standing in for its process (the router)."""
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        address = self.endpoints[name]
        if address.startswith("ipc://"):
            Path(address[6:]).unlink(missing_ok=True)  # a killed process leaves its socket file
        sock.bind(address)
        self._sockets.append(sock)
        return sock

    def poll_heartbeats(self) -> dict[str, wire.Heartbeat]:
        while self.telemetry.poll(0):
            _, beat = wire.parse(self.telemetry.recv_multipart())
            if isinstance(beat, wire.Heartbeat) and beat.pid == self._pid(beat.process):
                self.beats[beat.process] = beat
        return self.beats

    def _pid(self, name: str) -> int | None:
        process = self.processes.get(name)
        return process.pid if process else None

    def counters(self, name: str) -> dict[str, int]:
        self.alive(name)
        beat = self.poll_heartbeats().get(name)
        return beat.counters if beat else {}

    def alive(self, name: str) -> None:
        code = self.processes[name].poll()
        if code is not None:
            log = (self.rundir.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{name} exited with {code}; its log ends:\n{log}")

    def wait_counter(
        self, name: str, counter: str, at_least: int, timeout: float
    ) -> dict[str, int]:
        return wait_for(
            lambda: (c := self.counters(name)).get(counter, 0) >= at_least and c,
            timeout,
            f"{name} counter {counter} >= {at_least} (last: {self.beats.get(name)})",
        )

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for sock in self._sockets:
            sock.close(linger=0)
        self.context.term()


def started_ok(system: LiveSystem, name: str, timeout: float = 60.0) -> None:
    """Wait for the first heartbeat of `name` (it beats once its setup is done)."""
    wait_for(
        lambda: system.alive(name) or system.poll_heartbeats().get(name), timeout, f"{name} up"
    )
