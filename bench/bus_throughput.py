"""Ticks per second the router ingests (validated, aggregated into bars, journaled, published and
acknowledged) against raw pyzmq PUB/SUB messages per second, measured in the same run.

The router is a real process (``python -m osm.live.process router``) on ipc sockets in a temporary
run directory, fed by this process as a feeder would: 256-tick ``wire.Ticks`` batches with feed
positions, at most 256 batches unacknowledged. The clock stops at the acknowledgement of the last
tick. Raw pyzmq: a PUB in a child process sends 64-byte messages as fast as it can to a SUB here.
Also the router's CPU time (user + system, from ``/proc``) over the timed stretch, as ticks per
CPU second: on a shared machine the wall-clock rate moves with the other load, its CPU cost much less.
Prints one JSON line with both rates and their ratio (goal: at least 0.5).
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from osm.core import wire
from osm.core.config import FeedConfig, RouterConfig, SystemConfig, dump
from osm.core.rundir import RunDir
from osm.live.bus import feed_token, plan_endpoints
from osm.live.feeds import open_source

TICKS = 2_000_000
BATCH = 256
WINDOW = 256
RAW_MESSAGES = 2_000_000
_RAW_PUBLISHER = """
import sys, zmq
ctx = zmq.Context(); pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.SNDHWM, 0); pub.bind(sys.argv[1])
sub_ready = ctx.socket(zmq.PULL); sub_ready.bind(sys.argv[2]); sub_ready.recv()
payload = b"x" * 64
while True:
    pub.send(payload)
"""


def raw_pubsub_rate(folder: Path, context: zmq.Context) -> float:
    address, ready = f"ipc://{folder}/raw", f"ipc://{folder}/ready"
    publisher = subprocess.Popen([sys.executable, "-c", _RAW_PUBLISHER, address, ready])
    sub, start = context.socket(zmq.SUB), context.socket(zmq.PUSH)
    try:
        for sock in (sub, start):
            sock.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(address)
        start.connect(ready)
        start.send(b"go")
        sub.recv()
        begin = time.perf_counter()
        for _ in range(RAW_MESSAGES):
            sub.recv(copy=False)
        return RAW_MESSAGES / (time.perf_counter() - begin)
    finally:
        publisher.kill()
        publisher.wait()
        sub.close()
        start.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batches(token: str) -> list[list[bytes]]:
    config = FeedConfig(name="bench", instruments=["EUR_USD"], start="2024-01-08T00:00Z")
    source, position, out = open_source(config), 0, []
    while position < TICKS:
        instrument, rows = source.read(BATCH)
        position += len(rows)
        message = wire.Ticks.of(instrument, rows, "bench", position, token)
        out.append(wire.frames("ticks", message))
    return out


def router_rate(home: Path, context: zmq.Context) -> tuple[float, float, int]:
    rundir = RunDir(home)
    config = SystemConfig(
        feeds=[FeedConfig(name="bench", instruments=["EUR_USD"])],
        router=RouterConfig(granularities=["S5", "M1", "M5", "H1"]),
    )
    rundir.config_path.write_bytes(dump(config))
    endpoints = plan_endpoints(rundir, config)
    rundir.write_endpoints(endpoints)
    frames = batches(feed_token(rundir, "bench"))
    dealer, bars = context.socket(zmq.DEALER), context.socket(zmq.SUB)
    router = subprocess.Popen(
        [sys.executable, "-m", "osm.live.process", "router", "router", "--home", str(home)]
    )
    try:
        for sock in (dealer, bars):
            sock.setsockopt(zmq.LINGER, 0)
        bars.setsockopt(zmq.RCVHWM, 0)
        bars.setsockopt(zmq.SUBSCRIBE, b"bar.")
        bars.connect(endpoints["router_bars"])
        dealer.connect(endpoints["router_ticks"])
        # Warm up (numba compiles or loads its cache) with the first batch before timing.
        dealer.send_multipart(frames[0])
        if not dealer.poll(120_000):
            raise RuntimeError(f"the router did not answer; see {rundir.log_path('router')}")
        dealer.recv_multipart()
        positions = [wire.decode(f[1]).seq for f in frames]
        begin, cpu_begin, sent, acked = time.perf_counter(), cpu_seconds(router.pid), 1, 1
        while True:
            while sent < len(frames) and sent - acked < WINDOW:
                dealer.send_multipart(frames[sent])
                sent += 1
            if not dealer.poll(30_000):
                raise RuntimeError("the router stopped acknowledging")
            ack = wire.decode(dealer.recv_multipart()[1])
            acked = bisect.bisect_right(positions, ack.seq)
            if acked == len(frames):
                break
        elapsed, cpu = time.perf_counter() - begin, cpu_seconds(router.pid) - cpu_begin
        closed = 0
        while bars.poll(200):
            closed += wire.decode(bars.recv_multipart()[1]).count
        ticks = positions[-1] - positions[0]
        return ticks / elapsed, ticks / cpu, closed
    finally:
        router.terminate()
        router.wait(30)
        dealer.close()
        bars.close()


def main() -> None:
    context = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="osm", dir="/tmp") as folder:
        raw = raw_pubsub_rate(Path(folder), context)
        ticks, ticks_per_cpu_s, closed_bars = router_rate(Path(folder), context)
    context.term()
    print(
        json.dumps(
            {
                "bench": "bus_throughput",
                "router_ticks_per_s": round(ticks),
                "raw_pubsub_msgs_per_s": round(raw),
                "ratio": round(ticks / raw, 2),
                "router_ticks_per_cpu_s": round(ticks_per_cpu_s),
                "bars_published": closed_bars,
            }
        )
    )


if __name__ == "__main__":
    main()
