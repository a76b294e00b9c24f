"""The brain process: one strategy in live, one decision per closed bar.

Sockets (one owner: the loop thread)::

    SUB    router_bars     in:  bar.<INSTRUMENT>.<GRAN> Bars, closed bars
    DEALER router_history  out: [b"history", HistoryRequest]   in: [topic, Bars]
    DEALER trader_orders   out: [b"target", Target]            in: [topic, OrderReply]

The brain subscribes to bars before it asks for history, buffers the bars that arrive meanwhile,
and merges both by open time, so the window has neither gaps nor duplicates. A live bar that does
not follow the last one (a dropped message, a router restart), or is the first one after a warm-up
that found no history, triggers a history request for the bars before it; if the router has none,
the gap is the market's (a weekend) and the bar is taken.

At warm-up the brain decides on the last bar it has, then on every new bar: the strategy's last
target times `size`, sent as a Target whose client id is ``<brain>-<bar open ns>``. A restarted
brain therefore resends the decision it may have sent already, and the trader refuses the
duplicate instead of trading twice.

Targets go to the trader one at a time, in bar order: the next is sent when the trader has replied
to the one before. A target the trader took with it when it died (read off the socket, not yet
journaled) gets no reply, so it is resent after TARGET_RETRY_S, with the same client id: the trader
journals it once, and no later decision overtakes it.

Warm-up counts in ``warmups`` and is reported at once in a heartbeat: the supervisor starts the
feeders of the brain's instrument only then, so a replay's first bar is decided like its last.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from osm.core import wire
from osm.core.barseries import BarSeries
from osm.core.config import BrainConfig, SystemConfig
from osm.core.errors import UnknownNameError
from osm.core.granularity import next_open
from osm.core.rundir import RunDir
from osm.live.service import Service, send_frames
from osm.strategies.base import load_strategy

HISTORY_RETRY_S = 5.0
TARGET_RETRY_S = 2.0


class Brain(Service):
    """A strategy in live: named in the system's config, or given its `spec` (a job's brain)."""

    role = "brain"

    def __init__(
        self,
        name: str,
        rundir: RunDir,
        config: SystemConfig,
        endpoints: dict[str, Any],
        spec: BrainConfig | None = None,
    ):
        super().__init__(name, rundir, config, endpoints)
        self._given = spec

    def setup(self) -> None:
        self.spec = self._spec()
        self.strategy = load_strategy(self.spec.strategy)(**self.spec.params)
        self.series = BarSeries(self.spec.window, None, self.spec.instrument, self.spec.granularity)
        self._warm = False
        self._pending: dict[int, np.void] = {}  # live bars not merged yet, by open time
        self._request: wire.HistoryRequest | None = None  # the history request awaiting a reply
        self._requested_at = 0.0
        self._gap_checked_until = -1  # bars up to this open time were asked of the history
        self._outbox: deque[wire.Target] = deque()  # decisions not yet answered, the first sent
        self._target_sent_at = 0.0
        self._topic = f"bar.{self.spec.instrument}.{self.spec.granularity}"
        self._bars = self.bus.connect(zmq.SUB, "router_bars")
        self._bars.setsockopt(zmq.SUBSCRIBE, self._topic.encode())
        self._history = self.bus.connect(zmq.DEALER, "router_history")
        self._orders = self.bus.connect(zmq.DEALER, "trader_orders")
        self.on(self._bars, self._on_bars)
        self.on(self._history, self._on_history)
        self.on(self._orders, self._on_reply)
        self._ask_history(None)

    def _spec(self) -> BrainConfig:
        if self._given is not None:
            return self._given
        for spec in self.config.brains:
            if spec.name == self.name:
                return spec
        names = [b.name for b in self.config.brains]
        raise UnknownNameError("brain (add it to brains in config.json)", self.name, names)

    def idle(self) -> None:
        # A request sent while the router was away is lost with its connection: ask again.
        request = self._request
        if request is not None and time.monotonic() - self._requested_at > HISTORY_RETRY_S:
            self.counters["history_retries"] += 1
            self._send(request)
        if self._outbox and time.monotonic() - self._target_sent_at > TARGET_RETRY_S:
            self.counters["target_retries"] += 1
            self._send_target()

    def _ask_history(self, end_ns: int | None) -> None:
        self._request = wire.HistoryRequest(
            self.spec.instrument, self.spec.granularity, self.spec.window, end_ns
        )
        self._send(self._request)

    def _send(self, request: wire.HistoryRequest) -> None:
        self._requested_at = time.monotonic()
        self._history.send_multipart(wire.frames("history", request))

    def _bars_of(self, parts: list[bytes], topic: str | None = None) -> np.ndarray | None:
        decoded = self.decode(parts)
        if decoded is None:
            return None
        got, message = decoded
        if topic is not None and got != topic:
            # A SUB prefix also matches longer names: bar.EUR_USD.M1 receives bar.EUR_USD.M15.
            self.counters["other_topics"] += 1
            return None
        if isinstance(message, wire.Reply):
            self.reject("history_error", message.error)
            return None
        if not isinstance(message, wire.Bars) or (
            message.instrument,
            message.granularity,
        ) != (self.spec.instrument, self.spec.granularity):
            self.reject("unexpected_message", f"{type(message).__name__} where bars were expected")
            return None
        return self.rows(message)

    def _on_bars(self, parts: list[bytes]) -> None:
        bars = self._bars_of(parts, self._topic)
        if bars is None:
            return
        last = self._last_time()
        for bar in bars:
            # No copy: the row is a view that keeps the message's immutable buffer alive.
            if int(bar["time"]) > last:
                self._pending[int(bar["time"])] = bar
            else:
                self.counters["bars_seen_twice"] += 1
        self._advance()

    def _on_history(self, parts: list[bytes]) -> None:
        bars = self._bars_of(parts)
        if bars is None:
            return
        if self._request is None:
            self.counters["history_stale"] += 1  # the answer to a retried request came twice
            return
        end_ns, self._request = self._request.end_ns, None
        bars = np.sort(bars, order="time")
        if end_ns is not None:
            bars = bars[bars["time"] < end_ns]
            self._gap_checked_until = end_ns
        new = bars[bars["time"] > self._last_time()]
        self.counters["history_bars"] += len(new)
        if not self._warm:
            self.series.extend(new)
            self._warm = True
            self.counters["warmups"] += 1
            self.log.info("warmed up with %d bars", len(self.series))
            self.heartbeat()  # the supervisor holds the feeders back until it hears this
            if len(self.series):
                self._decide()  # maybe sent before a restart: the trader refuses a duplicate
        else:
            for bar in new:
                self._take(bar)
        self._advance()

    def _advance(self) -> None:
        """Merge buffered live bars in time order, stopping at a gap until history fills it."""
        if self._request is not None:
            return
        for t in sorted(self._pending):
            bar = self._pending.pop(t)
            if t <= self._last_time():
                self.counters["bars_seen_twice"] += 1
                continue
            follows = len(self.series) and t <= self._expected_next()
            if not follows and t > self._gap_checked_until:
                self._pending[t] = bar
                self.counters["gaps"] += 1
                self._ask_history(t)
                return
            self._take(bar)

    def _take(self, bar: np.void) -> None:
        self.series.append(bar)
        if self._warm:
            self._decide()

    def _last_time(self) -> int:
        last = self.series.last
        return -1 if last is None else int(last["time"])

    def _expected_next(self) -> int:
        return next_open(self._last_time(), self.spec.granularity, self.config.router.alignment)

    def _decide(self) -> None:
        bar_time = self._last_time()
        target = float(self.strategy.targets(self.series.view)[-1])
        units = round(target * self.spec.size) if math.isfinite(target) else 0
        decision = wire.Target(
            self.name,
            self.spec.instrument,
            units,
            f"{self.name}-{bar_time}",
            next_open(bar_time, self.spec.granularity, self.config.router.alignment),
            self.spec.stop_loss,
            self.spec.take_profit,
        )
        self._outbox.append(decision)
        self.counters["targets"] += 1
        if len(self._outbox) == 1:
            self._send_target()

    def _send_target(self) -> None:
        send_frames(self._orders, wire.frames("target", self._outbox[0]))
        self._target_sent_at = time.monotonic()

    def _on_reply(self, parts: list[bytes]) -> None:
        reply = self.expect(parts, wire.OrderReply, "from the trader")
        if reply is None:
            return
        if not self._outbox or reply.client_id != self._outbox[0].client_id:
            self.counters["replies_late"] += 1  # the answer to a resent target came twice
            return
        self._outbox.popleft()
        if self._outbox:
            self._send_target()
        if reply.accepted:
            self.counters["accepted"] += 1
        else:
            self.counters["refused"] += 1
            self.log.warning("target %s refused: %s", reply.client_id, reply.reason)
