"""The wire codec: multipart frames of [topic, payload], payload a typed, versioned msgpack struct.

Every message type carries its version in its tag (`"ticks.v1"`), so a peer on another version is
refused with a clear error instead of misread. Arrays travel as raw little-endian buffers of the
core dtypes with their row count as header. Nothing is ever pickled.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from osm.core.dtypes import BAR_DTYPE, TICK_DTYPE
from osm.core.errors import WireError


class Message(msgspec.Struct, tag_field="type", frozen=True):
    """Base of every message on the bus."""


class Ticks(Message, tag="ticks.v1"):
    """A batch of quotes; `feed` and `seq` let the router acknowledge and drop resent batches.

    `token` proves the sender is the feed it names (the feed's secret in the run directory, see
    :func:`osm.live.bus.feed_token`); the router refuses a batch without it and never forwards it.
    """

    instrument: str
    count: int
    data: bytes  # TICK_DTYPE rows
    feed: str = ""
    seq: int = 0
    token: str = ""

    @classmethod
    def of(
        cls, instrument: str, ticks: np.ndarray, feed: str = "", seq: int = 0, token: str = ""
    ) -> Ticks:
        rows = np.ascontiguousarray(ticks, dtype=TICK_DTYPE)
        return cls(instrument, len(rows), rows.tobytes(), feed, seq, token)

    def array(self) -> np.ndarray:
        return _array(self.data, self.count, TICK_DTYPE)


class Bars(Message, tag="bars.v1"):
    """Bars of one series, oldest first.

    `previous`, on the router's closed bars, is the open time of the closed bar its series held
    before the first of these (-1: none, or not said): a follower whose last bar is that one has
    missed nothing, even where the market left minutes without a bar.
    """

    instrument: str
    granularity: str
    count: int
    data: bytes  # BAR_DTYPE rows
    previous: int = -1

    @classmethod
    def of(cls, instrument: str, granularity: str, bars: np.ndarray, previous: int = -1) -> Bars:
        rows = np.ascontiguousarray(bars, dtype=BAR_DTYPE)
        return cls(instrument, granularity, len(rows), rows.tobytes(), previous)

    def array(self) -> np.ndarray:
        return _array(self.data, self.count, BAR_DTYPE)


class Backfill(Message, tag="backfill.v1"):
    """Complete bars a live feed got from its venue's history for a time it has no ticks of (before
    its start, or a stream gap); `feed` and `token` as in :class:`Ticks`. The router stores those
    it has no bar for; no acknowledgement (a feeder backfills again at its next start)."""

    instrument: str
    granularity: str
    count: int
    data: bytes  # BAR_DTYPE rows
    feed: str
    token: str

    @classmethod
    def of(cls, feed: str, token: str, bars: Bars) -> Backfill:
        return cls(bars.instrument, bars.granularity, bars.count, bars.data, feed, token)

    def array(self) -> np.ndarray:
        return _array(self.data, self.count, BAR_DTYPE)


class Heartbeat(Message, tag="heartbeat.v1"):
    """Telemetry of one process; `token` is the secret the supervisor gave it when it started it."""

    process: str
    pid: int
    time_ns: int
    started_ns: int
    counters: dict[str, int] = {}
    token: str = ""


class Ack(Message, tag="ack.v1"):
    """The router has processed (and journaled) every batch of `feed` up to `seq`."""

    feed: str
    seq: int


class HistoryRequest(Message, tag="history.v1"):
    instrument: str
    granularity: str
    count: int
    end_ns: int | None = None  # bars opening before this instant; None: up to the last closed


class Decided(Message, tag="decided.v1"):
    """A brain's decisions on the bars of `instrument` and `granularity` are answered by the
    trader up to market time `until_ns` (the close of the last bar answered; 0: none yet). Sent
    to the router's history socket, which paces a flat-out replay by it; no answer."""

    instrument: str
    granularity: str
    until_ns: int


class Quoted(Message, tag="quoted.v1"):
    """The trader has taken the quotes of `instrument` up to market time `until_ns` (the newest
    it holds). Sent to the router's history socket while a flat-out replay runs, which then waits
    for the trader as for a brain; no answer."""

    instrument: str
    until_ns: int


class Target(Message, tag="target.v1"):
    """A brain's wanted position; the trader sends the difference from the current one.

    `stop_loss` and `take_profit` are optional price distances from the fill price: the trade the
    order opens is closed when the price it would close at (the bid for a long, the ask for a
    short) moves that far against it or for it; the closing fill is the brain's.
    """

    brain: str
    instrument: str
    units: int
    client_id: str
    after_ns: int = 0  # execute at the first quote at or after this instant (the bar's close)
    stop_loss: float | None = None
    take_profit: float | None = None
    # The client id of the decision the trader must have journaled first ("": none): a target
    # sent while earlier ones wait for their answer never overtakes one lost on the way.
    previous_id: str = ""


class Order(Message, tag="order.v1"):
    """A market order for a signed number of units (positive buys); `stop_loss` and
    `take_profit` as for :class:`Target`."""

    brain: str
    instrument: str
    units: int
    client_id: str
    after_ns: int = 0
    stop_loss: float | None = None
    take_profit: float | None = None


class OrderReply(Message, tag="order_reply.v1"):
    client_id: str
    accepted: bool
    reason: str = ""
    units: int = 0
    code: str = ""  # why it was refused (osm.live.risk.Refusal codes: duplicate, out_of_order...)


class Fill(Message, tag="fill.v1"):
    """One fill. `commission` is in the instrument's quote currency, like the price; `booked` is
    what the fill changed the account's balance by, in the account currency (its realised PnL
    less its costs, converted as the broker books it); None if the broker could not convert.
    `fill_id` is the broker's id of this fill (the venue's transaction id), unique across fills:
    an order filled in parts has one per part; '' means the client id (one fill per order)."""

    client_id: str
    brain: str
    instrument: str
    units: int
    price: float
    time_ns: int
    commission: float = 0.0
    booked: float | None = None
    fill_id: str = ""


class Position(Message, tag="position.v1"):
    instrument: str
    units: int
    average_price: float
    realized: float
    unrealized: float
    time_ns: int = 0


class Command(Message, tag="command.v1"):
    """A request to a process's control socket: status, halt, flatten, orders, stop..."""

    name: str
    args: dict[str, Any] = {}


class Reply(Message, tag="reply.v1"):
    ok: bool
    data: Any = None
    error: str = ""


AnyMessage = (
    Ticks | Bars | Backfill | Ack | Heartbeat | HistoryRequest | Decided | Quoted | Target | Order
    | OrderReply | Fill | Position | Command | Reply
)  # fmt: skip
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def _array(data: bytes, count: int, dtype: np.dtype) -> np.ndarray:
    if count < 0 or len(data) != count * dtype.itemsize:
        raise WireError(f"array payload of {len(data)} bytes does not hold {count} rows")
    return np.frombuffer(data, dtype=dtype)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes | memoryview) -> AnyMessage:
    """Decode one payload; raise WireError for anything malformed or of an unknown version."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(f"undecodable message: {exc}") from None


def frames(topic: str, message: Message) -> list[bytes]:
    return [topic.encode(), encode(message)]


def parse(parts: list[bytes] | list[Any]) -> tuple[str, AnyMessage]:
    """Split [topic, payload] frames; raise WireError for any other shape."""
    if len(parts) != 2:
        raise WireError(f"expected 2 frames (topic, payload), got {len(parts)}")
    try:
        topic = bytes(parts[0]).decode()
    except UnicodeDecodeError:
        raise WireError("topic frame is not UTF-8") from None
    return topic, decode(parts[1])
