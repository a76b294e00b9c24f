"""Tick-to-order latency of the live runtime on ipc, p50 and p99, against raw pyzmq one-way latency
measured in the same run.

The system: a real router, trader (paper broker, SQLite journal) and brain process, started with
``python -m osm.live.process ROLE NAME --home DIR`` in a temporary run directory, one granularity
(S5), risk limits that never refuse for rate. The brain runs :class:`Flip`, whose target flips every
bar, so every closed bar produces an order. This process stands in for the feeder: a DEALER to the
router's ``router_ticks`` sending one-tick ``wire.Ticks`` with feed name and position, reading the
acknowledgements.

One sample: the tick that closes bar k-1 (it opens bar k) is sent, and the clock stops when the
trader's ``order.<brain>`` event (its OrderReply for the target ``<brain>-<open of bar k-1>``)
arrives here on the ``trader_events`` SUB. The next tick goes only after that event, its fill and
the acknowledgement have come (no flood). Both instants are ``time.perf_counter_ns()`` in this
process, so no clock crosses a process boundary. The interval covers, in order: the tick hop to the
router, validation and aggregation, the bar publish (the journal append follows it); the bar hop to
the brain, the strategy, the target send; the target hop to the trader, the duplicate lookup, the
risk check, the intent's SQLite commit (WAL, synchronous=NORMAL by default: durable across process
crashes), the broker submit, the event publish; and the event
hop back here. That last hop is the measurement's, not the system's: the reported
``osm_p50_us``/``osm_p99_us`` are the percentiles of the interval minus the raw one-way p50 of the
same run (the p99 keeps the hop's tail, so it errs high). The gross percentiles are reported too.

Stages seen from here, for where the time goes: ``bar`` (the closed bar arriving on a SUB of this
process's own, i.e. tick hop -> router -> bar hop; this extra subscriber costs the router's I/O
thread one more copy), ``ack`` (the router's acknowledgement), ``order`` and ``fill`` (the fill of
the same target, after one more SQLite commit). The brain imports :class:`Flip` from this module
as ``latency:Flip`` (the child processes get this folder on PYTHONPATH).

Raw pyzmq: a child process echoes [topic, payload] messages of the tick's size from a PULL to a
PUSH; one-way latency is half of each ping-pong round trip, one message in flight at a time. The
floor: the same message round a ring of three such echo processes (the stops of osm's path doing
nothing), minus one raw hop as for osm; ``floor_ratio`` is that floor against raw one-way, and
``osm_over_floor`` says how much of osm's figure is its work rather than message passing.

Prints progress to stderr and one JSON line to stdout (goal: osm p50 within 5x raw one-way p50).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq

from osm.core import wire
from osm.core.config import (
    BrainConfig,
    FeedConfig,
    RiskLimits,
    RouterConfig,
    SystemConfig,
    TraderConfig,
    dump,
)
from osm.core.dtypes import as_ticks
from osm.core.granularity import NS
from osm.core.rundir import RunDir
from osm.live.bus import feed_token, plan_endpoints
from osm.strategies.base import Bars, IndicatorCache, Param, Strategy

INSTRUMENT = "EUR_USD"
GRANULARITY = "S5"
BAR_NS = 5 * NS
START_NS = 1_704_672_000 * NS  # Monday 2024-01-08 00:00 UTC: no weekend gap in the run
FEED = "bench"
BRAIN = "flip"
STRATEGY = "latency:Flip"  # this module, importable by the brain through PYTHONPATH=bench/
PROCESSES = (("router", "router"), ("trader", "trader"), ("brain", BRAIN))
START_TIMEOUT_S = 120.0  # the first start may compile numba kernels
SAMPLE_TIMEOUT_S = 10.0
RAW_ROUNDS = 2000
RAW_WARMUP = 200
STAGES = ("bar", "ack", "order", "fill")
GOAL = "p50 within 5x raw one-way"

_RAW_ECHO = """
import os, sys, zmq
parent = os.getppid()
ctx = zmq.Context(); pull = ctx.socket(zmq.PULL); push = ctx.socket(zmq.PUSH)
pull.setsockopt(zmq.LINGER, 0); push.setsockopt(zmq.LINGER, 0)
pull.bind(sys.argv[1]); push.connect(sys.argv[2])
while os.getppid() == parent:
    if pull.poll(1000):
        push.send_multipart(pull.recv_multipart())
"""


class Flip(Strategy):
    """Long on even bars since the epoch, short on odd ones: the target flips at every bar."""

    period_s = Param(5, low=1, high=86_400, doc="the bar length of the brain, in seconds")

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        return np.where((bars.time // (self.period_s * NS)) % 2 == 0, 1.0, -1.0)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def tick_frames(k: int, token: str = "") -> list[bytes]:
    """The feed's k-th tick (position k + 1): 1 s into bar k, so it closes bar k - 1."""
    bid = 1.1 + 1e-5 * (k % 7)
    ticks = as_ticks([START_NS + k * BAR_NS + NS], [bid], [bid + 1e-4])
    message = wire.Ticks.of(INSTRUMENT, ticks, FEED, k + 1, token)
    return wire.frames(f"ticks.{INSTRUMENT}", message)


def client_id(k: int) -> str:
    """The client id of the brain's target for the bar the k-th tick closes."""
    return f"{BRAIN}-{START_NS + (k - 1) * BAR_NS}"


# -- raw pyzmq ---------------------------------------------------------------------------------


def round_trips_ns(folder: Path, context: zmq.Context, relays: int, rounds: int) -> np.ndarray:
    """Round trips of a tick-sized message through `relays` echo processes in a ring, on ipc.

    One relay is raw pyzmq ping-pong (one-way: half a round trip). Three relays are the hops of
    osm's path (feeder -> router -> brain -> trader -> back here) with nothing done at any stop:
    the floor that message passing between Python processes sets for the system's figure.
    """
    addresses = [f"ipc://{folder}/relay{relays}-{i}" for i in range(relays + 1)]
    echoes = [
        subprocess.Popen([sys.executable, "-c", _RAW_ECHO, addresses[i], addresses[i + 1]])
        for i in range(relays)
    ]
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    try:
        for sock in (push, pull):
            sock.setsockopt(zmq.LINGER, 0)
        pull.bind(addresses[-1])
        push.connect(addresses[0])
        frames = tick_frames(0)
        push.send_multipart(frames)
        if not pull.poll(30_000):
            raise RuntimeError("the echo processes did not answer")
        pull.recv_multipart()
        out = np.empty(rounds, np.int64)
        for i in range(-RAW_WARMUP, rounds):
            begin = time.perf_counter_ns()
            push.send_multipart(frames)
            pull.recv_multipart()
            if i >= 0:
                out[i] = time.perf_counter_ns() - begin
        return out
    finally:
        for echo in echoes:
            echo.kill()
            echo.wait()
        push.close()
        pull.close()


# -- the osm system ----------------------------------------------------------------------------


def system_config() -> SystemConfig:
    return SystemConfig(
        feeds=[FeedConfig(name=FEED, instruments=[INSTRUMENT])],
        router=RouterConfig(granularities=[GRANULARITY]),
        trader=TraderConfig(risk=RiskLimits(max_orders_per_minute=10**9)),
        brains=[
            BrainConfig(
                name=BRAIN,
                strategy=STRATEGY,
                params={"period_s": BAR_NS // NS},
                instrument=INSTRUMENT,
                granularity=GRANULARITY,
                window=64,
            )
        ],
    )


class System:
    """Router, trader and brain processes in one run directory, and the sockets of this process.

    This process binds the telemetry PULL (standing in for the supervisor) to see each process
    come up, feeds the router through a DEALER, and listens to closed bars and trader events.
    """

    def __init__(self, home: Path, context: zmq.Context) -> None:
        self.rundir = RunDir(home)
        self.rundir.config_path.write_bytes(dump(system_config()))
        self.endpoints = plan_endpoints(self.rundir, system_config())
        self.rundir.write_endpoints(self.endpoints)
        self.token = feed_token(self.rundir, FEED)
        self.context = context
        self.processes: dict[str, subprocess.Popen] = {}
        self.sockets: list[zmq.Socket] = []
        self.counters: dict[str, dict[str, int]] = {}
        self.telemetry = self._socket(zmq.PULL, "telemetry", bind=True)

    def _socket(self, kind: int, name: str, bind: bool = False) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        (sock.bind if bind else sock.connect)(self.endpoints[name])
        return sock

    def start(self) -> None:
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        home = str(self.rundir.home)
        for role, name in PROCESSES:
            with open(self.rundir.logs / f"{name}.stderr", "ab") as out:
                command = [sys.executable, "-m", "osm.live.process", role, name, "--home", home]
                self.processes[name] = subprocess.Popen(command, stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while set(self.counters) != set(self.processes):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no heartbeat from {set(self.processes) - set(self.counters)}")
            self.poll_heartbeats(100)
        self.ticks = self._socket(zmq.DEALER, "router_ticks")
        self.bars = self._socket(zmq.SUB, "router_bars")
        self.bars.setsockopt(zmq.SUBSCRIBE, f"bar.{INSTRUMENT}.{GRANULARITY}".encode())
        self.events = self._socket(zmq.SUB, "trader_events")
        for prefix in (b"order.", b"fill."):
            self.events.setsockopt(zmq.SUBSCRIBE, prefix)
        self.poller = zmq.Poller()
        for sock in (self.ticks, self.bars, self.events):
            self.poller.register(sock, zmq.POLLIN)

    def poll_heartbeats(self, timeout_ms: int = 0) -> None:
        while self.telemetry.poll(timeout_ms):
            timeout_ms = 0
            _, beat = wire.parse(self.telemetry.recv_multipart())
            if isinstance(beat, wire.Heartbeat):
                self.counters[beat.process] = beat.counters

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.rundir.log_path(name).read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; its log ends:\n{tail}"
                )

    def sample(
        self, k: int, timeout_s: float, stages: tuple[str, ...] = STAGES
    ) -> dict[str, int] | None:
        """Send the k-th tick; return ns from its send to each of `stages`, None on a timeout."""
        frames, wanted, seen = tick_frames(k, self.token), client_id(k), {}
        bar_open = START_NS + (k - 1) * BAR_NS
        # Bars and acks arrive while the system works on the tick: they are stamped and decoded
        # after the order event (or at once when no order is awaited), so that this process
        # takes no CPU from the measured ones meanwhile (the machine may have few cores).
        later: list[tuple[int, list[bytes]]] = []
        begin = time.perf_counter_ns()
        self.ticks.send_multipart(frames)
        deadline = begin + int(timeout_s * 1e9)
        while not set(stages) <= set(seen):
            if later and ("order" in seen or "order" not in stages):
                for now, parts in later:
                    message = wire.parse(parts)[1]
                    if isinstance(message, wire.Ack) and message.seq >= k + 1:
                        seen.setdefault("ack", now - begin)
                    elif isinstance(message, wire.Bars) and message.array()["time"][-1] == bar_open:
                        seen.setdefault("bar", now - begin)
                later.clear()
                continue
            left_ms = (deadline - time.perf_counter_ns()) // 1_000_000
            ready = dict(self.poller.poll(max(0, left_ms))) if left_ms > 0 else {}
            if not ready:
                return None
            for sock in ready:
                parts = sock.recv_multipart()
                now = time.perf_counter_ns()
                if sock is not self.events:
                    later.append((now, parts))
                    continue
                message = wire.parse(parts)[1]
                if isinstance(message, wire.OrderReply) and message.client_id == wanted:
                    if not message.accepted:
                        raise RuntimeError(f"the trader refused {wanted}: {message.reason}")
                    seen.setdefault("order", now - begin)
                elif isinstance(message, wire.Fill) and message.client_id == wanted:
                    seen.setdefault("fill", now - begin)
        return seen

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sock in self.sockets:
            sock.close(linger=0)


def warm_up(system: System, count: int) -> int:
    """Send ticks until the brain decides (it subscribes and loads history meanwhile), then
    `count` full samples; return the index of the next tick."""
    # The first tick closes no bar; its acknowledgement says the router is ready.
    if system.sample(0, START_TIMEOUT_S, ("ack",)) is None:
        raise RuntimeError(f"the router did not acknowledge; see {system.rundir.logs}")
    k, deadline = 1, time.monotonic() + START_TIMEOUT_S
    while system.sample(k, 2.0) is None:
        system.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no order event after {k} ticks; see {system.rundir.logs}")
        k += 1
    k += 1
    log(f"first order after {k} ticks; {count} warm-up samples")
    for _ in range(count):
        if system.sample(k, SAMPLE_TIMEOUT_S) is None:
            raise RuntimeError(f"warm-up sample {k} timed out; see {system.rundir.logs}")
        k += 1
    return k


def measure_osm(home: Path, context: zmq.Context, samples: int, warmup: int) -> dict[str, Any]:
    """Per-stage latencies (ns) of `samples` closing ticks, and the processes' last counters."""
    system = System(home, context)
    try:
        system.start()
        log(f"router, trader and brain up in {home}")
        k = warm_up(system, warmup)
        out = {stage: np.empty(samples, np.int64) for stage in STAGES}
        for i in range(samples):
            got = system.sample(k + i, SAMPLE_TIMEOUT_S)
            if got is None:
                raise RuntimeError(f"sample {i} timed out; see {system.rundir.logs}")
            for stage in STAGES:
                out[stage][i] = got[stage]
            if (i + 1) % 100 == 0:
                log(
                    f"  {i + 1}/{samples} samples, order p50 so far {_us(out['order'][: i + 1])} us"
                )
        time.sleep(system_config().heartbeat_s + 0.2)  # for the counters of the last heartbeats
        system.poll_heartbeats()
        return {"stages": out, "counters": system.counters}
    finally:
        system.close()


def _us(values: np.ndarray, q: float = 50) -> float:
    return round(float(np.percentile(values, q)) / 1000, 1)


def report(
    stages: dict[str, np.ndarray], raw: np.ndarray, relayed: np.ndarray, counters: dict
) -> dict[str, Any]:
    """Log the stage table and the processes' counters; return the result line."""
    hop = float(np.percentile(raw, 50))
    floor = (float(np.percentile(relayed, 50)) - hop) / 1000  # minus the hop back, as osm's
    log("stage (us from the tick's send)   p50      p90      p99      max")
    for stage, values in stages.items():
        row = [_us(values, q) for q in (50, 90, 99, 100)]
        log(f"  {stage:<32}" + "".join(f"{v:>9}" for v in row))
    log(f"  {'raw one-way':<32}" + "".join(f"{_us(raw, q):>9}" for q in (50, 90, 99, 100)))
    log(
        f"  {'3 relays, round trip':<32}"
        + "".join(f"{_us(relayed, q):>9}" for q in (50, 90, 99, 100))
    )
    for name, values in sorted(counters.items()):
        bad = {k: v for k, v in values.items() if k.startswith(("rejected", "errors"))}
        log(f"{name} counters: {msgspec.json.encode(values).decode()}")
        if bad:
            log(f"WARNING: {name} refused or failed: {bad}")
    order = stages["order"]
    osm_p50 = (float(np.percentile(order, 50)) - hop) / 1000
    osm_p99 = (float(np.percentile(order, 99)) - hop) / 1000
    raw_p50 = hop / 1000
    return {
        "bench": "latency",
        "transport": "ipc",
        "samples": len(order),
        "osm_p50_us": round(osm_p50, 1),
        "osm_p99_us": round(osm_p99, 1),
        "raw_one_way_p50_us": round(raw_p50, 1),
        "raw_one_way_p99_us": _us(raw, 99),
        "p50_ratio": round(osm_p50 / raw_p50, 1),
        "goal": GOAL,
        "floor_p50_us": round(floor, 1),
        "floor_ratio": round(floor / raw_p50, 1),
        "osm_over_floor": round(osm_p50 / floor, 1),
        "osm_gross_p50_us": _us(order, 50),
        "osm_gross_p99_us": _us(order, 99),
        "fill_p50_us": round((float(np.percentile(stages["fill"], 50)) - hop) / 1000, 1),
        "bar_p50_us": _us(stages["bar"], 50),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500, help="timed closing ticks")
    parser.add_argument("--warmup", type=int, default=50, help="untimed samples first")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.warmup < 0:
        parser.error("--samples must be at least 1 and --warmup at least 0")
    # A SIGTERM must still run the finally blocks that stop the child processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    context = zmq.Context()
    home = Path(tempfile.mkdtemp(prefix="osmlat", dir="/tmp"))
    keep = False
    try:
        log("raw pyzmq ping-pong on ipc...")
        raw = round_trips_ns(home, context, 1, RAW_ROUNDS) // 2
        relayed = round_trips_ns(home, context, 3, RAW_ROUNDS)
        log(f"raw one-way p50 {_us(raw)} us, 3 relays {_us(relayed)} us; starting osm processes")
        measured = measure_osm(home, context, args.samples, args.warmup)
        result = report(measured["stages"], raw, relayed, measured["counters"])
    except RuntimeError:  # a process died or stopped answering: its log says why
        keep = True
        raise
    finally:
        context.term()
        if keep:
            log(f"run directory kept for its logs: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
