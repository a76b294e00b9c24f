"""`osm promote`: a strategy becomes a live-brain job only through the lookahead and parity gates.

The gates run on given bars (a random walk, or a bar file through the command line); a refusal
names the gate and the bar, exits 2 from the command line and registers nothing.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osm.core.errors import ConfigError, DataError, UnknownNameError
from osm.core.rundir import RunDir
from osm.live import cli
from osm.live.jobbrain import ScheduleFollower
from osm.live.jobs import JobStore
from osm.live.promote import PromotionRefused, check_parity, decision_fills, promote
from osm.research.synthetic import random_walk_bars
from osm.research.walkforward import ParameterSchedule, ScheduleEntry
from osm.strategies import Param, Strategy
from osm.strategies.sma_cross import SmaCross

SMA = "osm.strategies.sma_cross:SmaCross"


class Centred(Strategy):
    """A centred rolling mean: the classic accidental lookahead (importable for the CLI)."""

    window = Param(11, low=3, high=51, step=2)

    def target(self, bars, ind):
        mean = pd.Series(bars.close).rolling(self.window, center=True).mean().to_numpy()
        return np.sign(bars.close - mean)


@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    return random_walk_bars(1200, seed=8)


def jobs(home) -> list:
    with JobStore(RunDir(home)) as store:
        return store.list()


def test_a_peeking_strategy_is_refused_naming_the_biased_bar_and_nothing_is_registered(home, bars):
    with pytest.raises(PromotionRefused, match=r"lookahead check: .*LOOKAHEAD.*first at bar 2 \("):
        promote(RunDir(home), "tests.test_promote:Centred", {"window": 5}, bars=bars, window=50)
    assert jobs(home) == []


def test_a_window_shorter_than_the_warmup_is_refused_as_warmup(home, bars):
    with pytest.raises(PromotionRefused, match=r"WARM-UP longer than the 10-bar window"):
        promote(RunDir(home), SMA, {"fast": 5, "slow": 20}, bars=bars, window=10)
    assert jobs(home) == []


def test_sma_cross_passes_both_gates_and_is_registered_with_its_parameters(home, bars):
    done = promote(
        RunDir(home), SMA, {"fast": 5, "slow": 20}, bars=bars, window=100, size=2_000, name="sx"
    )
    assert done.lookahead.passed and done.lookahead.bars_checked == len(bars)
    assert done.parity.passed and done.parity.fills > 20
    [job] = jobs(home)
    assert (job.name, job.notebook, job.enabled, job.state) == (
        "sx",
        "live_brain",
        True,
        "registered",
    )
    assert job.parameters == {
        "strategy": SMA,
        "params": {"fast": 5, "slow": 20},
        "instrument": "EUR_USD",
        "granularity": "M1",
        "size": 2_000,
        "window": 100,
    }
    kept = json.loads((home / "runs" / "sx" / "promotion.json").read_text())
    assert kept["lookahead"]["passed"] and kept["parity"]["fills"] == done.parity.fills
    with pytest.raises(ConfigError, match="a job named 'sx' exists"):
        promote(RunDir(home), SMA, {"fast": 5, "slow": 20}, bars=bars, window=100, name="sx")


def test_the_parity_gate_catches_decisions_that_do_not_fill_as_the_backtest(bars):
    strategy = SmaCross(fast=5, slow=20)
    assert check_parity(strategy, bars, 1_000, 100).passed
    # A brain that rounds its size differently (units off by one on one fill) must fail.
    targets = strategy.targets(bars)
    fills = decision_fills(targets, bars, 1_000)
    assert fills[0][1] in (1_000, -1_000) and fills[0][0] == int(
        bars["time"][np.flatnonzero(np.nan_to_num(targets))[0] + 1]
    )
    report = check_parity(strategy, bars, 1_000, 10)  # window too short: decisions differ
    assert not report.passed and report.backtest_fill != report.live_fill


def test_a_parameter_that_looks_like_a_secret_is_refused(home, bars):
    with pytest.raises(ConfigError, match="'api_token' looks like a secret"):
        promote(RunDir(home), SMA, {"api_token": "x"}, bars=bars)


def test_a_misspelt_parameter_is_refused_before_any_check(home, bars):
    with pytest.raises(UnknownNameError, match="'slwo'. Did you mean 'slow'"):
        promote(RunDir(home), SMA, {"fast": 5, "slwo": 20}, bars=bars)


def test_the_command_line_refuses_with_exit_2_and_registers_with_exit_0(
    home, bars, tmp_path, capsys
):
    frame = pd.DataFrame({"time_utc": pd.to_datetime(bars["time"], utc=True)})
    for field in ("open", "high", "low", "close"):
        for side in ("bid", "ask"):
            frame[f"{side}_{field}"] = bars[f"{side}_{field}"]
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    common = ["--bars", str(path), "--window", "60", "--home", str(home)]

    code = cli.main(["promote", "tests.test_promote:Centred", "--param", "window=5", *common])
    assert code == 2
    assert "LOOKAHEAD" in capsys.readouterr().err
    code = cli.main(["promote", SMA, "--param", "fast=5", "--param", "slow=20", *common])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "promoted smacross" in out and "parity: the brain's decisions fill" in out
    assert cli.main(["jobs", "--home", str(home)]) == 0
    listed = capsys.readouterr().out
    assert (
        "smacross" in listed
        and "registered" in listed
        and "fast=5" not in listed.split("params=")[0]
    )


def test_no_bars_in_the_store_is_refused_with_the_fix(home):
    with pytest.raises(DataError, match="--bars FILE"):
        promote(RunDir(home), SMA, {"fast": 5, "slow": 20})


# -- parameter schedules (a walk-forward's) -----------------------------------------------------


def _at(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns / 1e9, UTC)


def _schedule(*entries: tuple[int, dict]) -> ParameterSchedule:
    return ParameterSchedule(
        strategy=SMA,
        entries=[ScheduleEntry(from_time=_at(t), params=p) for t, p in entries],
    )


def test_a_schedule_is_promoted_with_every_parameter_set_gated(home, bars):
    t = bars["time"]
    schedule = _schedule(
        (int(t[300]), {"fast": 3, "slow": 8}), (int(t[800]), {"fast": 5, "slow": 20})
    )
    done = promote(RunDir(home), SMA, bars=bars, window=100, schedule=schedule)
    parameters = done.job.parameters
    assert parameters["params"] == {"fast": 5, "slow": 20}  # in force now
    assert ParameterSchedule.load(parameters["params_schedule"]) == schedule

    slow = _schedule((int(t[300]), {"fast": 5, "slow": 120}), (int(t[800]), {"fast": 3, "slow": 8}))
    with pytest.raises(PromotionRefused, match=r"lookahead check with \{'fast': 5, 'slow': 120\}"):
        promote(RunDir(home), SMA, bars=bars, window=100, schedule=slow, name="other")
    assert [j.name for j in jobs(home)] == ["smacross"]


def test_the_brain_reads_a_rewritten_schedule_at_its_next_bar_and_keeps_a_good_one(tmp_path, bars):
    t = [int(x) for x in bars["time"]]
    path = _schedule((t[10], {"fast": 3, "slow": 8})).save(tmp_path / "schedule.json")
    follower = ScheduleFollower(path, SMA)
    assert follower.params_at(t[5]) is None  # before the schedule: the job's own params
    assert follower.params_at(t[20]) == {"fast": 3, "slow": 8}
    _schedule((t[10], {"fast": 3, "slow": 8}), (t[30], {"fast": 5, "slow": 20})).save(path)
    assert follower.params_at(t[31]) == {"fast": 3, "slow": 8}  # not read again until asked
    follower.refresh()
    assert follower.params_at(t[31]) == {"fast": 5, "slow": 20}  # the nightly rewrite
    assert follower.reloads == 1
    path.write_text('{"strategy": "osm.strategies.sma_cross:SmaCross", "entries": [')
    follower.refresh()
    assert follower.params_at(t[32]) == {"fast": 5, "slow": 20}  # a broken file: the last good
    with pytest.raises(ConfigError, match="invalid parameter schedule"):
        ScheduleFollower(path, SMA)  # at start a bad file fails the job at once
    _schedule((t[10], {"fast": 3, "slow": 8})).save(path)
    with pytest.raises(ConfigError, match="is for osm.strategies.sma_cross:SmaCross, not x:Y"):
        ScheduleFollower(path, "x:Y")


def test_osm_promote_takes_a_schedule_file(home, bars, tmp_path, capsys):
    t = bars["time"]
    path = _schedule((int(t[300]), {"fast": 3, "slow": 8})).save(tmp_path / "wf.json")
    frame = pd.DataFrame({"time_utc": pd.to_datetime(bars["time"], utc=True)})
    for field in ("open", "high", "low", "close"):
        for side in ("bid", "ask"):
            frame[f"{side}_{field}"] = bars[f"{side}_{field}"]
    frame.to_csv(tmp_path / "bars.csv", index=False)
    common = ["--bars", str(tmp_path / "bars.csv"), "--window", "60", "--home", str(home)]
    assert cli.main(["promote", "--schedule", str(path), *common]) == 0, capsys.readouterr()
    [job] = jobs(home)
    assert ParameterSchedule.load(job.parameters["params_schedule"]) == ParameterSchedule.load(path)
    assert cli.main(["promote", "--window", "60", "--home", str(home)]) == 2
    assert "give the strategy (MODULE:CLASS) or --schedule FILE" in capsys.readouterr().err


def test_a_reoptimisation_notebook_rewrites_the_schedule_only_when_every_set_passes(
    home, bars, tmp_path
):
    import papermill

    from osm.live.jobs import notebook_path

    t = bars["time"]
    old = _schedule((int(t[300]), {"fast": 3, "slow": 8}))
    promote(RunDir(home), SMA, bars=bars, window=100, schedule=old)
    path = tmp_path / "bars.csv"
    frame = pd.DataFrame({"time_utc": pd.to_datetime(bars["time"], utc=True)})
    for field in ("open", "high", "low", "close"):
        for side in ("bid", "ask"):
            frame[f"{side}_{field}"] = bars[f"{side}_{field}"]
    frame.to_csv(path, index=False)
    [job] = jobs(home)
    written = Path(job.parameters["params_schedule"])

    def run(grid: dict) -> None:
        papermill.execute_notebook(
            str(notebook_path("reoptimise")), str(tmp_path / "out.ipynb"), kernel_name="python3",
            parameters={"home": str(home), "brain": job.name, "job": "reopt", "bars": str(path),
                        "in_sample": 400, "out_of_sample": 200, "grid": grid},
            progress_bar=False,
        )  # fmt: skip

    with pytest.raises(papermill.PapermillExecutionError, match="lookahead check with"):
        run({"fast": [5], "slow": [120]})  # needs more than the brain's 100-bar window
    assert ParameterSchedule.load(written) == old  # a refused schedule writes nothing

    run({"fast": [3, 5], "slow": [8, 20]})
    new = ParameterSchedule.load(written)
    assert new != old and len(new.entries) >= 2
    assert all(e.params["slow"] in (8, 20) for e in new.entries)
    assert "the brain trades it from its next bar" in (tmp_path / "out.ipynb").read_text()


def test_promote_before_osm_up_leaves_nothing_others_can_read(tmp_path, bars):
    home = tmp_path / "fresh"
    umask = os.umask(0o022)  # a usual shell's: files 0644 and folders 0755 unless made private
    try:
        promote(RunDir(home), SMA, {"fast": 5, "slow": 20}, bars=bars, window=60)
    finally:
        os.umask(umask)
    shared = [p for p in [home, *home.rglob("*")] if p.lstat().st_mode & 0o077]
    assert shared == []
