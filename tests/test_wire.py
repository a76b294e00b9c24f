"""The wire codec: round trips, and refusal of anything malformed or of another version."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from osm.core import wire
from osm.core.dtypes import BAR_DTYPE, TICK_DTYPE
from osm.core.errors import WireError


def _ticks(n: int) -> np.ndarray:
    out = np.zeros(n, TICK_DTYPE)
    out["time"] = np.arange(n) * 1_000_000
    out["bid"] = 1.1 + np.arange(n) * 1e-5
    out["ask"] = out["bid"] + 1e-4
    return out


def test_ticks_round_trip_bit_for_bit():
    ticks = _ticks(300)
    topic, message = wire.parse(
        wire.frames("tick.EUR_USD", wire.Ticks.of("EUR_USD", ticks, "f", 9))
    )
    assert topic == "tick.EUR_USD"
    assert isinstance(message, wire.Ticks) and (message.feed, message.seq) == ("f", 9)
    np.testing.assert_array_equal(message.array(), ticks)


def test_bars_round_trip():
    bars = np.zeros(5, BAR_DTYPE)
    bars["time"] = np.arange(5) * 60_000_000_000
    bars["bid_close"] = [1.1, 1.2, 1.3, 1.4, 1.5]
    bars["complete"] = True
    _, message = wire.parse(wire.frames("bar.EUR_USD.M1", wire.Bars.of("EUR_USD", "M1", bars)))
    np.testing.assert_array_equal(message.array(), bars)


def test_every_message_type_round_trips():
    samples = [
        wire.Ack("f", 3),
        wire.Heartbeat("router", 1, 2, 3, {"rejected.crossed": 4}),
        wire.HistoryRequest("EUR_USD", "M1", 10),
        wire.Target("b", "EUR_USD", -1000, "b-1", after_ns=5),
        wire.Order("b", "EUR_USD", 1000, "b-2"),
        wire.OrderReply("b-2", False, "max_order 500000 exceeded"),
        wire.Fill("b-2", "b", "EUR_USD", 1000, 1.2345, 7, 0.1),
        wire.Position("EUR_USD", 1000, 1.2345, 0.0, 1.5),
        wire.Command("status"),
        wire.Reply(True, {"x": [1, 2]}),
    ]
    for message in samples:
        assert wire.decode(wire.encode(message)) == message


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\x00garbage",
        wire.encode(wire.Ack("f", 3))[:-2],  # truncated
        msgspec.msgpack.encode({"type": "ack.v2", "feed": "f", "seq": 1}),  # another version
        msgspec.msgpack.encode({"type": "ack.v1", "feed": "f"}),  # missing field
        msgspec.msgpack.encode({"type": "ack.v1", "feed": "f", "seq": "one"}),  # wrong type
    ],
)
def test_bad_payloads_raise_wire_error(payload):
    with pytest.raises(WireError):
        wire.decode(payload)


def test_bad_frame_shapes_raise_wire_error():
    with pytest.raises(WireError, match="2 frames"):
        wire.parse([b"only-topic"])
    with pytest.raises(WireError, match="UTF-8"):
        wire.parse([b"\xff\xfe", wire.encode(wire.Ack("f", 1))])


def test_array_payload_with_wrong_length_is_refused():
    message = wire.Ticks("EUR_USD", 3, b"\x00" * 10)
    with pytest.raises(WireError, match="does not hold 3 rows"):
        wire.decode(wire.encode(message)).array()
