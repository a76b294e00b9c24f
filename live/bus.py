"""Sockets of one process: endpoints from the run directory, CURVE when bound beyond loopback.

Only the thread that created a :class:`Bus` uses its sockets (one owner per socket). Every socket
has linger 0 so a stopping process never hangs on unsent messages.
"""

from __future__ import annotations

import ipaddress
import socket as pysocket
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

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
    """Choose the address of every socket of the system (fixed for its lifetime, across restarts)."""
    curve = not is_loopback(config.host)
    if curve and config.transport == "ipc":
        raise ConfigError("ipc sockets are local only; set transport='tcp' to bind beyond loopback")
    if curve and not curve_keys_exist(rundir):
        raise ConfigError(
            f"binding to {config.host} (not loopback) requires CURVE keys; "
            f"create them with `osm keys --home {rundir.home}` and copy keys/ to every client"
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

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets.append(sock)
        return sock

    def bind(self, kind: int, name: str) -> zmq.Socket:
        sock = self._socket(kind)
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
        return sock

    def connect(self, kind: int, name: str, key_dir: Path | None = None) -> zmq.Socket:
        sock = self._socket(kind)
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
        for sock in self._sockets:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.context.term()
