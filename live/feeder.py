"""The feeder process: one source of ticks, sent to the router in acknowledged, resendable batches.

Batches go over a DEALER to the router's ROUTER socket as ``wire.Ticks(instrument, ..., feed=NAME,
seq=N)`` where `seq` is the feed's position: how many ticks of its stream have been sent up to the
end of that batch. The router applies a batch only if it starts at or before the position it has
reached (and skips the ticks it already has), acknowledges the position it has reached and
journaled, and drops what is beyond it, so a batch lost on the way is resent, in order, with those
that followed it (go-back-N). Unacknowledged batches are kept, at most `window` of them
(backpressure: a slow or absent router stops the source), and resent when no acknowledgement has
come for `resend_s` seconds, which is also how a restarted router gets them. The acknowledged
position is saved in ``state/feeder.NAME.json``; a restarted feeder rebuilds its (deterministic)
source at that position, and the router drops whatever it had already, so no tick is lost or
applied twice.

A live source (``live = True``: the market now, not a stream to replay) also fills what its ticks
cannot: at start, the last ``router.history`` bars (at most 5,000) of every granularity the router
builds, and after each gap in its stream, the bars of the gap, from its venue's candles
(``source.candles``; ``source.gaps`` lists the gaps). They go to the router as ``wire.Backfill``
on the same socket. The venue is asked on a thread of the feeder's (:mod:`osm.live.backfill`), so
its loop never waits on it; the router keeps the bars it has none of
(:meth:`osm.live.router.Router._on_backfill`).

The supervisor starts a feeder only once the brains trading its instruments are warm (see
:mod:`osm.live.supervisor`): a replay, at any speed, reaches brains that decide its first bar.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from osm.core import wire
from osm.core.config import SystemConfig
from osm.core.errors import ConfigError
from osm.core.granularity import step_ns
from osm.core.rundir import RunDir, write_atomic
from osm.live.backfill import Backfiller, Series
from osm.live.bus import feed_token
from osm.live.feeds import open_source
from osm.live.service import Service

_FINGERPRINT_FIELDS = ("kind", "file", "instruments", "seed", "start", "loop")
MAX_BACKFILL_BARS = 5000  # per series at start: one page of OANDA's candles


class Feeder(Service):
    """Turns the source of one FeedConfig (named like this process) into acknowledged tick batches."""

    role = "feeder"
    window = 256  # unacknowledged batches at most
    resend_s = 1.0
    persist_s = 0.25
    sends_per_round = 64  # then read acknowledgements again

    def __init__(self, name: str, rundir: RunDir, config: SystemConfig, endpoints: dict[str, Any]):
        feeds = {f.name: f for f in config.feeds}
        if name not in feeds:
            raise ConfigError(
                f"no feed named {name!r} in {rundir.config_path}; feeds: {sorted(feeds)}. "
                "Start a feeder with the name of one of config.feeds."
            )
        super().__init__(name, rundir, config, endpoints)
        self.feed = feeds[name]
        self.state_path = rundir.home / "state" / f"feeder.{name}.json"
        self._unacked: collections.deque[tuple[int, list[bytes]]] = collections.deque()
        self._acked = self._position = self._persisted = 0
        self._held: tuple[str, np.ndarray] | None = None
        self._exhausted = False
        self._last_progress = self._last_persist = time.monotonic()
        self._anchor: tuple[int, float] | None = None  # (data time, monotonic) of the first send
        self._gaps_seen = 0
        self._live = False
        self._backfiller: Backfiller | None = None

    def _fingerprint(self) -> dict[str, Any]:
        return {f: getattr(self.feed, f) for f in _FINGERPRINT_FIELDS}

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"seq": 0, "source": {}}
        if state.get("fingerprint") != self._fingerprint():
            raise ConfigError(
                f"feed {self.name!r} has a new source ({self._fingerprint()}) but its saved position "
                f"in {self.state_path} belongs to {state.get('fingerprint')}; give the feed a new "
                "name (the router tracks positions per feed name)"
            )
        return state

    def setup(self) -> None:
        state = self._load_state()
        self._acked = self._position = self._persisted = int(state["seq"])
        self.source = open_source(self.feed, self._position, state.get("source", {}))
        self.token = feed_token(self.rundir, self.name)  # proves to the router we are this feed
        self.sock = self.bus.connect(zmq.DEALER, "router_ticks")
        self.on(self.sock, self._on_reply)
        self.counters["acked"] = self._acked
        self._live = getattr(self.source, "live", False)
        if self._live:
            self._backfiller = Backfiller(self.source)
            bars = min(self.config.router.history, MAX_BACKFILL_BARS)
            now = time.time_ns()
            self._queue_backfill(lambda step: now - bars * step, now)

    def _queue_backfill(self, start_of: Callable[[int], int], end_ns: int) -> None:
        """Ask for every instrument's bars of every built granularity from `start_of(step)` on."""
        for granularity in self.config.router.granularities:
            step = step_ns(granularity) or 86_400 * 10**9
            start = start_of(step)
            for instrument in self.feed.instruments:
                self._backfiller.ask(Series(instrument, granularity, start - start % step, end_ns))

    def _send_backfills(self) -> None:
        """Send the router the bars of every series fetched since the last round."""
        for series, outcome in self._backfiller.done():
            if isinstance(outcome, ConfigError):
                raise outcome  # a refused token: the process stops with it, not restarted
            if isinstance(outcome, Exception):  # the venue's history is a best effort
                self.counters["backfill_failed"] += 1
                self.log.warning(
                    "backfill of %s %s failed: %s", series.instrument, series.granularity, outcome
                )
                continue
            for first in range(0, len(outcome), self.feed.batch):
                rows = outcome[first : first + self.feed.batch]
                chunk = wire.Bars.of(series.instrument, series.granularity, rows)
                message = wire.Backfill.of(self.name, self.token, chunk)
                self._send(wire.frames(f"backfill.{series.instrument}", message))
            self.counters["bars_backfill_sent"] += len(outcome)

    def _on_reply(self, parts: list[bytes]) -> None:
        message = self.expect(parts, wire.Ack, "on the ticks socket")
        if message is None:
            return
        if message.feed != self.name:
            self.reject("unexpected_message", f"an ack for feed {message.feed!r}")
            return
        while self._unacked and self._unacked[0][0] <= message.seq:
            self._unacked.popleft()
        if message.seq > self._position:
            # The router has more of this feed than we sent since our restart (our saved position
            # lagged its acknowledgements): skip what it has instead of sending duplicates.
            self._skip(message.seq - self._position)
        if message.seq > self._acked:
            self._acked = message.seq
            self._last_progress = time.monotonic()
            self.counters["acked"] = self._acked

    def _skip(self, count: int) -> None:
        self.counters["ticks_skipped"] += count
        while count > 0:
            if self._held is None:
                self._held = self.source.read(count)
                if self._held is None:
                    self._exhausted = True
                    return
            instrument, rows = self._held
            taken = min(count, len(rows))
            self._held = (instrument, rows[taken:]) if taken < len(rows) else None
            self._position += taken
            count -= taken

    def idle(self) -> None:
        if self._live:
            gaps = self.source.gaps
            for gap_start, gap_end in gaps[self._gaps_seen :]:
                self._queue_backfill(lambda step, since=gap_start: since, gap_end)
            self._gaps_seen = len(gaps)
            self._send_backfills()
        now = time.monotonic()
        if self._unacked and now - self._last_progress > self.resend_s:
            # Router slow, restarted or a batch lost: resend every unacknowledged batch, in order.
            for _, frames in self._unacked:
                self._send(frames)
            self.counters["batches_resent"] += len(self._unacked)
            self._last_progress = now
        self.poll_ms = self._send_due(now)
        finished = self._exhausted and self._held is None and not self._unacked
        if finished and not self.counters["finished"]:
            self.counters["finished"] = 1
            self.log.info("source exhausted and every tick acknowledged (%d)", self._acked)
        if self._acked != self._persisted and (
            finished or now - self._last_persist >= self.persist_s
        ):
            self._save_state()

    def _send_due(self, now: float) -> int:
        """Send the batches that are due; return how long (ms) the loop may wait for the next."""
        for _ in range(self.sends_per_round):
            if len(self._unacked) >= self.window:
                return 50  # wait for acknowledgements (they wake the poll)
            if self._held is None:
                if self._exhausted:
                    return 50
                self._held = self.source.read(self.feed.batch)
                if self._held is None:
                    self._exhausted = True
                    return 50
            instrument, rows = self._held
            if not len(rows):  # a live source had nothing new (its read waited for it)
                self._held = None
                return 1
            due = len(rows)
            if self.feed.speed > 0:
                if self._anchor is None:
                    self._anchor = (int(rows["time"][0]), now)
                data_now = self._anchor[0] + (now - self._anchor[1]) * self.feed.speed * 1e9
                due = int(np.searchsorted(rows["time"], data_now, "right"))
                if due == 0:
                    wait_s = (rows["time"][0] - data_now) / 1e9 / self.feed.speed
                    return int(min(50.0, max(1.0, wait_s * 1000)))
            batch = rows[:due]
            self._held = (instrument, rows[due:]) if due < len(rows) else None
            self._position += len(batch)
            message = wire.Ticks.of(instrument, batch, self.name, self._position, self.token)
            frames = wire.frames(f"ticks.{instrument}", message)
            self._unacked.append((self._position, frames))
            if len(self._unacked) == 1:  # the window was empty: the resend timer starts now
                self._last_progress = now
            self._send(frames)
            self.counters["ticks_sent"] += len(batch)
            self.counters["batches_sent"] += 1
        return 0

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.counters["send_full"] += 1  # kept in the window; the resend timer delivers it

    def _save_state(self) -> None:
        state = {
            "seq": self._acked,
            "fingerprint": self._fingerprint(),
            "source": self.source.state(),
            "finished": bool(self.counters["finished"]),
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_path, json.dumps(state).encode())
        self._persisted, self._last_persist = self._acked, time.monotonic()

    def teardown(self) -> None:
        if self._backfiller is not None:
            self._backfiller.close()
        if self._acked != self._persisted:
            self._save_state()
