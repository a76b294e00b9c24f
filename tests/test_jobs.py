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
from tests.live_helpers import wait_for
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


def test_a_job_trades_under_the_supervisor_survives_a_kernel_kill_and_stops_whole(home):
    config = msgspec.structs.replace(demo_config(), brains=[])  # the job is the only brain
    path = home.parent / f"{home.name}-config.json"
    path.write_bytes(cfg.dump(config))
    try:
        done = osm(home, "up", "--config", str(path))
        assert done.returncode == 0, done.stderr + done.stdout
        done = osm(home, "jobs", "add", "b1", "--notebook", "live_brain", *[
            arg for k, v in PARAMETERS.items() for arg in ("--param", f"{k}={json.dumps(v)}")
        ])  # fmt: skip
        assert done.returncode == 0, done.stderr

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
    assert len(runs) == 2
    assert "DeadKernelError" in runs[0]["error"] and runs[0]["exit_code"] != 0  # kernel killed
    assert runs[1]["error"] is None and runs[1]["exit_code"] == 0  # stopped by `osm down`
    cells = json.loads(Path(runs[1]["notebook"]).read_text())["cells"]
    injected = next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))
    assert f'strategy = "{SMA}"' in "".join(injected["source"])
    assert 'job = "b1"' in "".join(injected["source"])
    summary = next(c for c in cells if "summary" in c["metadata"].get("tags", []))
    text = "".join("".join(o.get("text", "")) for o in summary["outputs"])
    assert "job b1: SmaCross {'fast': 3, 'slow': 8} on EUR_USD M1" in text
    assert int(re.search(r"decisions this run\s+(\d+)", text)[1]) > 0
    assert int(re.search(r"fills \(all runs\)\s+(\d+)", text)[1]) >= len(client_ids)
