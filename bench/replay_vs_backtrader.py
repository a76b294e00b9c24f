"""Benchmark: the SMA-cross brain through the full live path against backtrader, on the same bars.

Usage: ``python bench/replay_vs_backtrader.py --bars 15000`` (the default), ``--repeat 3`` for
medians over three runs of each side. Progress goes to stderr; ONE JSON line to stdout: bars per
second of each side (medians), their ratio (goal: osm at least 5x backtrader), and ``parity``.

The bars: the first N of the real EUR/USD M1 file (its May 2014 days, ``../shared/data`` or
``$OSM_SHARED_DATA``) when it holds N bars before its 2018 days, otherwise N generated M1 bars
(:func:`osm.live.demo.generated_bars`, a seeded random walk quoted to 5 decimals).

**osm** runs as a user would, through :func:`osm.live.demo.replay_job`: in a fresh temporary run
directory, :func:`osm.live.promote.promote` checks ``SmaCross(fast, slow)`` on the bars (lookahead
and parity gates) and registers it as a live-brain job; ``supervisor.up`` starts a real system:
router (M1 bars, persisted), trader with the paper broker and its SQLite journal, and a replay
feeder of the bars written as a bar CSV at speed 0 (as fast as the router acknowledges, which
holds it back while the brain lags); the
supervisor runs the job, ``live_brain.ipynb``, under papermill, and starts the feeder once the
brain in the kernel is warm. Every closed bar goes feeder -> router -> brain (the strategy on its
window of `--window` bars) -> trader (risk, journal, paper broker) -> fill. A decision that repeats
the target before it is not sent to the trader (it holds that position already), except the last
of a burst; the replay waits for the brain's decisions and for the trader's quotes.

What is timed, osm: from the instant this process receives the router's first closed bar on a SUB
of ``router_bars`` (the feeder's first batch has been aggregated; the subscription closes then),
to the trader's journal time (``updated_ns``, wall clock) of the last change to the job's orders,
taken once the decision on the last closed bar is journaled and no order of the job is open. Both
are ``time.time_ns()`` on this machine. Not timed: system start-up, papermill and the kernel,
the brain's warm-up, the stop. ``osm_bars_per_s`` = decisions (N - 1: the file's last bar never
closes; the job's summary cell counts them, and parity fails unless it shows N - 1) / that
interval.

**backtrader** in its best configuration for one backtest, per its documentation:
``bt.Cerebro(stdstats=False)`` (no observers), ``preload=True`` and ``runonce=True`` (indicators
computed vectorised over the preloaded lines), no analyzers, a ``PandasData`` feed of the mid OHLC
with one extra line, the mid close in half-points, on which two ``bt.ind.SMA`` are taken; the same
rule as SmaCross (long above, short below, flat on a tie or before the slow SMA exists) with
``order_target_size``, market orders filling at the next bar's open. SMAs of whole numbers are
exact, so ties are the same as osm's. What is timed: ``cerebro.run()`` (preload, indicators, the
bar loop, the broker). ``backtrader_bars_per_s`` = N / that. backtrader fills at the mid open
(one price per bar), so its fills are compared with osm's backtest on time and units only
(``backtrader_same_trades``).

``parity``: every run's live fills (time, side, units, price) equal osm's own backtest's on the
same bars, no decision refused, and the job's summary cell shows the backtest's final position
and PnL (:func:`osm.live.demo.check_parity`); and no process of the system is left after the stop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OSM_SHARED_DATA", ROOT.parent / "shared" / "data"))
M1_FILE = SHARED / "EURUSD_M1_oanda_2014-05_and_2018-04_bidask.csv.gz"
STRATEGY = "osm.strategies.sma_cross:SmaCross"
SIZE = 10_000
GAP_NS = 7 * 86_400 * 10**9  # longer than any weekend: where the file jumps from 2014 to 2018


def log(text: str) -> None:
    print(f"[replay_vs_backtrader] {text}", file=sys.stderr, flush=True)


def make_bars(n: int) -> tuple[np.ndarray, str]:
    """N real M1 bars from the file's first contiguous span, else N generated ones."""
    from osm.live.demo import generated_bars
    from osm.research.data import load_bars

    if M1_FILE.exists():
        bars = load_bars(M1_FILE)
        breaks = np.flatnonzero(np.diff(bars["time"]) > GAP_NS)
        span = bars[: breaks[0] + 1] if breaks.size else bars
        if len(span) >= n:
            return span[:n], f"EUR/USD M1 ({M1_FILE.name}, first {n} bars)"
        log(f"{M1_FILE.name} holds {len(span)} contiguous bars, fewer than {n}: generated bars")
    return generated_bars(n), "generated M1 random walk (osm.live.demo.generated_bars)"


def run_osm(bars: np.ndarray, params: dict, window: int) -> dict:
    from tqdm.auto import tqdm

    from osm.live.demo import check_parity, replay_job

    home = Path(tempfile.mkdtemp(prefix="osm-bench-replay-"))
    try:
        with tqdm(total=len(bars) - 1, desc="osm live", unit="bar", file=sys.stderr) as bar:
            live = replay_job(
                home,
                bars,
                STRATEGY,
                params,
                size=SIZE,
                window=window,
                job="smacross",
                progress=lambda done: bar.update(max(0, done - bar.n)),
                # Backtrader runs at normal priority: so does osm, or under any other load on the
                # machine the replay (background by default at speed 0) would yield where it
                # does not.
                priority="normal",
            )
        parity = check_parity(bars, STRATEGY, params, SIZE, live)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if not parity.passed:
        log(str(parity))
    return {
        "seconds": live.seconds,
        "bars_per_s": live.bars_per_s,
        "fills": len(live.fills),
        "parity": parity.passed and not live.left_running,
        "left_running": live.left_running,
        "parity_detail": str(parity),
    }


def _backtrader_classes():
    import backtrader as bt

    class MidBars(bt.feeds.PandasData):
        """Mid OHLC and the mid close in half-points (``signal``), which the SMAs are taken on."""

        lines = ("signal",)
        params = (("signal", -1),)

    class BtSmaCross(bt.Strategy):
        params = (("fast", 5), ("slow", 20), ("size", SIZE))

        def __init__(self) -> None:
            fast = bt.ind.SMA(self.data.signal, period=self.p.fast)
            self.diff = fast - bt.ind.SMA(self.data.signal, period=self.p.slow)
            self.fills: list[tuple[int, int]] = []

        def next(self) -> None:
            diff = self.diff[0]
            target = self.p.size if diff > 0 else -self.p.size if diff < 0 else 0
            if target != self.position.size:
                self.order_target_size(target=target)

        def notify_order(self, order) -> None:
            if order.status == order.Completed:
                when = pd.Timestamp(bt.num2date(order.executed.dt)).value
                self.fills.append((int(when), int(order.executed.size)))

    return bt, MidBars, BtSmaCross


def backtrader_frame(bars: np.ndarray) -> pd.DataFrame:
    from osm.strategies.base import Bars

    frame = pd.DataFrame(
        {f: (bars[f"bid_{f}"] + bars[f"ask_{f}"]) * 0.5 for f in ("open", "high", "low", "close")}
    )
    frame["volume"] = 0.0
    frame["openinterest"] = 0.0
    frame["signal"] = Bars(bars).int_close.astype(np.float64)
    frame.index = pd.to_datetime(bars["time"], unit="ns")  # tz-naive, as backtrader's docs use
    return frame


def run_backtrader(bars: np.ndarray, params: dict) -> dict:
    bt, MidBars, BtSmaCross = _backtrader_classes()
    frame = backtrader_frame(bars)
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    cerebro.adddata(MidBars(dataname=frame))
    cerebro.addstrategy(BtSmaCross, **params)
    cerebro.broker.setcash(1_000_000.0)
    started = time.perf_counter()
    [strategy] = cerebro.run()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bars_per_s": len(bars) / seconds, "fills": strategy.fills}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=15_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side (medians)")
    parser.add_argument("--fast", type=int, default=5)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--window", type=int, default=200, help="bars the live brain holds")
    args = parser.parse_args(argv)
    if args.bars < args.slow + 2 or args.repeat < 1:
        parser.error(f"--bars must be at least slow + 2 ({args.slow + 2}) and --repeat at least 1")

    from osm.live.demo import backtest_fills

    bars, source = make_bars(args.bars)
    params = {"fast": args.fast, "slow": args.slow}
    log(f"{len(bars)} bars: {source}; SmaCross {params}, window {args.window}")
    expected, _ = backtest_fills(bars, STRATEGY, params, SIZE)
    osm_runs, bt_runs = [], []
    for i in range(args.repeat):
        log(f"run {i + 1}/{args.repeat}: backtrader")
        bt_runs.append(run_backtrader(bars, params))
        log(f"  backtrader: {bt_runs[-1]['bars_per_s']:,.0f} bars/s")
        log(f"run {i + 1}/{args.repeat}: osm live path (system start-up is not timed)")
        osm_runs.append(run_osm(bars, params, args.window))
        log(f"  osm: {osm_runs[-1]['bars_per_s']:,.0f} bars/s, parity {osm_runs[-1]['parity']}")
    osm_rate = statistics.median(r["bars_per_s"] for r in osm_runs)
    bt_rate = statistics.median(r["bars_per_s"] for r in bt_runs)
    report = {
        "bench": "replay_vs_backtrader",
        "bars": len(bars),
        "data": source,
        "strategy": f"SmaCross fast={args.fast} slow={args.slow}",
        "window": args.window,
        "runs": args.repeat,
        "osm_bars_per_s": round(osm_rate, 1),
        "backtrader_bars_per_s": round(bt_rate, 1),
        "ratio": round(osm_rate / bt_rate, 3),
        "goal_ratio": 5.0,
        "parity": all(r["parity"] for r in osm_runs),
        "fills": len(expected),
        "backtrader_same_trades": all(
            r["fills"] == [(f.time_ns, f.units) for f in expected] for r in bt_runs
        ),
        "osm_seconds": [round(r["seconds"], 3) for r in osm_runs],
        "backtrader_seconds": [round(r["seconds"], 3) for r in bt_runs],
        "parity_detail": osm_runs[-1]["parity_detail"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
