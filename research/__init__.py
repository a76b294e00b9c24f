"""Research: load bars, backtest, sweep, walk-forward, check for look-ahead, bridge to vectorbt."""

from osm.research.backtest import BacktestResult, backtest
from osm.research.data import load_bars, load_ticks, resample, ticks_to_bars
from osm.research.lookahead import check_lookahead
from osm.research.sweep import sweep
from osm.research.synthetic import random_walk_bars
from osm.research.vectorbt_bridge import to_vectorbt
from osm.research.walkforward import ParameterSchedule, walk_forward

__all__ = [
    "BacktestResult", "ParameterSchedule", "backtest", "check_lookahead", "load_bars",
    "load_ticks", "random_walk_bars", "resample", "sweep", "ticks_to_bars", "to_vectorbt",
    "walk_forward",
]  # fmt: skip
