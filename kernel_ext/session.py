"""The notebook-side session: which system the magics and widgets talk to, and what they opened.

One :class:`Session` belongs to the ``%osm`` magics that ``%load_ext osm`` registers; it is the only
state the extension keeps. Widgets opened through it (charts, blotters) are closed with it, when the
extension is unloaded or the kernel shuts down, so no follower thread outlives its kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from pathlib import Path
from typing import Protocol

from osm.core.rundir import RunDir
from osm.live.client import Client


class Closable(Protocol):
    def close(self) -> None: ...


class Session:
    """The run directory the notebook works with, and the widgets opened on it.

    Parameters
    ----------
    home
        The run directory; default ``$OSM_HOME``, else ``~/.osm`` (read when used, so setting
        ``OSM_HOME`` after ``%load_ext osm`` still counts).
    timeout_s
        Longest wait for any one answer from the system.
    """

    def __init__(self, home: str | Path | None = None, timeout_s: float = 5.0) -> None:
        self._home = Path(home).expanduser() if home else None
        self.timeout_s = timeout_s
        self._open: list[Closable] = []
        self._lock = threading.Lock()  # widgets may close themselves from a callback thread
        atexit.register(self.close)

    def home(self, override: str | Path | None = None) -> Path:
        """The run directory: `override` if given, else the session's, else the default."""
        if override:
            return Path(override).expanduser()
        return self._home or RunDir().home

    def client(self, home: str | Path | None = None, timeout_s: float | None = None) -> Client:
        """A new client on the session's system; the caller closes it (or uses ``with``)."""
        return Client(self.home(home), timeout_s=timeout_s or self.timeout_s)

    def track(self, thing: Closable) -> None:
        """Close `thing` with the session."""
        with self._lock:
            self._open.append(thing)

    def forget(self, thing: Closable) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._open.remove(thing)

    @property
    def open(self) -> list[Closable]:
        with self._lock:
            return list(self._open)

    def close(self) -> None:
        """Close every widget opened through the session (their followers stop)."""
        for thing in reversed(self.open):
            thing.close()
        with self._lock:
            self._open.clear()
        atexit.unregister(self.close)
