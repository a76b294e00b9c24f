"""What every side of osm shares: instruments, granularities, dtypes, bar series, config, wire."""

from osm.core.barseries import BarSeries
from osm.core.dtypes import BAR_DTYPE, TICK_DTYPE
from osm.core.errors import ConfigError, DataError, OsmError, UnknownNameError, WireError
from osm.core.granularity import GRANULARITIES, bar_open, bar_opens
from osm.core.instruments import INSTRUMENTS, Instrument, instrument
from osm.core.rundir import RunDir

__all__ = [
    "BAR_DTYPE", "GRANULARITIES", "INSTRUMENTS", "TICK_DTYPE", "BarSeries", "ConfigError",
    "DataError", "Instrument", "OsmError", "RunDir", "UnknownNameError", "WireError", "bar_open",
    "bar_opens", "instrument",
]  # fmt: skip
