"""Benchmark: an SMA-cross fast x slow grid swept by osm and by vectorbt on the same bars.

Usage: ``python bench/sweep_vs_vectorbt.py --bars 300000 --grid 12`` (the defaults). Prints ONE
JSON line: backtests per second, peak resident memory and first-call (compile) time of each side,
their ratios, and the largest difference in total return between the two.

Each side runs in its own child process of this one, started one after the other, so the peak
resident set of each is its own (``os.wait4`` returns the child's ``ru_maxrss``). Children compile
into a fresh, empty numba cache directory unless ``--warm`` is given, so the first-call time is a
real compile. The figures a side reports:

- ``first_call_s``: a 2 x 2 sweep on 1 000 bars in the fresh process (compiling every kernel).
- ``seconds``: the whole G x G grid on N bars, indicators included; ``backtests_per_s`` = G^2 / it.
- ``peak_rss_mb``: the child's peak resident memory (imports and bars included).

The same bars on both sides: the real EUR/USD H1 file when it holds at least N bars, otherwise a
seeded random walk (:func:`osm.research.synthetic.random_walk_bars`: normal log returns of 0.12 %
per hour, log-normal spreads around 1.2 pips, weekends skipped).

The same trades on both sides. osm: ``SmaCross`` targets +1 while the fast SMA of the mid close is
above the slow one and -1 below, executed at the next bar's open (buy at the ask, sell at the bid).
vectorbt: ``vbt.MA.run`` over the product of windows; the same +1 / -1 / 0 (on a tie) position
from the MAs, shifted one bar, as long and short entries and exits; ``Portfolio.from_signals``
reversing on the opposite signal, with the bar's ask (buys) or bid (sells) open as the fill price.
vectorbt values an open position at the mid close where osm uses the bid (long) or ask (short)
close; after timing, the script revalues vectorbt's last open position the osm way so the two total
returns compare like with like. What can still differ: vectorbt's moving averages are running sums
whose rounding can settle an exact tie of the two averages differently from osm's, which sums each
window afresh.
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


def windows(grid: int) -> tuple[list[int], list[int]]:
    """G fast windows in 5..50 and G slow ones in 60..300: every pair is a valid SmaCross."""
    fast = np.unique(np.linspace(5, 50, grid).round().astype(int)).tolist()
    slow = np.unique(np.linspace(60, 300, grid).round().astype(int)).tolist()
    return fast, slow


def make_bars(n: int) -> tuple[np.ndarray, str]:
    from osm.research.data import load_bars
    from osm.research.synthetic import random_walk_bars

    if H1_FILE.exists():
        real = load_bars(H1_FILE)
        if len(real) >= n:
            return real[:n], f"EUR/USD H1 ({H1_FILE.name})"
    return random_walk_bars(n, seed=42), "synthetic random walk (seed 42)"


def run_osm(n: int, grid: int) -> dict:
    started = time.perf_counter()
    from osm.research.sweep import sweep
    from osm.research.synthetic import random_walk_bars
    from osm.strategies.sma_cross import SmaCross

    imported = time.perf_counter()
    sweep(SmaCross, random_walk_bars(1000), grid={"fast": [5, 8], "slow": [20, 30]}, progress=False)
    first = time.perf_counter() - imported
    bars, source = make_bars(n)
    fast, slow = windows(grid)
    started = time.perf_counter()
    table = sweep(
        SmaCross, bars, grid={"fast": fast, "slow": slow}, size=SIZE, commission=COMMISSION,
        cash=CASH, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    table = table.sort_values(["fast", "slow"])
    return {
        "seconds": seconds,
        "first_call_s": first,
        "source": source,
        "combos": len(table),
        "workers": os.cpu_count(),
        "total_return": table["total_return"].tolist(),
    }


def _vbt_grid(vbt, bars: np.ndarray, fast: list[int], slow: list[int]):
    import pandas as pd

    index = pd.to_datetime(bars["time"], unit="ns", utc=True)
    close = pd.Series((bars["bid_close"] + bars["ask_close"]) * 0.5, index=index)
    fast_ma = vbt.MA.run(close, window=np.repeat(fast, len(slow)).tolist(), short_name="fast")
    slow_ma = vbt.MA.run(close, window=np.tile(slow, len(fast)).tolist(), short_name="slow")
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


def run_vbt(n: int, grid: int) -> dict:
    import vectorbt as vbt

    from osm.research.synthetic import random_walk_bars

    started = time.perf_counter()
    _vbt_grid(vbt, random_walk_bars(1000), [5, 8], [20, 30])
    first = time.perf_counter() - started
    bars, source = make_bars(n)
    fast, slow = windows(grid)
    started = time.perf_counter()
    portfolio = _vbt_grid(vbt, bars, fast, slow)
    seconds = time.perf_counter() - started
    total = _valued_like_osm(portfolio, bars)
    return {
        "seconds": seconds,
        "first_call_s": first,
        "source": source,
        "combos": len(total),
        "total_return": total.tolist(),
    }


def child(side: str, n: int, grid: int) -> dict:
    """Run one side in a child process; return its figures with its peak resident memory."""
    argv = [sys.executable, __file__, "--side", side, "--bars", str(n), "--grid", str(grid)]
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
    parser.add_argument("--grid", type=int, default=12)
    parser.add_argument("--warm", action="store_true", help="reuse the numba cache")
    parser.add_argument("--side", choices=("osm", "vbt"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = (run_osm if args.side == "osm" else run_vbt)(args.bars, args.grid)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="osm-bench-numba-") as cache:
        if not args.warm:
            os.environ["NUMBA_CACHE_DIR"] = cache
        osm, vbt = child("osm", args.bars, args.grid), child("vbt", args.bars, args.grid)
    combos = osm["combos"]
    gap = np.abs(np.subtract(osm.pop("total_return"), vbt.pop("total_return")))
    report = {
        "bench": "sweep_vs_vectorbt",
        "bars": args.bars,
        "grid": f"{args.grid}x{args.grid}",
        "combos": combos,
        "data": osm["source"],
        "osm_backtests_per_s": round(combos / osm["seconds"], 2),
        "vbt_backtests_per_s": round(combos / vbt["seconds"], 2),
        "speedup": round(vbt["seconds"] / osm["seconds"], 2),
        "osm_peak_rss_mb": round(osm["peak_rss_mb"], 1),
        "vbt_peak_rss_mb": round(vbt["peak_rss_mb"], 1),
        "memory_ratio": round(osm["peak_rss_mb"] / vbt["peak_rss_mb"], 4),
        "osm_first_call_s": round(osm["first_call_s"], 2),
        "vbt_first_call_s": round(vbt["first_call_s"], 2),
        "osm_workers": osm["workers"],
        "cold_compile": not args.warm,
        "max_total_return_diff": float(np.nanmax(gap)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
