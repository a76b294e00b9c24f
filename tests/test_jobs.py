"""Jobs: live-brain notebooks that the supervisor runs with papermill, restarts and stops whole.

The job store is plain SQLite; the notebook is executed for real by papermill (a missing parameter
stops it at once, with one line); and a job runs under a real supervisor against a synthetic
market: it trades under its own name, a kill -9 of its kernel is restarted, and `osm down` leaves
no process of its tree and an output notebook with its parameters and summary.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
from pathlib import Path

import msgspec
import papermill
import psutil
import pytest

from osm.core import config as cfg
from osm.core.errors import ConfigError, UnknownNameError
from osm.core.rundir import RunDir
from osm.live.cli import demo_config
from osm.live.jobs import NOTEBOOKS, Job, JobStore, list_runs
from osm.live.priority import BACKGROUND_NICE
from osm.live.service import PROCESS_TOKEN_ENV
from tests.live_helpers import autogroup_nice, wait_for
from tests.system_helpers import osm, status, stop

SMA = "osm.strategies.sma_cross:SmaCross"
PARAMETERS = {"strategy": SMA, "params": {"fast": 3, "slow": 8}, "window": 200, "size": 1_000}


def test_the_store_keeps_jobs_and_refuses_unknown_and_duplicate_names(home):
    with JobStore(RunDir(home)) as store:
        store.add(Job(name="b1", notebook="live_brain", parameters=PARAMETERS))
        with pytest.raises(ConfigError, match="a job named 'b1' exists"):
            store.add(Job(name="b1", notebook="live_brain"))
        with pytest.raises(ConfigError, match="a job name is a letter"):
            store.add(Job(name="../x", notebook="live_brain"))
        with pytest.raises(UnknownNameError, match="live_brain"):
            store.add(Job(name="b2", notebook="no_such_notebook"))
        store.enable("b1", False)
        store.report("b1", "failed", 3, "boom")
        [job] = store.list()
        assert (job.enabled, job.state, job.restarts, job.reason) == (False, "failed", 3, "boom")
        assert job.parameters == PARAMETERS
        store.enable("b1", True)  # a start clears what the last run left
        assert store.get("b1").state == "registered" and store.get("b1").restarts == 0
        with pytest.raises(UnknownNameError, match="'b3'"):
            store.remove("b3")
        store.remove("b1")
        assert store.list() == []


def test_a_missing_parameter_stops_the_notebook_at_once_with_one_clear_line(home, tmp_path):
    # A system's files without a system: the notebook must fail on the parameter, before any socket.
    RunDir(home).config_path.write_bytes(cfg.dump(demo_config()))
    RunDir(home).write_endpoints({})
    output = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(
            str(NOTEBOOKS / "live_brain.ipynb"),
            str(output),
            parameters={"job": "b1", "home": str(home), "params": {}},
            progress_bar=False,
            kernel_name="python3",
        )
    assert failed.value.ename == "ConfigError"
    assert (
        failed.value.evalue
        == "parameter 'strategy' is missing: pass it with papermill -p strategy ..."
    )
    saved = json.loads(output.read_text())
    assert any(
        o.get("ename") == "ConfigError" for c in saved["cells"] for o in c.get("outputs", [])
    )


def _fills(home: Path, brain: str) -> list[tuple[str, int]]:
    path = home / "db" / "trader.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT client_id, units FROM fills WHERE brain = ? ORDER BY seq", (brain,)
        ).fetchall()


def _job(home: Path, name: str) -> dict:
    return next(j for j in status(home)["jobs"] if j["name"] == name)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def up_with_brain_job(home: Path, config: cfg.SystemConfig) -> None:
    """`osm up` on `config`, then `osm jobs add b1` of the live-brain notebook with PARAMETERS."""
    path = home.parent / f"{home.name}-config.json"
    path.write_bytes(cfg.dump(config))
    done = osm(home, "up", "--config", str(path))
    assert done.returncode == 0, done.stderr + done.stdout
    done = osm(home, "jobs", "add", "b1", "--notebook", "live_brain", *[
        arg for k, v in PARAMETERS.items() for arg in ("--param", f"{k}={json.dumps(v)}")
    ])  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_job_survives_kill_9_of_its_kernel_then_of_papermill_and_stops_whole(home):
    config = msgspec.structs.replace(demo_config(), brains=[])  # the job is the only brain
    try:
        up_with_brain_job(home, config)

        wait_for(lambda: len(_fills(home, "b1")) >= 2, 240, "two fills of the job's brain")
        fills = _fills(home, "b1")
        assert all(cid.startswith("b1-") and abs(units) in (1_000, 2_000) for cid, units in fills)
        first = _job(home, "b1")
        assert first["state"] == "running" and first["brain_pid"] not in (None, first["pid"])
        kernel = psutil.Process(first["brain_pid"])
        assert kernel.pid in [
            p.pid for p in _tree(first["pid"])
        ]  # a grandchild, yet its beats count

        os.kill(kernel.pid, signal.SIGKILL)
        wait_for(
            lambda: _job(home, "b1")["restarts"] >= 1 and _job(home, "b1")["state"] == "running",
            240,
            "the job restarted after its kernel was killed",
        )
        again = _job(home, "b1")
        assert again["brain_pid"] != kernel.pid and again["pid"] != first["pid"]
        count = len(_fills(home, "b1"))
        wait_for(lambda: len(_fills(home, "b1")) > count, 120, "a fill of the restarted brain")

        orphan = psutil.Process(again["brain_pid"])
        os.kill(again["pid"], signal.SIGKILL)  # papermill itself: its kernel must not trade on
        wait_for(
            lambda: _job(home, "b1")["restarts"] >= 2 and _job(home, "b1")["state"] == "running",
            240,
            "the job restarted after its papermill process was killed",
        )
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
        again = _job(home, "b1")
        count = len(_fills(home, "b1"))
        wait_for(
            lambda: len(_fills(home, "b1")) > count, 120, "a fill of the brain restarted again"
        )
        client_ids = [cid for cid, _ in _fills(home, "b1")]
        assert len(client_ids) == len(set(client_ids))  # no decision traded twice
        tree = _tree(again["pid"])
        assert len(tree) >= 2  # papermill and its kernel

        done = osm(home, "down")
        assert done.returncode == 0, done.stderr
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert alive == []
    finally:
        stop(home)

    runs = list_runs(RunDir(home), "b1")
    assert len(runs) == 3
    assert "DeadKernelError" in runs[0]["error"] and runs[0]["exit_code"] != 0  # kernel killed
    assert "SIGKILL" in runs[1]["error"]  # papermill killed
    assert runs[2]["error"] is None and runs[2]["exit_code"] == 0  # stopped by `osm down`
    cells = json.loads(Path(runs[2]["notebook"]).read_text())["cells"]
    injected = next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))
    assert f'strategy = "{SMA}"' in "".join(injected["source"])
    assert 'job = "b1"' in "".join(injected["source"])
    summary = next(c for c in cells if "summary" in c["metadata"].get("tags", []))
    text = "".join("".join(o.get("text", "")) for o in summary["outputs"])
    assert "job b1: SmaCross {'fast': 3, 'slow': 8} on EUR_USD M1" in text
    assert int(re.search(r"decisions this run\s+(\d+)", text)[1]) > 0
    assert int(re.search(r"fills \(all runs\)\s+(\d+)", text)[1]) >= len(client_ids)


EXPLODING = '''
import numpy as np

from osm.strategies.base import Param, Strategy

DECISIONS = [0]  # in this process: a restarted brain counts from zero


class Exploding(Strategy):
    """Long and short on alternate minutes, then a ZeroDivisionError at decision `after`."""

    after = Param(6, low=1, high=1_000)

    def target(self, bars, ind):
        DECISIONS[0] += 1
        if DECISIONS[0] >= self.after:
            raise ZeroDivisionError(f"Exploding gave up at decision {DECISIONS[0]}")
        return np.where((bars.time // 60_000_000_000) % 2 == 0, 1.0, -1.0)
'''


def _tokens(processes: list[dict]) -> set[str]:
    """The secrets the supervisor gave these processes (children, or jobs' papermill), from
    their environment."""
    found = set()
    for pid in filter(None, (p["pid"] for p in processes)):
        try:
            token = psutil.Process(pid).environ().get(PROCESS_TOKEN_ENV)
        except psutil.Error:  # a job's run that ended meanwhile
            continue
        found |= {token} if token else set()
    return found


def test_a_brain_whose_strategy_raises_fails_at_the_cap_and_no_secret_is_written(
    home, tmp_path, monkeypatch
):
    oanda = f"oanda-{secrets.token_hex(16)}"
    monkeypatch.setenv("OANDA_ACCESS_TOKEN", oanda)  # what `osm up` and every child inherit
    (tmp_path / "exploding.py").write_text(EXPLODING)
    config = msgspec.structs.replace(
        demo_config(), brains=[], max_restarts=1, python_path=[str(tmp_path)]
    )
    path = home.parent / f"{home.name}-config.json"
    path.write_bytes(cfg.dump(config))
    tokens: set[str] = set()
    job_tokens: set[str] = set()
    try:
        done = osm(home, "up", "--config", str(path))
        assert done.returncode == 0, done.stderr + done.stdout
        tokens |= _tokens(status(home)["processes"])
        done = osm(home, "jobs", "add", "x1", "--notebook", "live_brain", *[
            arg for k, v in {**PARAMETERS, "strategy": "exploding:Exploding", "params": {"after": 4}}.items()
            for arg in ("--param", f"{k}={json.dumps(v)}")
        ])  # fmt: skip
        assert done.returncode == 0, done.stderr

        def failed() -> bool:
            seen = [j for j in status(home)["jobs"] if j["name"] == "x1"]  # [] until picked up
            job_tokens.update(_tokens(seen))  # each run of the job has its own
            return seen != [] and seen[0]["state"] == "failed"

        wait_for(failed, 300, "the job to fail twice (max_restarts 1)", poll=0.5)
        outputs = [
            osm(home, *command)
            for command in (
                ["status"],
                ["status", "--json"],
                ["jobs"],
                ["jobs", "--json"],
                ["runs"],
                ["logs", "x1"],
                ["logs", "supervisor"],
            )
        ]
        assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
        done = osm(home, "down")
        assert done.returncode == 0, done.stderr
    finally:
        stop(home)

    error = "ZeroDivisionError: Exploding gave up at decision 4"
    row = next(line for line in outputs[2].stdout.splitlines() if line.startswith("x1 "))
    assert f"failed ({error})" in row
    runs = list_runs(RunDir(home), "x1")
    assert [r["error"] for r in runs] == [error, error]
    assert len(_fills(home, "x1")) >= 1  # it traded before it blew up
    assert len(tokens) == 2 + len(config.feeds) and job_tokens  # router, trader, feeds; x1

    secrets_seen = {oanda, *tokens, *job_tokens}
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in files) and any(p.suffix == ".log" for p in files)
    leaks = [(str(p), s) for p in files for s in secrets_seen if s.encode() in p.read_bytes()]
    leaks += [
        (" ".join(o.args), s) for o in outputs for s in secrets_seen if s in o.stdout + o.stderr
    ]
    assert leaks == []


def test_a_job_runs_at_the_system_priority_and_stops_whole_when_its_supervisor_is_killed(home):
    """A job's brain runs in papermill's kernel, the supervisor's grandchild: a kill -9 of the
    supervisor leaves its parent alive, yet it must stop trading as every other process does."""
    config = msgspec.structs.replace(demo_config(), brains=[], priority="background")
    try:
        up_with_brain_job(home, config)
        job = wait_for(
            lambda: next((j for j in status(home)["jobs"] if j["brain_pid"]), None),
            240,
            "the job's brain beating",
        )
        tree = _tree(job["pid"])
        assert job["brain_pid"] in [p.pid for p in tree]
        # The system's background priority reaches the job, the kernel's own session included.
        assert {p.nice() for p in tree} == {max(BACKGROUND_NICE, os.nice(0))}
        assert autogroup_nice(job["brain_pid"]) in (BACKGROUND_NICE, None)
        supervisor = status(home)["pid"]
        os.kill(supervisor, signal.SIGKILL)
        gone, alive = psutil.wait_procs(tree, timeout=60)
        assert alive == [], [p.cmdline()[:3] for p in alive]
    finally:
        stop(home)
