"""A live chart streaming at the system's full speed, seen from the kernel's wire: comm messages a
second, bytes per forming-bar update, how fast the kernel still answers, and its memory.

The system: ``osm up`` in a temporary run directory, the synthetic market flat out (``--speed 0``)
building S5 bars (``--speed`` to slow it). The kernel: a real ipykernel started with jupyter_client, which opens
``osm.chart("EUR_USD", "S5", strategy=SmaCross, window=500)`` on that system (no front end is
attached: the kernel sends every widget message on iopub all the same, which is what the Jupyter
server would forward to the browser).

This process owns the client's sockets and polls iopub and shell in one loop:

- every ``comm_msg`` on iopub is counted and sized (the message's ``data`` as JSON plus its binary
  buffers, what a widget sends); those to the chart's forming mark are the forming-bar updates;
- every ``--every`` seconds a trivial ``execute_request`` (``pass``) goes on shell and the time to
  its ``execute_reply`` is one response-time sample;
- the kernel's RSS (``/proc/<pid>/status``) is read once a second; "before" is after the chart's
  window first filled (``--warmup`` seconds), "after" at the end;
- before the chart opens, the same execute loop runs ``--baseline`` seconds with the system
  streaming all the same (``kernel_no_chart_*``): on a 2-core machine the replay's own processes
  (feeder, router) take most of the CPU flat out, and that part of the kernel's response time is
  not the chart's;
- the kernel's garbage collections longer than 10 ms while measuring (``gc.callbacks``): none
  in our runs; the follower and the chart allocate nothing that lives (collections seen during
  the chart's opening, imports and numba compilation, are not counted).

``--probe`` (diagnosis; the probe itself wakes a thread 1,000 times a second) adds, per phase, the
lateness of a 1 ms sleep on a kernel thread (how long a thread waits for the GIL and a core) and,
with the chart, the follower's stretches, wall and thread CPU: each drain of its subscription and
each hand-over to the chart. ``--switch-interval`` sets the kernel's ``sys.setswitchinterval``.

The system runs at the priority ``osm up`` gives it (``--priority``): at speed 0, background
(:mod:`osm.live.priority`), so the kernel's figures are those a notebook gets beside a flat-out
replay; ``--priority normal`` measures the kernel competing with it as an equal.

Browser figures (publish-to-paint at 10 bars/s, 2,000 candles drawn) are not measured here.

Prints progress to stderr and one JSON line to stdout. Goals (issue 7): at most 60 messages/s per
chart, a forming-bar update under 1 KB, kernel p99 under 50 ms while streaming, memory flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from jupyter_client.manager import KernelManager

from osm.core.rundir import RunDir
from osm.live.client import running_pid

GOALS = {"messages_per_s": 60, "forming_bytes": 1024, "kernel_p99_ms": 50}
WINDOW = 500
OPEN_CHART = """
import gc, time
_gc_pauses = []  # the kernel's garbage collections (generation, seconds)
def _gc_timer(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        _gc_pauses.append((info["generation"], time.perf_counter() - started[0]))
gc.callbacks.append(_gc_timer)
from osm.widgets.chart import chart
c = chart("EUR_USD", "S5", strategy="osm.strategies.sma_cross:SmaCross",
          params={{"fast": 10, "slow": 30}}, window={window}, home={home!r})
"""
# A watchdog thread: how late a 1 ms sleep wakes, i.e. how long a thread of the kernel waits to
# get the GIL (and a core) back; with the chart, also the follower's stretches: a drain of the
# subscription, a hand-over to the chart.
WATCH = """
import json, os, threading, time
_probe = {"late": [], "drain": [], "hand": []}
_stop_probe = threading.Event()
def _watch():
    while not _stop_probe.is_set():
        t = time.perf_counter()
        time.sleep(0.001)
        _probe["late"].append(time.perf_counter() - t - 0.001)
threading.Thread(target=_watch, name="probe", daemon=True).start()
_cpu0 = {}, time.monotonic()
def _thread_cpu():
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for t in threading.enumerate():
        try:
            fields = open(f"/proc/self/task/{t.native_id}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[t.name] = (int(fields[11]) + int(fields[12])) / tick
    return out
def _stats():
    import numpy as np
    global _cpu0
    cpu, now = _thread_cpu(), time.monotonic()
    out = {"thread_cpu_pct": {k: round(100 * (v - _cpu0[0].get(k, 0)) / (now - _cpu0[1]), 1)
                              for k, v in cpu.items()}}
    _cpu0 = cpu, now
    for k, v in _probe.items():
        a = np.array(v) * 1e3
        if len(a):
            out[k] = [len(a)] + [round(float(np.percentile(a, q)), 2) for q in (50, 99, 100)]
        v.clear()
    return out
"""
TIME_FOLLOWER = """
_probe.update(drain_cpu=[], hand_cpu=[])
def _timed(name, f):
    def timed(*a, **k):
        t, cpu = time.perf_counter(), time.thread_time()
        try:
            return f(*a, **k)
        finally:
            _probe[name].append(time.perf_counter() - t)
            _probe[name + "_cpu"].append(time.thread_time() - cpu)
    return timed
c.follower._drain = _timed("drain", c.follower._drain)
c.follower._sink = _timed("hand", c.follower._sink)
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def osm(home: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("osm")), *args, "--home", str(home)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def stop_system(home: Path) -> None:
    osm(home, "down")
    pid = running_pid(RunDir(home))
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def comm_bytes(msg: dict) -> int:
    buffers = msg.get("buffers") or []
    data = json.dumps(msg["content"].get("data", {}))
    return len(data) + sum(memoryview(b).nbytes for b in buffers)


class Bench:
    """The kernel client's loop: one thread, shell and iopub polled together."""

    def __init__(self, km: KernelManager) -> None:
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.poller = zmq.Poller()
        self.shell, self.iopub = self.kc.shell_channel.socket, self.kc.iopub_channel.socket
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)
        self.comms: list[tuple[float, str, int]] = []  # (time, comm id, bytes)
        self.counting = False

    def close(self) -> None:
        self.kc.stop_channels()

    def _drain_iopub(self) -> None:
        while self.iopub.poll(0):
            msg = self.kc.get_iopub_msg(timeout=0)
            kind = msg["header"]["msg_type"]
            if kind == "comm_msg" and self.counting:
                self.comms.append((time.monotonic(), msg["content"]["comm_id"], comm_bytes(msg)))
            elif kind == "error":
                log("kernel error: " + "\n".join(msg["content"]["traceback"]))

    def execute(self, code: str, timeout: float = 60, **expressions: str) -> tuple[float, dict]:
        """Run `code`, return (seconds to the reply, the user expressions' text values)."""
        sent = time.perf_counter()
        msg_id = self.kc.execute(code, silent=False, user_expressions=expressions)
        deadline = sent + timeout
        while time.perf_counter() < deadline:
            ready = dict(self.poller.poll(100))
            if self.iopub in ready:
                self._drain_iopub()
            while self.shell in ready and self.shell.poll(0):
                reply = self.kc.get_shell_msg(timeout=0)
                if reply["parent_header"].get("msg_id") != msg_id:
                    continue
                took = time.perf_counter() - sent
                content = reply["content"]
                if content["status"] != "ok":
                    raise RuntimeError(f"{code!r} failed: {content.get('evalue')}")
                values = {
                    k: v.get("data", {}).get("text/plain", v.get("evalue"))
                    for k, v in content.get("user_expressions", {}).items()
                }
                return took, values
        raise TimeoutError(f"no reply to {code!r} in {timeout} s")

    def sample(
        self, seconds: float, every: float, each_second: Callable[[float], None] | None = None
    ) -> list[float]:
        """Send a trivial execute every `every` seconds for `seconds`; return the reply times."""
        start = time.monotonic()
        latencies: list[float] = []
        next_second = start + 1.0
        while (now := time.monotonic()) < start + seconds:
            latencies.append(self.execute("pass")[0])
            if each_second is not None and now >= next_second:
                each_second(now)
                next_second += 1.0
            self.pump(max(0.0, every - (time.monotonic() - now)))
        return latencies

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.poller.poll(int(left * 1000) + 1):
                self._drain_iopub()


def run(
    seconds: float,
    every: float,
    warmup: float,
    speed: str,
    baseline: float,
    folder: Path,
    probe: bool = False,
    switch_interval: float | None = None,
    setup: str = "",
    priority: str = "auto",
) -> dict[str, Any]:
    home = folder / "home"
    log(f"osm up in {home} (synthetic, speed {speed}, S5, priority {priority})")
    up = osm(home, "up", "--speed", speed, "--start", "2024-03-05T00:00:00Z",
             "--granularities", "S5", "--priority", priority)  # fmt: skip
    if up.returncode:
        raise RuntimeError(up.stderr + up.stdout)
    status = osm(home, "status", "--json")
    system_priority = json.loads(status.stdout)["priority"] if not status.returncode else None
    env = {**os.environ, "OSM_HOME": str(home)}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(folder))
    bench = None
    try:
        bench = Bench(km)
        pid = km.provisioner.process.pid
        if switch_interval is not None:
            bench.execute(f"import sys; sys.setswitchinterval({switch_interval})")
        probes: dict[str, Any] = {}
        if probe:
            bench.execute(WATCH)
        if setup:
            bench.execute(setup)
        # The same execute loop with no chart, the system streaming all the same: what the
        # replay's own processes cost the kernel on these cores.
        log(f"baseline: {baseline:.0f} s of executes without a chart")
        baseline_lat = bench.sample(baseline, every)
        if probe:
            probes["no_chart"] = json.loads(
                bench.execute("pass", s="json.dumps(_stats())")[1]["s"].strip("'")
            )
        took, _ = bench.execute(OPEN_CHART.format(window=WINDOW, home=str(home)), timeout=180)
        log(f"chart open in {took:.2f} s; warming up {warmup:.0f} s")
        bench.pump(warmup)
        _, ids = bench.execute("pass", forming="c.forming.comm.comm_id", seen="c.seen")
        forming_id = ids["forming"].strip("'\"")
        seen0, rss0 = int(ids["seen"]), rss_mb(pid)
        log(f"{seen0} bars on the chart, kernel RSS {rss0:.1f} MB; streaming {seconds:.0f} s")
        bench.execute("_gc_pauses.clear()")  # count only the collections while measuring
        if probe:
            bench.execute(TIME_FOLLOWER + "_stats()")
        bench.counting = True
        start = time.monotonic()
        rss = [(0.0, rss0)]

        def each_second(now: float) -> None:
            rss.append((now - start, rss_mb(pid)))
            if len(rss) % 5 == 0:
                log(f"  {now - start:4.0f} s: {len(bench.comms)} comm messages, "
                    f"RSS {rss[-1][1]:.1f} MB")  # fmt: skip

        latencies = bench.sample(seconds, every, each_second)
        elapsed = time.monotonic() - start
        bench.counting = False
        _, ids = bench.execute(
            "pass", seen="c.seen", gc="[round(d * 1e3) for g, d in _gc_pauses if d > 0.01]"
        )
        gc_pauses = json.loads(ids["gc"])
        if probe:
            probes["chart"] = json.loads(
                bench.execute("_stop_probe.set()", s="json.dumps(_stats())")[1]["s"].strip("'")
            )
        seen1, rss1 = int(ids["seen"]), rss_mb(pid)
        bench.execute("c.close()")
    finally:
        if bench is not None:
            bench.close()
        km.shutdown_kernel(now=False)
        stop_system(home)

    lat_ms = np.array(latencies) * 1e3
    base_ms = np.array(baseline_lat) * 1e3 if baseline_lat else np.array([np.nan])
    forming = [b for _, cid, b in bench.comms if cid == forming_id]
    per_s = np.bincount([int(t - bench.comms[0][0]) for t, _, _ in bench.comms])
    rss_t, rss_v = np.array(rss).T
    slope = float(np.polyfit(rss_t, rss_v, 1)[0]) if len(rss) > 2 else 0.0
    return {
        "bench": "widget_stream",
        "speed": speed,
        "window": WINDOW,
        "seconds": round(elapsed, 1),
        "bars_per_s": round((seen1 - seen0) / elapsed, 1),
        "comm_messages_per_s": round(len(bench.comms) / elapsed, 1),
        "comm_messages_max_in_1s": int(per_s.max()) if len(per_s) else 0,
        "comm_bytes_per_s": round(sum(b for _, _, b in bench.comms) / elapsed),
        "forming_updates": len(forming),
        "forming_bytes_p50": int(np.median(forming)) if forming else None,
        "forming_bytes_max": max(forming) if forming else None,
        "kernel_execute_samples": len(lat_ms),
        "kernel_p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "kernel_p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "kernel_max_ms": round(float(lat_ms.max()), 2),
        "kernel_no_chart_p50_ms": round(float(np.percentile(base_ms, 50)), 2),
        "kernel_no_chart_p99_ms": round(float(np.percentile(base_ms, 99)), 2),
        "kernel_gc_pauses_over_10ms": gc_pauses,
        "kernel_rss_before_mb": round(rss0, 1),
        "kernel_rss_after_mb": round(rss1, 1),
        "kernel_rss_slope_mb_per_min": round(slope * 60, 2),
        "switch_interval_s": switch_interval,
        "system_priority": system_priority,
        "setup": setup,
        **({"probe_ms_n_p50_p99_max": probes} if probe else {}),
        "browser": "not measured",
        "goals": GOALS,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="streaming time measured")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between executes")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--speed", default="0", help="the market's speed: 0 flat out (default)")
    parser.add_argument(
        "--baseline",
        type=float,
        default=10.0,
        help="seconds of executes before the chart opens (the system streaming)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="time the follower's stretches and a 1 ms sleep's lateness in the kernel",
    )
    parser.add_argument(
        "--switch-interval", type=float, help="the kernel's sys.setswitchinterval (seconds)"
    )
    parser.add_argument("--setup", default="", help="code the kernel runs before the baseline")
    parser.add_argument(
        "--priority",
        choices=["auto", "normal", "background"],
        default="auto",
        help="the system's CPU priority (osm up --priority; auto is background at speed 0)",
    )
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="osm-widget-bench-"))
    try:
        result = run(
            args.seconds, args.every, args.warmup, args.speed, args.baseline, folder,
            args.probe, args.switch_interval, args.setup, args.priority,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
