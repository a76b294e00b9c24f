"""Errors that say what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_CONFIG = 78
"""Exit status of a live process that cannot run as configured (sysexits' EX_CONFIG).

A process exits with it when restarting would only fail again: a bad setting, a missing or unusable
file, an unknown name. The supervisor does not restart such a process; it marks it ``failed`` with
the process's last log line as the reason, and ``osm up`` reports that line. Any other non-zero
status (a crash, a signal) is a fault the supervisor restarts with backoff.
"""


class OsmError(Exception):
    """Base of every error osm raises on purpose."""


class ConfigError(OsmError, ValueError):
    """A configuration value is missing, misspelled or out of range."""


class UnknownNameError(OsmError, KeyError):
    """A name (instrument, granularity, parameter, source...) is not one osm knows."""

    def __init__(self, kind: str, name: object, known: Iterable[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(self._text())

    def _text(self) -> str:
        hint = did_you_mean(str(self.name), self.known)
        shown = ", ".join(self.known[:30]) + (" ..." if len(self.known) > 30 else "")
        return f"unknown {self.kind} {self.name!r}.{hint} Known: {shown}"

    def __str__(self) -> str:
        return self._text()


class WireError(OsmError, ValueError):
    """A frame on the bus could not be decoded (malformed, truncated or of another version)."""


class DataError(OsmError, ValueError):
    """Market data is unusable as given (unsorted, duplicated, NaN, crossed...)."""


class SystemNotRunning(OsmError, RuntimeError):
    """No osm system answers in this run directory."""


CONFIG_ERRORS = (ConfigError, UnknownNameError, DataError)
"""What a process raises when it cannot run as configured; it then exits with EXIT_CONFIG."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == name.lower()]
    return f" Did you mean {close[0]!r}?" if close else ""
