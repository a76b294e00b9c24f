"""Helpers for tests that run the whole live system as real processes through the `osm` command.

Every system a test starts is stopped in teardown (`osm down`, then a kill of anything left of that
run directory), so a failing test never leaves daemons behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from osm.core.rundir import RunDir
from osm.live import supervisor
from osm.live.client import Client, running_pid

OSM = Path(sys.executable).with_name("osm")  # the console script pyproject declares
UP_TIMEOUT_S = 120  # a cold start on a busy machine imports numba, pandas, pyarrow five times


def osm(home: Path, *args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``osm ARGS --home HOME`` and return the finished process (text output)."""
    command = [str(OSM)] if OSM.exists() else [sys.executable, "-m", "osm.live.cli"]
    return subprocess.run(
        [*command, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OSM_HOME": "/nonexistent-osm-home"},  # --home must win
    )


def status(home: Path) -> dict[str, Any]:
    with Client(home, timeout_s=10) as client:
        return client.status()


def process(home: Path, name: str) -> dict[str, Any]:
    return next(p for p in status(home)["processes"] if p["name"] == name)


def stop(home: Path) -> None:
    """Stop the system of `home` whatever state it is in; leave no process behind."""
    osm(home, "down")
    rundir = RunDir(home)
    pid = running_pid(rundir)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    supervisor.clean_stale(rundir)


def running_system(home: Path) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """Body of a `system` fixture: ``system(*up_args)`` runs ``osm up`` in `home` and asserts it
    worked; the system is stopped at teardown whatever happened."""

    def up(*args: str) -> subprocess.CompletedProcess:
        done = osm(home, "up", *args)
        assert done.returncode == 0, done.stderr + done.stdout
        return done

    try:
        yield up
    finally:
        stop(home)


def write_config(home: Path, **fields: Any) -> Path:
    """Write a SystemConfig JSON beside the run directory for ``osm up --config``."""
    path = home.parent / f"{home.name}-config.json"
    path.write_text(json.dumps(fields))
    return path
