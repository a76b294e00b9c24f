"""SmaCross: the moving-average crossover."""

from __future__ import annotations

import numpy as np

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy
from osm.strategies.indicators import compare, rolling_sum


class SmaCross(Strategy):
    """Follow the trend given by two simple moving averages of the mid close.

    The idea: when the recent average (fast) sits above the longer one (slow), prices have been
    rising, and trends in FX tend to persist for a while. The target is +1 (long) while the fast SMA
    is above the slow one, -1 (short) while it is below, 0 when they are equal, and NaN (flat) until
    the slow SMA has `slow` bars. The averages are compared exactly, as integer sums of the mid in
    half-points (``fast_sum * slow`` against ``slow_sum * fast``), so equal means are a tie. The
    last target depends on the last `slow` bars only.
    """

    fast = Param(10, low=2, high=100, step=1, doc="bars in the fast moving average")
    slow = Param(40, low=5, high=400, step=5, doc="bars in the slow moving average")

    def check(self) -> None:
        if self.fast >= self.slow:
            raise ValueError(
                f"fast ({self.fast}) must be shorter than slow ({self.slow}); swap them or widen slow"
            )

    @property
    def warmup(self) -> int:
        """Bars of history the last target depends on; a window this long reproduces it."""
        return self.slow

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        fast = ind(rolling_sum, bars.int_close, self.fast)
        slow = ind(rolling_sum, bars.int_close, self.slow)
        return compare(fast, slow, self.slow, self.fast)
