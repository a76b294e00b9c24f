"""Talk to a running osm system: the `osm` command line, notebook magics and scripts use this.

The system is found through its run directory (``endpoints.json``). Every request opens a fresh
socket and waits at most ``timeout_s``, so a dead or wedged process never hangs the caller: it gets
:class:`~osm.core.errors.SystemNotRunning`, which says what to run. A client's sockets belong to the
thread that called; the context is shared, so one client may serve several threads one call at a time
each, and a notebook widget thread should open its own :meth:`Client.subscribe`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from osm.core import wire
from osm.core.errors import OsmError, SystemNotRunning, WireError
from osm.core.rundir import RunDir
from osm.live.bus import make_curve_client

_WHO = {
    "supervisor_control": "the supervisor",
    "trader_orders": "the trader",
    "router_history": "the router",
}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_pid(rundir: RunDir) -> int | None:
    """Return the pid of the live supervisor of `rundir`, or None.

    A pid file whose process is gone, is not an osm process, or was started after the file was
    written (the pid was reused by an unrelated process), is stale.
    """
    try:
        pid = int(rundir.pid_path.read_text())
        written = rundir.pid_path.stat().st_mtime
        process = psutil.Process(pid)
        osm = any("osm" in part for part in process.cmdline())
        if alive(pid) and osm and process.create_time() <= written + 1.0:
            return pid
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    return None


class CommandFailed(OsmError):
    """A process understood a request and refused it; the message says why."""


class Subscription:
    """A SUB socket on one of the system's PUB endpoints; use it from the thread that opened it."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock

    def recv(self, timeout_s: float) -> tuple[str, wire.AnyMessage] | None:
        """Return the next (topic, message), or None if nothing came within `timeout_s`.

        Frames that do not decode are skipped: a subscriber is a reader, not a judge.
        """
        if not self._sock.poll(timeout_s * 1000):
            return None
        parts = self._sock.recv_multipart()
        try:
            return wire.parse(parts)
        except WireError:
            return None

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Client:
    """Requests to the supervisor, the trader and the router of the system in `home`.

    Parameters
    ----------
    home
        The run directory; default ``$OSM_HOME`` or ``~/.osm``.
    timeout_s
        Longest wait for any one answer.
    key_dir
        Where the CURVE keys are (``server.key``, ``client.key_secret``) when the system requires
        them; default the run directory's ``keys/``.
    """

    def __init__(
        self, home: str | Path | None = None, timeout_s: float = 5.0, key_dir: Path | None = None
    ) -> None:
        self.rundir = RunDir(home)
        self.timeout_s = timeout_s
        self.key_dir = key_dir or self.rundir.home / "keys"
        self._context = zmq.Context()

    def close(self) -> None:
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def endpoints(self) -> dict[str, Any]:
        """The addresses of the running system; SystemNotRunning if there is none."""
        endpoints = self.rundir.read_endpoints()
        # No pid file with endpoints is a remote system (endpoints.json copied from its host).
        stale = self.rundir.pid_path.exists() and running_pid(self.rundir) is None
        if endpoints is None or stale:
            raise SystemNotRunning(
                f"no osm system is running in {self.rundir.home}"
                + (" (its supervisor died; `osm up` cleans up)" if stale else "")
                + f"; start one with `osm up --home {self.rundir.home}`"
            )
        return endpoints

    def _connect(self, kind: int, name: str) -> zmq.Socket:
        endpoints = self.endpoints()
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if endpoints.get("curve"):
                make_curve_client(sock, self.key_dir)
            sock.connect(endpoints[name])
        except BaseException:
            sock.close()
            raise
        return sock

    def _ask(self, kind: int, name: str, message: wire.Message) -> wire.AnyMessage:
        sock = self._connect(kind, name)
        try:
            try:
                sock.send_multipart(
                    wire.frames(message.__struct_config__.tag, message), zmq.NOBLOCK
                )
                answered = sock.poll(self.timeout_s * 1000)
            except zmq.Again:
                answered = 0
            if not answered:
                raise SystemNotRunning(
                    f"{_WHO[name]} of the osm system in {self.rundir.home} did not answer within "
                    f"{self.timeout_s:g} s; check `osm status`, or start the system with `osm up`"
                )
            reply = wire.parse(sock.recv_multipart())[1]
        finally:
            sock.close(linger=0)
        if isinstance(reply, wire.Reply) and not reply.ok:
            raise CommandFailed(f"{_WHO[name]} refused: {reply.error}")
        return reply

    def _command(self, kind: int, name: str, command: str, args: dict[str, Any]) -> Any:
        reply = self._ask(kind, name, wire.Command(command, args))
        if not isinstance(reply, wire.Reply):
            raise WireError(f"{_WHO[name]} answered a command with a {type(reply).__name__}")
        return reply.data

    # -- supervisor ----------------------------------------------------------------------------

    def request(self, command: str, **args: Any) -> Any:
        """Send a command to the supervisor and return its answer's data."""
        return self._command(zmq.REQ, "supervisor_control", command, args)

    def status(self) -> dict[str, Any]:
        """The supervisor's view: its pid and uptime, and per process state, pid, uptime,
        restarts, message and reject counters and the age of the last heartbeat."""
        return self.request("status")

    # -- trader --------------------------------------------------------------------------------

    def trader(self, command: str, **args: Any) -> Any:
        """Send a command (status, halt, resume, flatten, orders, fills, positions) to the trader."""
        return self._command(zmq.DEALER, "trader_orders", command, args)

    def orders(self) -> Any:
        return self.trader("orders")

    def positions(self) -> Any:
        return self.trader("positions")

    def halt(self) -> Any:
        return self.trader("halt")

    def resume(self) -> Any:
        return self.trader("resume")

    def flatten(self) -> Any:
        """Close every position with market orders (allowed while halted)."""
        return self.trader("flatten")

    def fills(self) -> Any:
        return self.trader("fills")

    def order(
        self, instrument: str, units: int, brain: str = "cli", client_id: str | None = None
    ) -> wire.OrderReply:
        """Send a market order through the trader's risk checks; the reply says if it was taken."""
        client_id = client_id or f"{brain}-{uuid.uuid4().hex[:12]}"
        reply = self._ask(
            zmq.DEALER, "trader_orders", wire.Order(brain, instrument, units, client_id)
        )
        if not isinstance(reply, wire.OrderReply):
            raise WireError(f"the trader answered an order with a {type(reply).__name__}")
        return reply

    # -- router --------------------------------------------------------------------------------

    def bars(self, instrument: str, granularity: str, count: int) -> np.ndarray:
        """The last `count` closed bars (BAR_DTYPE rows, oldest first) from the router."""
        request = wire.HistoryRequest(instrument, granularity, count)
        reply = self._ask(zmq.DEALER, "router_history", request)
        if not isinstance(reply, wire.Bars):
            raise WireError(f"the router answered a history request with a {type(reply).__name__}")
        return reply.array()

    def subscribe(
        self, names: str | list[str], topics: list[str] | tuple[str, ...] = ("",)
    ) -> Subscription:
        """Subscribe to topic prefixes on one or more PUB endpoints (``router_bars``,
        ``trader_events``); one socket receives from all of them."""
        names = [names] if isinstance(names, str) else names
        sock = self._connect(zmq.SUB, names[0])
        for name in names[1:]:
            sock.connect(self.endpoints()[name])
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        return Subscription(sock)
