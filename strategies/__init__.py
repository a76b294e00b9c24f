"""The strategy contract and the built-in strategies."""

from osm.strategies.base import Bars, IndicatorCache, Param, Strategy, load_strategy

__all__ = ["Bars", "IndicatorCache", "Param", "Strategy", "load_strategy"]
