"""Hostile peers and the network: garbage is counted and survived, tcp always needs CURVE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from osm.core import wire
from osm.core.dtypes import as_ticks
from osm.core.errors import SystemNotRunning
from osm.live.client import Client
from tests.live_helpers import wait_for
from tests.system_helpers import osm, running_system, status

FUTURE_NS = 4_102_444_800 * 10**9  # 2100-01-01: a time no real tick has reached


@pytest.fixture
def system(home):
    yield from running_system(home)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def connect(ctx: zmq.Context, kind: int, address: str) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def answer(sock: zmq.Socket, frames: list[bytes], timeout_s: float = 10.0):
    """Send `frames` and return the decoded reply, or None if none came within `timeout_s`."""
    sock.send_multipart(frames)
    if not sock.poll(timeout_s * 1000):
        return None
    return wire.parse(sock.recv_multipart()[-2:])[1]


def test_hostile_input_is_refused_counted_and_survived(home, system, context):
    system()
    endpoints = json.loads((home / "endpoints.json").read_text())
    ticks = connect(context, zmq.DEALER, endpoints["router_ticks"])
    orders = connect(context, zmq.DEALER, endpoints["trader_orders"])
    telemetry = connect(context, zmq.PUSH, endpoints["telemetry"])
    control = connect(context, zmq.DEALER, endpoints["supervisor_control"])  # REQ-less: raw frames

    garbage = [[b"\xff\xfe"], [b"ticks", b"\x00not msgpack"], [b"a", b"b", b"c", b"d"]]
    bad_quotes = [
        as_ticks([FUTURE_NS], [1.2], [1.1]),  # crossed: ask < bid
        as_ticks([FUTURE_NS], [np.nan], [1.1]),  # not finite
        as_ticks([FUTURE_NS], [-1.0], [1.1]),  # not positive
        as_ticks([1], [1.1], [1.1001]),  # long before the last accepted tick
    ]
    for frames in garbage:
        ticks.send_multipart(frames)
        telemetry.send_multipart(frames)
    for rows in bad_quotes:  # from no feed, or one that is not configured, or without its token
        ticks.send_multipart(wire.frames("ticks", wire.Ticks.of("EUR_USD", rows)))
        ticks.send_multipart(wire.frames("ticks", wire.Ticks.of("EUR_USD", rows, "intruder", 1)))
        ticks.send_multipart(wire.frames("ticks", wire.Ticks.of("EUR_USD", rows, "synthetic", 1)))
    ticks.send_multipart(wire.frames("ticks", wire.Ticks.of("XAU_XAG", bad_quotes[3])))
    ticks.send_multipart(wire.frames("ticks", wire.Command("status")))
    forged = wire.Heartbeat("intruder", 1, 0, 0, {"rejected.none": 0})
    telemetry.send_multipart(wire.frames("heartbeat.intruder", forged))
    # The router's name and pid are no secret; its token is: a forger cannot speak for it.
    router_pid = next(p["pid"] for p in status(home)["processes"] if p["name"] == "router")
    forged = wire.Heartbeat("router", router_pid, 0, 0, {"forged": 1}, "not-the-token")
    telemetry.send_multipart(wire.frames("heartbeat.router", forged))

    for frames in garbage[:2]:
        reply = answer(orders, frames)
        assert isinstance(reply, wire.Reply) and not reply.ok and "malformed" in reply.error
    for units, instrument, why in [
        (10**9, "EUR_USD", "max_order"),
        (0, "EUR_USD", "non-zero"),
        (1000, "XAU_XAG", "unknown instrument"),
    ]:
        order = wire.Order("hostile", instrument, units, f"hostile-{units}-{instrument}")
        reply = answer(orders, wire.frames("order", order))
        assert isinstance(reply, wire.OrderReply) and not reply.accepted and why in reply.reason
    assert not answer(orders, wire.frames("command", wire.Command("rm -rf /"))).ok

    for frames in ([b"", b"\x01junk", b"x"], [b"", *wire.frames("c", wire.Command("format"))]):
        reply = answer(control, frames)
        assert isinstance(reply, wire.Reply) and not reply.ok

    def counted():
        report = status(home)
        by_name = {p["name"]: p for p in report["processes"]}
        router, trader = by_name["router"]["counters"], by_name["trader"]["counters"]
        wanted = [
            router.get("rejected.malformed", 0) >= 3,
            router.get("rejected.unknown_feed", 0) >= 9,  # no feed, or one not configured
            router.get("rejected.forged_feed", 0) >= 4,  # a real feed's name without its token
            router.get("rejected.unexpected_message", 0) >= 1,
            trader.get("rejected.max_order", 0) >= 1,
            trader.get("rejected.unknown_command", 0) >= 1,
            report["counters"].get("rejected.malformed", 0) >= 4,
            report["counters"].get("rejected.unknown_process", 0) >= 1,
            report["counters"].get("rejected.forged_heartbeat", 0) >= 1,
            report["counters"].get("rejected.unknown_command", 0) >= 1,
        ]
        return report if all(wanted) else None

    report = wait_for(counted, 30, "every hostile input counted")
    for p in report["processes"]:
        assert p["state"] == "running" and p["restarts"] == 0, p
        assert "forged" not in p["counters"], p  # the forged heartbeat's counters were not taken
        if p["name"] in ("router", "trader"):
            assert p["rejected"] >= 5
    assert report["rejected"] >= 6

    # The same numbers reach a user through `osm status --json`; the system still works.
    cli = json.loads(osm(home, "status", "--json").stdout)
    assert {p["name"]: p["rejected"] > 0 for p in cli["processes"]}["router"]
    with Client(home) as client:
        refused = client.order("EUR_USD", 600_000)
        accepted = client.order("EUR_USD", 1_000)
    assert not refused.accepted and "exceeds max_order 500000" in refused.reason
    assert accepted.accepted and accepted.units == 1_000
    oversize = osm(home, "order", "EUR_USD", "-600000")
    assert oversize.returncode == 1 and "max_order" in oversize.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1", "127.0.0.2"])
def test_tcp_refuses_to_start_without_keys_even_on_loopback(home, host):
    # Any user of the machine can reach a loopback port: tcp is CURVE or nothing.
    done = osm(home, "up", "--transport", "tcp", "--host", host)
    assert done.returncode == 2 and "osm keys" in done.stderr, done.stderr
    assert not (home / "supervisor.pid").exists() and not (home / "endpoints.json").exists()


def test_curve_tcp_accepts_a_keyed_client_and_refuses_others(home, system, context, tmp_path):
    assert osm(home, "keys").returncode == 0
    system("--transport", "tcp", "--host", "0.0.0.0")
    endpoints = json.loads((home / "endpoints.json").read_text())
    assert endpoints["curve"] is True
    assert endpoints["bind"]["supervisor_control"].startswith("tcp://0.0.0.0:")
    assert endpoints["supervisor_control"].startswith("tcp://127.0.0.1:")

    report = status(home)  # the keyed client: the run directory's keys
    assert report["curve"] and all(p["state"] == "running" for p in report["processes"])
    assert json.loads(osm(home, "status", "--json").stdout)["curve"] is True

    plain = connect(context, zmq.REQ, endpoints["supervisor_control"])
    assert answer(plain, wire.frames("command", wire.Command("status")), timeout_s=3) is None
    dealer = connect(context, zmq.DEALER, endpoints["trader_orders"])
    assert answer(dealer, wire.frames("command", wire.Command("positions")), timeout_s=3) is None

    # A client with a key pair the system never authorised, though it knows the server's key.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    zmq.auth.create_certificates(stranger, "client")
    (stranger / "server.key").write_bytes((home / "keys" / "server.key").read_bytes())
    with Client(home, timeout_s=3, key_dir=stranger) as client, pytest.raises(SystemNotRunning):
        client.status()

    wait_for(lambda: status(home)["pid"], 60, "the keyed client still answered")

    # Every refused peer is counted by how its handshake failed (the supervisor's control socket).
    # On a busy machine a client may give up before its handshake was even judged: knock again.
    def refused_counted() -> bool:
        knock = connect(context, zmq.REQ, endpoints["supervisor_control"])
        assert answer(knock, wire.frames("command", wire.Command("status")), 0.5) is None
        knock.close(linger=0)
        with Client(home, timeout_s=1, key_dir=stranger) as client, pytest.raises(SystemNotRunning):
            client.status()
        return {"rejected.handshake_protocol", "rejected.handshake_auth"} <= set(
            status(home)["counters"]
        )

    wait_for(refused_counted, 60, "the refused handshakes counted")


def test_tcp_on_loopback_is_curve(home, system, context):
    assert osm(home, "keys").returncode == 0
    system("--transport", "tcp", "--host", "127.0.0.2")
    endpoints = json.loads((home / "endpoints.json").read_text())
    assert endpoints["curve"] is True and endpoints["trader_orders"].startswith("tcp://127.0.0.2:")
    assert status(home)["curve"]
    # Another local user, without the run directory's keys, gets no answer.
    dealer = connect(context, zmq.DEALER, endpoints["trader_orders"])
    assert answer(dealer, wire.frames("command", wire.Command("halt")), timeout_s=3) is None


# What another local user tries, in plain Python (no package of ours): read the run directory's
# files and connect to its ipc sockets. It prints what each attempt gave.
_OTHER_USER_PROBE = """
import json, os, socket, sys
home = sys.argv[1]
results = {"listed_parent": sorted(os.listdir(os.path.dirname(home)))}
for path in sys.argv[2:]:
    try:
        if path.startswith("ipc://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path[len("ipc://"):])
        else:
            with open(path, "rb") as f:
                f.read(1)
        results[path] = "open"
    except OSError as exc:
        results[path] = type(exc).__name__
print(json.dumps(results))
"""


@pytest.fixture
def open_parent():
    """A world-traversable folder for the run directory: only osm's own modes protect it."""
    folder = Path(tempfile.mkdtemp(prefix="osm-other-user-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# The other user runs the system's Python (ours may sit in a folder only its owner can enter).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as another user")
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no /usr/bin/python3 for the other user")
def test_another_local_user_can_read_nothing_and_reach_no_endpoint(open_parent):
    home = open_parent / "home"
    for up in running_system(home):
        up()
        endpoints = json.loads((home / "endpoints.json").read_text())
        ipc = [a for a in endpoints.values() if isinstance(a, str) and a.startswith("ipc://")]
        files = [p for p in home.rglob("*") if p.is_file() and not p.is_socket()]
        assert ipc and any(p.suffix == ".sqlite" for p in files), (ipc, files)
        probe = subprocess.run(
            [SYSTEM_PYTHON, "-I", "-S", "-c", _OTHER_USER_PROBE, str(home), *ipc,
             *map(str, files)],
            capture_output=True, text=True, timeout=60, user=65534, group=65534, cwd="/",
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        results = json.loads(probe.stdout)
        assert results.pop("listed_parent") == ["home"]  # the parent is open to it
        assert results and set(results.values()) == {"PermissionError"}, results
