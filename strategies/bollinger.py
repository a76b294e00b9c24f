"""Bollinger: mean reversion off the Bollinger bands."""

from __future__ import annotations

import numpy as np

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy
from osm.strategies.indicators import latch, rolling_std, sma


class Bollinger(Strategy):
    """Fade closes outside the Bollinger bands and exit at the middle band.

    The idea: in a ranging market a close more than `k` standard deviations away from its moving
    average is an overreaction that tends to revert. The bands are the `window`-bar SMA of the mid
    close plus and minus `k` times its (population) standard deviation. Go long when the close falls
    below the lower band, short when it rises above the upper band; leave when the close gets back
    to the middle band, or after `max_hold` bars without a fresh signal (a time stop that also keeps
    the memory finite: the last target depends on the last ``window + max_hold - 1`` bars). NaN
    (flat) until the bands have `window` bars.
    """

    window = Param(20, low=5, high=200, step=5, doc="bars in the moving average and deviation")
    k = Param(2.0, low=0.5, high=4.0, step=0.25, doc="band width in standard deviations")
    max_hold = Param(48, low=1, high=500, step=12, doc="most bars held without a new signal")

    @property
    def warmup(self) -> int:
        """Bars of history the last target depends on; a window this long reproduces it."""
        return self.window + self.max_hold - 1

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        close = bars.close
        middle = ind(sma, close, self.window)
        width = self.k * ind(rolling_std, close, self.window, 0)
        # NaN comparisons are False: no signal before the bands exist.
        out = latch(
            close < middle - width, close > middle + width, close >= middle, close <= middle,
            self.max_hold,
        )  # fmt: skip
        out[: self.window - 1] = np.nan
        return out
