"""Read ticks and bars in the shapes users have them: one reader for research and the replay feed.

A source is a CSV (``.csv``, ``.txt`` or ``.tsv``, optionally compressed: ``.csv.gz``), a Parquet
file (``.parquet``, ``.pq``) or a pandas DataFrame (a time index counts as a column). Everything
comes back as a :data:`~osm.core.dtypes.BAR_DTYPE` or :data:`~osm.core.dtypes.TICK_DTYPE` array with
int64 ns UTC times; pandas is used only to read.

**Columns** are found by name, ignoring case, spaces and MetaTrader's ``<>``: the time in ``time``,
``time_utc``, ``datetime``, ``timestamp``, ``gmt_time`` or ``date`` (a ``date`` and a ``time``
column are joined); bars as ``bid_open .. bid_close`` and ``ask_open .. ask_close``, ticks as
``bid`` and ``ask``; ``ticks`` is a bar's tick count. Other names are mapped with ``columns=``
(``{"Gmt time": "time"}``, like ``DataFrame.rename``), or, for a file without a header row, listed
in order (``columns=["time", "open", "high", "low", "close", "volume"]``). Unknown columns
(volumes, ``*_size``) are ignored.

**One price per field.** A file with only ``open, high, low, close`` (ticks: ``price`` or ``mid``)
is read as mid prices, or as bid or ask prices with ``side="bid"`` / ``"ask"`` (MetaTrader and
HistData bars are bid). So is a file with only the bid or only the ask side. Either needs a
``spread`` (price units) or ``spread_pips`` with the ``instrument`` for its pip size, applied to
every price: bid = mid - spread / 2 and ask = mid + spread / 2, or ask = bid + spread, or
bid = ask - spread.

**Times.** Text stamps are ISO-8601 unless ``time_format`` gives a ``strptime`` format
(``"%d.%m.%Y %H:%M:%S"``). A stamp with an offset or ``Z`` is exact; one without a zone needs
``tz`` (``"UTC"``, ``"America/New_York"``, a fixed offset ``"-05:00"``), because reading it as UTC
when it is not shifts every bar by hours with no sign of it. Numbers are epoch counts, UTC by
definition (``tz`` does not apply), in the unit ``time_unit`` or, by default, the one unit
(s, ms, us or ns) that puts every stamp between 1973 and 2262: the four ranges do not overlap.

Every refusal is a :class:`~osm.core.errors.DataError` (or, for a bad option, a
:class:`~osm.core.errors.ConfigError`) that names the option that fixes it, with an example call.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, TICK_DTYPE, valid_quotes
from osm.core.errors import ConfigError, DataError, did_you_mean
from osm.core.instruments import instrument

__all__ = [
    "DataRepairWarning", "ReadOptions", "check_bars", "check_ticks", "load_bars", "load_ticks",
    "load_ticks_or_bars",
]  # fmt: skip

Side = Literal["mid", "bid", "ask"]
TimeUnit = Literal["s", "ms", "us", "ns"]
Source = str | Path | pd.DataFrame

_OHLC = ("open", "high", "low", "close")
_FIELDS = ("time", "date", "ticks", *PRICE_FIELDS, *_OHLC, "bid", "ask", "price")
_ALIASES = {
    **{name: "time" for name in ("time_utc", "datetime", "timestamp", "date_time", "gmt_time")},
    "mid": "price",
}
_PARQUET = (".parquet", ".pq")
_TEXT = (".csv", ".txt", ".tsv")
# Epoch counts of 1973-03-03 .. 2262-04-11 in each unit: the ranges do not overlap.
_EPOCH_RANGES = {"s": (10**8, 10**10), "ms": (10**11, 10**13), "us": (10**14, 10**16)}
_EPOCH_RANGES["ns"] = (10**17, np.iinfo(np.int64).max)
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d\d):?(\d\d)$")
_ZONED = r"(?:[zZ]|[+-]\d\d(?::?\d\d)?)\s*$"


class DataRepairWarning(UserWarning):
    """Rows were sorted or dropped by ``repair=True``."""


class ReadOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How to read a source whose shape is not the shared one; see the module docstring."""

    columns: dict[str, str] | list[str] | None = None
    tz: str | None = None
    time_format: str | None = None
    time_unit: TimeUnit | None = None
    side: Side = "mid"
    spread: float | None = None
    spread_pips: float | None = None
    instrument: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.columns, dict):
            for name, field in self.columns.items():
                if field not in _FIELDS:
                    raise ConfigError(
                        f"columns maps {name!r} to {field!r}, which osm does not read."
                        f"{did_you_mean(field, _FIELDS)} Fields: {', '.join(_FIELDS)}"
                    )
        if self.tz is not None:
            zone_of(self.tz)
        _check_choice("side", self.side, ("mid", "bid", "ask"))
        if self.time_unit is not None:
            _check_choice("time_unit", self.time_unit, tuple(_NS_PER))
        if self.spread is not None and self.spread_pips is not None:
            raise ConfigError("give the spread once: spread= (in price) or spread_pips=, not both")
        for name in ("spread", "spread_pips"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.spread_pips is not None and self.instrument is None:
            raise ConfigError(
                "spread_pips needs the instrument for its pip size, e.g. "
                f"spread_pips={self.spread_pips!r}, instrument='EUR_USD'"
            )
        if self.instrument is not None:
            instrument(self.instrument)

    def spread_price(self) -> float | None:
        """The spread in price units, or None when none was given."""
        if self.spread_pips is not None:
            return self.spread_pips * instrument(self.instrument or "").pip_size
        return self.spread


def load_bars(
    source: Source,
    *,
    repair: bool = False,
    columns: dict[str, str] | list[str] | None = None,
    tz: str | None = None,
    time_format: str | None = None,
    time_unit: TimeUnit | None = None,
    side: Side = "mid",
    spread: float | None = None,
    spread_pips: float | None = None,
    instrument: str | None = None,
) -> np.ndarray:
    """Read bars into a BAR_DTYPE array, oldest first, each marked complete.

    The shared format (``time_utc`` stamped with ``Z``, bid and ask OHLC) needs no option; the
    module docstring says how each of the others is read.

    Parameters
    ----------
    source
        A CSV(.gz) or Parquet path, or a DataFrame. ``ticks`` is 0 where it has no tick count.
    repair
        Sort by time, keep the last of duplicated times and drop rows with a missing, non-positive
        or crossed (ask below bid) price or inconsistent OHLC, warning with the counts, instead of
        raising.
    columns
        ``{their name: osm's name}``, or for a file without a header row every column's name in
        order.
    tz
        The zone of stamps written without one: ``"UTC"``, ``"America/New_York"``, ``"-05:00"``.
    time_format
        A ``strptime`` format for stamps that are not ISO-8601, e.g. ``"%d.%m.%Y %H:%M:%S"``.
    time_unit
        ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` for epoch numbers (default: inferred).
    side
        What one price per field is: ``"mid"`` (default), ``"bid"`` or ``"ask"``.
    spread, spread_pips, instrument
        The spread that makes bid and ask from one price per field, in price or in pips of
        `instrument`.

    Raises
    ------
    DataError
        If the source cannot be read as bars; the message names the option that fixes it.
    """
    options = ReadOptions(
        columns=columns, tz=tz, time_format=time_format, time_unit=time_unit, side=side,
        spread=spread, spread_pips=spread_pips, instrument=instrument,
    )  # fmt: skip
    table = _Table(source, options, "load_bars")
    return check_bars(table.bars(), repair=repair, source=table.where)


def load_ticks(
    source: Source,
    *,
    repair: bool = False,
    columns: dict[str, str] | list[str] | None = None,
    tz: str | None = None,
    time_format: str | None = None,
    time_unit: TimeUnit | None = None,
    side: Side = "mid",
    spread: float | None = None,
    spread_pips: float | None = None,
    instrument: str | None = None,
) -> np.ndarray:
    """Read ticks (``time, bid, ask``) into a TICK_DTYPE array, oldest first.

    Ticks may share a time stamp (quotes within one millisecond); they may not go back in time.
    The options are :func:`load_bars`'s; `repair` sorts by time (stably) and drops quotes that are
    missing, non-positive or crossed, warning with the counts, instead of raising.
    """
    options = ReadOptions(
        columns=columns, tz=tz, time_format=time_format, time_unit=time_unit, side=side,
        spread=spread, spread_pips=spread_pips, instrument=instrument,
    )  # fmt: skip
    table = _Table(source, options, "load_ticks")
    return check_ticks(table.ticks(), repair=repair, source=table.where)


def load_ticks_or_bars(source: Source, options: ReadOptions | None = None) -> np.ndarray:
    """Read whichever the source holds, bars (BAR_DTYPE) or ticks (TICK_DTYPE), checked."""
    table = _Table(source, options or ReadOptions(), "load_ticks_or_bars")
    if table.holds_bars():
        return check_bars(table.bars(), source=table.where)
    if table.holds_ticks():
        return check_ticks(table.ticks(), source=table.where)
    raise DataError(
        f"{table.where} holds neither ticks (time, bid, ask) nor bars (time, "
        f"{', '.join(PRICE_FIELDS)}); columns found: {table.found()}. Name them with "
        f"columns=: {table.example(columns={'Time': 'time', 'Bid': 'bid', 'Ask': 'ask'})}"
    )


def check_bars(bars: np.ndarray, *, repair: bool = False, source: str = "bars") -> np.ndarray:
    """Return `bars` if usable, else raise a DataError naming the first bad row (or repair).

    Usable: times strictly increasing; every price finite and positive; ask at or above bid for
    each of open, high, low, close; ``low <= open, close <= high`` on each side.
    """
    if bars.dtype != BAR_DTYPE:
        raise TypeError(f"check_bars takes a BAR_DTYPE array, got dtype {bars.dtype}")
    fix = "fix the source, or pass repair=True to drop such rows"
    bad = unusable_bars(bars)
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
    bad = ~valid_quotes(ticks["bid"], ticks["ask"])
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


def zone_of(tz: str) -> dt.tzinfo:
    """The zone named by `tz`: an IANA name (``"America/New_York"``, ``"UTC"``) or ``"+02:00"``."""
    offset = _OFFSET.match(tz.strip())
    if offset:
        sign, hours, minutes = offset.groups()
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
        return dt.timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone tz={tz!r}; give an IANA name ('UTC', 'America/New_York', "
            "'Europe/London') or a fixed offset ('-05:00')"
        ) from None


class _Table:
    """One source read into a frame, its columns resolved to osm's fields."""

    def __init__(self, source: Source, options: ReadOptions, call: str) -> None:
        self.source, self.options, self.call = source, options, call
        if isinstance(source, pd.DataFrame):
            self.where = "the DataFrame"
            self.frame = _from_frame(source, options.columns)
        elif isinstance(source, str | Path):
            self.where = str(source)
            self.frame = _read_path(Path(source), options.columns, self)
        else:
            raise TypeError(
                f"{call} takes a file path or a pandas DataFrame, got {type(source).__name__}"
            )
        self.fields = self._resolve()

    def found(self) -> str:
        return ", ".join(repr(str(c)) for c in self.frame.columns)

    def example(self, **change: Any) -> str:
        """A call of the same function on the same source with `change` added to the options."""
        given = {name: getattr(self.options, name) for name in self.options.__struct_fields__}
        target = "frame" if isinstance(self.source, pd.DataFrame) else repr(self.where)
        options = {**given, **change}.items()
        args = [target, *(f"{k}={v!r}" for k, v in options if v != getattr(_DEFAULTS, k))]
        return f"{self.call}({', '.join(args)})"

    def holds_bars(self) -> bool:
        return any(f in self.fields for f in (*PRICE_FIELDS, *_OHLC))

    def holds_ticks(self) -> bool:
        return any(f in self.fields for f in ("bid", "ask", "price"))

    def bars(self) -> np.ndarray:
        bars = np.zeros(len(self.frame), dtype=BAR_DTYPE)
        bars["time"] = self.times_ns()
        sides = self._sides([f"{{}}_{name}" for name in _OHLC], list(_OHLC), "bars")
        for side, prices in sides.items():
            for name, values in zip(_OHLC, prices, strict=True):
                bars[f"{side}_{name}"] = values
        if "ticks" in self.fields:
            counts = pd.to_numeric(self.frame[self.fields["ticks"]], errors="coerce")
            bars["ticks"] = counts.fillna(0).to_numpy(np.int64)
        bars["complete"] = True
        return bars

    def ticks(self) -> np.ndarray:
        ticks = np.zeros(len(self.frame), dtype=TICK_DTYPE)
        ticks["time"] = self.times_ns()
        for side, (prices,) in self._sides(["{}"], ["price"], "ticks").items():
            ticks[side] = prices
        return ticks

    def _resolve(self) -> dict[str, Any]:
        """osm field -> column label: explicit ``columns=`` first, then the known names."""
        fields: dict[str, Any] = {}
        mapping = self.options.columns if isinstance(self.options.columns, dict) else {}
        for name, field in mapping.items():
            if name not in self.frame.columns:
                hint = did_you_mean(name, [str(c) for c in self.frame.columns])
                raise DataError(
                    f"{self.where}: columns= names {name!r}, which is not a column.{hint} "
                    f"Columns found: {self.found()}"
                )
            fields[field] = name
        for column in self.frame.columns:
            if column in mapping:
                continue
            key = re.sub(r"[\s\-]+", "_", str(column).strip().strip("<>").strip().lower())
            field = _ALIASES.get(key, key)
            if field in _FIELDS and field not in fields:
                fields[field] = column
        return fields

    def _sides(self, labelled: list[str], plain: list[str], kind: str) -> dict[str, list]:
        """{"bid": prices, "ask": prices}, each a list over the fields of `labelled`."""
        have = {side: [f.format(side) in self.fields for f in labelled] for side in ("bid", "ask")}
        spread = self.options.spread_price()
        if all(have["bid"]) and all(have["ask"]):
            if spread is not None:
                raise DataError(
                    f"{self.where} has bid and ask prices; spread= only makes them from one price "
                    f"per field: {self.example(spread=None, spread_pips=None, instrument=None)}"
                )
            return {s: [self._numbers(f.format(s)) for f in labelled] for s in ("bid", "ask")}
        for side in ("bid", "ask"):
            if any(have[side]) and not all(have[side]):
                missing = [
                    f.format(side) for f, ok in zip(labelled, have[side], strict=True) if not ok
                ]
                raise self._missing(missing, kind)
        if all(have["bid"]) or all(have["ask"]):
            side = "bid" if all(have["bid"]) else "ask"
            names = [f.format(side) for f in labelled]
        elif all(f in self.fields for f in plain):
            side, names = self.options.side, plain
        else:
            raise self._missing([f for f in plain if f not in self.fields], kind)
        if spread is None:
            one = f"{side} prices" if side != "mid" else "mid prices (or pass side='bid' or 'ask')"
            raise DataError(
                f"{self.where} has one price per field ({', '.join(names)}), read as {one}, and no "
                f"spread to make bid and ask from it: give one in price or in pips, e.g. "
                f"{self.example(spread=0.0001)} or "
                f"{self.example(spread_pips=1.0, instrument='EUR_USD')}"
            )
        prices = [self._numbers(name) for name in names]
        # bid = price - below, ask = price + above
        below, above = {"mid": (spread / 2,) * 2, "bid": (0.0, spread), "ask": (spread, 0.0)}[side]
        return {"bid": [p - below for p in prices], "ask": [p + above for p in prices]}

    def _missing(self, missing: list[str], kind: str) -> DataError:
        if self._headless():
            return DataError(
                f"{self.where} seems to have no header row (its first columns are named "
                f"{self.found()[:60]}...); name every column in order with columns=, e.g. "
                f"{self.example(columns=['time', 'open', 'high', 'low', 'close', 'volume'])}"
            )
        shapes = (
            "bid_open..bid_close and ask_open..ask_close, or one side, or open, high, low, close"
            if kind == "bars"
            else "bid and ask, or one of them, or price (mid)"
        )
        first = missing[0]
        return DataError(
            f"{self.where}: no column {first!r} (columns found: {self.found()}); {kind} need "
            f"{shapes}: rename or add it, or map yours with columns=, e.g. "
            f"{self.example(columns={first.title().replace('_', ' '): first})}"
        )

    def _headless(self) -> bool:
        first = str(self.frame.columns[0]) if len(self.frame.columns) else ""
        return bool(re.match(r"^\s*[\d.+-]", first)) and self.options.columns is None

    def _numbers(self, field: str) -> np.ndarray:
        return pd.to_numeric(self.frame[self.fields[field]], errors="coerce").to_numpy(np.float64)

    def times_ns(self) -> np.ndarray:
        fields = self.fields
        if "time" in fields and "date" in fields:
            date, clock = (self.frame[fields[f]].astype(str) for f in ("date", "time"))
            values, name = date + " " + clock, f"{fields['date']} + {fields['time']}"
        elif "time" in fields or "date" in fields:
            name = fields.get("time", fields.get("date"))
            values = self.frame[name]
        elif self._headless():
            raise self._missing(["time"], "rows")
        else:
            raise DataError(
                f"{self.where}: no time column (columns found: {self.found()}); name it 'time' or "
                f"'time_utc', or map yours with columns=, e.g. "
                f"{self.example(columns={str(self.frame.columns[0]): 'time'})}"
            )
        return _Stamps(self, values, str(name)).ns()


class _Stamps:
    """The time column of a table as int64 ns UTC, by the rules of the module docstring."""

    def __init__(self, table: _Table, values: pd.Series, name: str) -> None:
        self.table, self.values, self.name = table, values, name
        self.options = table.options

    def ns(self) -> np.ndarray:
        values = self.values
        is_number = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if is_number and self.options.time_format is None:
            return self._epochs()
        if pd.api.types.is_datetime64_any_dtype(values):
            stamps = values
        else:
            stamps = self._parse(values.astype(str) if is_number else values)
        missing = stamps.isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{self.table.where}: row {row} has no time; fill it in or drop the row"
            )
        if stamps.dt.tz is None:
            stamps = self._localize(stamps)
        # pandas 3 infers the unit from the text (often us); the dtypes want ns.
        return stamps.dt.tz_convert("UTC").dt.as_unit("ns").astype("int64").to_numpy()

    def _parse(self, values: pd.Series) -> pd.Series:
        fmt = self.options.time_format or "ISO8601"
        text = values.map(str) if values.dtype == object else values
        try:
            return pd.to_datetime(values, format=fmt)
        except (ValueError, TypeError):
            pass
        try:  # offsets that differ from row to row (daylight saving) are fine...
            stamps = pd.to_datetime(values, format=fmt, utc=True)
        except (ValueError, TypeError) as exc:
            raise self._not_times(text, exc) from None
        if self.options.time_format is None:  # ...a stamp without one among them is not
            unzoned = ~text.str.contains(_ZONED, regex=True, na=True)
            if unzoned.any():
                row = int(np.flatnonzero(unzoned.to_numpy())[0])
                raise DataError(
                    f"{self.table.where}: column {self.name!r} mixes stamps with a zone and "
                    f"without (row {row}: {text.iloc[row]!r}); give every stamp an offset, or "
                    "none and say the zone with tz="
                )
        return stamps

    def _not_times(self, text: pd.Series, exc: Exception) -> DataError:
        first = next((str(v) for v in text if isinstance(v, str) and v.strip()), "")
        where, given = self.table.where, self.options.time_format
        if given is not None:
            return DataError(
                f"{where}: column {self.name!r} does not match time_format={given!r} "
                f"(first value {first!r}; {exc})"
            )
        guesses = _formats_of(text, first)
        example = self.table.example(time_format=guesses[0] if guesses else "%d.%m.%Y %H:%M:%S")
        note = f" (or time_format={guesses[1]!r} if the month comes first)" if guesses[1:] else ""
        return DataError(
            f"{where}: column {self.name!r} holds stamps that are not ISO-8601 (first value "
            f"{first!r}); give their strptime format with time_format=, e.g. {example}{note}"
        )

    def _localize(self, stamps: pd.Series) -> pd.Series:
        tz = self.options.tz
        if tz is None:
            first = stamps.iloc[0] if len(stamps) else ""
            raise DataError(
                f"{self.table.where}: column {self.name!r} has stamps without a time zone (first "
                f"{str(first)!r}); say which zone they are in with tz=, e.g. "
                f"{self.table.example(tz='UTC')}, or tz='America/New_York' for New York stamps"
            )
        zone = zone_of(tz)
        try:
            return stamps.dt.tz_localize(zone, ambiguous="raise", nonexistent="raise")
        except ValueError:
            pass
        try:  # the hour repeated when daylight saving ends, told apart by the order of rows
            return stamps.dt.tz_localize(zone, ambiguous="infer", nonexistent="raise")
        except ValueError as exc:
            raise DataError(
                f"{self.table.where}: column {self.name!r} cannot be placed in tz={tz!r} ({exc}): "
                "a time skipped or repeated by daylight saving; are the stamps really in that "
                "zone? (HistData files are New York standard time all year: tz='-05:00')"
            ) from None

    def _epochs(self) -> np.ndarray:
        values = self.values
        numbers = values.to_numpy()
        if np.isnan(numbers.astype(np.float64)).any():
            row = int(np.flatnonzero(np.isnan(numbers.astype(np.float64)))[0])
            raise DataError(
                f"{self.table.where}: row {row} has no time; fill it in or drop the row"
            )
        if len(numbers) == 0:
            return numbers.astype(np.int64)
        unit = self.options.time_unit or self._epoch_unit(numbers)
        if pd.api.types.is_integer_dtype(values):
            return numbers.astype(np.int64) * _NS_PER[unit]
        return np.round(numbers * _NS_PER[unit]).astype(np.int64)

    def _epoch_unit(self, numbers: np.ndarray) -> str:
        low, high = numbers.min(), numbers.max()
        for unit, (start, end) in _EPOCH_RANGES.items():
            if start <= low and high < end:
                return unit
        raise DataError(
            f"{self.table.where}: column {self.name!r} holds numbers from {low} to {high}, not "
            "epoch stamps of one unit between 1973 and 2262; if they are epochs, say the unit: "
            f"{self.table.example(time_unit='ms')}; if they are dates written as numbers, give "
            f"their format: {self.table.example(time_format='%Y%m%d')}"
        )


def _formats_of(text: pd.Series, first: str) -> list[str]:
    """Formats that read every stamp of `text`, those that keep them in order first, day-first
    before month-first: the best guess, and the other reading where the day and month are
    ambiguous."""
    guesses = [guess_datetime_format(first, dayfirst=True), guess_datetime_format(first)]
    fits = []
    for fmt in dict.fromkeys(g for g in guesses if g):
        try:
            stamps = pd.to_datetime(text, format=fmt)
        except (ValueError, TypeError):
            continue
        fits.append((not stamps.is_monotonic_increasing, fmt))
    return [fmt for _, fmt in sorted(fits, key=lambda fit: fit[0])]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name}={value!r} is not one of {', '.join(map(repr, choices))}."
            f"{did_you_mean(str(value), choices)}"
        )


_DEFAULTS = ReadOptions()


def _read_path(path: Path, columns: dict | list | None, table: _Table) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"no such data file: {path}; check the path")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] and suffixes[-1] in _PARQUET:
        return _named(pd.read_parquet(path), columns, str(path))
    if not any(s in _TEXT for s in suffixes):
        raise DataError(
            f"{path}: unknown file type; use .csv, .csv.gz or .parquet, or read it with pandas "
            f"and pass the DataFrame: {table.call}(frame, ...)"
        )
    header = None if isinstance(columns, list) else "infer"
    frame = pd.read_csv(path, header=header)
    if frame.shape[1] == 1:  # one column: perhaps another separator
        line = str(frame.columns[0]) if header else str(frame.iloc[0, 0]) if len(frame) else ""
        sep = next((s for s in (";", "\t", "|") if s in line), None)
        if sep:
            frame = pd.read_csv(path, header=header, sep=sep)
    return _named(frame, columns, str(path))


def _from_frame(frame: pd.DataFrame, columns: dict | list | None) -> pd.DataFrame:
    if isinstance(frame.columns, pd.MultiIndex):
        # yfinance: (Price, Ticker) with one ticker; drop every level that holds one value.
        flat = frame.copy()
        for level in reversed(range(flat.columns.nlevels)):
            if flat.columns.nlevels > 1 and flat.columns.get_level_values(level).nunique() == 1:
                flat.columns = flat.columns.droplevel(level)
        if isinstance(flat.columns, pd.MultiIndex):
            raise DataError(
                "the DataFrame has several levels of columns; select one instrument, e.g. "
                "frame.xs('EURUSD=X', axis=1, level=1)"
            )
        frame = flat
    index = frame.index
    if isinstance(index, pd.DatetimeIndex) or index.name is not None:
        name = index.name if index.name is not None else "time"
        if name not in frame.columns:
            frame = frame.reset_index(names=name)
    return _named(frame, columns, "the DataFrame")


def _named(frame: pd.DataFrame, columns: dict | list | None, where: str) -> pd.DataFrame:
    if not isinstance(columns, list):
        return frame
    if len(columns) != frame.shape[1]:
        raise DataError(
            f"{where} has {frame.shape[1]} columns but columns= names {len(columns)}: "
            f"{columns}; name every column in order (any name for one osm does not read)"
        )
    return frame.set_axis(columns, axis=1)


def unusable_bars(bars: np.ndarray) -> np.ndarray:
    """Mask of the BAR_DTYPE rows with a price that is not finite and positive, an ask below its
    bid, or an open or close outside its side's low..high."""
    with np.errstate(invalid="ignore"):
        ok = np.ones(len(bars), dtype=bool)
        for field in PRICE_FIELDS:
            ok &= np.isfinite(bars[field]) & (bars[field] > 0)
        for field in _OHLC:
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
