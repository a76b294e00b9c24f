"""The whole story, headless: research on generated bars, promotion, a live brain, parity.

``python -m osm.live.demo`` (behind ``make demo``) needs no credentials and no shared data:

1. **Bars.** A seeded random walk of EUR_USD M1 bars (:func:`osm.research.synthetic.random_walk_bars`,
   quoted to 5 decimals): the first part is the research history, the rest the "future" that
   the live brain will trade.
2. **Sweep** SmaCross's fast x slow grid on the history (:func:`osm.research.sweep.sweep`).
3. **Walk-forward** the same grid (:func:`osm.research.walkforward.walk_forward`): the parameters
   its schedule trades from its last fold on are the winner.
4. **Promote** the winner (:func:`osm.live.promote.promote`): the lookahead and parity gates on the
   end of the history, then the live-brain job is registered in a fresh run directory.
5. **Live.** A real system (router, trader with the paper broker, a replay feeder of the future bars
   at maximum speed) starts there; the supervisor runs the job, the live-brain notebook, under
   papermill and starts the feeder once the brain is warm; the brain decides every closed bar.
   When it has decided the last one and the trader has settled it, the system is stopped (the job's
   summary cell is written), and nothing of it may be left running.
6. **Parity.** The trader's fills equal the backtest's on the same bars, bar for bar (time, side,
   units, price), and so do the final position and PnL that the job's summary cell shows.

:func:`replay_job` (steps 4 to 6 for any strategy and bars) and :func:`check_parity` are what
``bench/replay_vs_backtrader.py`` times and checks too.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from osm.core import config as cfg
from osm.core.dtypes import PRICE_FIELDS
from osm.core.errors import OsmError
from osm.core.rundir import RunDir
from osm.live import supervisor
from osm.live.client import Client
from osm.live.jobs import list_runs

SMA_CROSS = "osm.strategies.sma_cross:SmaCross"
JOB = "smacross"
SIZE = 10_000  # units at target 1.0
GRID = {"fast": [3, 5, 8, 12, 16], "slow": [20, 30, 50, 80, 120]}  # every pair valid: fast < slow
FEED = "replay"
UP_TIMEOUT_S = 180.0  # a cold start imports numba, pandas and pyarrow in four processes at once
WARM_TIMEOUT_S = 300.0  # papermill, a kernel and the brain's imports on a busy machine
BAR_TIMEOUT_S = 60.0  # longest the trader may go without settling another decision
DECIMALS = 5  # EUR_USD quotes


@dataclass(frozen=True)
class Fill:
    """One fill as parity compares it: open time of the bar it filled at, units (sign: side)."""

    time_ns: int
    units: int
    price: float

    def __str__(self) -> str:
        side = "buy" if self.units > 0 else "sell"
        stamp = pd.Timestamp(self.time_ns, unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M")
        return f"{stamp} {side} {abs(self.units)} @ {self.price:.5f}"


@dataclass(frozen=True)
class LiveRun:
    """What :func:`replay_job` saw of one replay through the live path."""

    job: str
    bars: int  # bars replayed
    decisions: int  # the job's brain's decisions (one per closed bar), as its summary cell shows
    refused: int  # decisions the trader refused or let expire: parity fails if any
    fills: list[Fill]
    seconds: float  # first closed bar published -> the last decision settled in the journal
    summary: str  # the job's summary cell, as its output notebook holds it
    notebook: Path | None  # the archived output notebook
    pids: list[int]  # every process of the system seen: supervisor, children, papermill, kernel
    left_running: list[int]  # of those, alive after the system was stopped

    @property
    def bars_per_s(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Parity:
    """The live run against the backtest of the same strategy on the same bars."""

    fills: int  # the backtest's
    passed: bool
    reason: str  # what differs first, empty when passed
    position: tuple[int, int | None]  # (backtest, live summary)
    pnl: tuple[float, float | None]

    def __str__(self) -> str:
        if self.passed:
            return (
                f"parity: PASSED: {self.fills} fills equal the backtest's bar for bar (time, side, "
                f"units, price); position {self.position[0]:+d}, PnL {self.pnl[0]:+.2f} in both"
            )
        return f"parity: FAILED: {self.reason}"


def generated_bars(n: int, seed: int = 11, start: str = "2024-01-07T22:00:00Z") -> np.ndarray:
    """`n` random-walk EUR_USD M1 bars from `start`, quoted to 5 decimals, weekends skipped."""
    from osm.research.synthetic import random_walk_bars

    bars = random_walk_bars(n, seed=seed, start=start, step="1min", price=1.09, vol=0.00015)
    for field in PRICE_FIELDS:
        bars[field] = np.round(bars[field], DECIMALS)
    return bars


def write_bars_csv(bars: np.ndarray, path: Path) -> Path:
    """Write BAR_DTYPE `bars` as a bid/ask bar CSV in the shared data's format (replayable)."""
    frame = pd.DataFrame({"time_utc": pd.to_datetime(bars["time"], utc=True)})
    for side in ("bid", "ask"):
        for field in ("open", "high", "low", "close"):
            frame[f"{side}_{field}"] = bars[f"{side}_{field}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def replay_config(path: Path, commission: float = 0.0, priority: str = "auto") -> cfg.SystemConfig:
    """A system replaying the bar file `path` at maximum speed, M1 bars, the paper broker (at
    background priority unless `priority` says otherwise: see osm.live.priority)."""
    return cfg.SystemConfig(
        feeds=[cfg.FeedConfig(name=FEED, kind="replay", file=str(path), speed=0)],
        router=cfg.RouterConfig(granularities=["M1"]),
        trader=cfg.TraderConfig(commission=commission),
        priority=priority,
    )


def replay_job(
    home: Path,
    bars: np.ndarray,
    strategy: str,
    params: dict[str, Any],
    *,
    size: int = 10_000,
    window: int = 200,
    job: str = "brain",
    gate_bars: np.ndarray | None = None,
    commission: float = 0.0,
    progress: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
    schedule: Any = None,
    priority: str = "auto",
) -> LiveRun:
    """Promote `strategy` in the run directory `home`, replay `bars` through the live path with the
    job as the brain, stop everything and return what happened.

    Parameters
    ----------
    gate_bars
        The bars promotion checks the strategy on (default: `bars`).
    progress
        Called with the bars decided so far (up to the newest decision the trader journaled).
    say
        Called with a line at each step (promoted, system up, job running, stopped).
    schedule
        A :class:`~osm.research.walkforward.ParameterSchedule` the job trades instead of `params`.
    priority
        The system's CPU priority (``SystemConfig.priority``; auto: background).
    """
    from osm.live.promote import promote

    say = say or (lambda line: None)
    rundir = RunDir(home)
    path = write_bars_csv(bars, rundir.home / "replay" / "bars.csv")
    promotion = promote(
        rundir,
        strategy,
        params,
        size=size,
        window=window,
        name=job,
        bars=bars if gate_bars is None else gate_bars,
        schedule=schedule,
    )
    say(f"{promotion.lookahead}; {promotion.parity}")
    rundir.secure()  # what this process wrote is private before the system starts
    last_id = f"{job}-{int(bars['time'][-2])}"  # the file's last bar never closes
    journal = rundir.db / "trader.sqlite"
    pids: set[int] = set()
    try:
        config = replay_config(path, commission, priority)
        done = supervisor.up(rundir, config, timeout_s=UP_TIMEOUT_S)
        say(f"system up (supervisor pid {done.pid}); the feeder waits for job {job}'s brain")
        with Client(rundir.home, timeout_s=15.0) as client:
            started_ns = _first_bar_ns(client, pids, say)
            ended_ns = _wait_settled(journal, job, last_id, bars["time"], client, progress)
            pids |= _system_pids(client.status())  # a process restarted meanwhile: its new pid
    finally:
        say("stopping the system: the job's summary cell, then every process")
        supervisor.down(rundir)
    left = [p.pid for p in psutil.wait_procs(_processes(pids), timeout=30)[1]]
    runs = list_runs(rundir, job)
    notebook = Path(runs[-1]["notebook"]) if runs else None
    refused, fills = _journaled(journal, job)
    summary = _summary_cell(notebook)
    return LiveRun(
        job=job,
        bars=len(bars),
        decisions=_summary_figures(summary)[2] or 0,
        refused=refused,
        fills=fills,
        seconds=(ended_ns - started_ns) / 1e9,
        summary=summary,
        notebook=notebook,
        pids=sorted(pids),
        left_running=left,
    )


def _system_pids(status: dict[str, Any]) -> set[int]:
    """Every process of the system: supervisor, children, each job's papermill and kernel."""
    pids = {status["pid"]} | {p["pid"] for p in status["processes"] if p["pid"]}
    pids |= {j[key] for j in status["jobs"] for key in ("pid", "brain_pid") if j[key]}
    return pids


def _processes(pids: set[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return found


def _first_bar_ns(client: Client, pids: set[int], say: Callable[[str], None]) -> int:
    """Wait for the router's first closed bar (the feeder starts once the job's brain is warm)
    and return when it came; remember the system's processes meanwhile."""
    deadline = time.monotonic() + WARM_TIMEOUT_S
    told = False
    with client.subscribe("router_bars", ["bar."]) as bars:
        while time.monotonic() < deadline:
            if bars.recv(0.05) is not None:
                return time.time_ns()
            status = client.status()
            pids |= _system_pids(status)
            _check_job(status["jobs"])
            if not told and any(j["state"] == "running" for j in status["jobs"]):
                told = True
                say("the job runs under papermill; its brain warms up, then the replay starts")
    raise OsmError(
        f"no bar closed within {WARM_TIMEOUT_S:.0f} s: the feeder waits for the job's brain to "
        f"warm up; see logs/ and runs/ in {client.rundir.home}"
    )


def _check_job(jobs: list[dict[str, Any]]) -> None:
    for job in jobs:
        if job["state"] == "failed":
            raise OsmError(f"job {job['name']} failed: {job['reason']} (see its log in runs/)")


def _wait_settled(
    journal: Path,
    job: str,
    last_id: str,
    times: np.ndarray,
    client: Client,
    progress: Callable[[int], None] | None,
) -> int:
    """Wait until the trader journaled `last_id` and no order of `job` is open; return the wall
    time (ns) of the journal's last change of the job's orders. Progress: the bars (opening at
    `times`) up to the newest decision journaled (a decision that repeats the target before it
    is not sent, but the last bar of a burst always is)."""
    seen, moved = -1, time.monotonic()
    while True:
        done, until_ns, last_change = _settled(journal, job, last_id)
        decided = int(np.searchsorted(times, until_ns))  # bars opening before the next open
        if decided != seen:
            seen, moved = decided, time.monotonic()
            if progress is not None:
                progress(decided)
        if done:
            return last_change
        if time.monotonic() - moved > BAR_TIMEOUT_S:
            _check_job(client.status()["jobs"])
            raise OsmError(
                f"the trader settled no decision of job {job} for {BAR_TIMEOUT_S:.0f} s "
                f"({decided} bars decided so far); see logs/ and runs/{job}/ in "
                f"{client.rundir.home}"
            )
        time.sleep(0.1)


def _settled(journal: Path, job: str, last_id: str) -> tuple[bool, int, int]:
    """(settled, newest decision's after_ns, newest updated_ns) of `job`'s orders in the
    journal."""
    if not journal.exists():
        return False, 0, 0
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
            # One statement, so one snapshot: the last decision, the open orders, the times.
            until_ns, newest, has_last, open_orders = db.execute(
                "SELECT coalesce(max(after_ns), 0), coalesce(max(updated_ns), 0), "
                "coalesce(sum(client_id = ?), 0), coalesce(sum(status IN ('new', 'sent')), 0) "
                "FROM orders WHERE brain = ?",
                (last_id, job),
            ).fetchone()
    except sqlite3.OperationalError:
        return False, 0, 0  # the trader is creating it
    return bool(has_last) and open_orders == 0, until_ns, newest


def _journaled(journal: Path, job: str) -> tuple[int, list[Fill]]:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
        [refused] = db.execute(
            "SELECT coalesce(sum(status IN ('refused', 'expired')), 0) FROM orders WHERE brain = ?",
            (job,),
        ).fetchone()
        rows = db.execute(
            "SELECT time_ns, units, price FROM fills WHERE brain = ? ORDER BY seq", (job,)
        ).fetchall()
    return refused, [Fill(int(t), int(u), float(p)) for t, u, p in rows]


def _summary_cell(notebook: Path | None) -> str:
    """The text the job's ``summary`` cell printed ("" if it did not run)."""
    if notebook is None or not notebook.exists():
        return ""
    for cell in json.loads(notebook.read_text()).get("cells", []):
        if "summary" in cell.get("metadata", {}).get("tags", []):
            return "".join("".join(o.get("text", "")) for o in cell.get("outputs", [])).strip()
    return ""


def backtest_fills(
    bars: np.ndarray, strategy: str, params: dict[str, Any], size: int, commission: float = 0.0
) -> tuple[list[Fill], float]:
    """The backtest's fills on `bars` and their commission."""
    from osm.research.backtest import backtest

    result = backtest(strategy, bars, size=size, commission=commission, **params)
    records = result.fill_records
    fills = [
        Fill(int(bars["time"][b]), int(u), float(p))
        for b, u, p in zip(records["bar"], records["units"], records["price"], strict=True)
    ]
    return fills, float(records["commission"].sum())


def check_parity(
    bars: np.ndarray,
    strategy: str,
    params: dict[str, Any],
    size: int,
    live: LiveRun,
    commission: float = 0.0,
) -> Parity:
    """Compare `live` with the backtest on `bars`: every fill, then the position and PnL that the
    job's summary shows (the fills' cash flow, the position marked at the last closed bar's mid
    close, commission off, as the summary computes them)."""
    want, paid = backtest_fills(bars, strategy, params, size, commission)
    position = sum(f.units for f in want)
    mark = (float(bars["bid_close"][-2]) + float(bars["ask_close"][-2])) / 2
    pnl = round(-sum(f.units * f.price for f in want) - paid + position * mark, 2)
    shown_position, shown_pnl, _ = _summary_figures(live.summary)
    reason = ""
    if live.refused:
        reason = f"the trader refused or let expire {live.refused} of the job's decisions"
    elif live.decisions != len(bars) - 1:
        reason = f"the job decided {live.decisions} bars, not the {len(bars) - 1} closed ones"
    else:
        for i, (a, b) in enumerate(zip(want, live.fills, strict=False)):
            if a != b:
                reason = f"fill {i}: backtest {a}, live {b}"
                break
        else:
            if len(want) != len(live.fills):
                reason = f"{len(want)} backtest fills but {len(live.fills)} live ones"
    if not reason and (shown_position, shown_pnl) != (position, pnl):
        reason = (
            f"the job's summary shows position {shown_position} and PnL {shown_pnl}; the "
            f"backtest's fills give {position} and {pnl:.2f}"
        )
    return Parity(len(want), not reason, reason, (position, shown_position), (pnl, shown_pnl))


def _summary_figures(summary: str) -> tuple[int | None, float | None, int | None]:
    """(position, PnL, decisions) as the job's summary cell shows them."""
    position = re.search(r"position\s+([+-]?\d+)", summary)
    pnl = re.search(r"PnL\s+([+-]?\d+\.\d+)", summary)
    decisions = re.search(r"decisions this run\s+(\d+)", summary)
    return (
        int(position[1]) if position else None,
        float(pnl[1]) if pnl else None,
        int(decisions[1]) if decisions else None,
    )


# -- the story ---------------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"osm demo: {text}", flush=True)


def research(history: np.ndarray, in_sample: int, out_of_sample: int) -> dict[str, Any]:
    """Sweep and walk-forward SmaCross on `history`; return the walk-forward's latest parameters."""
    from osm.research.sweep import sweep
    from osm.research.walkforward import walk_forward

    combos = len(GRID["fast"]) * len(GRID["slow"])
    say(f"sweep: SmaCross, {combos} fast x slow combinations on {len(history):,} bars")
    table = sweep(SMA_CROSS, history, grid=GRID, progress=True)
    top = table.iloc[0]
    say(
        f"  best in sample: fast={int(top['fast'])} slow={int(top['slow'])}, sharpe "
        f"{top['sharpe']:.2f}, return {top['total_return']:+.2%}, {int(top['trades'])} trades"
    )
    say(f"walk-forward: optimise on {in_sample:,} bars, trade the next {out_of_sample:,}, roll on")
    result = walk_forward(SMA_CROSS, history, in_sample, out_of_sample, grid=GRID, progress=True)
    metrics = result.metrics
    say(
        f"  out of sample: {len(result.folds)} folds, sharpe {metrics['sharpe']:.2f}, return "
        f"{metrics['total_return']:+.2%}, {int(metrics['trades'])} trades (a random walk has no "
        "edge to find: the story is the path, not the profit)"
    )
    winner = dict(result.schedule.entries[-1].params)
    say(f"  the winner: {winner}, what the schedule trades from its last fold on")
    return winner


def run_story(
    home: Path, history_bars: int, live_bars: int, seed: int, window: int
) -> tuple[LiveRun, Parity]:
    """The whole story in the run directory `home`, each step said on stdout."""
    say(f"{history_bars + live_bars:,} generated EUR_USD M1 bars (random walk, seed {seed})")
    bars = generated_bars(history_bars + live_bars, seed=seed)
    history, future = bars[:history_bars], bars[history_bars:]
    in_sample = max(2 * window, history_bars // 5)
    winner = research(history, in_sample, max(window, in_sample // 3))
    say(f"promote: the lookahead and parity gates on the end of the history; run directory {home}")
    with _Progress(live_bars - 1) as progress:
        live = replay_job(
            home,
            future,
            SMA_CROSS,
            winner,
            size=SIZE,
            window=window,
            job=JOB,
            gate_bars=history[-(window + 500) :],
            progress=progress.update,
            say=lambda line: say(f"  {line}"),
        )
    say(
        f"live: {live.decisions:,} bars decided in {live.seconds:.1f} s "
        f"({live.bars_per_s:,.0f} bars/s, from the first closed bar to the last settled decision)"
    )
    for line in live.summary.splitlines():
        say(f"  | {line}")
    return live, check_parity(future, SMA_CROSS, winner, SIZE, live)


class _Progress:
    """A progress bar of the live bars decided, shown from the first one on."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Any = None

    def update(self, done: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            say(f"live: replaying {self.total + 1:,} bars at maximum speed")
            self._bar = tqdm(total=self.total, desc="osm demo: bars decided", unit="bar")
        self._bar.update(max(0, min(done, self.total) - self._bar.n))
        if self._bar.n >= self.total:
            self._bar.close()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m osm.live.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--history", type=int, default=20_000, help="research bars (M1)")
    parser.add_argument("--live", type=int, default=3_000, help="bars replayed to the live brain")
    parser.add_argument("--seed", type=int, default=11, help="seed of the generated bars")
    parser.add_argument("--window", type=int, default=200, help="bars the live brain holds")
    parser.add_argument("--home", help="run directory to keep (default: a temporary one, removed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the story: 0 when parity holds and nothing is left running, 1 when not, 2 on a usage
    mistake."""
    args = build_parser().parse_args(argv)
    longest = max(GRID["slow"])
    if args.window < longest or args.history < 5 * args.window or args.live < 2:
        say(
            f"--window must be at least {longest} (the grid's longest SMA), --history at least 5 "
            f"x --window and --live at least 2; got --window {args.window}, --history "
            f"{args.history}, --live {args.live}"
        )
        return 2
    home = Path(args.home).expanduser() if args.home else Path(tempfile.mkdtemp(prefix="osm-demo-"))
    if supervisor.running_pid(RunDir(home)) is not None:
        say(f"a system runs in {home} and the demo would stop it; omit --home (a temporary one)")
        return 2
    try:
        live, parity = run_story(home, args.history, args.live, args.seed, args.window)
    except OsmError as exc:
        say(f"stopped: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; whatever it had started was stopped")
        return 130
    say(str(parity))
    if live.left_running:
        say(f"still running after the stop, pids {live.left_running}")
    else:
        say(f"everything stopped: none of the system's {len(live.pids)} processes is left")
    if args.home:
        say(f"kept {home}: the job's output notebook is {live.notebook}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if parity.passed and not live.left_running else 1


if __name__ == "__main__":
    sys.exit(main())
