"""Re-optimisation as a job: a research notebook that rewrites a running brain's parameter schedule.

``live/notebooks/reoptimise.ipynb`` (shipped beside ``live_brain``) calls :func:`reoptimise`. It
walks the live job's strategy forward over the bars of its instrument and granularity (the router's
store, or a file), gates every parameter set of the new schedule as promotion does (lookahead and
parity on the most recent bars), and only then replaces the job's schedule file, atomically. The
running brain trades the new schedule from its next bar (:class:`osm.live.jobbrain.ScheduleFollower`).
A schedule that fails a gate is not written: the brain keeps the one it has, and this notebook
fails with the reason (``osm jobs``, the archived run).

Nightly, for a job ``smacross`` promoted with a schedule::

    osm jobs add reopt --notebook reoptimise --param brain=smacross \\
        --param in_sample=5000 --param out_of_sample=1000
    osm schedule reopt --start '0 22 * * 1-5' --stop '0 23 * * 1-5'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from osm.core.errors import ConfigError, DataError
from osm.core.rundir import RunDir, write_atomic
from osm.live.jobbrain import brain_spec
from osm.live.jobs import JobStore
from osm.live.promote import CHECK_BARS, distinct, gate
from osm.live.store import read_bars
from osm.research.data import load_bars
from osm.research.walkforward import ParameterSchedule, walk_forward


@dataclass(frozen=True)
class Reoptimised:
    """What one re-optimisation wrote, for the notebook's summary."""

    job: str
    schedule: ParameterSchedule
    path: Path
    bars: int
    metrics: dict[str, float]

    def __str__(self) -> str:
        now = self.schedule.entries[-1]
        return (
            f"job {self.job}: new schedule of {len(self.schedule.entries)} entries from "
            f"{self.bars} bars, in force from {now.from_time:%Y-%m-%d %H:%M} UTC: {now.params}\n"
            f"  out of sample: {self.schedule.objective} "
            f"{self.metrics.get(self.schedule.objective, float('nan')):.3f}\n"
            f"  written to {self.path}; the brain trades it from its next bar"
        )


def reoptimise(
    *,
    home: str | Path | None,
    brain: str | None,
    in_sample: int,
    out_of_sample: int,
    grid: dict[str, Any] | None = None,
    objective: str = "sharpe",
    bars: str | Path | None = None,
) -> Reoptimised:
    """Walk the strategy of the live-brain job `brain` forward and, if every set passes the gates,
    replace its schedule."""
    if home in (None, "") or brain in (None, ""):
        raise ConfigError(
            "parameters 'home' and 'brain' are needed: the run directory and the live-brain job "
            "to re-optimise (osm jobs add NAME --notebook reoptimise --param brain=JOB ...)"
        )
    rundir = RunDir(home)
    job = str(brain)
    with JobStore(rundir) as store:
        found = store.get(job)
    if found is None:
        raise ConfigError(f"no job {job!r} in {rundir.home} (osm jobs lists them)")
    p = found.parameters
    path = p.get("params_schedule")
    if not path:
        raise ConfigError(
            f"job {job!r} trades fixed parameters; promote it with a schedule "
            "(osm promote --schedule FILE) to re-optimise it while it runs"
        )
    spec = brain_spec(
        p["strategy"], p.get("params"), p.get("instrument", "EUR_USD"),
        p.get("granularity", "M1"), p.get("size", 10_000), p.get("window", 2000), job,
    )  # fmt: skip
    records = load_bars(bars) if bars else read_bars(rundir.home, spec.instrument, spec.granularity)
    if len(records) < in_sample + out_of_sample:
        raise DataError(
            f"{len(records)} {spec.instrument} {spec.granularity} bars, fewer than in_sample + "
            f"out_of_sample ({in_sample} + {out_of_sample}); let the system collect more"
        )
    result = walk_forward(
        spec.strategy, records, in_sample, out_of_sample, grid=grid, objective=objective,
        size=spec.size, progress=False,
    )  # fmt: skip
    recent = records[-(spec.window + CHECK_BARS) :]
    gate(spec, distinct(result.schedule), np.ascontiguousarray(recent), named=True)
    write_atomic(Path(path), result.schedule.to_json())
    return Reoptimised(job, result.schedule, Path(path), len(records), result.metrics)
