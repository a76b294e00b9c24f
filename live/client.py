"""Talk to a running osm system: the `osm` command line, notebook magics and scripts use this.

The system is found through its run directory (``endpoints.json``). Every request opens a fresh
socket and waits at most ``timeout_s``, so a dead or wedged process never hangs the caller: it gets
:class:`~osm.core.errors.SystemNotRunning`, which says what to run. A request's socket belongs to the
thread that called, so any thread (a widget's button callback, a magic) may send requests at any
time. :meth:`Client.follow` starts a :class:`Follower`: one thread that owns its subscription and
hands batches of closed bars, the forming bar, fills and positions to a callback.
:meth:`Client.close` stops the followers and closes forgotten subscriptions, so it never hangs.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psutil
import zmq

from osm.core import config as cfg
from osm.core import wire
from osm.core.errors import ConfigError, OsmError, SystemNotRunning, WireError
from osm.core.granularity import OANDA_ALIGNMENT, Alignment, check_granularity
from osm.core.instruments import instrument as check_instrument
from osm.core.rundir import RunDir
from osm.live.bus import make_curve_client
from osm.live.follow import BarMerge, join_bars

log = logging.getLogger(__name__)

_WHO = {
    "supervisor_control": "the supervisor",
    "trader_orders": "the trader",
    "router_history": "the router",
}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_pid(rundir: RunDir) -> int | None:
    """Return the pid of the live supervisor of `rundir`, or None.

    A pid file whose process is gone, is not an osm process, or was started after the file was
    written (the pid was reused by an unrelated process), is stale.
    """
    try:
        pid = int(rundir.pid_path.read_text())
        written = rundir.pid_path.stat().st_mtime
        process = psutil.Process(pid)
        osm = any("osm" in part for part in process.cmdline())
        if alive(pid) and osm and process.create_time() <= written + 1.0:
            return pid
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    return None


class CommandFailed(OsmError):
    """A process understood a request and refused it; the message says why."""


class Subscription:
    """A SUB socket on one of the system's PUB endpoints; use it from the thread that opened it."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self.closed = False

    def recv(self, timeout_s: float) -> tuple[str, wire.AnyMessage] | None:
        """Return the next (topic, message), or None if nothing came within `timeout_s`.

        Frames that do not decode are skipped: a subscriber is a reader, not a judge.
        """
        if not self._sock.poll(timeout_s * 1000):
            return None
        parts = self._sock.recv_multipart()
        try:
            return wire.parse(parts)
        except WireError:
            return None

    def close(self) -> None:
        self.closed = True
        self._sock.close(linger=0)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Client:
    """Requests to the supervisor, the trader and the router of the system in `home`.

    Parameters
    ----------
    home
        The run directory; default ``$OSM_HOME`` or ``~/.osm``.
    timeout_s
        Longest wait for any one answer.
    key_dir
        Where the CURVE keys are (``server.key``, ``client.key_secret``) when the system requires
        them; default the run directory's ``keys/``.
    """

    def __init__(
        self, home: str | Path | None = None, timeout_s: float = 5.0, key_dir: Path | None = None
    ) -> None:
        self.rundir = RunDir(home)
        self.timeout_s = timeout_s
        self.key_dir = key_dir or self.rundir.home / "keys"
        self._context = zmq.Context()
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._followers: weakref.WeakSet[Follower] = weakref.WeakSet()

    def close(self) -> None:
        """Stop this client's followers, close its open subscriptions and free the context.

        Never hangs: a subscription left open (its owner forgot, or died) is closed here.
        """
        for follower in list(self._followers):
            follower.stop()
        for subscription in list(self._subscriptions):
            if not subscription.closed:
                subscription.close()
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def endpoints(self) -> dict[str, Any]:
        """The addresses of the running system; SystemNotRunning if there is none."""
        endpoints = self.rundir.read_endpoints()
        # No pid file with endpoints is a remote system (endpoints.json copied from its host).
        stale = self.rundir.pid_path.exists() and running_pid(self.rundir) is None
        if endpoints is None or stale:
            raise SystemNotRunning(
                f"no osm system is running in {self.rundir.home}"
                + (" (its supervisor died; `osm up` cleans up)" if stale else "")
                + f"; start one with `osm up --home {self.rundir.home}`"
            )
        return endpoints

    def _connect(
        self,
        kind: int,
        name: str,
        context: zmq.Context | None = None,
        endpoints: dict | None = None,
    ) -> zmq.Socket:
        endpoints = endpoints or self.endpoints()
        sock = (context or self._context).socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if endpoints.get("curve"):
                make_curve_client(sock, self.key_dir)
            sock.connect(endpoints[name])
        except BaseException:
            sock.close()
            raise
        return sock

    def alignment(self) -> Alignment:
        """The running system's bar alignment (OANDA's if its config cannot be read)."""
        try:
            return cfg.load(cfg.SystemConfig, self.rundir.config_path.read_bytes()).router.alignment
        except (OSError, ConfigError):
            return OANDA_ALIGNMENT

    def _ask(self, kind: int, name: str, message: wire.Message) -> wire.AnyMessage:
        sock = self._connect(kind, name)
        try:
            try:
                sock.send_multipart(
                    wire.frames(message.__struct_config__.tag, message), zmq.NOBLOCK
                )
                answered = sock.poll(self.timeout_s * 1000)
            except zmq.Again:
                answered = 0
            if not answered:
                if name == "supervisor_control":
                    self._supervisor_silent()
                raise SystemNotRunning(
                    f"{_WHO[name]} of the osm system in {self.rundir.home} did not answer within "
                    f"{self.timeout_s:g} s; check `osm status`, or start the system with `osm up`"
                )
            reply = wire.parse(sock.recv_multipart())[1]
        finally:
            sock.close(linger=0)
        if isinstance(reply, wire.Reply) and not reply.ok:
            raise CommandFailed(f"{_WHO[name]} refused: {reply.error}")
        return reply

    def _supervisor_silent(self) -> None:
        """Say why a running supervisor does not answer, if its process state tells."""
        pid = running_pid(self.rundir)
        if pid is None:
            return
        try:
            stopped = psutil.Process(pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return
        if stopped:
            why = f"it is stopped (SIGSTOP?); `kill -CONT {pid}` resumes it"
        else:
            why = "it runs but is busy or hung; see logs/supervisor.log"
        raise SystemNotRunning(
            f"supervisor pid {pid} of the osm system in {self.rundir.home} is not answering "
            f"within {self.timeout_s:g} s: {why}"
        )

    def _command(self, kind: int, name: str, command: str, args: dict[str, Any]) -> Any:
        reply = self._ask(kind, name, wire.Command(command, args))
        if not isinstance(reply, wire.Reply):
            raise WireError(f"{_WHO[name]} answered a command with a {type(reply).__name__}")
        return reply.data

    # -- supervisor ----------------------------------------------------------------------------

    def request(self, command: str, **args: Any) -> Any:
        """Send a command to the supervisor and return its answer's data."""
        return self._command(zmq.REQ, "supervisor_control", command, args)

    def status(self) -> dict[str, Any]:
        """The supervisor's view: its pid and uptime, and per process state, pid, uptime,
        restarts, message and reject counters and the age of the last heartbeat."""
        return self.request("status")

    # -- trader --------------------------------------------------------------------------------

    def trader(self, command: str, **args: Any) -> Any:
        """Send a command (status, halt, resume, flatten, cancel, orders, fills, positions) to the
        trader."""
        return self._command(zmq.DEALER, "trader_orders", command, args)

    def orders(self) -> Any:
        return self.trader("orders")

    def positions(self) -> Any:
        return self.trader("positions")

    def halt(self) -> Any:
        return self.trader("halt")

    def resume(self) -> Any:
        return self.trader("resume")

    def flatten(self) -> Any:
        """Close every position with market orders (allowed while halted)."""
        return self.trader("flatten")

    def cancel(self, client_id: str) -> Any:
        """Cancel an order not yet filled in full; the reply says whether it is cancelled."""
        return self.trader("cancel", client_id=client_id)

    def fills(self) -> Any:
        return self.trader("fills")

    def order(
        self,
        instrument: str,
        units: int,
        brain: str = "cli",
        client_id: str | None = None,
        stop_loss: float | None = None,
        take_profit: float | None = None,
    ) -> wire.OrderReply:
        """Send a market order through the trader's risk checks; the reply says if it was taken.
        `stop_loss` / `take_profit` are price distances from the fill (see wire.Target)."""
        client_id = client_id or f"{brain}-{uuid.uuid4().hex[:12]}"
        order = wire.Order(brain, instrument, units, client_id, 0, stop_loss, take_profit)
        reply = self._ask(zmq.DEALER, "trader_orders", order)
        if not isinstance(reply, wire.OrderReply):
            raise WireError(f"the trader answered an order with a {type(reply).__name__}")
        return reply

    # -- router --------------------------------------------------------------------------------

    def bars(self, instrument: str, granularity: str, count: int) -> np.ndarray:
        """The last `count` closed bars (BAR_DTYPE rows, oldest first) from the router."""
        request = wire.HistoryRequest(instrument, granularity, count)
        reply = self._ask(zmq.DEALER, "router_history", request)
        if not isinstance(reply, wire.Bars):
            raise WireError(f"the router answered a history request with a {type(reply).__name__}")
        return reply.array()

    def subscribe(
        self, names: str | list[str], topics: list[str] | tuple[str, ...] = ("",)
    ) -> Subscription:
        """Subscribe to topic prefixes on one or more PUB endpoints (``router_bars``,
        ``trader_events``); one socket receives from all of them."""
        names = [names] if isinstance(names, str) else names
        sock = self._connect(zmq.SUB, names[0])
        for name in names[1:]:
            sock.connect(self.endpoints()[name])
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        subscription = Subscription(sock)
        self._subscriptions.add(subscription)
        return subscription

    def follow(
        self,
        instrument: str,
        granularity: str,
        count: int = 500,
        sink: Callable[[Batch], None] | None = None,
        hz: float = 4.0,
        only_last: bool = False,
    ) -> Follower:
        """Start following one series: `count` bars of history, then live bars, the forming bar,
        fills and positions, handed to `sink` in batches at most `hz` times a second.

        `sink` runs on the follower's thread; without one, read batches with
        :meth:`Follower.get`. Stop it with :meth:`Follower.stop` (or :meth:`close`).
        `only_last`: the sink keeps only the newest `count` bars (a chart), so a gap with `count`
        newer bars behind it is skipped over rather than filled from history (see
        :mod:`osm.live.follow`); the bars skipped are counted in :attr:`Batch.skipped`.
        """
        follower = Follower(self, instrument, granularity, count, sink, hz, only_last)
        self._followers.add(follower)
        follower.start()
        return follower


class Batch(NamedTuple):
    """What a follower hands over at once.

    bars
        Closed bars new since the last batch, in open-time order, each exactly once (BAR_DTYPE).
        When more than the follower's `count` closed since the last batch, the older are skipped
        (see `skipped`): a batch holds the newest `count` or a little more, never a gap inside.
    forming
        The forming bar if it changed since the last batch (0 or 1 BAR_DTYPE row); never one that
        is already closed.
    fills
        Fills since the last batch, every brain's (``wire.Fill``).
    positions
        The latest position of each instrument that changed (``wire.Position``).
    skipped
        Closed bars that came between the last batch and this one but are older than the last
        `count` (the series closes bars faster than the sink is fed), or that a follower with
        `only_last` skipped over with a gap (see :mod:`osm.live.follow`): not handed, counted
        here so a consumer that numbers bars keeps its count. Bars lost in a gap skipped over
        (never received) are not counted.
    """

    bars: np.ndarray
    forming: np.ndarray
    fills: list[wire.Fill]
    positions: list[wire.Position]
    skipped: int = 0

    def __bool__(self) -> bool:
        return bool(
            len(self.bars) or len(self.forming) or self.fills or self.positions or self.skipped
        )


class _Held:
    """What a follower holds between two hand-overs, bounded whatever the bar rate.

    Closed bars: a ring of the merge's arrays holding at least the newest `count` bars; an older
    array is dropped whole once the newer ones hold `count`, so one piece the merge hands back (a
    gap filled from history with the live bars behind it) is never cut. Holding costs no copy;
    the arrays are joined once, at hand-over. The
    forming bar and positions: the newest raw payload of each topic, decoded only at hand-over
    (the router may send many forming bars between two batches; all but the last are overwritten
    unread). Fills: every one.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._clear()

    def _clear(self) -> None:
        self.bars: collections.deque[np.ndarray] = collections.deque()
        self.held = 0  # rows in `bars`
        self.skipped = 0
        self.forming: bytes | None = None  # the newest raw payload
        self.fills: list[wire.Fill] = []
        self.positions: dict[bytes, bytes] = {}  # topic: the newest raw payload

    def __bool__(self) -> bool:
        return bool(self.held or self.forming is not None or self.fills or self.positions)

    def add_bars(self, bars: np.ndarray) -> None:
        if not len(bars):
            return
        self.bars.append(bars)
        self.held += len(bars)
        while self.held - len(self.bars[0]) >= self.count:
            dropped = len(self.bars.popleft())
            self.held -= dropped
            self.skipped += dropped

    def take(self, last_time: int, parse: Callable[[list[bytes]], tuple[str, Any]]) -> Batch:
        """Empty the holding into a batch; a forming bar at or before `last_time` is dropped
        (it closed meanwhile)."""
        closed = join_bars(self.bars)
        skipped = self.skipped
        forming = closed[:0]
        if self.forming is not None:
            message = parse([b"", self.forming])[1]
            if isinstance(message, wire.Bars):
                forming = message.array()[-1:]
                if len(forming) and int(forming["time"][0]) <= last_time:
                    forming = closed[:0]
        positions = [parse([b"", raw])[1] for raw in self.positions.values()]
        batch = Batch(
            closed,
            forming,
            self.fills,
            [p for p in positions if isinstance(p, wire.Position)],
            skipped,
        )
        self._clear()
        return batch


HISTORY_RETRY_S = 2.0  # resend a history request unanswered this long (the router was away)
DRAIN_MAX = 500  # live messages read in one pass, before the loop looks at its other duties
SUB_HWM = 100_000  # live messages queued for the follower (small: a few hundred bytes each)
DRAIN_GAP_S = 0.01  # rest between passes, so a flood of bars is read in chunks, not one by one
_ids = itertools.count()


def poll_ms(seconds: float) -> int:
    """A wait of `seconds` as a ZeroMQ poll timeout: whole milliseconds, rounded up.

    pyzmq truncates a float timeout, so a wait under a millisecond became 0 and the follower
    spun on its poll (taking the GIL each time) until the deadline passed: about 800 polls a
    second on a stream of 10 batches a second, where a hundred do.
    """
    return math.ceil(seconds * 1000)


class Follower:
    """One thread that follows a series of the running system; see :meth:`Client.follow`.

    The thread owns every socket it uses (SUB on bars and trader events, DEALER for history, PULL
    for the stop signal) and its own ZeroMQ context, so no other thread ever touches them;
    :meth:`stop` may be called from any thread, the follower's own included.
    """

    def __init__(
        self,
        client: Client,
        instrument: str,
        granularity: str,
        count: int,
        sink: Callable[[Batch], None] | None,
        hz: float,
        only_last: bool = False,
    ) -> None:
        check_instrument(instrument)
        check_granularity(granularity)
        if count < 1:
            raise ConfigError(f"count must be at least 1 bar, got {count}")
        if not hz > 0:
            raise ConfigError(f"hz must be positive (batches a second), got {hz}")
        self.instrument, self.granularity, self.hz = instrument, granularity, hz
        self.merge = BarMerge(granularity, count, client.alignment(), only_last)
        self.error: BaseException | None = None
        self.batches_sent = 0
        self.drains = 0  # passes that read the subscription
        self._client = client
        self._endpoints = client.endpoints()  # SystemNotRunning here, in the caller's thread
        self._sink = sink
        self._queue: queue.Queue[Batch] = queue.Queue()
        self._context = zmq.Context()
        self._control = f"inproc://osm-follower-{next(_ids)}"
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"osm-follow-{instrument}-{granularity}", daemon=True
        )

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def get(self, timeout_s: float) -> Batch | None:
        """The next batch (when following without a sink), or None after `timeout_s`."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop and wait for it (unless called from it)."""
        self._stopping.set()
        if self._ready.is_set() and self._thread.is_alive():
            with contextlib.suppress(zmq.ZMQError):
                poke = self._context.socket(zmq.PUSH)
                try:
                    poke.connect(self._control)
                    poke.send(b"stop", zmq.NOBLOCK)
                finally:
                    poke.close(linger=100)
        if threading.current_thread() is not self._thread and self._thread.ident is not None:
            self._thread.join(timeout_s)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        sockets: list[zmq.Socket] = []
        try:
            control = self._context.socket(zmq.PULL)
            sockets.append(control)
            control.bind(self._control)
            self._ready.set()
            self._loop(control, sockets)
        except Exception as exc:  # the thread dies; say why where the user looks
            self.error = exc
            log.exception("follower of %s %s died", self.instrument, self.granularity)
        finally:
            self._ready.set()
            for sock in sockets:
                sock.close(linger=0)
            self._context.term()

    def _loop(self, control: zmq.Socket, sockets: list[zmq.Socket]) -> None:
        i, g = self.instrument, self.granularity
        closed_topic, forming_topic = f"bar.{i}.{g}".encode(), f"bar_partial.{i}.{g}".encode()
        # Room for the bars of a rest between drains at full replay speed: a drop is a gap the
        # merge must ask history about, and live bars wait until the router answers. Set on the
        # context, as the socket connects before it is handed back (HWM counts per connection).
        self._context.setsockopt(zmq.RCVHWM, SUB_HWM)
        sub = self._client._connect(zmq.SUB, "router_bars", self._context, self._endpoints)
        sockets.append(sub)
        sub.connect(self._endpoints["trader_events"])
        for topic in (closed_topic, forming_topic, b"fill.", b"position."):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        history = self._client._connect(
            zmq.DEALER, "router_history", self._context, self._endpoints
        )
        sockets.append(history)
        all_sockets, quiet = zmq.Poller(), zmq.Poller()
        for sock in (control, sub, history):
            all_sockets.register(sock, zmq.POLLIN)
        for sock in (control, history):
            quiet.register(sock, zmq.POLLIN)

        held = _Held(self.merge.count)
        sent: object = None  # the request last sent, to send each once (and retry)
        sent_at = 0.0
        # Each request carries a tag frame the router echoes (its envelope), so an answer to a
        # request the merge no longer waits for (dropped when it skipped ahead, or a retry's
        # twin) is never taken for the answer to a newer one.
        tags = itertools.count()
        tag = b""
        interval = 1.0 / self.hz
        next_flush = next_drain = 0.0
        while not self._stopping.is_set():
            wanted = self.merge.wanted
            now = time.monotonic()
            if wanted is not None and (wanted is not sent or now - sent_at > HISTORY_RETRY_S):
                if wanted is not sent:
                    tag = b"%d" % next(tags)
                request = wire.HistoryRequest(i, g, wanted.count, wanted.end_ns)
                history.send_multipart([tag, *wire.frames("history", request)])
                sent, sent_at = wanted, now
            # Between drains the subscription is not polled: messages wait in its queue and are
            # read in one chunk, instead of waking this thread (and taking the GIL) for each.
            draining = now >= next_drain
            wake = [next_flush] if self.merge.warm and held else []
            wake += [] if draining else [next_drain]
            wait = max(0.0, min(wake) - now) if wake else HISTORY_RETRY_S
            events = dict((all_sockets if draining else quiet).poll(poll_ms(wait)))
            if control in events:
                break
            # A rest that ended during a quiet poll (the subscription was not in it): read now,
            # so a hand-over due at the same moment takes what came during the rest.
            rested = not draining and time.monotonic() >= next_drain
            due = sub in events or rested
            read = self._drain(sub, held, closed_topic, forming_topic) if due else 0
            if read and read < DRAIN_MAX:
                next_drain = time.monotonic() + DRAIN_GAP_S
                # Caught up, and what was read waits for the next hand-over anyway: leave the
                # subscription until then and read what came meanwhile in one pass. A flood is
                # read about twice per hand-over instead of every DRAIN_GAP_S, each pass waking
                # this thread and taking the GIL from the kernel's. A quiet stream is read as
                # it comes, so a bar after a rest is handed at once, as before.
                if self.merge.warm and held:
                    next_drain = max(next_drain, next_flush)
            self.drains += bool(read)
            if history in events:
                answer, *parts = history.recv_multipart()
                topic, message = self._parse(parts)
                if answer != tag or self.merge.wanted is not sent:
                    self.merge.counters["history_stale"] += 1
                elif isinstance(message, wire.Bars):
                    held.add_bars(self.merge.history(message.array()))
                elif isinstance(message, wire.Reply):
                    raise CommandFailed(f"the router refused the history request: {message.error}")
            if self.merge.skipped:
                held.skipped += self.merge.skipped
                self.merge.skipped = 0
            now = time.monotonic()
            if held and now >= next_flush and self.merge.warm:
                batch = held.take(self.merge.last_time, self._parse)
                self.merge.counters["bars_skipped"] += batch.skipped
                if batch:
                    self._hand(batch)
                    next_flush = now + interval

    def _drain(
        self, sub: zmq.Socket, held: _Held, closed_topic: bytes, forming_topic: bytes
    ) -> int:
        """Read up to DRAIN_MAX waiting live messages into `held`; return how many were read.

        Closed bars are all decoded (each must reach the merge, in order) and merged in one call;
        forming bars and positions are only kept raw, the newest per topic.
        """
        live: list[wire.Bars] = []
        read = 0
        while read < DRAIN_MAX:
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            read += 1
            topic = parts[0]
            if len(parts) != 2:
                self.merge.counters["undecodable"] += 1
            elif topic == forming_topic:
                held.forming = parts[1]
            elif topic.startswith(b"position."):
                held.positions[topic] = parts[1]
            else:
                message = self._parse(parts)[1]
                if topic == closed_topic and isinstance(message, wire.Bars):
                    live.append(message)
                elif isinstance(message, wire.Fill):
                    held.fills.append(message)
        if live:
            arrays = [message.array() for message in live]
            # One message as the router sent it: the first's `previous` holds if each later one
            # follows the one before.
            chained = all(
                len(a) and b.previous == a["time"][-1]
                for a, b in zip(arrays, live[1:], strict=False)
            )
            bars = join_bars(arrays) if len(arrays) > 1 else arrays[0]
            held.add_bars(self.merge.live(bars, live[0].previous if chained else -1))
        return read

    def _parse(self, parts: list[bytes]) -> tuple[str, wire.AnyMessage | None]:
        try:
            return wire.parse(parts)
        except WireError:
            self.merge.counters["undecodable"] += 1
            return "", None

    def _hand(self, batch: Batch) -> None:
        self.batches_sent += 1
        if self._sink is None:
            self._queue.put(batch)
            return
        try:
            self._sink(batch)
        except Exception:  # a widget's bug must not stop the stream
            self.merge.counters["sink_errors"] += 1
            log.exception("a follower's sink failed on a batch")
