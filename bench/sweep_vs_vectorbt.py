"""Benchmark: an SMA-cross fast x slow grid swept by osm and by vectorbt on the same bars.

Usage: ``python bench/sweep_vs_vectorbt.py --bars 300000 --grid 12`` (the defaults), or
``--bars 1000000 --grid 20``. Prints ONE JSON line: backtests per second, peak resident memory
and first-call (compile) time of each side, their ratios, and the largest difference in total
return between the two on the combinations both ran.

Each side runs in its own child process of this one, started one after the other, so the peak
resident set of each is its own (``os.wait4`` returns the child's ``ru_maxrss``). Children compile
into a fresh, empty numba cache directory unless ``--warm`` is given, so the first-call time is a
real compile. The figures a side reports:

- ``first_call_s``: a 2 x 2 sweep on 1 000 bars in the fresh process (compiling every kernel).
- ``seconds``: its whole grid on N bars, indicators included; ``backtests_per_s`` = combos / it.
- ``cpu_seconds``: the CPU time of that, all threads; ``backtests_per_cpu_s`` = combos / it, the
  figure to compare on a machine other work is sharing (osm runs one thread per core, vectorbt
  mostly one).
- ``peak_rss_mb``: the child's peak resident memory (imports and bars included).

The grids. osm sweeps G x G windows (``--grid``). vectorbt holds every (bar x combination) cell
in memory, about ``VBT_BYTES_PER_CELL`` bytes each, so it runs the largest evenly spread subset of
those windows that fits in ``--vbt-memory`` of the available memory (or ``--vbt-grid`` of them):
the whole grid at 300 000 bars x 12 x 12, a smaller one at 1 000 000 bars. Its combinations are
all among osm's, so the two total returns are compared on each of them.

The same bars on both sides: the real EUR/USD H1 file when it holds at least N bars, otherwise a
seeded random walk (:func:`osm.research.synthetic.random_walk_bars`: normal log returns of 0.12 %
per hour, log-normal spreads around 1.2 pips, weekends skipped) quoted, like the real data, to
EUR/USD's 5 decimals.

The same trades on both sides. osm: ``SmaCross`` targets +1 while the fast SMA of the mid close is
above the slow one, -1 below and 0 on a tie, executed at the next bar's open (buy at the ask, sell
at the bid); it decides each comparison exactly, on integer sums of the mid in half-points.
vectorbt in its best configuration: a tz-naive DatetimeIndex as in its documentation (a UTC one
sends pandas 3 down a slow path), ``vbt.MA.run`` with ``run_unique=True`` over the product of
windows, on the mid in half-points (``bid + ask`` in points, whole numbers in float64, so its
running sums are exact and equal means compare equal: the same ties as osm); the same +1 / -1 / 0
position from the MAs, shifted one bar, as long and short entries and exits;
``Portfolio.from_signals`` reversing on the opposite signal, with the bar's ask (buys) or bid
(sells) open as the fill price. vectorbt values an open position at the mid close where osm uses
the bid (long) or ask (short) close; after timing, the script revalues vectorbt's last open
position the osm way so the two total returns compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H1_FILE = ROOT.parent / "shared" / "data" / "EURUSD_H1_oanda_bidask.csv.gz"
SIZE, CASH, COMMISSION = 10_000, 100_000.0, 2e-5
DECIMALS = 5  # EUR/USD quotes
VBT_BYTES_PER_CELL = 160
"""vectorbt's peak memory per (bar x combination): 6.9 GB at 300 000 bars x 144 measured here."""
VBT_BASE_BYTES = 400 * 2**20  # its imports and the bars


def windows(grid: int) -> tuple[list[int], list[int]]:
    """G fast windows in 5..50 and G slow ones in 60..300: every pair is a valid SmaCross."""
    fast = np.unique(np.linspace(5, 50, grid).round().astype(int)).tolist()
    slow = np.unique(np.linspace(60, 300, grid).round().astype(int)).tolist()
    return fast, slow


def spread_out(values: list[int], count: int) -> list[int]:
    """`count` of `values`, evenly spread from the first to the last."""
    picks = np.unique(np.linspace(0, len(values) - 1, min(count, len(values))).round())
    return [values[int(i)] for i in picks]


def make_bars(n: int) -> tuple[np.ndarray, str]:
    from osm.core.dtypes import PRICE_FIELDS
    from osm.research.data import load_bars
    from osm.research.synthetic import random_walk_bars

    if H1_FILE.exists():
        real = load_bars(H1_FILE)
        if len(real) >= n:
            return real[:n], f"EUR/USD H1 ({H1_FILE.name})"
    bars = random_walk_bars(n, seed=42)
    for field in PRICE_FIELDS:
        bars[field] = np.round(bars[field], DECIMALS)
    return bars, f"synthetic random walk (seed 42), quoted to {DECIMALS} decimals"


def run_osm(n: int, grid: int) -> dict:
    from osm.research.sweep import sweep
    from osm.research.synthetic import random_walk_bars
    from osm.strategies.sma_cross import SmaCross

    imported = time.perf_counter()
    sweep(SmaCross, random_walk_bars(1000), grid={"fast": [5, 8], "slow": [20, 30]}, progress=False)
    first = time.perf_counter() - imported
    bars, source = make_bars(n)
    fast, slow = windows(grid)
    started, cpu = time.perf_counter(), time.process_time()
    table = sweep(
        SmaCross, bars, grid={"fast": fast, "slow": slow}, size=SIZE, commission=COMMISSION,
        cash=CASH, progress=False,
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "first_call_s": first,
        "source": source,
        "combos": len(table),
        "workers": os.cpu_count(),
        "indicators_computed": table.attrs["indicators_computed"],
        "total_return": _by_combo(table["fast"], table["slow"], table["total_return"]),
    }


def _by_combo(fast, slow, values) -> dict[str, float]:
    return {f"{f}/{s}": float(v) for f, s, v in zip(fast, slow, values, strict=True)}


def _vbt_grid(vbt, bars: np.ndarray, fast: list[int], slow: list[int]):
    import pandas as pd

    index = pd.to_datetime(bars["time"], unit="ns")  # tz-naive, as vectorbt's docs use
    close = pd.Series((bars["bid_close"] + bars["ask_close"]) * 0.5, index=index)
    scale = 10.0**DECIMALS
    half_points = pd.Series(
        np.rint(bars["bid_close"] * scale) + np.rint(bars["ask_close"] * scale), index=index
    )
    fast_ma = vbt.MA.run(
        half_points, window=np.repeat(fast, len(slow)).tolist(), short_name="fast", run_unique=True
    )
    slow_ma = vbt.MA.run(
        half_points, window=np.tile(slow, len(fast)).tolist(), short_name="slow", run_unique=True
    )
    # SmaCross's target: +1 above, -1 below, 0 (flat) on a tie, flat while the slow MA warms up;
    # shifted one bar, it is the position held during each bar.
    side = np.nan_to_num(np.sign(fast_ma.ma.to_numpy() - slow_ma.ma.to_numpy()))
    held = np.vstack([np.zeros((1, side.shape[1])), side[:-1]])
    before = np.vstack([np.zeros((1, side.shape[1])), held[:-1]])
    # An order buys when the position rises (fills at the ask open) and sells otherwise (bid).
    price = np.where(held > before, bars["ask_open"][:, None], bars["bid_open"][:, None])
    columns = vbt.base.index_fns.stack_indexes([fast_ma.ma.columns, slow_ma.ma.columns])
    frame = lambda values: pd.DataFrame(values, index=index, columns=columns)  # noqa: E731
    portfolio = vbt.Portfolio.from_signals(
        close, entries=frame(held > 0), exits=frame(held == 0), short_entries=frame(held < 0),
        short_exits=frame(held == 0), price=frame(price), size=SIZE, size_type="amount",
        upon_opposite_entry="reverse", fees=COMMISSION, init_cash=CASH, freq="1h",
    )  # fmt: skip
    portfolio.sharpe_ratio()
    portfolio.max_drawdown()
    portfolio.total_return()
    return portfolio


def _valued_like_osm(portfolio, bars: np.ndarray) -> np.ndarray:
    """vectorbt's total returns with the last open position valued at the bid (long) or ask
    (short) close, as osm values it, instead of at the mid close."""
    units = portfolio.assets().to_numpy()[-1]
    mid = (bars["bid_close"][-1] + bars["ask_close"][-1]) * 0.5
    side_close = np.where(units > 0, bars["bid_close"][-1], bars["ask_close"][-1])
    final = portfolio.final_value().to_numpy() + units * (side_close - mid)
    return final / CASH - 1.0


def run_vbt(n: int, grid: int, vbt_grid: int) -> dict:
    import vectorbt as vbt

    from osm.research.synthetic import random_walk_bars

    started = time.perf_counter()
    _vbt_grid(vbt, random_walk_bars(1000), [5, 8], [20, 30])
    first = time.perf_counter() - started
    bars, source = make_bars(n)
    fast, slow = (spread_out(w, vbt_grid) for w in windows(grid))
    started, cpu = time.perf_counter(), time.process_time()
    portfolio = _vbt_grid(vbt, bars, fast, slow)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    total = _valued_like_osm(portfolio, bars)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "first_call_s": first,
        "source": source,
        "combos": len(total),
        "total_return": _by_combo(np.repeat(fast, len(slow)), np.tile(slow, len(fast)), total),
    }


def vbt_grid_that_fits(n: int, grid: int, share: float) -> int:
    """The largest G <= `grid` whose G x G vectorbt sweep on `n` bars fits in `share` of the
    available memory, by :data:`VBT_BYTES_PER_CELL`."""
    import psutil

    budget = share * psutil.virtual_memory().available - VBT_BASE_BYTES
    fits = int(np.sqrt(max(budget, 0) / (VBT_BYTES_PER_CELL * n)))
    if fits < 2:
        raise SystemExit(f"vectorbt cannot fit even a 2 x 2 grid on {n} bars in {budget:.0f} B")
    return min(grid, fits)


def child(side: str, n: int, grid: int, vbt_grid: int) -> dict:
    """Run one side in a child process; return its figures with its peak resident memory."""
    argv = [sys.executable, __file__, "--side", side, "--bars", str(n), "--grid", str(grid)]
    argv += ["--vbt-grid", str(vbt_grid)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT, env=os.environ.copy())
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"the {side} side failed with exit code {process.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=300_000)
    parser.add_argument("--grid", type=int, default=12, help="osm's grid: G fast x G slow")
    parser.add_argument("--vbt-grid", type=int, help="vectorbt's grid (default: what fits)")
    parser.add_argument(
        "--vbt-memory", type=float, default=0.5, help="share of available memory for vectorbt"
    )
    parser.add_argument("--warm", action="store_true", help="reuse the numba cache")
    parser.add_argument("--side", choices=("osm", "vbt"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        if args.side == "osm":
            result = run_osm(args.bars, args.grid)
        else:
            result = run_vbt(args.bars, args.grid, args.vbt_grid)
        print(json.dumps(result))
        return
    vbt_grid = args.vbt_grid or vbt_grid_that_fits(args.bars, args.grid, args.vbt_memory)
    with tempfile.TemporaryDirectory(prefix="osm-bench-numba-") as cache:
        if not args.warm:
            os.environ["NUMBA_CACHE_DIR"] = cache
        osm = child("osm", args.bars, args.grid, vbt_grid)
        vbt = child("vbt", args.bars, args.grid, vbt_grid)
    ours, theirs = osm.pop("total_return"), vbt.pop("total_return")
    gap = [abs(ours[combo] - value) for combo, value in theirs.items()]
    osm_rate, vbt_rate = osm["combos"] / osm["seconds"], vbt["combos"] / vbt["seconds"]
    osm_cpu_rate = osm["combos"] / osm["cpu_seconds"]
    vbt_cpu_rate = vbt["combos"] / vbt["cpu_seconds"]
    report = {
        "bench": "sweep_vs_vectorbt",
        "bars": args.bars,
        "data": osm["source"],
        "osm_grid": f"{args.grid}x{args.grid}",
        "osm_combos": osm["combos"],
        "osm_indicators_computed": osm["indicators_computed"],
        "vbt_grid": f"{vbt_grid}x{vbt_grid}",
        "vbt_combos": vbt["combos"],
        "osm_backtests_per_s": round(osm_rate, 2),
        "vbt_backtests_per_s": round(vbt_rate, 2),
        "speedup": round(osm_rate / vbt_rate, 2),
        "osm_backtests_per_cpu_s": round(osm_cpu_rate, 2),
        "vbt_backtests_per_cpu_s": round(vbt_cpu_rate, 2),
        "cpu_speedup": round(osm_cpu_rate / vbt_cpu_rate, 2),
        "osm_peak_rss_mb": round(osm["peak_rss_mb"], 1),
        "vbt_peak_rss_mb": round(vbt["peak_rss_mb"], 1),
        "memory_ratio": round(osm["peak_rss_mb"] / vbt["peak_rss_mb"], 4),
        "osm_first_call_s": round(osm["first_call_s"], 2),
        "vbt_first_call_s": round(vbt["first_call_s"], 2),
        "osm_workers": osm["workers"],
        "cold_compile": not args.warm,
        "compared_combos": len(gap),
        "max_total_return_diff": float(np.nanmax(gap)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
