"""Load bars and ticks from files, check them, resample bars and aggregate ticks into bars.

Files are CSV (optionally gzipped) or Parquet in the shared format: a ``time_utc`` column of ISO-8601
UTC stamps (the bar's open time or the tick's time), then ``bid_open, bid_high, bid_low, bid_close,
ask_open, ask_high, ask_low, ask_close`` for bars, ``bid, ask`` for ticks (``*_size`` columns are
ignored). Parquet files may instead use the field names of the dtypes (``time`` as int64 ns or a
timestamp column). Everything comes back as a :data:`~osm.core.dtypes.BAR_DTYPE` or
:data:`~osm.core.dtypes.TICK_DTYPE` numpy array with int64 ns UTC times; pandas is used only to read.

Bad input is refused with a :class:`~osm.core.errors.DataError` naming the first bad row and the fix.
``repair=True`` instead sorts, drops the bad rows and warns with a :class:`DataRepairWarning` saying
how many went.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, TICK_DTYPE
from osm.core.errors import DataError
from osm.core.granularity import OANDA_ALIGNMENT, Alignment, bar_opens, next_open
from osm.core.resample import resample

__all__ = [
    "DataRepairWarning", "bars_frame", "check_bars", "check_ticks", "load_bars", "load_ticks",
    "resample", "ticks_to_bars",
]  # fmt: skip
TICK_FIELDS = ("bid", "ask")


class DataRepairWarning(UserWarning):
    """Rows were sorted or dropped by ``repair=True``."""


def load_bars(path: str | Path, *, repair: bool = False) -> np.ndarray:
    """Read bars from a CSV(.gz) or Parquet file into a BAR_DTYPE array, oldest first.

    Parameters
    ----------
    path
        The file. Its bars are marked complete; ``ticks`` is 0 where the file has no tick count.
    repair
        Sort by time, keep the last of duplicated times and drop rows with a missing, non-positive
        or crossed (ask below bid) price or inconsistent OHLC, warning with the counts, instead of
        raising.

    Raises
    ------
    DataError
        If the file lacks a column or (without `repair`) has an unusable row.
    """
    frame = _read(Path(path))
    bars = np.zeros(len(frame), dtype=BAR_DTYPE)
    bars["time"] = _times_ns(frame, path)
    for field in PRICE_FIELDS:
        bars[field] = _column(frame, field, path)
    bars["ticks"] = frame["ticks"].to_numpy(np.int64) if "ticks" in frame else 0
    bars["complete"] = True
    return check_bars(bars, repair=repair, source=str(path))


def load_ticks(path: str | Path, *, repair: bool = False) -> np.ndarray:
    """Read ticks from a CSV(.gz) or Parquet file into a TICK_DTYPE array, oldest first.

    Ticks may share a time stamp (quotes within one millisecond); they may not go back in time.

    Parameters
    ----------
    path
        The file, with columns ``time_utc, bid, ask``.
    repair
        Sort by time (stable) and drop quotes that are missing, non-positive or crossed, warning
        with the counts, instead of raising.
    """
    frame = _read(Path(path))
    ticks = np.zeros(len(frame), dtype=TICK_DTYPE)
    ticks["time"] = _times_ns(frame, path)
    for field in TICK_FIELDS:
        ticks[field] = _column(frame, field, path)
    return check_ticks(ticks, repair=repair, source=str(path))


def check_bars(bars: np.ndarray, *, repair: bool = False, source: str = "bars") -> np.ndarray:
    """Return `bars` if usable, else raise a DataError naming the first bad row (or repair).

    Usable: times strictly increasing; every price finite and positive; ask at or above bid for
    each of open, high, low, close; ``low <= open, close <= high`` on each side.
    """
    if bars.dtype != BAR_DTYPE:
        raise TypeError(f"check_bars takes a BAR_DTYPE array, got dtype {bars.dtype}")
    fix = "fix the source, or pass repair=True to drop such rows"
    bad = _bad_bar_rows(bars)
    if not repair:
        _raise_first(bars, bad, source, fix)
        back = np.flatnonzero(np.diff(bars["time"]) <= 0) + 1
        if back.size:
            row = int(back[0])
            same = bars["time"][row] == bars["time"][row - 1]
            what = "repeats the time of" if same else "is earlier than"
            raise DataError(
                f"{source}: row {row} ({_stamp(bars['time'][row])}) {what} row {row - 1}; bars must "
                "be sorted with one bar per time: sort and de-duplicate the source, or pass "
                "repair=True to sort and keep the last bar of each time"
            )
        return bars
    kept = bars[~bad]
    order = np.argsort(kept["time"], kind="stable")
    kept = kept[order]
    # Keep the last row of each time: a later line usually corrects an earlier one.
    last = np.append(kept["time"][1:] != kept["time"][:-1], True) if len(kept) else np.ones(0, bool)
    kept = kept[last]
    _warn_repair(source, len(bars), int(bad.sum()), len(bars) - int(bad.sum()) - len(kept), order)
    return kept


def check_ticks(ticks: np.ndarray, *, repair: bool = False, source: str = "ticks") -> np.ndarray:
    """Return `ticks` if usable, else raise a DataError naming the first bad row (or repair).

    Usable: times never decreasing; bid and ask finite and positive; ask at or above bid.
    """
    if ticks.dtype != TICK_DTYPE:
        raise TypeError(f"check_ticks takes a TICK_DTYPE array, got dtype {ticks.dtype}")
    bid, ask = ticks["bid"], ticks["ask"]
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid))
    if not repair:
        _raise_first(ticks, bad, source, "fix the source, or pass repair=True to drop such quotes")
        back = np.flatnonzero(np.diff(ticks["time"]) < 0) + 1
        if back.size:
            row = int(back[0])
            raise DataError(
                f"{source}: row {row} ({_stamp(ticks['time'][row])}) is earlier than row {row - 1} "
                f"({_stamp(ticks['time'][row - 1])}); sort the ticks by time, or pass repair=True "
                "to sort them (stably, so quotes within one time keep their order)"
            )
        return ticks
    kept = ticks[~bad]
    order = np.argsort(kept["time"], kind="stable")
    _warn_repair(source, len(ticks), int(bad.sum()), 0, order)
    return kept[order]


def ticks_to_bars(
    ticks: np.ndarray,
    granularity: str,
    *,
    until: int | None = None,
    alignment: Alignment = OANDA_ALIGNMENT,
) -> np.ndarray:
    """Aggregate ticks into bars of `granularity`, each stamped with its open time.

    A bar exists for every period that had a tick: open, high, low and close of the bid and of the
    ask, and the number of ticks. Every bar but the last is complete; the last is complete only if
    `until` (an instant, ns UTC, up to which the ticks are known to be whole) reaches its close,
    since without it a later tick may still belong to that bar.
    """
    if ticks.dtype != TICK_DTYPE:
        raise TypeError(f"ticks_to_bars takes a TICK_DTYPE array, got dtype {ticks.dtype}")
    if len(ticks) == 0:
        return np.zeros(0, dtype=BAR_DTYPE)
    opens = bar_opens(ticks["time"], granularity, alignment)
    starts = np.flatnonzero(np.append(True, opens[1:] != opens[:-1]))
    ends = np.append(starts[1:], len(ticks)) - 1
    out = np.zeros(len(starts), dtype=BAR_DTYPE)
    out["time"] = opens[starts]
    for side in TICK_FIELDS:
        price = ticks[side]
        out[f"{side}_open"] = price[starts]
        out[f"{side}_high"] = np.maximum.reduceat(price, starts)
        out[f"{side}_low"] = np.minimum.reduceat(price, starts)
        out[f"{side}_close"] = price[ends]
    out["ticks"] = ends - starts + 1
    out["complete"] = True
    last_close = next_open(int(out["time"][-1]), granularity, alignment)
    out["complete"][-1] = until is not None and until >= last_close
    return out


def bars_frame(bars: np.ndarray) -> pd.DataFrame:
    """Return `bars` as a DataFrame indexed by UTC open time, with mid OHLC columns added."""
    frame = pd.DataFrame({name: bars[name] for name in BAR_DTYPE.names if name != "time"})
    for field in ("open", "high", "low", "close"):
        frame[field] = (bars[f"bid_{field}"] + bars[f"ask_{field}"]) * 0.5
    frame.index = pd.DatetimeIndex(pd.to_datetime(bars["time"], unit="ns", utc=True), name="time")
    return frame


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"no such data file: {path}")
    suffixes = path.suffixes
    if suffixes[-1:] == [".parquet"] or suffixes[-1:] == [".pq"]:
        return pd.read_parquet(path)
    if ".csv" in suffixes:
        return pd.read_csv(path)
    raise DataError(f"{path}: unknown file type; use .csv, .csv.gz or .parquet")


def _times_ns(frame: pd.DataFrame, path: str | Path) -> np.ndarray:
    column = "time_utc" if "time_utc" in frame else "time" if "time" in frame else None
    if column is None:
        raise DataError(f"{path}: no time column; name it 'time_utc' (ISO-8601 UTC) or 'time'")
    values = frame[column]
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    try:
        stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{path}: column {column!r} holds a value that is not a time: {exc}"
        ) from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise DataError(f"{path}: row {row} has no time; fill it in or drop the row")
    # pandas 3 infers the unit from the text (often us); the dtypes want ns.
    return stamps.dt.as_unit("ns").astype("int64").to_numpy()


def _column(frame: pd.DataFrame, name: str, path: str | Path) -> np.ndarray:
    if name not in frame:
        found = ", ".join(map(str, frame.columns))
        raise DataError(f"{path}: no column {name!r} (columns found: {found}); rename or add it")
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)


def _bad_bar_rows(bars: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = np.ones(len(bars), dtype=bool)
        for field in PRICE_FIELDS:
            ok &= np.isfinite(bars[field]) & (bars[field] > 0)
        for field in ("open", "high", "low", "close"):
            ok &= bars[f"ask_{field}"] >= bars[f"bid_{field}"]
        for side in ("bid", "ask"):
            high, low = bars[f"{side}_high"], bars[f"{side}_low"]
            for field in ("open", "close"):
                ok &= (low <= bars[f"{side}_{field}"]) & (bars[f"{side}_{field}"] <= high)
    return ~ok


def _raise_first(records: np.ndarray, bad: np.ndarray, source: str, fix: str) -> None:
    rows = np.flatnonzero(bad)
    if not rows.size:
        return
    row = int(rows[0])
    values = ", ".join(
        f"{name}={records[name][row].item()}" for name in records.dtype.names if name != "time"
    )
    raise DataError(
        f"{source}: row {row} ({_stamp(records['time'][row])}) has a missing, non-positive or "
        f"crossed (ask < bid) price or a high/low that does not contain its open and close "
        f"({values}); {len(rows)} such row(s) in all; {fix}"
    )


def _warn_repair(source: str, total: int, bad: int, duplicates: int, order: np.ndarray) -> None:
    moved = bool(len(order)) and bool(np.any(order != np.arange(len(order))))
    if bad or duplicates or moved:
        warnings.warn(
            f"{source}: repaired {total} rows: dropped {bad} with bad prices and {duplicates} "
            f"duplicated times{', and sorted by time' if moved else ''}",
            DataRepairWarning,
            stacklevel=3,
        )


def _stamp(t_ns: int) -> str:
    return pd.Timestamp(int(t_ns), unit="ns", tz="UTC").isoformat()
