"""Strategies that exist for the live tests only (importable by a brain process from the repo root)."""

from __future__ import annotations

import numpy as np

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy

M1_NS = 60 * 1_000_000_000


class Alternate(Strategy):
    """Long for `every` minutes, then short for `every` minutes, by each bar's open time (so any
    window agrees on a bar's target); NaN for the first `warmup` bars of the window."""

    every = Param(3, low=1, high=10_000)
    warmup = Param(5, low=0, high=10_000)

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        out = np.where((bars.time // M1_NS // self.every) % 2 == 0, 1.0, -1.0)
        out[: self.warmup] = np.nan
        return out
