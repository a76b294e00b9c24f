"""A brain run inside a notebook: what ``notebooks/live_brain.ipynb`` calls.

The live-brain notebook is a job (:mod:`osm.live.jobs`): the supervisor runs it with papermill,
whose kernel is the job's grandchild. :func:`run_brain` checks the notebook's parameters, attaches
to the system running in ``home`` and runs :class:`osm.live.brain.Brain`, the very code a
configured brain runs (warm-up from the router's history, one decision per closed bar), in the
kernel's main thread until SIGTERM or `until`. Its heartbeats carry the token the supervisor gave
the job (``OSM_PROCESS_TOKEN``, inherited through papermill), which is how the supervisor knows
them for the job's whatever the kernel's pid. Its log goes to ``logs/JOB.log``, not to the cells,
and rotates (:func:`osm.live.logfiles.rotating_handler`): a brain runs for weeks.

A parameter that is missing or wrong raises a :class:`~osm.core.errors.ConfigError` at once, with
one line that says which and how to fix it; an exception of the strategy is raised out of the cell,
so the notebook fails and papermill saves it with the error. :class:`BrainRun` is the summary the
notebook's last cell shows: decisions, fills, position and PnL from the trader's journal.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from osm.core import config as cfg
from osm.core.errors import ConfigError, OsmError
from osm.core.rundir import RunDir
from osm.live import priority
from osm.live.brain import Brain
from osm.live.logfiles import rotating_handler
from osm.live.preflight import importable_from
from osm.live.service import SUPERVISOR_PID_ENV
from osm.research.walkforward import ParameterSchedule
from osm.strategies.base import load_strategy

REQUIRED = ("strategy", "job", "home")
_log = logging.getLogger("osm.jobbrain")


@dataclass(frozen=True)
class BrainRun:
    """What one run of a job's brain did, for the notebook's summary cell."""

    job: str
    strategy: str
    params: dict[str, Any]
    instrument: str
    granularity: str
    decisions: int  # bars the brain decided in this run
    targets: int  # of those, sent to the trader (a decision repeating the last is not)
    bars: int  # bars in its window at the end
    fills: int  # the job's fills in the trader's journal (every run of the job)
    position: int  # units held by the job
    pnl: float  # cash flow of the fills, the position marked at the last mid close, commission off
    commission: float
    last_bar: str | None  # open time of the last bar decided (UTC)

    def __str__(self) -> str:
        return (
            f"job {self.job}: {self.strategy.rpartition(':')[2]} {self.params} on "
            f"{self.instrument} {self.granularity}\n"
            f"  decisions this run  {self.decisions} (last bar {self.last_bar or '-'}; "
            f"{self.targets} sent as targets)\n"
            f"  fills (all runs)    {self.fills}\n"
            f"  position            {self.position:+d} {self.instrument}\n"
            f"  PnL                 {self.pnl:+.2f} (commission {self.commission:.2f} included)"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


class ScheduleFollower:
    """The parameters a parameter schedule file (a walk-forward's) puts in force at a bar.

    The file is read again whenever it changes (a nightly re-optimisation rewrites it), so a
    running brain trades the new schedule from its next bar on. A file that cannot be read or is
    not a valid schedule for the strategy is logged and the last good one kept: trading goes on.
    """

    def __init__(self, path: str | Path, strategy: str) -> None:
        self.path, self.strategy = Path(path), strategy
        self._stamp: tuple[int, int] | None = None
        self.schedule = self._read()  # a bad file at start fails the job at once, named
        self.reloads = 0

    def _read(self) -> ParameterSchedule:
        try:
            schedule = ParameterSchedule.load(self.path)
        except FileNotFoundError:
            raise ConfigError(f"parameter schedule {self.path} does not exist") from None
        if schedule.strategy != self.strategy:
            raise ConfigError(
                f"parameter schedule {self.path} is for {schedule.strategy}, not {self.strategy}"
            )
        for entry in schedule.entries:
            load_strategy(self.strategy)(**entry.params)  # a misspelt parameter fails here, named
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return schedule

    def refresh(self) -> None:
        """Read the file again if it changed since it was last read."""
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                self.schedule = self._read()
                self.reloads += 1
                _log.info("parameter schedule %s read again: %d entries", self.path,
                          len(self.schedule.entries))  # fmt: skip
        except (OSError, OsmError) as exc:
            _log.warning("parameter schedule %s not read again, the last one stays: %s",
                         self.path, exc)  # fmt: skip

    def params_at(self, bar_ns: int) -> dict[str, Any] | None:
        """The parameters in force for the bar that opens at `bar_ns` (as last read, see
        :meth:`refresh`); None before the schedule."""
        try:
            return self.schedule.params_at(bar_ns)
        except ValueError:
            return None


class _JobBrain(Brain):
    """A brain that also stops at a wall-clock time (the end of the job's window) and may trade a
    parameter schedule."""

    until_ns: int | None = None
    schedule: ScheduleFollower | None = None
    _scheduled: dict[str, Any] | None = None  # the schedule's parameters now traded

    def _runs(self, times: np.ndarray) -> Iterator[tuple[int, int]]:
        if self.schedule is None:
            yield from super()._runs(times)
            return
        self.schedule.refresh()
        wanted = [self.schedule.params_at(t) for t in times.tolist()]
        start = 0
        for stop in range(1, len(times) + 1):
            if stop < len(times) and wanted[stop] == wanted[start]:
                continue
            params = wanted[start]
            if params is not None and params != self._scheduled:  # None: before the schedule
                self.strategy = load_strategy(self.spec.strategy)(**params)
                self._scheduled = params
                self.counters["schedule_switches"] += 1
                self.log.info("trading %s from the bar at %d on", params, int(times[start]))
            yield start, stop
            start = stop

    def idle(self) -> None:
        super().idle()
        if self.until_ns is not None and dt.datetime.now(dt.UTC).timestamp() * 1e9 >= self.until_ns:
            self.log.info("reached the end of the job's window; stopping")
            self.stop()


def brain_spec(
    strategy: str | None,
    params: dict[str, Any] | None,
    instrument: str,
    granularity: str,
    size: int,
    window: int,
    job: str | None,
    python_path: list[str] | None = None,
) -> cfg.BrainConfig:
    """The BrainConfig the parameters describe; raise ConfigError naming a bad one."""
    values = {"strategy": strategy, "job": job}
    for name, value in values.items():
        if value in (None, ""):
            raise ConfigError(
                f"parameter {name!r} is missing: pass it with papermill -p {name} ..."
            )
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"parameter 'params' must be a mapping of name to value, got {params!r}")
    spec = cfg.load(
        cfg.BrainConfig,
        {
            "name": job,
            "strategy": strategy,
            "params": params or {},
            "instrument": instrument,
            "granularity": granularity,
            "size": size,
            "window": window,
        },
    )
    with importable_from(python_path or []):
        load_strategy(spec.strategy)(**spec.params)  # a misspelt parameter fails here, named
    return spec


def run_brain(
    *,
    strategy: str | None,
    params: dict[str, Any] | None,
    instrument: str,
    granularity: str,
    size: int,
    window: int,
    job: str | None,
    home: str | None,
    until: str | None = None,
    params_schedule: str | None = None,
) -> BrainRun:
    """Run the job's brain against the system in `home` until SIGTERM or `until` (ISO UTC),
    trading `params` or, when given, the parameter schedule file `params_schedule`."""
    if home in (None, ""):
        raise ConfigError("parameter 'home' is missing: pass the run directory with -p home DIR")
    rundir = RunDir(home)
    endpoints = rundir.read_endpoints()
    if endpoints is None or not rundir.config_path.exists():
        raise ConfigError(f"no system runs in {rundir.home}: start it with `osm up --home {home}`")
    system = cfg.load(cfg.SystemConfig, rundir.config_path.read_bytes())
    spec = brain_spec(
        strategy, params, instrument, granularity, size, window, job, system.python_path
    )
    if spec.name in {f.name for f in system.feeds} | {b.name for b in system.brains}:
        raise ConfigError(f"job {spec.name!r} has the name of a process of the system; rename it")
    cfg.check_system(msgspec.structs.replace(system, brains=[spec]))
    until_ns = _until_ns(until)
    with importable_from(system.python_path):
        follower = ScheduleFollower(params_schedule, spec.strategy) if params_schedule else None
    log_to(rundir, spec.name)
    # Set by the job runner only; removed, so nothing this kernel starts takes it for its own.
    given = os.environ.pop(SUPERVISOR_PID_ENV, "")
    supervisor = int(given) if given.isdigit() else None
    if supervisor is not None:
        # The kernel leads a session jupyter_client made for it: the supervisor's priority
        # (inherited as a nice value) reaches the session's autogroup only from here. Never
        # in a notebook run by hand: that kernel is the user's.
        priority.apply(system)
    brain = _JobBrain(spec.name, rundir, system, endpoints, spec=spec)
    brain.until_ns, brain.schedule = until_ns, follower
    if supervisor is not None:
        brain.watch(supervisor)
    with importable_from(system.python_path):
        try:
            brain.run_embedded()
        finally:
            if not brain.bus.context.closed:  # setup failed before the loop could close it
                brain.bus.close()
    return summarise(rundir, spec, brain)


def log_to(rundir: RunDir, job: str) -> None:
    """Send the kernel's logging to the job's rotating ``logs/JOB.log`` (none to the cells)."""
    root = logging.getLogger()
    root.handlers[:] = [rotating_handler(rundir.log_path(job))]
    root.setLevel(logging.INFO)


def _until_ns(until: str | None) -> int | None:
    if until in (None, ""):
        return None
    try:
        moment = dt.datetime.fromisoformat(str(until).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"parameter 'until' must be an ISO time such as 2024-03-08T21:00:00Z, got {until!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1e9)


def summarise(rundir: RunDir, spec: cfg.BrainConfig, brain: Brain) -> BrainRun:
    """The job's decisions (this run), fills, position and PnL (every run, from the journal)."""
    rows = _fills(rundir, spec.name, spec.instrument)
    position = sum(units for units, _, _ in rows)
    commission = sum(c for _, _, c in rows)
    cash = -sum(units * price for units, price, _ in rows) - commission
    last = brain.series.last if len(brain.series) else None
    mark = 0.0 if last is None else (float(last["bid_close"]) + float(last["ask_close"])) / 2
    return BrainRun(
        job=spec.name,
        strategy=spec.strategy,
        params=brain.strategy.values,
        instrument=spec.instrument,
        granularity=spec.granularity,
        decisions=int(brain.counters.get("decisions", 0)),
        targets=int(brain.counters.get("targets", 0)),
        bars=len(brain.series),
        fills=len(rows),
        position=int(position),
        pnl=round(cash + position * mark, 2),
        commission=round(commission, 2),
        last_bar=None if last is None else _iso(int(last["time"])),
    )


def _fills(rundir: RunDir, brain: str, instrument: str) -> list[tuple[int, float, float]]:
    path = rundir.home / "db" / "trader.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(
                "SELECT units, price, commission FROM fills WHERE brain = ? AND instrument = ? "
                "ORDER BY seq",
                (brain, instrument),
            ).fetchall()
    except sqlite3.Error as exc:
        logging.getLogger("osm.jobbrain").warning("cannot read the trader's journal: %s", exc)
        raise OsmError(f"cannot read the trader's journal {path}: {exc}") from exc


def _iso(time_ns: int) -> str:
    return dt.datetime.fromtimestamp(time_ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
