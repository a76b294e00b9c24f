"""Donchian: the channel breakout."""

from __future__ import annotations

import numpy as np

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy
from osm.strategies.indicators import compare, latch, prior_max, prior_min


class Donchian(Strategy):
    """Trade breakouts of the Donchian channel, the Turtle traders' trend entry.

    The idea: a close beyond the range of the last `window` bars starts a move that tends to carry
    on. Go long when the mid close rises above the highest mid high of the previous `window` bars,
    short when it falls below their lowest mid low. Leave a long when the close falls below the
    lowest low of the previous `exit_window` bars (and a short symmetrically), or after `max_hold`
    bars without a fresh breakout in the same direction. The time limit keeps the memory finite:
    the last target depends on the last ``window + max_hold`` bars only, so a live brain with that
    window gets the backtest's value. NaN (flat) until the channel has `window` bars.
    """

    window = Param(20, low=5, high=200, step=5, doc="bars in the entry channel")
    exit_window = Param(10, low=2, high=100, step=2, doc="bars in the exit channel")
    max_hold = Param(120, low=10, high=1000, step=10, doc="most bars held without a new breakout")

    def check(self) -> None:
        if self.exit_window > self.window:
            raise ValueError(
                f"exit_window ({self.exit_window}) must not exceed window ({self.window}): the exit "
                "channel is the tighter one"
            )

    @property
    def warmup(self) -> int:
        """Bars of history the last target depends on; a window this long reproduces it."""
        return self.window + self.max_hold

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        close = bars.int_close
        upper = ind(prior_max, bars.int_high, self.window)
        lower = ind(prior_min, bars.int_low, self.window)
        exit_low = ind(prior_min, bars.int_low, self.exit_window)
        exit_high = ind(prior_max, bars.int_high, self.exit_window)
        # compare() is NaN before a channel exists, and NaN > 0 is False: no signal yet.
        out = latch(
            compare(close, upper) > 0, compare(close, lower) < 0,
            compare(close, exit_low) < 0, compare(close, exit_high) > 0, self.max_hold,
        )  # fmt: skip
        out[: self.window] = np.nan
        return out
