"""The live chart in a real browser: from the router publishing a bar to its candle painted, and
2,000 candles drawn at once.

JupyterLab runs on 127.0.0.1 with a token, its own port, Jupyter directories and ``OSM_HOME``
(the Lab of ``tests/test_browser.py``); Playwright drives Debian's ``/usr/bin/chromium`` with the
test's flags (never a downloaded browser: ``make browser`` installs it). The system is ``osm up``
on the synthetic market building S5 bars at ``--rate`` bars a second (``--speed`` 5 x rate), started
once the notebook's kernel is ready, so the chart (``window=500``, SmaCross overlays) begins short
and its candles grow one by one: the number of candles painted names the newest bar.

Clocks. Everything runs on this machine, so the browser's wall clock
(``performance.timeOrigin + performance.now()``) and Python's ``time.time()`` are one clock:

- *published*: this process subscribes to the router's ``bar.EUR_USD.S5`` (its own socket, one
  ipc hop from the router, tens of microseconds) and stamps each closed bar with ``time.time()``
  on arrival, keyed by its open time. The bar's open time alone would not do: the replay clock
  (feeder pacing, tick spacing, the router's batching) puts the close anywhere in a bar's last
  tick interval.
- *painted*: in the page, a MutationObserver on the chart's SVG schedules a
  ``requestAnimationFrame`` at the first mutation; in that frame callback it counts the closed
  candles (the sub-paths of the candle mark's rising and falling body paths, its only filled
  lines, see ``osm.widgets.chart.candle_paths``; the forming bar is not one of them) and posts a
  message to itself, whose handler runs after the frame was painted and stamps the time.
- The candle count n names a bar by index: bar n-1 of the chart, whose open time is known from the
  chart's own last bar and count, read from the kernel at the end (the market is continuous on a
  Tuesday and nothing is skipped at this rate, which is checked).

publish-to-paint = painted - published, per bar, over the bars the chart drew while its window
was filling (``--seconds`` of them; the first paint, the history the chart opens with, is left
out). Also reported: the page's main-thread time a second (Chrome's ``Performance.getMetrics``:
tasks, scripts, style, layout) and how many SVG attributes a second the chart set (with bqplot's
OHLC mark, a dozen per candle on every update: the reason the candles are three paths now).

2,000 candles: a fresh ``LiveChart(window=2000)`` is displayed empty, then one cell stamps
``time.time()`` and hands it 2,000 bars at once; the time to the frame painted with 2,000 candles
is the figure (kernel serialisation, websocket, ipywidgets and bqplot rendering included), over
``--repeats`` fresh charts.

The server's IOPub rate limit (it drops messages above 1,000 msg/s) is checked in its log.
Prints progress to stderr and one JSON line to stdout.
Goals (issue 7): publish-to-paint p95 under 150 ms at 10 bars/s; 2,000 candles in under 500 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the Lab and the browser flags of tests/test_browser.py

from osm.core.granularity import NS  # noqa: E402
from osm.live.client import Client  # noqa: E402
from tests.system_helpers import osm, stop  # noqa: E402
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, Lab  # noqa: E402

GOALS = {"paint_p95_ms": 150, "candles_2000_ms": 500}
STEP_NS = 5 * NS  # S5
WINDOW = 500

SETUP = """\
import time
import numpy as np
from osm.core.dtypes import empty_bars
from osm.live.client import Batch
from osm.research.synthetic import random_walk_bars
from osm.widgets.chart import LiveChart, chart


def bars(n, seed=0):
    return random_walk_bars(n, seed=seed, start="2024-03-05T08:00:00Z", step="5s", vol=1e-4)


print("READY")
"""
CHART = """\
c = chart("EUR_USD", "S5", strategy="osm.strategies.sma_cross:SmaCross",
          params={{"fast": 10, "slow": 30}}, window={window}{hz})
c.figure.add_class("bench-live")
c
"""
BIG = """\
big{k} = LiveChart("EUR_USD", "S5", window=2000)
big{k}.figure.add_class("bench-big{k}")
big{k}
"""
APPLY = """\
rows, none = bars(2000, seed={k}), empty_bars(0)
t0 = time.time()
big{k}.apply(Batch(rows, none, [], []))
print(f"APPLIED{k} {{t0:.6f}} {{time.time() - t0:.6f}}")
"""
REPORT = """\
with c._lock:  # the follower's thread applies batches under it
    print("CHART", c.seen, int(c.series.view["time"][-1]),
          c.follower.merge.counters["bars_skipped"],
          c.follower.merge.counters["bars_skipped_ahead"], c.follower.batches_sent)
c.close()  # the 2,000-candle charts are drawn alone
"""

# Installed once per figure; window[key].paints collects [closed candles, painted at, first
# mutation at, frame at] (ms, wall clock); window[key].moved counts SVG attributes set, .by per
# element tag, class and attribute.
OBSERVE = """
([selector, key]) => {
  const svg = document.querySelector(selector);
  const state = (window[key] = {paints: [], last: -1, queued: false, moved: 0, by: {}});
  const now = () => performance.timeOrigin + performance.now();
  const candles = () => {  // sub-paths of the candle mark's body paths: one per closed candle
    let n = 0;
    for (const path of svg.querySelectorAll('g.curve > path.line')) {
      if (path.style.fillOpacity === '1') n += ((path.getAttribute('d') || '').match(/M/g) || []).length;
    }
    return n;
  };
  const frame = () => {
    state.queued = false;
    const n = candles();
    if (n === state.last) return;
    state.last = n;
    const channel = new MessageChannel();  // its message is handled after this frame's paint
    const mutated = state.mutated, framed = now();
    channel.port1.onmessage = () => state.paints.push([n, now(), mutated, framed]);
    channel.port2.postMessage(null);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type !== 'attributes') continue;
      state.moved += 1;
      const t = r.target, at = `${t.tagName}.${t.getAttribute('class') || ''}@${r.attributeName}`;
      state.by[at] = (state.by[at] || 0) + 1;
    }
    if (!state.queued) { state.queued = true; state.mutated = now(); requestAnimationFrame(frame); }
  }).observe(svg, {childList: true, subtree: true, attributes: true});
  state.last = candles();
  return state.last;
}
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Published:
    """A thread that owns a SUB socket on the router's closed S5 bars and stamps each on arrival."""

    def __init__(self, home: Path) -> None:
        self.at: dict[int, float] = {}  # bar open time (ns): time.time() on arrival
        self._home = home
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-published", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        try:
            with Client(self._home) as client, client.subscribe(
                "router_bars", ["bar.EUR_USD.S5"]
            ) as sub:  # fmt: skip
                self._ready.set()
                while not self._stop.is_set():
                    got = sub.recv(0.2)
                    if got is None:
                        continue
                    stamp = time.time()
                    for t in got[1].array()["time"]:
                        self.at.setdefault(int(t), stamp)
        except BaseException as exc:  # noqa: BLE001 - reported in the result
            self.error = exc
            self._ready.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def notebook(path: Path, hz: float | None, repeats: int) -> None:
    cells = [SETUP, CHART.format(window=WINDOW, hz="" if hz is None else f", hz={hz}")]
    cells.append(REPORT)
    for k in range(repeats):
        cells += [BIG.format(k=k), APPLY.format(k=k)]
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)"}
    nbformat.write(book, path)


def run_cell(page, index: int) -> None:
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def output_line(page, prefix: str, timeout_s: float) -> str:
    found = page.locator(".jp-OutputArea-output", has_text=prefix).first
    found.wait_for(timeout=timeout_s * 1000)
    text = found.inner_text()
    return next(line for line in text.splitlines() if line.startswith(prefix))


def metrics(cdp) -> dict[str, float]:
    """The page's main-thread time so far (s): tasks, scripts, style, layout."""
    wanted = ("TaskDuration", "ScriptDuration", "RecalcStyleDuration", "LayoutDuration")
    got = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {name: got[name] for name in wanted}


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def run(seconds: float, rate: float, hz: float | None, repeats: int, folder: Path) -> dict:
    from playwright.sync_api import sync_playwright

    home = folder / "home"
    lab = Lab(folder, home)
    notebook(lab.notebooks / "paint.ipynb", hz, repeats)
    published = None
    try:
        deadline = time.monotonic() + 90
        while not lab.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer: {lab.tail()}")
            time.sleep(0.2)
        profile = folder / "chromium-profile"
        profile.mkdir()
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
            )  # fmt: skip
            context.set_default_timeout(60_000)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(f"{lab.url}/lab/tree/paint.ipynb?token={lab.token}")
                page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
                run_cell(page, 0)
                output_line(page, "READY", 120)
                speed = f"{rate * 5:g}"
                log(f"osm up in {home} (synthetic, S5, speed {speed}: {rate:g} bars/s)")
                up = osm(home, "up", "--speed", speed, "--start", "2024-03-05T08:00:00Z",
                         "--granularities", "S5")  # fmt: skip
                if up.returncode:
                    raise RuntimeError(up.stderr + up.stdout)
                published = Published(home)
                run_cell(page, 1)
                page.locator(".bench-live").wait_for()
                start = page.evaluate(OBSERVE, [".bench-live", "__live"])
                log(f"chart open with {start} candles; streaming {seconds:.0f} s")
                cdp = context.new_cdp_session(page)
                cdp.send("Performance.enable")
                before = metrics(cdp)
                time.sleep(seconds)
                paints = page.evaluate("window.__live.paints")
                moved = page.evaluate("window.__live.moved")
                moved_by = page.evaluate("window.__live.by")
                busy = {k: round((v - before[k]) / seconds, 3) for k, v in metrics(cdp).items()}
                log(f"browser busy, seconds a second: {busy}")
                run_cell(page, 2)
                chart_line = output_line(page, "CHART", 60).split()

                draws = []
                for k in range(repeats):
                    run_cell(page, 3 + 2 * k)
                    page.locator(f".bench-big{k}").wait_for()
                    page.evaluate(OBSERVE, [f".bench-big{k}", f"__big{k}"])
                    run_cell(page, 4 + 2 * k)
                    _, t0, applied = output_line(page, f"APPLIED{k}", 60).split()
                    page.wait_for_function(
                        f"window.__big{k}.paints.some(p => p[0] >= 2000)", timeout=60_000
                    )
                    painted, mutated, framed = page.evaluate(
                        f"window.__big{k}.paints.find(p => p[0] >= 2000).slice(1)"
                    )
                    log(f"  first mutation {mutated - float(t0) * 1e3:.0f} ms, frame "
                        f"{framed - float(t0) * 1e3:.0f} ms")  # fmt: skip
                    draws.append((painted - float(t0) * 1e3, float(applied) * 1e3))
                    log(f"2,000 candles: painted {draws[-1][0]:.0f} ms after the data was set")
            finally:
                context.close()
        seen, last_time, skipped, skipped_ahead, batches = map(int, chart_line[1:])
        chart = [seen, last_time, skipped + skipped_ahead, batches]
    finally:
        if published is not None:
            published.stop()
        stop(home)
        lab.stop()
    lab_log = (folder / "lab.log").read_text(errors="replace")
    result = summarise(start, paints, published, chart, draws, lab_log, seconds, rate, hz)
    result["browser_busy_s_per_s"] = busy
    result["svg_attributes_set_per_s"] = round(moved / seconds)
    top = sorted(moved_by.items(), key=lambda kv: -kv[1])[:12]
    result["svg_attributes_by_element_per_s"] = {k: round(v / seconds, 1) for k, v in top}
    return result


def summarise(
    start: int, paints: list, published: Published, chart: list[int], draws: list,
    lab_log: str, seconds: float, rate: float, hz: float | None,
) -> dict[str, Any]:  # fmt: skip
    """Each bar's publish-to-paint: a paint that raises the candle count from m to n first shows
    bars m .. n-1 of the chart (n <= window: until the window is full a count names a bar). The
    first paint, the history the chart starts with, is not streaming and not counted."""
    seen, last_time, skipped, batches = chart
    every, newest = [], []
    before = max([start, *(count for count, *_ in paints[:1])])  # the first: history
    for count, painted, *_ in paints[1:]:
        for k in range(before + 1, min(count, WINDOW) + 1):
            opened = last_time - (seen - k) * STEP_NS  # bar k-1 of the chart
            if opened in published.at:
                every.append(painted - published.at[opened] * 1e3)
                if k == count:
                    newest.append(every[-1])
        before = max(before, count)
    return {
        "bench": "browser_paint",
        "rate_bars_per_s": rate,
        "chart_hz": hz if hz is not None else "default",
        "window": WINDOW,
        "seconds": seconds,
        "candles_at_start": start,
        "paints": len(paints),
        "bars_timed": len(every),
        "paint_p50_ms": percentile(every, 50),
        "paint_p95_ms": percentile(every, 95),
        "paint_max_ms": round(max(every), 1) if every else None,
        "newest_bar_of_paint_p50_ms": percentile(newest, 50),
        "chart_batches": batches,
        "bars_skipped": skipped,
        "candles_2000_ms": [round(d, 1) for d, _ in draws],
        "candles_2000_median_ms": percentile([d for d, _ in draws], 50),
        "candles_2000_kernel_apply_ms": [round(a, 1) for _, a in draws],
        "iopub_rate_limited": "IOPub message rate exceeded" in lab_log,
        "published_error": repr(published.error) if published.error else None,
        "goals": GOALS,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="streaming time measured")
    parser.add_argument("--rate", type=float, default=10.0, help="closed bars a second")
    parser.add_argument("--hz", type=float, default=None, help="the chart's hz (its default)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh 2,000-candle charts")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} not found: `make browser` installs Debian's chromium")
    folder = Path(tempfile.mkdtemp(prefix="osm-paint-bench-"))
    try:
        result = run(args.seconds, args.rate, args.hz, args.repeats, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
