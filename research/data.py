"""Load bars and ticks, check them, resample bars and aggregate ticks into bars.

Loading is :mod:`osm.core.files`, the one reader research and the replay feed share: CSV(.gz),
Parquet or a DataFrame, in the shared format with no option or in other shapes (plain mid OHLC,
one side, other column names, local or non-ISO stamps, epochs) with the options that say how.
Aggregation is :mod:`osm.core.resample`, the kernel the router uses too, so research bars and live
bars are built the same way. Everything comes back as a :data:`~osm.core.dtypes.BAR_DTYPE` or
:data:`~osm.core.dtypes.TICK_DTYPE` numpy array with int64 ns UTC times.

Bad input is refused with a :class:`~osm.core.errors.DataError` naming the first bad row and the fix.
``repair=True`` instead sorts, drops the bad rows and warns with a :class:`DataRepairWarning` saying
how many went.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from osm.core.dtypes import BAR_DTYPE
from osm.core.files import DataRepairWarning, check_bars, check_ticks, load_bars, load_ticks
from osm.core.resample import resample, ticks_to_bars

__all__ = [
    "DataRepairWarning", "bars_frame", "check_bars", "check_ticks", "load_bars", "load_ticks",
    "resample", "ticks_to_bars",
]  # fmt: skip


def bars_frame(bars: np.ndarray) -> pd.DataFrame:
    """Return `bars` as a DataFrame indexed by UTC open time, with mid OHLC columns added.

    :func:`load_bars` reads it back (the bid and ask columns; the mid ones are ignored).
    """
    frame = pd.DataFrame({name: bars[name] for name in BAR_DTYPE.names if name != "time"})
    for field in ("open", "high", "low", "close"):
        frame[field] = (bars[f"bid_{field}"] + bars[f"ask_{field}"]) * 0.5
    frame.index = pd.DatetimeIndex(pd.to_datetime(bars["time"], unit="ns", utc=True), name="time")
    return frame
