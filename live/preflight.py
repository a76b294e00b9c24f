"""Check a system before anything starts, so a mistake is refused once, with its fix.

A process that cannot run as configured exits with :data:`~osm.core.errors.EXIT_CONFIG` and the
supervisor does not restart it; :func:`check` finds those mistakes earlier, in ``osm up`` (and every
other caller of :func:`osm.live.supervisor.up`), before a single process is launched:

- what the config structs cannot see on their own (:func:`osm.core.config.check_system`);
- every feed's ``kind`` and the trader's ``broker`` resolve in their registries;
- every brain's strategy imports (from ``python_path`` first, as in the brain) and accepts its
  parameters;
- every feed's source opens at the position its feeder would resume from (a replay file exists and
  holds ticks or bars, in the shape the source reads), and its first tick is not older than the last
  tick the run directory's router has of that instrument: the router would refuse every tick up to
  then as out of order.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import msgspec

from osm.core import config as cfg
from osm.core.errors import ConfigError, OsmError
from osm.core.rundir import RunDir
from osm.core.times import iso_utc
from osm.live.adapters import brokers
from osm.live.feeds import open_source, source_class
from osm.live.store import BarStore, read_journal
from osm.strategies.base import load_strategy

FIRST_READS = 64  # reads of a source to find the first tick of each of its instruments


def check(rundir: RunDir, config: cfg.SystemConfig, fresh: bool = False) -> None:
    """Raise an OsmError, with the fix, if `config` cannot run in `rundir` (`fresh`: once the
    run's bars, feed positions and orders are set aside, so without reading them)."""
    cfg.check_system(config)
    brokers.factory(config.trader.broker)
    if config.trader.broker == "oanda":  # its settings and token, before any process starts
        from osm.live.adapters.oanda.broker import check as check_oanda

        check_oanda(config.trader, rundir.home)
    with importable_from(config.python_path):
        for brain in config.brains:
            load_strategy(brain.strategy)(**brain.params)
    router = ({}, {}) if fresh else _router_state(rundir)
    for feed in config.feeds:
        try:
            source_class(feed.kind)
        except KeyError as exc:
            raise ConfigError(f"feed {feed.name!r}: {exc}") from None
        _check_feed(rundir, feed, router, fresh)


@contextlib.contextmanager
def importable_from(paths: list[str]) -> Iterator[None]:
    """Search `paths` first for modules while the block runs (what PYTHONPATH does for a process)."""
    added = [p for p in paths if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for path in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)


def _router_state(rundir: RunDir) -> tuple[dict[str, int], dict[str, int]]:
    """(applied position per feed, last tick time per instrument) from the router's journal."""
    seqs: dict[str, int] = {}
    last: dict[str, int] = {}
    journal = BarStore(rundir.home / "store" / "bars").journal_path
    for record in read_journal(journal):
        seqs.update(record.seqs)
        last.update({i: int(t[0]) for i, t in record.last_ticks.items()})
    return seqs, last


def _saved_position(rundir: RunDir, feed: cfg.FeedConfig) -> tuple[int, dict[str, Any]]:
    """The position and source state the feeder of `feed` resumes from (0 and {} for a new feed)."""
    path = rundir.feed_state_path(feed.name)
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return 0, {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc}); remove it to replay from the start"
        ) from None
    fingerprint = saved.get("fingerprint") or {}
    now = {k: msgspec.to_builtins(getattr(feed, k, None)) for k in fingerprint}
    if now != fingerprint:
        changed = ", ".join(
            f"{k} {fingerprint[k]!r} -> {now[k]!r}" for k in now if now[k] != fingerprint[k]
        )
        raise ConfigError(
            f"feed {feed.name!r} has a new source ({changed}) but {rundir.home} holds the position "
            f"of its old one; {_FIX}, or name the feed differently (a --config file)"
        )
    return int(saved.get("seq", 0)), saved.get("source") or {}


_FIX = (
    "run it in a run directory of its own (--home DIR or OSM_HOME), or start this one afresh with "
    "`osm up --fresh` (moves its bars, feed positions and orders to old/)"
)


def _check_feed(
    rundir: RunDir,
    feed: cfg.FeedConfig,
    router: tuple[dict[str, int], dict[str, int]],
    fresh: bool,
) -> None:
    source = source_class(feed.kind)
    if getattr(source, "live", False):
        source.check(feed, rundir.home)  # its settings and credentials, without connecting
        return  # a live market resumes from now: nothing to read ahead, no stream to open here
    seqs, last_ticks = router
    position, state = (0, {}) if fresh else _saved_position(rundir, feed)
    position = max(position, seqs.get(feed.name, 0))  # the feeder skips what the router has
    what = f"feed {feed.name!r} ({feed.kind}{', ' + feed.file if feed.file else ''})"
    first = {}
    try:
        source = open_source(feed, position, state)
        for _ in range(FIRST_READS):
            batch = source.read(1)
            if batch is None:
                break
            instrument, rows = batch
            if len(rows):
                first.setdefault(instrument, int(rows["time"][0]))
            if len(first) == len(feed.instruments):
                break
    except OsmError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except Exception as exc:  # a reader's own error (a parser, a codec) on a file it cannot read
        raise ConfigError(f"{what} cannot be read: {type(exc).__name__}: {exc}") from None
    for instrument, time_ns in first.items():
        last = last_ticks.get(instrument)
        if last is not None and time_ns < last:
            raise ConfigError(
                f"{what} starts at {iso_utc(time_ns)} but {rundir.home} already has {instrument} "
                f"ticks up to {iso_utc(last)}, so the router would refuse every tick before then "
                f"as out of order; {_FIX}"
            )
