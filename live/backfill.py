"""A live source's history, fetched on a thread of its own for the feeder.

The feeder's loop forwards ticks and beats its heartbeat; a venue answering slowly (or not: up to
its request timeout per page, right after an outage when it is most likely) must stall neither.
:class:`Backfiller` takes the series to fetch (:meth:`ask`), calls the source's ``candles`` on its
thread, one series at a time in the order asked, and leaves each outcome, the bars or the
exception, for the loop to take (:meth:`done`).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, NamedTuple

import numpy as np


class Series(NamedTuple):
    """Bars of one instrument and granularity opening in [start_ns, end_ns)."""

    instrument: str
    granularity: str
    start_ns: int
    end_ns: int


class Backfiller:
    """Calls ``source.candles`` for each :class:`Series` asked, on a daemon thread it owns."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._asked: queue.Queue[Series | None] = queue.Queue()
        self._done: queue.Queue[tuple[Series, np.ndarray | Exception]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="backfill", daemon=True)
        self._thread.start()

    def ask(self, series: Series) -> None:
        self._asked.put(series)

    def done(self) -> list[tuple[Series, np.ndarray | Exception]]:
        """Every outcome ready now, in the order asked (never waits)."""
        ready = []
        while True:
            try:
                ready.append(self._done.get_nowait())
            except queue.Empty:
                return ready

    def close(self, timeout: float = 2.0) -> None:
        self._asked.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (series := self._asked.get()) is not None:
            try:
                outcome: np.ndarray | Exception = self._source.candles(*series)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which decides
                outcome = exc
            self._done.put((series, outcome))
