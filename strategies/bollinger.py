"""Bollinger: mean reversion off the Bollinger bands."""

from __future__ import annotations

import numpy as np

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy
from osm.strategies.indicators import band_zone, latch, ratio, rolling_sum, rolling_var_scaled


class Bollinger(Strategy):
    """Fade closes outside the Bollinger bands and exit at the middle band.

    The idea: in a ranging market a close more than `k` standard deviations away from its moving
    average is an overreaction that tends to revert. The bands are the `window`-bar SMA of the mid
    close plus and minus `k` times its (population) standard deviation. Go long when the close falls
    below the lower band, short when it rises above the upper band; leave when the close gets back
    to the middle band, or after `max_hold` bars without a fresh signal (a time stop that also keeps
    the memory finite: the last target depends on the last ``window + max_hold - 1`` bars). NaN
    (flat) until the bands have `window` bars. The close is placed against the bands exactly, in
    integers (:func:`~osm.strategies.indicators.band_zone`), with `k` read as the nearest fraction
    with a denominator of at most a million (2.0 is 2/1, 1.75 is 7/4).
    """

    window = Param(20, low=5, high=200, step=5, doc="bars in the moving average and deviation")
    k = Param(2.0, low=0.5, high=4.0, step=0.25, doc="band width in standard deviations")
    max_hold = Param(48, low=1, high=500, step=12, doc="most bars held without a new signal")

    @property
    def warmup(self) -> int:
        """Bars of history the last target depends on; a window this long reproduces it."""
        return self.window + self.max_hold - 1

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        close = bars.int_close
        sums = ind(rolling_sum, close, self.window)
        var_scaled = ind(rolling_var_scaled, close, self.window)
        zone = band_zone(close, sums, var_scaled, self.window, *ratio(self.k))
        # NaN comparisons are False: no signal before the bands exist.
        out = latch(zone < -1.5, zone > 1.5, zone >= 0.0, zone <= 0.0, self.max_hold)
        out[: self.window - 1] = np.nan
        return out
