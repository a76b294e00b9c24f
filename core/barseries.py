"""BarSeries: a bounded window of bars kept in a larger preallocated buffer, exposed as a view.

Appending writes into the next free slot (O(1)); when the buffer is full, the last `window - 1` bars
are copied to its start (one O(window) copy every `capacity - window` appends, so O(1) amortised)
and the oldest bars roll out. Memory is fixed at construction. The forming bar can be kept as the
last element and updated in place until it completes.
"""

from __future__ import annotations

import numpy as np

from osm.core.dtypes import BAR_DTYPE


class BarSeries:
    """The last `window` bars of one instrument and granularity.

    Parameters
    ----------
    window
        How many bars the view shows at most.
    capacity
        Buffer size in bars; at least `2 * window` keeps compaction amortised O(1).
    """

    __slots__ = ("_buffer", "_start", "_end", "window", "instrument", "granularity")

    def __init__(
        self, window: int, capacity: int | None = None, instrument: str = "", granularity: str = ""
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 bar, got {window}")
        capacity = capacity or 2 * window
        if capacity < window + 1:
            raise ValueError(f"capacity ({capacity}) must exceed window ({window})")
        self._buffer = np.zeros(capacity, dtype=BAR_DTYPE)
        self._start = self._end = 0
        self.window = window
        self.instrument, self.granularity = instrument, granularity

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def view(self) -> np.ndarray:
        """The bars in the window, oldest first; a view, valid until the next append."""
        return self._buffer[self._start : self._end]

    @property
    def last(self) -> np.void | None:
        return self._buffer[self._end - 1] if self._end > self._start else None

    def append(self, bar: np.void | np.ndarray) -> None:
        """Add one bar after the last; the oldest rolls out beyond `window`."""
        if self._end == len(self._buffer):
            self._compact()
        self._buffer[self._end] = bar
        self._end += 1
        if self._end - self._start > self.window:
            self._start += 1

    def extend(self, bars: np.ndarray) -> None:
        """Append many bars at once (only the last `window` can stay)."""
        bars = bars[-self.window :]
        n = len(bars)
        if self._end + n > len(self._buffer):
            self._compact(keep=self.window - n)
        self._buffer[self._end : self._end + n] = bars
        self._end += n
        self._start = max(self._start, self._end - self.window)

    def reset(self, bars: np.ndarray) -> None:
        """Replace the whole window with `bars` (oldest first; only the last `window` stay)."""
        self._start = self._end = 0
        self.extend(bars)

    def upsert(self, bar: np.void) -> None:
        """Replace the last bar if it has the same open time (a forming bar), else append."""
        if self._end > self._start and self._buffer[self._end - 1]["time"] == bar["time"]:
            self._buffer[self._end - 1] = bar
        else:
            self.append(bar)

    def _compact(self, keep: int | None = None) -> None:
        keep = max(0, min(self.window - 1 if keep is None else keep, len(self)))
        self._buffer[:keep] = self._buffer[self._end - keep : self._end]
        self._start, self._end = 0, keep
