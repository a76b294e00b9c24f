"""The feeder's backfill thread: a slow or failing venue never stalls the caller."""

from __future__ import annotations

import threading

import numpy as np

from osm.core.dtypes import empty_bars
from osm.core.errors import ConfigError
from osm.live.backfill import Backfiller, Series
from tests.live_helpers import wait_for


class SlowVenue:
    """candles() waits for the test to let it answer; a series named BAD raises."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.asked: list[tuple] = []

    def candles(self, instrument: str, granularity: str, start_ns: int, end_ns: int) -> np.ndarray:
        self.asked.append((instrument, granularity, start_ns, end_ns))
        self.go.wait(10)
        if instrument == "BAD":
            raise ConfigError("OANDA refused the candles of BAD (401)")
        return empty_bars(3)


def test_a_slow_venue_does_not_block_and_outcomes_come_in_order():
    venue = SlowVenue()
    backfiller = Backfiller(venue)
    try:
        first, second = Series("EUR_USD", "M1", 0, 60), Series("BAD", "M1", 0, 60)
        backfiller.ask(first)
        backfiller.ask(second)
        wait_for(lambda: venue.asked, 10, "the first request")
        assert backfiller.done() == []  # the venue has not answered: nothing, at once
        venue.go.set()
        outcomes = []
        wait_for(lambda: outcomes.extend(backfiller.done()) or len(outcomes) == 2, 10, "both")
        assert [series for series, _ in outcomes] == [first, second]
        assert len(outcomes[0][1]) == 3 and isinstance(outcomes[1][1], ConfigError)
    finally:
        backfiller.close()
    assert not backfiller._thread.is_alive()
