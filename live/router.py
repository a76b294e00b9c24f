"""The router process: ticks in, bars of every configured granularity out, history kept and served.

Sockets (endpoint names of ``endpoints.json``):

``router_ticks`` ROUTER
    ``wire.Ticks`` batches from feeders (DEALER). A feed speaks only for itself: a batch must name a
    feed of the config (else ``rejected.unknown_feed``, and nothing is kept of the name), carry
    that feed's token from the run directory (:func:`osm.live.bus.feed_token`; else
    ``rejected.forged_feed``), quote one of its instruments (else ``rejected.foreign_instrument``)
    and hold at most its `batch` ticks (else ``rejected.seq_jump``: a feeder never sends more, and
    a longer batch would move the feed's position past what it sent). Per feed, `seq` is the
    feed's position after the batch (see :mod:`osm.live.feeder`); a batch ending at or before the
    applied position is a duplicate (dropped, ``batches_duplicate``), one starting after it a gap
    (dropped, never adopted, ``batches_gap``: the feeder resends from the applied position), one
    overlapping it is applied from the first tick not yet applied. ``wire.Ack(feed, seq)`` goes
    back, cumulative, once the round of batches is applied, journaled and published.
    ``wire.Backfill``: a live feed's complete bars from its venue's history, for its start and its
    stream's gaps, with the same proof of identity; the router stores those it has no bar for
    (``bars_backfilled``; ``backfill_known``) and refuses the rest (``rejected.backfill``).
``router_bars`` XPUB
    ``bar.<INSTRUMENT>.<GRAN>``: closed bars (``wire.Bars``, complete); ``bar_partial.<INSTRUMENT>.
    <GRAN>``: the forming bar, at most `partial_hz` times a second per series; ``tick.<INSTRUMENT>``:
    the accepted ticks (``wire.Ticks``), which the paper broker fills from. A subscription is
    applied only if it is a prefix of one of these topics (else ``rejected.subscription``), so the
    subscriptions the socket keeps are bounded by the topics, whatever a subscriber sends.
``router_history`` ROUTER
    ``wire.HistoryRequest`` -> ``history.<INSTRUMENT>.<GRAN>`` + ``wire.Bars`` of closed bars
    (from memory, else the store; a granularity not built is resampled from a finer one that is),
    or ``error`` + ``wire.Reply(ok=False, error=...)``. ``wire.Decided`` (no answer): how far the
    trader has answered a brain's decisions; ``wire.Quoted`` (no answer): how far the trader has
    taken an instrument's quotes. A flat-out replay is paced by both.

A replay at speed 0 runs as fast as its slowest brain, or the trader, not faster: once LEAD_TICKS
ticks of an instrument came after the last bar a brain following it had answered, while the router
has closed a later bar, or after the last quote the trader took, the feed's batches are held back,
neither applied nor acknowledged (so the feeder stops at its window), and applied in order when
they catch up (``batches_paced``). The paper broker fills a late order from the quotes it still
holds; a brain left further behind would see its decisions expire, and a trader's queue of quotes
would overflow. A follower silent for PACE_TIMEOUT_S (stopped, restarting) is not waited for, nor
is a trader that does not move for REMIND_S while waited for. A batch's ticks are published before
the bars they close: the trader has a bar's fill quote before any order decided on that bar.

Ticks are screened per instrument (:func:`osm.live.aggregate.screen`, called by
:func:`osm.live.aggregate.ingest_screened`); a refused tick is counted as ``rejected.<reason>``
(non_finite, non_positive, crossed, out_of_order, duplicate, unknown_instrument, and for
implausible ticks ahead_of_clock, time_jump, price_spike, unconfirmed) and never used. A tick far
from the last accepted one in time or price is held (``ticks_held``) until the following ticks
confirm it. A bar closes when the first tick of a later bar arrives. On start the router restores,
from its journal and the store, the closed history, the forming bars, the last tick and the held
ticks of every instrument and the applied position of every feed.
"""

from __future__ import annotations

import collections
import hmac
import time
from typing import Any, NamedTuple

import numpy as np
import zmq

from osm.core import wire
from osm.core.barseries import BarSeries
from osm.core.config import SystemConfig
from osm.core.dtypes import BAR_DTYPE, TICK_DTYPE, empty_ticks
from osm.core.errors import UnknownNameError
from osm.core.files import unusable_bars
from osm.core.granularity import GRANULARITIES, NS, is_finer, next_open, step_ns
from osm.core.resample import resample
from osm.core.rundir import RunDir
from osm.live.adapters.paper import PaperConfig
from osm.live.aggregate import (
    ACCEPTED,
    HELD,
    NO_BAR,
    REASONS,
    Guard,
    from_bars,
    ingest_screened,
    opens_of,
    to_bars,
)
from osm.live.bus import feed_token
from osm.live.feeds import source_class
from osm.live.priority import REPLAYS
from osm.live.service import Service, send_frames
from osm.live.store import BarStore, JournalRecord, dedupe, join_bars, read_bars


class _Book:
    """Forming bars, last accepted tick and closed history of one instrument."""

    def __init__(self, instrument: str, granularities: list[str], history: int) -> None:
        n = len(granularities)
        self.instrument, self.granularities = instrument, granularities
        self.f_time = np.full(n, NO_BAR, np.int64)
        self.f_px = np.zeros((n, 8))
        self.f_n = np.zeros(n, np.int64)
        self.last: tuple[int, float, float] = (NO_BAR, np.nan, np.nan)
        self.held = empty_ticks()  # ticks waiting for the following ones to confirm them
        self.series = [
            BarSeries(history, instrument=instrument, granularity=g) for g in granularities
        ]
        self.changed = False  # forming bars changed since the last journal record
        self.partial_due = np.zeros(n, bool)
        self.partial_sent = np.zeros(n)
        self.partial_next = 0.0  # monotonic time its next forming bar may go out (earliest of g)
        self.applied = 0  # ticks applied since the start
        # (a tick's time, ticks applied up to it), the first at most LEAD_TICKS ago
        self.marks: collections.deque[tuple[int, int]] = collections.deque()

    def mark(self, times: np.ndarray) -> None:
        """Note the accepted ticks of a batch (their times, in order): a mark every eighth of
        LEAD_TICKS within it and one at its end, so a batch of any size is measured finely."""
        if not len(times):
            return
        step = max(1, LEAD_TICKS // 8)
        for i in sorted({*range(step - 1, len(times), step), len(times) - 1}):
            self.marks.append((int(times[i]), self.applied + i + 1))
        self.applied += len(times)
        while len(self.marks) > 1 and self.marks[1][1] <= self.applied - LEAD_TICKS:
            self.marks.popleft()

    def lead_start(self, coming: int) -> int:
        """A market time after which, with `coming` more ticks applied, LEAD_TICKS or more would
        have been (-1: not so many)."""
        start = -1
        for time_ns, applied in self.marks:
            if applied > self.applied + coming - LEAD_TICKS:
                break
            start = time_ns
        return start

    def forming(self, g: int) -> np.ndarray:
        return to_bars(self.f_time[g : g + 1], self.f_px[g : g + 1], self.f_n[g : g + 1], False)

    def restore_forming(self, g: int, bar: np.ndarray) -> None:
        times, prices, counts = from_bars(bar)
        self.f_time[g], self.f_px[g], self.f_n[g] = times[0], prices[0], counts[0]


class _Feed(NamedTuple):
    """What the router knows of a configured feed: the proof of its identity and its limits."""

    token: str
    instruments: frozenset[str]
    batch: int
    paced: bool  # speed in (0, 1]: its ticks never run ahead of this machine's clock
    live: bool  # a live market: may backfill from its venue's history
    flat_out: bool  # a replay at speed 0: it waits for the brains (see Router._behind)


QUOTES = -1  # a follower's series: the trader's quotes (wire.Quoted), not a granularity's bars


class _Follower(NamedTuple):
    """A brain's last word on how far the trader has answered its decisions (wire.Decided), or
    the trader's on the quotes it has taken (wire.Quoted)."""

    instrument: str
    g: int  # its granularity's index, or QUOTES
    until_ns: int
    heard: float  # monotonic times: of its last word, of the last one that moved until_ns,
    moved: float  # since when it is waited for (0: it is not), of the last bar sent again for it
    waited: float = 0.0
    reminded: float = 0.0


_NO_LIMIT = np.iinfo(np.int64).max
# A flat-out replay runs at most this many ticks of an instrument past the bars a brain has not had
# answered: a quarter of the quotes the paper broker keeps to fill late orders at.
LEAD_TICKS = PaperConfig().quotes // 4
PACE_TIMEOUT_S = 5.0  # a brain silent this long is gone (stopped, restarting): nobody waits for it
REMIND_S = 2.0  # a brain waited for this long without moving is sent the last closed bar again
CLOSE_CHECK_S = 0.25  # how often live instruments' forming bars are checked for their end
_MAX_TOPIC = 64  # longer than any topic of the bar socket


class Router(Service):
    """Builds, publishes, journals and serves the bars of every instrument the feeds declare."""

    role = "router"
    sync_s = 1.0  # fsync the journal this often (a killed process loses nothing without it)

    def __init__(self, name: str, rundir: RunDir, config: SystemConfig, endpoints: dict[str, Any]):
        super().__init__(name, rundir, config, endpoints)
        settings = config.router
        self.granularities = list(settings.granularities)
        self.alignment = settings.alignment
        instruments = sorted({i for feed in config.feeds for i in feed.instruments})
        self.books = {i: _Book(i, self.granularities, settings.history) for i in instruments}
        self.seqs: dict[str, int] = {}
        self.feeds = {
            f.name: _Feed(
                feed_token(rundir, f.name),
                frozenset(f.instruments),
                f.batch,
                0 < f.speed <= 1,
                getattr(source_class(f.kind), "live", False),
                f.speed == 0 and f.kind in REPLAYS,
            )
            for f in config.feeds
        }
        self._jump_ns = int(settings.time_jump_s * NS)
        self._lead_ns = int(settings.clock_lead_s * NS)
        self._unpaced_guard = Guard(
            _NO_LIMIT, self._jump_ns, settings.spike_band, settings.confirm_ticks
        )
        self._topics = [
            f"{kind}.{i}.{g}" for i in instruments for g in self.granularities
            for kind in ("bar", "bar_partial")
        ] + [f"tick.{i}" for i in instruments]  # fmt: skip
        self.store = BarStore(rundir.bar_store) if settings.persist else None
        self._partial_interval = 1.0 / settings.partial_hz if settings.partial_hz > 0 else np.inf
        steps = [step_ns(g) for g in self.granularities]
        self._steps = np.array([step or 0 for step in steps], np.int64)
        self._has_calendar = None in steps
        self._no_opens = np.empty((len(steps), 0), np.int64)
        # Scratch for the bars a batch closes, reused (grown) so a small batch allocates nothing.
        self._closed_rows = np.empty((len(steps), 64), BAR_DTYPE)
        self._closed_counts = np.zeros(len(steps), np.int64)
        self._closed: list[wire.Bars] = []
        self._replies: dict[str, bytes] = {}  # feed -> identity of the peer to acknowledge
        self._partials_at = np.inf  # no forming bar may be published before this monotonic time
        self._next_sync = 0.0
        live = {i for f in config.feeds if self.feeds[f.name].live for i in f.instruments}
        self._live = [self.books[i] for i in sorted(live)]  # bars close by the clock too
        self._close_grace_ns = int(settings.live_close_s * NS)
        self._next_close_check = 0.0
        self._followers: dict[bytes, _Follower] = {}
        self._waiting: dict[str, collections.deque] = {}  # flat-out feed -> batches held back

    def setup(self) -> None:
        self._restore()
        # The longest message a feed may send (a batch of ticks, or of backfilled bars), with room
        # for its names, token and msgpack framing; a longer frame drops its sender.
        row = max(TICK_DTYPE.itemsize, BAR_DTYPE.itemsize)
        longest = max(f.batch for f in self.feeds.values()) * row + 4096
        self.ticks_sock = self.bus.bind(zmq.ROUTER, "router_ticks", max_bytes=longest)
        self.pub = self.bus.bind(zmq.XPUB, "router_bars")
        self.pub.setsockopt(zmq.XPUB_MANUAL, 1)
        self.history_sock = self.bus.bind(zmq.ROUTER, "router_history")
        self.on(self.ticks_sock, self._on_ticks)
        self.on(self.pub, self._on_subscription)
        self.on(self.history_sock, self._on_history)

    def _restore(self) -> None:
        if self.store is None:
            return
        self.store.recover()
        self.seqs = dict(self.store.seqs)
        for (instrument, granularity), bar in self.store.forming.items():
            book = self.books.get(instrument)
            if book is not None and granularity in self.granularities:
                book.restore_forming(self.granularities.index(granularity), bar)
        for instrument, last in self.store.last_ticks.items():
            if instrument in self.books:
                self.books[instrument].last = (int(last[0]), float(last[1]), float(last[2]))
        for instrument, held in self.store.held.items():
            if instrument in self.books:
                self.books[instrument].held = held
        for book in self.books.values():
            for series in book.series:
                bars = read_bars(self.store.root, book.instrument, series.granularity)
                series.extend(bars[-series.window :])
        self.log.info("restored feed positions %s", self.seqs)

    def _reject_many(self, reason: str, count: int, detail: str) -> None:
        self.counters[f"rejected.{reason}"] += count - 1
        self.reject(reason, detail)

    def _on_subscription(self, parts: list[bytes]) -> None:
        """Apply a subscription (or its end) that some topic of the socket can match; count others.

        The socket is manual: what a subscriber sends is kept only if this applies it, so what the
        socket holds stays within the topics it publishes, whatever arrives.
        """
        frame = parts[0] if len(parts) == 1 else b""
        if not frame or frame[0] not in (0, 1) or len(frame) > _MAX_TOPIC + 1:
            self.reject("subscription", f"{len(parts)} frames of {len(frame)} bytes")
            return
        try:
            topic = frame[1:].decode()
        except UnicodeDecodeError:
            topic = None
        if topic is None or not any(t.startswith(topic) for t in self._topics):
            self.reject("subscription", f"{frame[1:40]!r} matches no topic of the bar socket")
            return
        self.pub.setsockopt(zmq.SUBSCRIBE if frame[0] else zmq.UNSUBSCRIBE, frame[1:])

    def _on_ticks(self, parts: list[bytes]) -> None:
        if len(parts) != 3:
            self.reject(
                "malformed", f"expected identity, topic and payload, got {len(parts)} frames"
            )
            return
        decoded = self.decode(parts[1:])
        if decoded is None:
            return
        message = decoded[1]
        if isinstance(message, wire.Backfill):
            self._on_backfill(message)
            return
        if not isinstance(message, wire.Ticks):
            self.reject("unexpected_message", f"{type(message).__name__} on the ticks socket")
            return
        feed = self._feed_of(message)
        if feed is None:
            return
        ticks = self.rows(message)
        if ticks is None:
            return
        if feed.flat_out:
            waiting = self._waiting.setdefault(message.feed, collections.deque())
            if waiting or self._behind(message.instrument, len(ticks)):
                if waiting and message.seq <= waiting[-1][0].seq:
                    self.counters["batches_duplicate"] += 1  # resent while held back
                else:
                    waiting.append((message, ticks, parts[0]))
                    self.counters["batches_paced"] += 1
                return
        self._take(message, ticks, parts[0], feed)

    def _take(self, message: wire.Ticks, ticks: np.ndarray, identity: bytes, feed: _Feed) -> None:
        ticks = self._unseen(message, ticks, identity)
        if ticks is None:
            return
        book = self.books[message.instrument]
        if len(ticks):
            self._apply(book, ticks, message.feed, feed.paced)

    def _behind(self, instrument: str, coming: int) -> bool:
        """Whether a brain following `instrument` has not had the trader answer a bar the router
        has closed, or the trader has not taken its quotes, while LEAD_TICKS ticks would have
        come after that with `coming` more: then a flat-out replay waits, or the paper broker
        would no longer hold the quote that bar's order fills at (or the trader's queue of quotes
        would overflow, and quotes be lost).

        A brain waiting that long without moving may have lost the bar (a message dropped, a
        router restart): the series' last closed bar is sent to it again, and it asks for what
        it lacks (else nothing would come to show it the gap, and the replay would wait forever).
        """
        now, book = time.monotonic(), self.books[instrument]
        behind, reminded = False, set()
        for identity, follower in list(self._followers.items()):
            if now - follower.heard > PACE_TIMEOUT_S:
                del self._followers[identity]  # gone (stopped, restarting): the replay goes on
                continue
            if follower.instrument != instrument:
                continue
            if follower.g == QUOTES:  # the trader: it fills from the quotes it has taken
                if follower.until_ns >= book.lead_start(coming):  # fewer than LEAD_TICKS to take
                    if follower.waited:
                        self._followers[identity] = follower._replace(waited=0.0)
                    continue
                if not follower.waited:
                    follower = self._followers[identity] = follower._replace(waited=now)
                # One not moving while waited for lost quotes (a restart), which the coming ones
                # replace: the replay goes on.
                behind = behind or now - max(follower.moved, follower.waited) <= REMIND_S
                continue
            series = book.series[follower.g]
            if series.last is None:
                continue
            granularity = self.granularities[follower.g]
            closed = next_open(int(series.last["time"]), granularity, self.alignment)
            # Its next order fills at the first quote after the bar it has yet to answer closes.
            needed = next_open(follower.until_ns, granularity, self.alignment)
            if closed <= follower.until_ns or needed >= book.lead_start(coming):
                if follower.waited:
                    self._followers[identity] = follower._replace(waited=0.0)
                continue
            behind = True
            if not follower.waited:
                follower = self._followers[identity] = follower._replace(waited=now)
            since = max(follower.moved, follower.waited, follower.reminded)
            if now - since > REMIND_S and follower.g not in reminded:
                reminded.add(follower.g)  # one bar per series, whoever else waits on it
                self._followers[identity] = follower._replace(reminded=now)
                last = series.view[-2:]
                previous = int(last["time"][0]) if len(last) == 2 else -1
                message = wire.Bars.of(instrument, granularity, last[-1:], previous)
                send_frames(self.pub, wire.frames(f"bar.{instrument}.{granularity}", message))
                self.counters["bars_reminded"] += 1
        return behind

    def _release(self) -> None:
        """Apply the batches flat-out feeds were held back on, in order, while no brain lags."""
        for name, waiting in self._waiting.items():
            while waiting and not self._behind(waiting[0][0].instrument, waiting[0][0].count):
                message, ticks, identity = waiting.popleft()
                self._take(message, ticks, identity, self.feeds[name])

    def _feed_of(self, message: wire.Ticks | wire.Backfill) -> _Feed | None:
        """The configured feed that sent `message`, or None after counting why it is refused."""
        feed = self.feeds.get(message.feed)
        if feed is None:
            self.reject(
                "unknown_feed",
                f"{message.feed[:40]!r} is no feed of the config ({sorted(self.feeds)})",
            )
            return None
        if not hmac.compare_digest(message.token.encode(), feed.token.encode()):
            self.reject("forged_feed", f"a batch for feed {message.feed!r} without its token")
            return None
        if message.instrument not in feed.instruments:
            why = (
                "unknown_instrument"
                if message.instrument not in self.books
                else "foreign_instrument"
            )
            self._reject_many(
                why,
                max(message.count, 1),
                f"feed {message.feed!r} quotes {sorted(feed.instruments)}, "
                f"not {message.instrument[:40]!r}",
            )
            return None
        if message.count > feed.batch:
            self.reject(
                "seq_jump",
                f"feed {message.feed!r} sent {message.count} ticks in a batch; it sends at most "
                f"{feed.batch} (feeds[].batch)",
            )
            return None
        return feed

    def _unseen(self, message: wire.Ticks, ticks: np.ndarray, identity: bytes) -> np.ndarray | None:
        """The ticks of a feed's batch not applied yet (None: nothing to apply); advance the feed."""
        feed, applied = message.feed, self.seqs.get(message.feed, 0)
        first = message.seq - message.count
        if first < 0:
            self.reject("bad_seq", f"feed {feed!r}: seq {message.seq} < count {message.count}")
            return None
        self._replies[feed] = identity
        if message.seq <= applied:
            self.counters["batches_duplicate"] += 1
            return None
        if first > applied:
            self.counters["batches_gap"] += 1
            return None
        self.seqs[feed] = message.seq
        self.counters["batches_applied"] += 1
        return ticks[applied - first :]

    def _on_backfill(self, message: wire.Backfill) -> None:
        """Store the bars a live feed got from its venue for a time the router has none of.

        Kept: complete bars on the granularity's grid, with usable prices, closed by this
        machine's clock and before the instrument's forming bar; of those, the ones the router
        has no bar for (its window and its store). They are journaled like bars it built, join
        the window that answers history requests, and move the instrument's last tick to their
        end, so a late tick cannot build one of them again. They are not published: a brain that
        finds a gap asks the history for it.
        """
        feed = self._feed_of(message)
        if feed is None:
            return
        granularity, count = message.granularity, max(message.count, 1)
        if not feed.live or granularity not in self.granularities:
            why = "is not live" if not feed.live else f"sent {granularity[:8]!r}, not built here"
            self._reject_many("backfill", count, f"feed {message.feed!r} {why}")
            return
        bars = self.rows(message)
        if bars is None:
            return
        book, g = self.books[message.instrument], self.granularities.index(granularity)
        times, now = bars["time"], time.time_ns()
        # In time order (after every earlier bar, refused or not), and opened in the past: only
        # then is a bar's end computed (a time near int64's end would overflow it).
        earlier = np.maximum.accumulate(np.append(np.iinfo(np.int64).min, times[:-1]))
        ok = bars["complete"] & ~unusable_bars(bars) & (times > earlier)
        ok &= (times > 0) & (times < now)
        ends = np.zeros(len(bars), np.int64)
        ends[ok] = [next_open(int(t), granularity, self.alignment) for t in times[ok]]
        ok[ok] = opens_of(times[ok], [granularity], self.alignment)[0] == times[ok]  # on the grid
        ok &= ends <= now
        if book.f_time[g] != NO_BAR:
            ok &= times < book.f_time[g]
        if not ok.all():
            self._reject_many("backfill", int((~ok).sum()), f"{message.instrument} {granularity}")
        bars, ends = bars[ok], ends[ok]
        if not len(bars):
            return
        new = ~np.isin(bars["time"], self._known_times(book, g, int(bars["time"][0])))
        self.counters["backfill_known"] += int((~new).sum())
        bars, ends = bars[new].copy(), ends[new]
        if not len(bars):
            return
        series = book.series[g]
        series.reset(dedupe(join_bars([series.view, bars]))[-series.window :])
        self._closed.append(wire.Bars.of(book.instrument, granularity, bars))
        if ends[-1] > book.last[0]:
            book.last = (int(ends[-1]), float(bars["bid_close"][-1]), float(bars["ask_close"][-1]))
        book.changed = True
        self.counters["bars_backfilled"] += len(bars)

    def _known_times(self, book: _Book, g: int, first: int) -> np.ndarray:
        """Open times of the closed bars the router has of a series from `first` on: its window,
        this round's bars not journaled yet, and, for times before the window, the store."""
        series, key = book.series[g], (book.instrument, self.granularities[g])
        this_round = [
            m.array()["time"] for m in self._closed if (m.instrument, m.granularity) == key
        ]
        have = [series.view["time"], *this_round]
        # The window holds every closed bar newer than its first (all of them until it is full):
        # only older ones need the store (a backfill of recent bars never reads it).
        if (
            self.store is not None
            and len(series) == series.window
            and first < series.view[0]["time"]
        ):
            have.append(self.store.stored(key, first, int(series.view[0]["time"]))["time"])
        return np.concatenate(have)

    def _guard(self, paced: bool) -> Guard:
        if not paced:
            return self._unpaced_guard
        return self._unpaced_guard._replace(max_time=time.time_ns() + self._lead_ns)

    def _apply(self, book: _Book, ticks: np.ndarray, feed: str, paced: bool) -> None:
        n_held = len(book.held)
        if n_held:  # the held ticks come first: this batch may confirm or contradict them
            ticks = np.concatenate([book.held, ticks])
        # Contiguous writable copies, whatever the batch (one tick, a read-only message buffer,
        # held ticks joined in): one compiled specialisation of the kernels, not one per layout
        # (each a compile of many seconds on a fresh install, the router deaf meanwhile).
        time_ns, bid, ask = ticks["time"].copy(), ticks["bid"].copy(), ticks["ask"].copy()
        if len(ticks) > self._closed_rows.shape[1]:
            self._closed_rows = np.empty((len(self.granularities), len(ticks)), BAR_DTYPE)
        calendar = (
            opens_of(time_ns, self.granularities, self.alignment)
            if self._has_calendar
            else self._no_opens
        )
        codes, accepted, last = ingest_screened(
            time_ns, bid, ask, n_held, *book.last, *self._guard(paced), self._steps, calendar,
            book.f_time, book.f_px, book.f_n, self._closed_rows, self._closed_counts,
        )  # fmt: skip
        if accepted < len(ticks):
            self._count_refused(book, codes, n_held)
            held = codes == HELD
            if n_held or held.any():
                book.held = ticks[held]
                book.changed = True
            if not accepted:
                return
            ticks = ticks[codes == ACCEPTED]
        elif n_held:
            book.held = book.held[:0]
        book.last = (int(time_ns[last]), float(bid[last]), float(ask[last]))
        book.changed = True
        book.partial_due[:] = True
        self._partials_at = min(self._partials_at, book.partial_next)
        # The ticks before the bars they close: an order decided on a bar fills at the quote that
        # closed it, which the trader then has (or has queued) when the order comes.
        accepted = wire.Ticks.of(book.instrument, ticks, feed)
        send_frames(self.pub, wire.frames(f"tick.{book.instrument}", accepted))
        for g, count in enumerate(self._closed_counts.tolist()):
            if count:
                # Out at once: a brain waits on these bars, and nothing below changes them.
                self._publish_closed(book, g, self._closed_rows[g, :count])
        book.mark(ticks["time"])
        self.counters["ticks_applied"] += len(ticks)

    def _publish_closed(self, book: _Book, g: int, bars: np.ndarray) -> None:
        """Publish bars just closed (after the series' last) and keep them in the series."""
        series, granularity = book.series[g], self.granularities[g]
        previous = -1 if series.last is None else int(series.last["time"])
        closed = wire.Bars.of(book.instrument, granularity, bars, previous)
        send_frames(self.pub, wire.frames(f"bar.{book.instrument}.{granularity}", closed))
        series.extend(bars)
        self._closed.append(closed)
        self.counters["bars_closed"] += len(bars)

    def _count_refused(self, book: _Book, codes: np.ndarray, n_held: int) -> None:
        counts = np.bincount(codes, minlength=len(REASONS))
        # Ticks held before this batch and still held are counted once, when first held.
        counts[HELD] -= int((codes[:n_held] == HELD).sum())
        if counts[HELD]:
            self.counters["ticks_held"] += int(counts[HELD])
        for code, count in enumerate(counts):
            if code not in (ACCEPTED, HELD) and count:
                self._reject_many(REASONS[code], int(count), f"{book.instrument}: {count} ticks")

    def idle(self) -> None:
        self._release()
        self._close_due()
        self._commit()
        self._publish_partials()
        if self.store is not None and time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + self.sync_s
            self.store.sync()

    def _close_due(self) -> None:
        """Close the forming bars of live instruments whose time has passed (plus a grace).

        A live feed's bar closes when its time is over, as OANDA's candles complete, not only when
        a later tick arrives (the last bar before a weekend would stay open until Sunday). A
        replay's bars keep closing on the feed's own clock. A tick that comes for a bar closed
        this way is late: it is refused as out of order (the last tick time moves to the bar's
        end), so a bar never closes twice.
        """
        if not self._live or time.monotonic() < self._next_close_check:
            return
        self._next_close_check = time.monotonic() + CLOSE_CHECK_S
        due = time.time_ns() - self._close_grace_ns
        for book in self._live:
            for g, granularity in enumerate(self.granularities):
                open_ns = int(book.f_time[g])
                if open_ns == NO_BAR:
                    continue
                end = next_open(open_ns, granularity, self.alignment)
                if end > due:
                    continue
                self._publish_closed(book, g, book.forming(g))
                book.f_time[g], book.f_n[g] = NO_BAR, 0
                book.last = (max(book.last[0], end), book.last[1], book.last[2])
                book.changed = True
                self.counters["bars_closed_by_time"] += 1

    def _commit(self) -> None:
        """Journal the round, then acknowledge it: an ack means it is durable.

        Its ticks and closed bars went out as they were applied (:meth:`_apply`), so neither the
        journal write nor the rest of a drained burst is on the tick-to-bar path. A bar published
        but not journaled when the router dies is rebuilt, identical, from the ticks the feeder
        resends (they were never acknowledged), and subscribers drop the repeat by its open time;
        the paper broker its ticks.
        """
        changed = [b for b in self.books.values() if b.changed]
        if not (self._closed or changed or self._replies):
            return
        if self.store is not None:
            forming = [
                wire.Bars.of(b.instrument, g, b.forming(i))
                for b in changed
                for i, g in enumerate(self.granularities)
                if b.f_time[i] != NO_BAR
            ]
            self.store.append(
                JournalRecord(
                    closed=self._closed,
                    forming=forming,
                    seqs={feed: self.seqs.get(feed, 0) for feed in self._replies},
                    last_ticks={b.instrument: b.last for b in changed},
                    held=[wire.Ticks.of(b.instrument, b.held) for b in changed],
                )
            )
            if self.config.router.journal_sync == "full":
                self.store.sync()  # acknowledged means on disk, power loss included
        for feed, identity in self._replies.items():
            ack = wire.Ack(feed, self.seqs.get(feed, 0))
            send_frames(self.ticks_sock, [identity, *wire.frames("ack", ack)])
        for book in changed:
            book.changed = False
        self._closed, self._replies = [], {}

    def _publish_partials(self) -> None:
        now = time.monotonic()
        if now < self._partials_at:  # the common case, cheaply: every due one was sent lately
            return
        self._partials_at = np.inf
        for book in self.books.values():
            for g in np.flatnonzero(book.partial_due):
                if now - book.partial_sent[g] < self._partial_interval:
                    self._partials_at = min(
                        self._partials_at, book.partial_sent[g] + self._partial_interval
                    )
                    continue
                topic = f"bar_partial.{book.instrument}.{self.granularities[g]}"
                message = wire.Bars.of(book.instrument, self.granularities[g], book.forming(g))
                send_frames(self.pub, wire.frames(topic, message))
                book.partial_sent[g], book.partial_due[g] = now, False
            book.partial_next = float(book.partial_sent.min()) + self._partial_interval

    def history(
        self, instrument: str, granularity: str, count: int, end_ns: int | None
    ) -> np.ndarray:
        """The last `count` closed bars of a series opening before `end_ns` (None: all).

        A granularity the router does not build is resampled from the coarsest one it builds that
        nests inside it (H4 from H1); only coarse bars whose every fine bar is known are returned.
        """
        if granularity not in self.granularities:
            return self._resampled(instrument, granularity, count, end_ns)
        series = self.books[instrument].series[self.granularities.index(granularity)]
        bars = series.view
        if end_ns is not None:
            bars = bars[bars["time"] < end_ns]
        if len(bars) < count and self.store is not None:
            stored = read_bars(self.store.root, instrument, granularity, end=end_ns)
            bars = dedupe(join_bars([stored, bars]))
        return bars[-count:] if count else bars[:0]

    def _source_of(self, granularity: str) -> str | None:
        """The coarsest built granularity whose bars nest inside `granularity`'s, if any."""
        finer = [g for g in self.granularities if is_finer(g, granularity)]
        return max(finer, key=GRANULARITIES.index) if finer else None

    def _resampled(
        self, instrument: str, granularity: str, count: int, end_ns: int | None
    ) -> np.ndarray:
        source = self._source_of(granularity)
        fine_step, coarse_step = step_ns(source), step_ns(granularity)
        # Fine bars per coarse bar; calendar bars (D, W, M) get a month's worth of margin.
        per_bar = coarse_step // fine_step if coarse_step else 32 * 86_400 * NS // fine_step
        wanted = (count + 2) * per_bar
        fine = self.history(instrument, source, wanted, end_ns)
        coarse = resample(fine, granularity, alignment=self.alignment)
        if len(fine) == wanted and len(coarse):
            coarse = coarse[1:]  # its first fine bars may lie before the history fetched
        coarse = coarse[coarse["complete"]]
        return coarse[-count:] if count else coarse[:0]

    def _on_history(self, parts: list[bytes]) -> None:
        if len(parts) < 3:
            self.reject(
                "malformed", f"expected an envelope, topic and payload, got {len(parts)} frames"
            )
            return
        envelope = parts[:-2]
        decoded = self.decode(parts[-2:])
        if decoded is not None and isinstance(decoded[1], wire.Decided | wire.Quoted):
            self._on_progress(parts[0], decoded[1])
            return
        error = self._history_error(decoded)
        if error:
            self.history_sock.send_multipart(
                [*envelope, *wire.frames("error", wire.Reply(False, error=error))]
            )
            return
        request = decoded[1]
        bars = self.history(request.instrument, request.granularity, request.count, request.end_ns)
        topic = f"history.{request.instrument}.{request.granularity}"
        reply = wire.Bars.of(request.instrument, request.granularity, bars)
        self.history_sock.send_multipart([*envelope, *wire.frames(topic, reply)])
        self.counters["history_requests"] += 1

    def _on_progress(self, identity: bytes, message: wire.Decided | wire.Quoted) -> None:
        """A brain's word on its decisions answered, or the trader's on the quotes it took."""
        quoted = isinstance(message, wire.Quoted)
        if message.instrument not in self.books or not (
            quoted or message.granularity in self.granularities
        ):
            what = f"{message.instrument[:40]!r}" + (
                "" if quoted else f" {message.granularity[:10]!r}"
            )
            kind = type(message).__name__
            self.reject("unexpected_message", f"{kind} for {what}, a series the router lacks")
            return
        g = QUOTES if quoted else self.granularities.index(message.granularity)
        now = time.monotonic()
        self.counters["quoted_heard" if quoted else "decided_heard"] += 1
        known = self._followers.get(identity)
        if known is not None and (known.instrument, known.g, known.until_ns) == (
            message.instrument,
            g,
            message.until_ns,
        ):
            self._followers[identity] = known._replace(heard=now)
        else:
            self._followers[identity] = _Follower(message.instrument, g, message.until_ns, now, now)
        self._release()

    def _history_error(self, decoded: tuple[str, wire.AnyMessage] | None) -> str:
        if decoded is None:
            return "malformed request: send [topic, wire.HistoryRequest]"
        request = decoded[1]
        if not isinstance(request, wire.HistoryRequest):
            self.reject("unexpected_message", f"{type(request).__name__} on the history socket")
            return f"expected a HistoryRequest, got {type(request).__name__}"
        if request.instrument not in self.books:
            return f"unknown instrument {request.instrument!r}; the router has {sorted(self.books)}"
        if request.granularity not in GRANULARITIES:
            return str(UnknownNameError("granularity", request.granularity, GRANULARITIES))
        if request.granularity not in self.granularities and not self._source_of(
            request.granularity
        ):
            return (
                f"granularity {request.granularity!r} is neither built nor resamplable from the "
                f"router's {self.granularities}; add a finer one to router.granularities"
            )
        if request.count < 0:
            return f"count must be >= 0, got {request.count}"
        return ""

    def teardown(self) -> None:
        self._commit()
        if self.store is not None:
            self.store.flush()
            self.store.close()
