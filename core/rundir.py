"""The run directory ($OSM_HOME, default ~/.osm): how every process, magic and CLI finds the system.

Layout::

    config.json       the SystemConfig the supervisor runs
    endpoints.json    socket addresses of the running system (written by the supervisor)
    supervisor.pid    the daemon's pid
    logs/             one log per process
    store/bars/       the Parquet bar store and its journals
    state/            each feeder's acknowledged position (feeder.NAME.json)
    db/               SQLite journals (orders, fills, jobs)
    keys/             CURVE keys and broker credentials, mode 0600
    jobs/             papermill outputs of live jobs
    old/STAMP/        a run's store/, state/ and db/ set aside by ``osm up --fresh``

The run directory is private to its owner: folders 0700, files 0600 (the trading journal, logs,
keys, state and endpoints all say something about the account). :meth:`RunDir.secure` makes it
so: ``osm up`` calls it, which tightens a folder created with wider modes (and says what it
changed), and the supervisor daemon then runs with umask 077, which every process it starts
inherits, so whatever they create (SQLite files, logs, Parquet partitions) is private too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PRIVATE_UMASK = 0o077


def default_home() -> Path:
    return Path(os.environ.get("OSM_HOME", "~/.osm")).expanduser()


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write `data` to `path` so a reader sees either the old or the new file, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class RunDir:
    """Paths of one osm system's run directory; creates folders on first use."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home).expanduser().resolve() if home else default_home().resolve()

    def _dir(self, *parts: str, mode: int = PRIVATE_DIR) -> Path:
        """The folder `parts` under the home, created private (each missing level, not only the
        last: ``mkdir(parents=True)`` gives the levels above the default mode)."""
        path = self.home.joinpath(*parts)
        if not path.is_dir():
            self.home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            for i in range(1, len(parts) + 1):
                self.home.joinpath(*parts[:i]).mkdir(exist_ok=True, mode=mode)
        return path

    def folder(self, *parts: str) -> Path:
        """A private folder of the run directory (created 0700 at every level)."""
        return self._dir(*parts)

    def secure(self) -> list[str]:
        """Make the run directory private: create it 0700, take group and other bits off every
        folder and file in it; return the paths that had them, relative to the home.

        Symbolic links are left alone (their mode means nothing; what they point at is not ours).
        """
        self.home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        tightened = []
        for top, dirs, files in os.walk(self.home):
            for name in [".", *dirs, *files]:
                path = os.path.join(top, name)
                try:
                    info = os.lstat(path)
                except FileNotFoundError:  # a process of the old run removed it meanwhile
                    continue
                if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
                    continue
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o077)
                tightened.append(os.path.relpath(path, self.home))
        return tightened

    @property
    def logs(self) -> Path:
        return self._dir("logs")

    @property
    def bar_store(self) -> Path:
        return self._dir("store", "bars")

    @property
    def db(self) -> Path:
        return self._dir("db")

    @property
    def keys(self) -> Path:
        path = self._dir("keys")
        path.chmod(PRIVATE_DIR)
        return path

    @property
    def jobs(self) -> Path:
        return self._dir("jobs")

    @property
    def sockets(self) -> Path:
        return self._dir("sockets")

    @property
    def config_path(self) -> Path:
        return self.home / "config.json"

    @property
    def endpoints_path(self) -> Path:
        return self.home / "endpoints.json"

    @property
    def pid_path(self) -> Path:
        return self.home / "supervisor.pid"

    def feed_state_path(self, feed: str) -> Path:
        """Where the feeder of `feed` keeps its acknowledged position (not created here)."""
        return self.home / "state" / f"feeder.{feed}.json"

    RUN_DATA = ("store", "state", "db")  # what a run accumulates: bars, feed positions, orders

    def set_aside(self) -> Path | None:
        """Move the run's bars, feed positions and orders to ``old/STAMP/``; return it (None: none).

        The next system starts as in a new run directory, keeping config, keys and logs. Call it
        only while no system runs here.
        """
        present = [self.home / name for name in self.RUN_DATA if (self.home / name).exists()]
        if not present:
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self._dir("old", stamp)
        for path in present:
            path.rename(target / path.name)
        return target

    def log_path(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    def write_endpoints(self, endpoints: dict[str, Any]) -> None:
        self._dir()
        write_atomic(self.endpoints_path, json.dumps(endpoints, indent=1).encode())

    def read_endpoints(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.endpoints_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_secret(self, name: str, data: bytes) -> Path:
        """Write a secret file readable by its owner only (0600)."""
        path = self.keys / name
        write_atomic(path, data, mode=PRIVATE_FILE)
        return path
