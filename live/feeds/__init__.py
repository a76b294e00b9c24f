"""Tick sources for the feeder: a registry of names to source classes.

A source is a deterministic stream of ticks: built from the same :class:`FeedConfig`, position and
state it yields the same ticks, which is what lets a restarted feeder resume exactly where its last
acknowledged batch ended. Its contract:

``cls(config, position, state)``
    Start the stream after `position` ticks; `state` is what :meth:`state` returned in an earlier
    run of the same feed ({} on the first run).
``read(limit) -> (instrument, TICK_DTYPE rows) | None``
    The next at most `limit` ticks, all of one instrument and in time order; None at the end.
``state() -> dict``
    JSON-serialisable values the feeder persists to rebuild the same stream after a restart.
``live`` (class attribute, default False)
    True for a live market (its read returns an empty batch when nothing is new): the router
    then closes its bars when their time has passed, not only when a later tick arrives. A live
    source also has ``candles(instrument, granularity, start_ns, end_ns) -> BAR_DTYPE rows`` (its
    venue's complete bars opening in that range; none where the venue's grid is not the
    router's) and ``gaps``, the list of (last line, first line after) ns pairs of its stream's
    outages so far: the feeder backfills the router's store from them. And a classmethod
    ``check(config, home)`` that raises a ConfigError, with the fix, if the feed's settings
    (``FeedConfig.adapter``) or credentials are wrong, without connecting: run before any
    process starts.

Built-ins are registered by import path (no import at registration); third parties register a class
with :func:`register_source` or through the ``osm.sources`` entry point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np

from osm.core.config import FeedConfig
from osm.core.errors import UnknownNameError


class Source(Protocol):
    live: bool

    def __init__(self, config: FeedConfig, position: int, state: dict[str, Any]) -> None: ...

    def read(self, limit: int) -> tuple[str, np.ndarray] | None: ...

    def state(self) -> dict[str, Any]: ...


_SOURCES: dict[str, str | type[Source]] = {
    "synthetic": "osm.live.feeds.synthetic:SyntheticSource",
    "replay": "osm.live.feeds.replay:ReplaySource",
    "oanda": "osm.live.adapters.oanda.data:OandaSource",
}


def register_source(name: str, target: str | type[Source]) -> None:
    """Make `name` (a FeedConfig.kind) resolve to a class or a ``"module:Class"`` path."""
    _SOURCES[name] = target


def source_class(name: str) -> type[Source]:
    """The source class registered as `name`, from built-ins or the ``osm.sources`` entry points."""
    target = _SOURCES.get(name)
    if target is None:
        for point in entry_points(group="osm.sources"):
            if point.name == name:
                target = _SOURCES[name] = point.load()
                break
    if target is None:
        raise UnknownNameError("source", name, _SOURCES)
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = _SOURCES[name] = getattr(importlib.import_module(module), attr)
    return target


def open_source(
    config: FeedConfig, position: int = 0, state: dict[str, Any] | None = None
) -> Source:
    """Build the source of `config` positioned after `position` ticks."""
    return source_class(config.kind)(config, position, state or {})
