"""Resampling bars into a coarser granularity: one implementation for the router and research.

A coarse bar is stamped with its open time and holds only what was known at its close: the first
open, the highest high, the lowest low and the last close of the finer bars inside it.
"""

from __future__ import annotations

import numpy as np

from osm.core.dtypes import BAR_DTYPE
from osm.core.errors import DataError
from osm.core.granularity import NS, OANDA_ALIGNMENT, Alignment, bar_opens, next_open, step_ns


def resample(
    bars: np.ndarray,
    granularity: str,
    *,
    smooth: bool = False,
    alignment: Alignment = OANDA_ALIGNMENT,
) -> np.ndarray:
    """Aggregate bars into a coarser granularity, each stamped with its open time.

    A coarse bar takes the first open, the highest high, the lowest low and the last close of the
    fine bars inside it (bid and ask separately) and the sum of their ticks. Only bars that exist
    are used, so a coarse bar exists only where a fine one does. A coarse bar is complete if all
    its fine bars are and, for the last one, if the data reaches its close (the last fine bar ends
    at or after it, the fine bar length being the smallest gap between bars).

    Parameters
    ----------
    bars
        BAR_DTYPE bars, sorted, of a granularity that nests in `granularity` (M1 into H1).
    granularity
        The OANDA name of the coarse granularity (``"H1"``, ``"D"``...).
    smooth
        Open each bar at the previous bar's close and widen its high and low to include it, as
        OANDA's ``smooth=true`` candles do. OANDA's H1 history (the shared H1 file) is smooth;
        its M1 bars are not, so resampling them to H1 matches the H1 file only with ``smooth=True``.
    alignment
        Where daily, weekly and monthly bars open.
    """
    if bars.dtype != BAR_DTYPE:
        raise TypeError(f"resample takes a BAR_DTYPE array, got dtype {bars.dtype}")
    if len(bars) == 0:
        return bars.copy()
    gaps = np.diff(bars["time"])
    if gaps.size and gaps.min() <= 0:
        raise DataError("resample needs bars sorted by time, one per time; run check_bars first")
    coarse = step_ns(granularity)
    if gaps.size and coarse is not None and gaps.min() > coarse:
        raise DataError(
            f"the bars are {int(gaps.min()) // NS} s apart or more, longer than {granularity}: "
            "resample only aggregates into a coarser granularity"
        )
    opens = bar_opens(bars["time"], granularity, alignment)
    starts = np.flatnonzero(np.append(True, opens[1:] != opens[:-1]))
    ends = np.append(starts[1:], len(bars)) - 1
    out = np.zeros(len(starts), dtype=BAR_DTYPE)
    out["time"] = opens[starts]
    for side in ("bid", "ask"):
        out[f"{side}_open"] = bars[f"{side}_open"][starts]
        out[f"{side}_high"] = np.maximum.reduceat(bars[f"{side}_high"], starts)
        out[f"{side}_low"] = np.minimum.reduceat(bars[f"{side}_low"], starts)
        out[f"{side}_close"] = bars[f"{side}_close"][ends]
    out["ticks"] = np.add.reduceat(bars["ticks"], starts)
    out["complete"] = np.logical_and.reduceat(bars["complete"], starts)
    if len(bars) < 2:
        out["complete"][-1] = False
    else:
        fine_step = int(gaps.min())
        data_end = int(bars["time"][-1]) + fine_step
        out["complete"][-1] &= data_end >= next_open(int(out["time"][-1]), granularity, alignment)
    if smooth:
        _smooth(out)
    return out


def _smooth(bars: np.ndarray) -> None:
    for side in ("bid", "ask"):
        previous_close = bars[f"{side}_close"][:-1]
        opens = bars[f"{side}_open"]
        opens[1:] = previous_close
        bars[f"{side}_high"] = np.maximum(bars[f"{side}_high"], opens)
        bars[f"{side}_low"] = np.minimum(bars[f"{side}_low"], opens)
