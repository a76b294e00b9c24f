"""The brain process: one strategy in live, one decision per closed bar.

Sockets (one owner: the loop thread)::

    SUB    router_bars     in:  bar.<INSTRUMENT>.<GRAN> Bars, closed bars
    DEALER router_history  out: [tag, b"history", HistoryRequest]   in: [tag, topic, Bars]
                           out: [b"decided", b"decided", Decided]  (no answer)
    DEALER trader_orders   out: [b"target", Target]            in: [topic, OrderReply]

The brain subscribes to bars before it asks for history and merges both with a
:class:`~osm.live.follow.BarMerge`, as a chart does: the window has neither gaps nor duplicates. A
live bar that does not follow the last one (a dropped message, a router restart), or is the first
one after a warm-up that found no history, waits while the bars before it are asked for; if the
router has none, the gap is the market's (a weekend) and the bar is taken. Each history request
carries a tag the router echoes, so the answer to a request the merge no longer waits for (a
retry's twin) is never taken for a newer one's.

At warm-up the brain decides on the last bar it has, then on every new bar: the strategy's target
for the bar times `size`, sent as a Target whose client id is ``<brain>-<bar open ns>``. A
restarted brain therefore resends the decision it may have sent already, and the trader refuses
the duplicate instead of trading twice. The bars that arrive together (a replay's burst, a gap
filled) are decided in one call of the strategy, on the window before them followed by them, when
the strategy declares a warm-up the window covers (``Strategy.warmup``, as the built-ins do): each
bar then gets at least its warm-up, and its target is the one a backtest over all history gives.
A strategy that declares none is called once per bar, on exactly the window that bar ends.

A decision that repeats the last target sent is not sent again (the trader holds or works it
already): in a flat-out replay most decisions do, and the trader's work is then per trade, not per
bar. The last decision on the bars that came together always goes out, so the trader's journal
shows how far the brain has decided (live, where each bar comes alone, that is every decision),
and so does one after a refusal. A brain with a stop-loss or take-profit sends every decision: its
position can leave the target between two of them.

Targets go to the trader in bar order, up to TARGETS_IN_FLIGHT unanswered: the trader answers them
in the order sent. Each one sent behind an unanswered one names it (``previous_id``), and the
trader refuses it unjournaled (``out_of_order``) unless that one is journaled: no later decision
overtakes one the trader took with it when it died. A refusal of the oldest unanswered target as
out of order (what it named was refused unjournaled) sends everything unanswered again, from it,
the oldest now naming none. A target the trader took with it gets no reply: after TARGET_RETRY_S
without an answer the oldest alone is sent again (a probe: a trader that is away gets one message
every TARGET_RETRY_S, not the whole window), then the rest once it is answered. Client ids stay the
same, so the trader journals each decision once; a copy it already journaled comes back
``duplicate`` and counts as answered.

The brain tells the router (``wire.Decided`` on its history socket) how far the trader has answered
its decisions (a decision not sent counts as answered with the target it repeats), when that moves
and every DECIDED_EVERY_S: a flat-out replay waits for it.

Warm-up counts in ``warmups`` and is reported at once in a heartbeat: the supervisor starts the
feeders of the brain's instrument only then, so a replay's first bar is decided like its last.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import zmq

from osm.core import wire
from osm.core.barseries import BarSeries
from osm.core.config import BrainConfig, SystemConfig
from osm.core.errors import UnknownNameError
from osm.core.granularity import next_open
from osm.core.rundir import RunDir
from osm.live.follow import BarMerge, Wanted, join_bars
from osm.live.service import Service, send_frames
from osm.research.synthetic import random_walk_bars
from osm.strategies.base import load_strategy

HISTORY_RETRY_S = 5.0
TARGET_RETRY_S = 2.0
TARGETS_IN_FLIGHT = 256  # well inside the sockets' high-water marks (1000 messages)
_NOW = zmq.NOBLOCK  # a peer away must not stop the loop: what cannot be queued is sent later
DECIDED_EVERY_S = 1.0  # the router forgets a brain silent for longer than its pace timeout


@dataclasses.dataclass(slots=True)
class _Pending:
    """A target sent or to send, and the time decided up to once it is answered: the decisions
    after it that repeated it were not sent."""

    target: wire.Target
    covers_ns: int


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
        self._outbox: deque[_Pending] = deque()  # targets not yet answered, oldest first
        self._queued_units: int | None = None  # of the newest target queued (None: send the next)
        self._in_flight = 0  # of the outbox, how many are sent (the first ones)
        self._probing = False  # a retry sent the oldest alone; the rest wait for its answer
        self._target_sent_at = 0.0
        self._answered_ns = self._told_ns = 0  # market time decided and answered; told the router
        self._told_at = 0.0
        self._topic = f"bar.{self.spec.instrument}.{self.spec.granularity}"
        self._bars = self.bus.connect(zmq.SUB, "router_bars")
        self._bars.setsockopt(zmq.SUBSCRIBE, self._topic.encode())
        self._history = self.bus.connect(zmq.DEALER, "router_history")
        self._orders = self.bus.connect(zmq.DEALER, "trader_orders")
        self.on(self._bars, self._on_bars)
        self.on(self._history, self._on_history)
        self.on(self._orders, self._on_reply)
        self._ask_history()
        self._prime()

    def _prime(self) -> None:
        """Run the strategy once on made-up bars while the history is on its way: its compiled
        code (numba's cache) is loaded now, not on the first bar (about 0.6 s for a built-in)."""
        bars = random_walk_bars(self.spec.window, seed=0)
        try:
            self.strategy.targets(bars)
        except Exception as exc:  # noqa: BLE001 - only a head start: the first bar decides
            self.log.info("strategy not primed on made-up bars (%s: %s)", type(exc).__name__, exc)

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
            if self._in_flight:  # unanswered: lost with the trader, or it is away
                self.counters["target_retries"] += 1
                self._in_flight, self._probing = 0, True
            self._send_targets()  # (else none could be queued: again now)
        self._tell_decided()

    def _tell_decided(self) -> None:
        """Tell the router how far the trader has answered: a flat-out replay waits for the
        slowest brain of its instrument (the paper broker fills a late order only from the quotes
        it still holds). Sent when it moves, and every DECIDED_EVERY_S so the router keeps
        waiting for a brain that is slow rather than gone."""
        now = time.monotonic()
        if self._answered_ns != self._told_ns or now - self._told_at >= DECIDED_EVERY_S:
            spec = self.spec
            message = wire.Decided(spec.instrument, spec.granularity, self._answered_ns)
            try:  # a router away for long: its queue full, the word is dropped, said again later
                send_frames(self._history, [b"decided", *wire.frames("decided", message)], _NOW)
            except zmq.Again:
                self.counters["decided_dropped"] += 1
            self._told_ns, self._told_at = self._answered_ns, now

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
        try:  # a router away for long (its queue full): asked again after HISTORY_RETRY_S
            send_frames(self._history, [self._tag, *wire.frames("history", request)], _NOW)
        except zmq.Again:
            self.counters["history_deferred"] += 1
        self._sent, self._requested_at = wanted, time.monotonic()

    def _bars_of(
        self, parts: list[bytes], topic: str | None = None
    ) -> tuple[wire.Bars, np.ndarray] | None:
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
        bars = self.rows(message)
        return None if bars is None else (message, bars)

    def _on_bars(self, parts: list[bytes]) -> None:
        got = self._bars_of(parts, self._topic)
        if got is None:
            return
        message, bars = got
        self._take(self.merge.live(bars, message.previous))
        self._ask_history()

    def _on_history(self, parts: list[bytes]) -> None:
        tag, *reply = parts
        if len(reply) != 2 or tag != self._tag or self.merge.wanted is not self._sent:
            self.counters["history_stale"] += 1  # the answer to a retried request came twice
            return
        got = self._bars_of(reply)
        if got is None:
            return
        _, bars = got
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
            if len(self.series):  # maybe sent before a restart: the trader refuses a duplicate
                self._decide(self.series.view, 1)
            self._take(merged[history:])
        self._ask_history()

    def _take(self, bars: np.ndarray) -> None:
        """Decide on each merged bar, as the end of the window before it followed by it."""
        if not len(bars):
            return
        held = self.series.view
        window = join_bars([held[max(0, len(held) - self.spec.window + 1) :], bars])  # a copy
        self.series.extend(bars)
        self._decide(window, len(bars))

    def _runs(self, times: np.ndarray) -> Iterator[tuple[int, int]]:
        """Split the bars opening at `times` into runs one strategy decides, switching to it
        before yielding each run's (start, stop); a brain's strategy never changes."""
        yield 0, len(times)

    def _decide(self, bars: np.ndarray, count: int) -> None:
        """Queue the decisions on the last `count` of `bars` (a window's bars, then those)."""
        times = bars["time"][len(bars) - count :]
        targets = np.empty(count)
        window = self.spec.window
        for start, stop in self._runs(times):
            end = len(bars) - count + stop
            warmup = self.strategy.warmup
            if warmup is not None and warmup <= window:  # at least its warm-up before each bar
                targets[start:stop] = self.strategy.targets(bars[:end])[end - (stop - start) :]
                continue
            for i in range(start, stop):  # warm-up unknown: each bar on exactly its window
                last = len(bars) - count + i + 1
                targets[i] = self.strategy.targets(bars[max(0, last - window) : last])[-1]
        self.counters["decisions"] += count
        spec, alignment = self.spec, self.config.router.alignment
        every = spec.stop_loss is not None or spec.take_profit is not None
        last = count - 1
        for k, (bar_time, target) in enumerate(zip(times.tolist(), targets.tolist(), strict=True)):
            units = round(target * spec.size) if math.isfinite(target) else 0
            after_ns = next_open(bar_time, spec.granularity, alignment)
            if units == self._queued_units and k < last and not every:
                self.counters["targets_unchanged"] += 1
                if self._outbox:  # answered with the target before it, which it repeats
                    self._outbox[-1].covers_ns = after_ns
                else:
                    self._answered_ns = after_ns
                continue
            message = wire.Target(
                self.name, spec.instrument, units, f"{self.name}-{bar_time}", after_ns,
                spec.stop_loss, spec.take_profit,
            )  # fmt: skip
            self._outbox.append(_Pending(message, after_ns))
            self._queued_units = units
            self.counters["targets"] += 1
        self._send_targets()

    def _send_targets(self) -> None:
        """Send the outbox's unsent targets, in order, each naming the one before it, while fewer
        than TARGETS_IN_FLIGHT wait (one while probing a trader that did not answer)."""
        end = min(len(self._outbox), 1 if self._probing else TARGETS_IN_FLIGHT)
        if self._in_flight >= end:
            return
        if not self._in_flight:
            self._target_sent_at = time.monotonic()  # the retry timer runs from the oldest's send
        previous = self._outbox[self._in_flight - 1].target.client_id if self._in_flight else ""
        while self._in_flight < end:
            target = self._outbox[self._in_flight].target
            if previous:
                target = msgspec.structs.replace(target, previous_id=previous)
            try:
                send_frames(self._orders, wire.frames("target", target), _NOW)
            except zmq.Again:  # the trader's queue is full: the retry sends it
                self.counters["targets_deferred"] += 1
                return
            previous = target.client_id
            self._in_flight += 1

    def _on_reply(self, parts: list[bytes]) -> None:
        reply = self.expect(parts, wire.OrderReply, "from the trader")
        if reply is None:
            return
        if not self._in_flight or reply.client_id != self._outbox[0].target.client_id:
            # The answer to a copy sent twice, or to one sent behind a lost one (out_of_order).
            self.counters["replies_late"] += 1
            return
        self._target_sent_at = time.monotonic()  # the trader answers: nothing is lost
        if reply.code == "out_of_order":
            self.counters["resent_in_order"] += 1
            self._in_flight, self._probing = 0, False
            self._send_targets()
            return
        self._answered_ns = self._outbox.popleft().covers_ns
        self._in_flight -= 1
        self._probing = False  # the trader answers again
        self._send_targets()
        if reply.accepted:
            self.counters["accepted"] += 1
        elif reply.code == "duplicate":
            self.counters["already_journaled"] += 1  # a copy of one the trader has: answered
        else:
            self.counters["refused"] += 1
            self._queued_units = None  # the next decision goes out even if it is the same
            self.log.warning("target %s refused: %s", reply.client_id, reply.reason)
