"""The brain process: one strategy in live, one decision per closed bar.

Sockets (one owner: the loop thread)::

    SUB    router_bars     in:  bar.<INSTRUMENT>.<GRAN> Bars, closed bars
    DEALER router_history  out: [b"history", HistoryRequest]   in: [topic, Bars]
    DEALER trader_orders   out: [b"target", Target]            in: [topic, OrderReply]

The brain subscribes to bars before it asks for history and merges both with a
:class:`~osm.live.follow.BarMerge`, as a chart does: the window has neither gaps nor duplicates. A
live bar that does not follow the last one (a dropped message, a router restart), or is the first
one after a warm-up that found no history, waits while the bars before it are asked for; if the
router has none, the gap is the market's (a weekend) and the bar is taken. Each history request
carries a tag the router echoes, so the answer to a request the merge no longer waits for (a
retry's twin) is never taken for a newer one's.

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

import itertools
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
from osm.live.follow import BarMerge, Wanted
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
        alignment = self.config.router.alignment
        self.merge = BarMerge(self.spec.granularity, self.spec.window, alignment)
        self.merge.counters = self.counters  # its counts are the brain's, in its heartbeats
        self._sent: Wanted | None = None  # the history request last sent (resent if unanswered)
        self._requested_at = 0.0
        self._tags = itertools.count()
        self._tag = b""
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
        self._ask_history()

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
        if (
            self.merge.wanted is not None
            and time.monotonic() - self._requested_at > HISTORY_RETRY_S
        ):
            self.counters["history_retries"] += 1
            self._ask_history(again=True)
        if self._outbox and time.monotonic() - self._target_sent_at > TARGET_RETRY_S:
            self.counters["target_retries"] += 1
            self._send_target()

    def _ask_history(self, again: bool = False) -> None:
        """Send the request the merge waits for, once (or `again`, with the same tag)."""
        wanted = self.merge.wanted
        if wanted is None or (wanted is self._sent and not again):
            return
        if wanted is not self._sent:
            self._tag = b"%d" % next(self._tags)
        request = wire.HistoryRequest(
            self.spec.instrument, self.spec.granularity, wanted.count, wanted.end_ns
        )
        self._history.send_multipart([self._tag, *wire.frames("history", request)])
        self._sent, self._requested_at = wanted, time.monotonic()

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
        self._take(self.merge.live(bars))
        self._ask_history()

    def _on_history(self, parts: list[bytes]) -> None:
        tag, *reply = parts
        if len(reply) != 2 or tag != self._tag or self.merge.wanted is not self._sent:
            self.counters["history_stale"] += 1  # the answer to a retried request came twice
            return
        bars = self._bars_of(reply)
        if bars is None:
            return
        if self.merge.warm:
            self._take(self.merge.history(bars))
        else:
            before = self.counters["history_bars"]
            merged = self.merge.history(bars)
            history = self.counters["history_bars"] - before  # the first of `merged`
            self.series.extend(merged[:history])
            self.counters["warmups"] += 1
            self.log.info("warmed up with %d bars", len(self.series))
            self.heartbeat()  # the supervisor holds the feeders back until it hears this
            if len(self.series):
                self._decide()  # maybe sent before a restart: the trader refuses a duplicate
            self._take(merged[history:])
        self._ask_history()

    def _take(self, bars: np.ndarray) -> None:
        """Decide on each merged bar in turn, as the window it ends."""
        for bar in bars:
            self.series.append(bar)
            self._decide()

    def _last_time(self) -> int:
        last = self.series.last
        return -1 if last is None else int(last["time"])

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
