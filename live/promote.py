"""Promotion: a strategy tested in research becomes a live-brain job, once it passes two gates.

:func:`promote` takes a strategy, its parameters and where it trades (instrument, granularity,
size, the brain's window), and checks it on bars: the recent bars of the router's store in the
run directory, or bars the caller gives.

1. **Lookahead** (:func:`osm.research.lookahead.check_lookahead` with the brain's window): every
   bar's target, recomputed from the window a live brain would hold at that bar, equals the full
   run's. A strategy that peeks, or needs more warm-up than the window, is refused, naming the
   first biased bar.
2. **Parity of the decisions and their execution**: the backtest's fills on the same bars equal
   the fills the live path would make from the brain's decisions: the window's last target at each
   bar times `size`, rounded as the brain rounds it, the difference from the position executed at
   the next bar's open, buys at the ask and sells at the bid (the paper broker's rule). This runs
   in process, without sockets; it catches a window that changes decisions where they trade, a
   size whose rounding differs, and any drift between the backtest's execution rule and the one
   the brain and broker follow. The process-level parity (real feeder, router, papermill brain,
   trader, paper broker) is what ``tests/test_parity.py`` and ``tests/test_promote.py`` prove.

Only then is the job registered in the run directory's job store (:mod:`osm.live.jobs`): the
live-brain notebook with those values as papermill parameters; the supervisor starts it within a
second if the system runs, or when it next starts. The reports are kept beside the job's runs
(``runs/JOB/promotion.json``). Secrets are never parameters: a parameter whose name looks like one
is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from osm.core.config import BrainConfig
from osm.core.errors import ConfigError, DataError, OsmError
from osm.core.rundir import RunDir, write_atomic
from osm.live.jobbrain import brain_spec
from osm.live.jobs import Job, JobStore, runs_dir
from osm.live.preflight import importable_from
from osm.live.store import read_bars
from osm.research.backtest import backtest
from osm.research.lookahead import DEFAULT_WINDOW, LookaheadReport, check_lookahead, window_targets
from osm.research.walkforward import ParameterSchedule
from osm.strategies.base import Strategy, load_strategy

CHECK_BARS = 500  # bars checked after the first full window (the window's bars are checked too)
NOTEBOOK = "live_brain"
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")


class PromotionRefused(OsmError):
    """A gate refused the strategy; the message names the gate and what failed."""


class ParityReport(msgspec.Struct, frozen=True, kw_only=True):
    """The backtest's fills against the fills of the brain's decisions on the same bars."""

    n_bars: int
    fills: int  # the backtest's
    passed: bool
    first_difference: int | None = None  # index into the fill lists
    backtest_fill: tuple[int, int, float] | None = None  # (time ns, units, price)
    live_fill: tuple[int, int, float] | None = None

    def __str__(self) -> str:
        if self.passed:
            return f"parity: the brain's decisions fill as the backtest does ({self.fills} fills)"
        return (
            f"PARITY: fill {self.first_difference} differs: backtest {self.backtest_fill}, the "
            f"brain's decisions {self.live_fill} (of {self.fills} backtest fills)"
        )


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` registered and the reports of its gates."""

    job: Job
    lookahead: LookaheadReport
    parity: ParityReport
    bars_from: str

    def __str__(self) -> str:
        return (
            f"promoted {self.job.name}: {self.lookahead}\n{self.parity}\n"
            f"checked on {self.bars_from}; job {self.job.name} registered (osm jobs)"
        )


def promote(
    rundir: RunDir,
    strategy: str,
    params: dict[str, Any] | None = None,
    *,
    instrument: str = "EUR_USD",
    granularity: str = "M1",
    size: int = 10_000,
    window: int = DEFAULT_WINDOW,
    name: str | None = None,
    bars: np.ndarray | str | Path | None = None,
    python_path: list[str] | None = None,
    replace: bool = False,
    schedule: ParameterSchedule | str | Path | None = None,
) -> Promotion:
    """Check `strategy` with `params` and register it as a live-brain job; raise
    :class:`PromotionRefused` with the reason if a gate fails.

    Parameters
    ----------
    schedule
        A walk-forward's parameter schedule (or its JSON file) to trade instead of fixed `params`:
        each of its parameter sets passes both gates, and the job's brain follows a copy of it in
        ``runs/JOB/params_schedule.json``, read again when it changes (a nightly re-optimisation
        may rewrite it; the brain trades the new one from its next bar).
    bars
        BAR_DTYPE bars or a bar file to check on; default: the last ``window + CHECK_BARS``
        closed bars of `instrument` `granularity` in the router's store of `rundir`.
    name
        The job's name, also the brain's in the trader's journal; default: the class name in
        lower case.
    """
    if isinstance(schedule, str | Path):
        schedule = ParameterSchedule.load(schedule)
    if schedule is not None and schedule.strategy != strategy:
        raise ConfigError(f"the parameter schedule is for {schedule.strategy}, not {strategy}")
    candidates = [dict(params or {})] if schedule is None else distinct(schedule)
    for values in candidates:
        _refuse_secrets(values)
    name = name or strategy.rpartition(":")[2].lower()
    spec = brain_spec(
        strategy, candidates[-1], instrument, granularity, size, window, name, python_path
    )
    records, source = _bars(rundir, spec, bars)
    report, parity = gate(spec, candidates, records, python_path, named=schedule is not None)
    extra = {}
    if schedule is not None:
        path = runs_dir(rundir, spec.name) / "params_schedule.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, schedule.to_json())
        extra["params_schedule"] = str(path)
    job = Job(
        name=spec.name,
        notebook=NOTEBOOK,
        parameters={
            "strategy": spec.strategy,
            "params": spec.params,
            "instrument": spec.instrument,
            "granularity": spec.granularity,
            "size": spec.size,
            "window": spec.window,
            **extra,
        },
    )
    with JobStore(rundir) as store:
        store.add(job, replace=replace)
    record = {
        "job": msgspec.to_builtins(job),
        "lookahead": msgspec.to_builtins(report),
        "parity": msgspec.to_builtins(parity),
        "bars_from": source,
    }
    path = runs_dir(rundir, spec.name) / "promotion.json"
    write_atomic(path, json.dumps(record, indent=1, default=str).encode())
    return Promotion(job, report, parity, source)


def gate(
    spec: BrainConfig,
    candidates: list[dict[str, Any]],
    records: np.ndarray,
    python_path: list[str] | None = None,
    named: bool = False,
) -> tuple[LookaheadReport, ParityReport]:
    """Run both gates for each parameter set of `candidates` on `records`; raise
    :class:`PromotionRefused` at the first that fails (`named`: the message names the set).
    Return the reports of the last set."""
    for values in candidates:
        with importable_from(python_path or []):
            instance = load_strategy(spec.strategy)(**values)
        which = f" with {values}" if named else ""
        report = check_lookahead(instance, records, window=spec.window)
        if not report.passed:
            raise PromotionRefused(f"refused by the lookahead check{which}: {report}")
        parity = check_parity(instance, records, spec.size, spec.window)
        if not parity.passed:
            raise PromotionRefused(f"refused by the parity check{which}: {parity}")
    return report, parity


def distinct(schedule: ParameterSchedule) -> list[dict[str, Any]]:
    """The schedule's parameter sets, each once, in the order they last come (the last: now)."""
    out: list[dict[str, Any]] = []
    for entry in schedule.entries:
        if entry.params in out:
            out.remove(entry.params)
        out.append(dict(entry.params))
    return out


def check_parity(strategy: Strategy, bars: np.ndarray, size: int, window: int) -> ParityReport:
    """Compare the backtest's fills with the fills of a live brain's decisions on `bars`."""
    expected = backtest(strategy, bars, size=size)
    fills = expected.fill_records
    want = [
        (int(bars["time"][b]), int(u), float(p))
        for b, u, p in zip(fills["bar"], fills["units"], fills["price"], strict=True)
    ]
    got = decision_fills(window_targets(strategy, bars, window), bars, size)
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return ParityReport(
                n_bars=len(bars),
                fills=len(want),
                passed=False,
                first_difference=i,
                backtest_fill=a,
                live_fill=b,
            )
    if len(want) != len(got):
        i = min(len(want), len(got))
        return ParityReport(
            n_bars=len(bars),
            fills=len(want),
            passed=False,
            first_difference=i,
            backtest_fill=want[i] if i < len(want) else None,
            live_fill=got[i] if i < len(got) else None,
        )
    return ParityReport(n_bars=len(bars), fills=len(want), passed=True)


def decision_fills(
    targets: np.ndarray, bars: np.ndarray, size: int
) -> list[tuple[int, int, float]]:
    """Fills of a brain's per-bar targets: ``round(target * size)`` (NaN: flat) decided at bar t's
    close, the change executed at bar t+1's open, buys at the ask, sells at the bid."""
    held, out = 0, []
    for t in range(len(bars) - 1):
        target = float(targets[t])
        units = round(target * size) if math.isfinite(target) else 0
        if units != held:
            side = "ask_open" if units > held else "bid_open"
            out.append((int(bars["time"][t + 1]), units - held, float(bars[side][t + 1])))
            held = units
    return out


def _bars(
    rundir: RunDir, spec: BrainConfig, bars: np.ndarray | str | Path | None
) -> tuple[np.ndarray, str]:
    if isinstance(bars, str | Path):
        from osm.research.data import load_bars

        return load_bars(bars), f"the bars of {bars}"
    if bars is not None:
        return bars, f"{len(bars)} given bars"
    stored = read_bars(rundir.home, spec.instrument, spec.granularity)
    if not len(stored):
        raise DataError(
            f"no closed {spec.instrument} {spec.granularity} bars in the router's store of "
            f"{rundir.home} to check the strategy on; let the system run first, or pass "
            "--bars FILE (ticks or bars of the instrument)"
        )
    recent = stored[-(spec.window + CHECK_BARS) :]
    return recent, f"the last {len(recent)} {spec.instrument} {spec.granularity} bars of the store"


def _refuse_secrets(params: dict[str, Any]) -> None:
    for key in params:
        if any(word in key.lower() for word in _SECRET_WORDS):
            raise ConfigError(
                f"parameter {key!r} looks like a secret, and papermill writes parameters into the "
                "output notebook; give the brain its credentials in the environment or in a 0600 "
                "file of the run directory's keys/ instead"
            )
