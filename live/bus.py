"""Sockets of one process: endpoints from the run directory, CURVE on every tcp endpoint.

Only the thread that created a :class:`Bus` uses its sockets (one owner per socket). Every socket
has linger 0 so a stopping process never hangs on unsent messages, and a message size limit
(:data:`MAX_MESSAGE_BYTES`, by endpoint and side): libzmq drops the connection of a peer that sends
a longer message before allocating it. Every bound socket has a monitor (:attr:`Bus.monitors`) that
reports peers whose handshake failed (garbage, a wrong or missing CURVE key), which a service
counts by :func:`monitor_event`.

tcp is never plain: whatever the host, loopback included, every tcp socket is a CURVE server or
client with the keys of the run directory (`osm keys`); ipc sockets live in the run directory's
private ``sockets/`` folder. A feed proves which feed it is with the token :func:`feed_token` keeps
in the run directory.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket as pysocket
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from osm.core.config import SystemConfig
from osm.core.errors import ConfigError
from osm.core.rundir import RunDir

ENDPOINT_NAMES = (
    "supervisor_control",  # REP: commands to the supervisor
    "telemetry",  # PULL at the supervisor: heartbeats and counters of every process
    "router_ticks",  # ROUTER at the router: tick batches from feeders (DEALER), acknowledged
    "router_bars",  # PUB at the router: bar.*, bar_partial.*, tick.*
    "router_history",  # ROUTER at the router: history requests
    "trader_orders",  # ROUTER at the trader: orders, targets, commands
    "trader_events",  # PUB at the trader: fill.*, position.*, order.*
)
ANY_HOST = "0.0.0.0"  # bind on every interface
SERVER_KEY = "server"
CLIENT_KEY = "client"
_KB, _MB = 1 << 10, 1 << 20
MAX_MESSAGE_BYTES: dict[str, tuple[int, int]] = {
    # endpoint: (longest message the bound socket receives, the connected one receives)
    "supervisor_control": (64 * _KB, 64 * _MB),  # commands in; status and job lists out
    "telemetry": (1 * _MB, 1 * _KB),  # heartbeats with counters in; a PUSH receives nothing
    "router_ticks": (32 * _MB, 64 * _KB),  # a feed's batch (the router narrows it); acks back
    "router_bars": (256, 64 * _MB),  # subscriptions in (topics are short); bars and ticks out
    "router_history": (64 * _KB, 512 * _MB),  # requests in; years of bars out
    "trader_orders": (64 * _KB, 64 * _MB),  # orders and commands in; replies, order lists out
    "trader_events": (256, 1 * _MB),  # subscriptions in; fills and positions out
}
"""Message size limits by endpoint (ZMQ_MAXMSGSIZE): what the protocol needs, with room."""
_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_auth",  # CURVE: unknown or wrong key
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_protocol",  # not ZMTP: garbage bytes
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    # A peer gone, by its choice or because it broke the protocol after the handshake (a message
    # over the size limit: libzmq reports no more detail than this).
    zmq.EVENT_DISCONNECTED: "peers_disconnected",
}
_MONITORED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with pysocket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def plan_endpoints(rundir: RunDir, config: SystemConfig) -> dict[str, Any]:
    """Choose the address of every socket of the system (fixed for its lifetime, across restarts).

    tcp always means CURVE, on loopback too: any local user can reach a loopback port.
    """
    if config.transport == "ipc" and not is_loopback(config.host):
        raise ConfigError("ipc sockets are local only; set transport='tcp' to bind beyond loopback")
    curve = config.transport == "tcp"
    if curve and not curve_keys_exist(rundir):
        where = "" if is_loopback(config.host) else " and copy keys/ to every client"
        raise ConfigError(
            f"tcp (on {config.host}) requires CURVE keys: any user of the machine can reach a tcp "
            f"port; create them with `osm keys --home {rundir.home}`{where}, or use ipc"
        )
    if config.transport == "ipc":
        return {"curve": curve, **{n: f"ipc://{rundir.sockets / n}" for n in ENDPOINT_NAMES}}
    ports = {n: _free_port(config.host) for n in ENDPOINT_NAMES}
    if config.host != ANY_HOST:
        return {"curve": curve, **{n: f"tcp://{config.host}:{p}" for n, p in ports.items()}}
    # A wildcard is a place to bind, not an address to reach: local peers connect through loopback;
    # a peer on another host uses this file with 127.0.0.1 replaced by this host's address.
    return {
        "curve": curve,
        **{n: f"tcp://127.0.0.1:{p}" for n, p in ports.items()},
        "bind": {n: f"tcp://{config.host}:{p}" for n, p in ports.items()},
    }


def generate_curve_keys(rundir: RunDir) -> tuple[Path, Path]:
    """Create the server and client key pairs in keys/ (secret files 0600)."""
    keys = rundir.keys
    paths = []
    for name in (SERVER_KEY, CLIENT_KEY):
        public, secret = zmq.auth.create_certificates(keys, name)
        Path(secret).chmod(0o600)
        paths.append(Path(public))
    clients = keys / "authorized"
    clients.mkdir(exist_ok=True, mode=0o700)
    (clients / f"{CLIENT_KEY}.key").write_bytes((keys / f"{CLIENT_KEY}.key").read_bytes())
    return paths[0], paths[1]


def feed_token(rundir: RunDir, feed: str) -> str:
    """The secret by which feed `feed` proves itself to the router, created on first use (0600).

    Held in the run directory's private ``keys/feeds/``: only the owner's processes (the feeder
    and the router) read it, so knowing a feed's name is not enough to speak for it.
    """
    folder = rundir.keys / "feeds"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{feed}.token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    # Written whole under another name, then linked: a reader never sees half a token, and of two
    # processes creating it at once, one link wins and both use its token.
    tmp = folder / f".{feed}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def monitor_event(parts: list[bytes]) -> str | None:
    """What to count for a monitor event of a bound socket: a ``handshake_*`` failure (a refused
    peer) or ``peers_disconnected``; None for anything else."""
    try:
        event = parse_monitor_message(parts)["event"]
    except (ValueError, KeyError, IndexError):
        return None
    return _EVENTS.get(event)


def curve_keys_exist(rundir: RunDir) -> bool:
    keys = rundir.home / "keys"
    return all((keys / f"{n}.key_secret").exists() for n in (SERVER_KEY, CLIENT_KEY))


def make_curve_client(sock: zmq.Socket, keys: Path) -> None:
    """Make `sock` a CURVE client with the keys in `keys` (the server's public key, our pair)."""
    try:
        server_public, _ = zmq.auth.load_certificate(keys / f"{SERVER_KEY}.key")
        public, secret = zmq.auth.load_certificate(keys / f"{CLIENT_KEY}.key_secret")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"this system requires CURVE keys and {keys} lacks them ({exc}); copy keys/ "
            "from the system's run directory (made by `osm keys`)"
        ) from None
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = public, secret


class Bus:
    """The ZeroMQ context and sockets of one process."""

    def __init__(self, rundir: RunDir, endpoints: dict[str, Any]) -> None:
        self.rundir, self.endpoints = rundir, endpoints
        self.context = zmq.Context()
        self.curve = bool(endpoints.get("curve"))
        self._auth: ThreadAuthenticator | None = None
        self._sockets: list[zmq.Socket] = []
        self.monitors: list[tuple[zmq.Socket, str]] = []  # (monitor, endpoint) of bound sockets

    def _socket(self, kind: int, max_bytes: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self._sockets.append(sock)
        return sock

    def bind(self, kind: int, name: str, max_bytes: int | None = None) -> zmq.Socket:
        """Bind `name`; `max_bytes` narrows its message size limit (:data:`MAX_MESSAGE_BYTES`)."""
        limit = MAX_MESSAGE_BYTES[name][0]
        sock = self._socket(kind, min(limit, max_bytes) if max_bytes else limit)
        if self.curve:
            self._start_authenticator()
            public, secret = zmq.auth.load_certificate(
                self.rundir.keys / f"{SERVER_KEY}.key_secret"
            )
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_server = True
        address = self.endpoints.get("bind", {}).get(name, self.endpoints[name])
        if address.startswith("ipc://"):
            Path(address[6:]).unlink(missing_ok=True)
        sock.bind(address)
        monitor = sock.get_monitor_socket(_MONITORED)
        self._sockets.append(monitor)
        self.monitors.append((monitor, name))
        return sock

    def connect(self, kind: int, name: str, key_dir: Path | None = None) -> zmq.Socket:
        sock = self._socket(kind, MAX_MESSAGE_BYTES[name][1])
        if self.curve:
            make_curve_client(sock, key_dir or self.rundir.keys)
        sock.connect(self.endpoints[name])
        return sock

    def _start_authenticator(self) -> None:
        if self._auth is None:
            self._auth = ThreadAuthenticator(self.context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(self.rundir.keys / "authorized"))

    def close(self) -> None:
        for sock in self._sockets:  # a monitor after the socket it watches
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.context.term()
