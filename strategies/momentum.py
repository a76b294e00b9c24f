"""Momentum: time-series momentum."""

from __future__ import annotations

import numpy as np

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy
from osm.strategies.indicators import compare, ratio, shift


class Momentum(Strategy):
    """Bet that the return of the last `lookback` bars continues (time-series momentum).

    The idea (Moskowitz, Ooi and Pedersen, 2012): an asset's own past return predicts its next one.
    The target is +1 when the mid close is more than `threshold` (a fraction, 0.001 = 0.1 %) above
    the close `lookback` bars earlier, -1 when it is more than `threshold` below, 0 in between, and
    NaN (flat) for the first `lookback` bars. The last target depends on the last ``lookback + 1``
    bars only. Decided exactly, in integers: with ``threshold = num / den`` (the nearest fraction
    with a denominator of at most a million), +1 when ``close * den > earlier * (den + num)``.
    """

    lookback = Param(120, low=5, high=1000, step=5, doc="bars over which the return is measured")
    threshold = Param(0.0, low=0.0, high=0.02, step=0.001, doc="smallest return that is a signal")

    @property
    def warmup(self) -> int:
        """Bars of history the last target depends on; a window this long reproduces it."""
        return self.lookback + 1

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        close = bars.int_close
        earlier = ind(shift, close, self.lookback)
        num, den = ratio(self.threshold)
        up = compare(close, earlier, den, den + num)  # sign of close / earlier - (1 + threshold)
        down = compare(close, earlier, den, den - num)  # sign of close / earlier - (1 - threshold)
        out = np.where(up > 0, 1.0, np.where(down < 0, -1.0, 0.0))
        out[np.isnan(up)] = np.nan
        return out
