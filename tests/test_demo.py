"""`make demo`'s story end to end: research on generated bars, promotion, a papermill brain on a
max-speed replay through real processes, parity with the backtest, and nothing left running.

The fills are checked against a backtest made here (not only the demo's own verdict), and what
"nothing left" means is checked here too: every process the demo saw (supervisor, router, trader,
feeder, papermill, the kernel) is gone, and no process names the run directory.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import pytest

from osm.core.rundir import RunDir
from osm.live import demo
from osm.live.jobs import JobStore, list_runs
from osm.live.promote import decision_fills
from osm.research.backtest import backtest
from osm.research.lookahead import window_targets
from osm.research.walkforward import ParameterSchedule, ScheduleEntry
from osm.strategies.sma_cross import SmaCross

HISTORY, LIVE, WINDOW, SEED = 2_000, 400, 150, 11


def _fills(home) -> list[tuple[int, int, float]]:
    with sqlite3.connect(f"file:{home / 'db' / 'trader.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT time_ns, units, price FROM fills WHERE brain = ? ORDER BY seq", (demo.JOB,)
        ).fetchall()
    return [(int(t), int(u), float(p)) for t, u, p in rows]


def _naming(home) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(home) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.timeout(900)
def test_the_story_ends_in_parity_and_leaves_nothing_running(home, monkeypatch, capsys):
    story = demo.run_story
    seen = {}
    monkeypatch.setattr(demo, "run_story", lambda *args: seen.setdefault("run", story(*args)))
    argv = ["--history", str(HISTORY), "--live", str(LIVE), "--window", str(WINDOW)]
    code = demo.main([*argv, "--seed", str(SEED), "--home", str(home)])
    out = capsys.readouterr().out
    assert code == 0, out
    live, parity = seen["run"]

    with JobStore(RunDir(home)) as store:
        job = store.get(demo.JOB)
    assert job is not None and job.parameters["window"] == WINDOW
    future = demo.generated_bars(HISTORY + LIVE, seed=SEED)[HISTORY:]
    expected = backtest(
        job.parameters["strategy"], future, size=demo.SIZE, **job.parameters["params"]
    )
    records = expected.fill_records
    want = [
        (int(future["time"][b]), int(u), float(p))
        for b, u, p in zip(records["bar"], records["units"], records["price"], strict=True)
    ]
    assert len(want) >= 10, "pick a size where the winner trades, or parity proves little"
    assert _fills(home) == want
    assert parity.passed and parity.fills == len(want), parity
    assert live.decisions == LIVE - 1 and live.refused == 0
    assert "parity: PASSED" in out and f"{len(want)} fills" in out

    assert len(live.pids) >= 6  # supervisor, router, trader, feeder, papermill and its kernel
    assert live.left_running == []
    assert [pid for pid in live.pids if psutil.pid_exists(pid)] == []
    assert _naming(home) == []
    assert "everything stopped" in out

    [run] = list_runs(RunDir(home), demo.JOB)
    assert run["exit_code"] == 0 and run["error"] is None
    cells = json.loads(Path(run["notebook"]).read_text())["cells"]
    summary = next(c for c in cells if "summary" in c["metadata"].get("tags", []))
    text = "".join("".join(o.get("text", "")) for o in summary["outputs"])
    assert int(re.search(r"fills \(all runs\)\s+(\d+)", text)[1]) == len(want)
    assert int(re.search(r"position\s+([+-]?\d+)", text)[1]) == sum(u for _, u, _ in want)


def test_a_window_shorter_than_the_grids_longest_sma_is_refused_before_anything_starts(
    home, capsys
):
    code = demo.main(["--window", "50", "--home", str(home)])
    assert code == 2
    assert "--window must be at least 120" in capsys.readouterr().out
    assert not (home / "config.json").exists()


@pytest.mark.timeout(900)
def test_a_promoted_schedule_is_traded_live_switching_parameters_at_its_times(home):
    bars = demo.generated_bars(1_300, seed=5)
    gate, live = bars[:600], bars[600:]
    switch_ns = int(live["time"][350])
    first, second = {"fast": 3, "slow": 20}, {"fast": 8, "slow": 50}
    schedule = ParameterSchedule(
        strategy=demo.SMA_CROSS,
        entries=[
            ScheduleEntry(from_time=_utc(int(gate["time"][0])), params=first),
            ScheduleEntry(from_time=_utc(switch_ns), params=second),
        ],
    )
    run = demo.replay_job(
        home, live, demo.SMA_CROSS, {}, window=WINDOW, job=demo.JOB, gate_bars=gate,
        schedule=schedule,
    )  # fmt: skip
    assert not run.left_running
    later = live["time"] >= switch_ns  # bars that open at or after the switch trade `second`
    targets = np.where(
        later,
        window_targets(SmaCross(**second), live, WINDOW),
        window_targets(SmaCross(**first), live, WINDOW),
    )
    want = decision_fills(targets, live, demo.SIZE)
    assert any(t >= switch_ns for t, _, _ in want) and any(t < switch_ns for t, _, _ in want)
    assert _fills(home) == want
    assert "'fast': 8, 'slow': 50" in run.summary  # the summary shows what it trades now


def _utc(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns / 1e9, UTC)
