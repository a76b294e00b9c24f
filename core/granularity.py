"""Granularities by their OANDA names and the alignment of bar open times.

Sub-daily bars are aligned to UTC (an H4 bar opens at 00, 04, 08... UTC). Daily bars open at the
New York close, 17:00 America/New_York, which is 21:00 or 22:00 UTC with daylight saving, as OANDA's
default `dailyAlignment` does; weekly bars open on the daily boundary of `weekly_alignment` (Friday,
OANDA's default) and monthly bars on the first daily boundary of the month. Both are settings of
:class:`Alignment`. A bar is stamped with its open time, in int64 nanoseconds since the epoch, UTC.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from functools import lru_cache
from zoneinfo import ZoneInfo

import msgspec
import numpy as np

from osm.core.errors import UnknownNameError, did_you_mean

NS = 1_000_000_000
_FIXED_SECONDS = {
    "S5": 5, "S10": 10, "S15": 15, "S30": 30,
    "M1": 60, "M2": 120, "M4": 240, "M5": 300, "M10": 600, "M15": 900, "M30": 1800,
    "H1": 3600, "H2": 7200, "H3": 10800, "H4": 14400, "H6": 21600, "H8": 28800, "H12": 43200,
}  # fmt: skip
GRANULARITIES: tuple[str, ...] = (*_FIXED_SECONDS, "D", "W", "M")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class Alignment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where daily, weekly and monthly bars open (OANDA's defaults)."""

    daily_hour: int = 17
    timezone: str = "America/New_York"
    weekly_alignment: str = "Friday"

    def __post_init__(self) -> None:
        if not 0 <= self.daily_hour <= 23:
            raise ValueError(f"daily_hour must be 0..23, got {self.daily_hour}")
        if self.weekly_alignment not in _WEEKDAYS:
            raise UnknownNameError("weekly_alignment", self.weekly_alignment, _WEEKDAYS)
        ZoneInfo(self.timezone)


OANDA_ALIGNMENT = Alignment()


# Typical lengths, to rank granularities by how close they are to a misspelled one.
_TYPICAL_SECONDS = {**_FIXED_SECONDS, "D": 86_400, "W": 7 * 86_400, "M": 30.44 * 86_400}
_UNIT_SECONDS = {"S": 1, "M": 60, "H": 3600, "D": 86_400, "W": 7 * 86_400}
# "M7" (OANDA's order, M = minutes) or "7m", "15min", "4h" (number first; "1M" is a month).
_UNIT_FIRST = re.compile(r"([SMHDW])(\d+)", re.IGNORECASE)
_NUMBER_FIRST = re.compile(r"(\d+)\s*(s|sec|m|min|h|d|w|M)", re.IGNORECASE)


class UnknownGranularityError(UnknownNameError):
    """A name that is not an OANDA granularity; suggests the real ones nearest in length."""

    def __init__(self, name: object) -> None:
        super().__init__("granularity", name, GRANULARITIES)

    def _text(self) -> str:
        nearest = nearest_granularities(str(self.name))
        hint = (
            f" Did you mean {' or '.join(repr(g) for g in nearest)}?"
            if nearest
            else did_you_mean(str(self.name), GRANULARITIES)
        )
        return f"unknown granularity {self.name!r}.{hint} Known: {' '.join(GRANULARITIES)}"


def check_granularity(name: str) -> str:
    """Return `name` if it is an OANDA granularity, else raise with the nearest ones."""
    if name not in GRANULARITIES:
        raise UnknownGranularityError(name)
    return name


def nearest_granularities(name: str) -> list[str]:
    """Return the granularities nearest in length to `name`, closest first, or [] if unreadable.

    ``"m15"`` gives ``["M15"]``; ``"M60"`` ``["H1"]``; ``"M7"`` the ones either side, nearer
    first by the ratio of lengths, ``["M5", "M10"]`` (7/5 = 1.40 is nearer than 10/7 = 1.43);
    ``"S1"`` only ``["S5"]``, nothing being shorter. Number-first names read as elsewhere:
    ``"15m"`` and ``"15min"`` are minutes, ``"4h"`` hours, ``"1M"`` a month.
    """
    text = name.strip()
    if text.upper() in GRANULARITIES:
        return [text.upper()]
    seconds = _seconds(text)
    if seconds is None:
        return []
    shorter = [g for g, s in _TYPICAL_SECONDS.items() if s <= seconds]
    longer = [g for g, s in _TYPICAL_SECONDS.items() if s > seconds]
    if shorter and _TYPICAL_SECONDS[shorter[-1]] == seconds:
        return [shorter[-1]]
    either_side = ([shorter[-1]] if shorter else []) + longer[:1]
    return sorted(either_side, key=lambda g: abs(math.log(_TYPICAL_SECONDS[g] / seconds)))


def _seconds(text: str) -> float | None:
    if match := _UNIT_FIRST.fullmatch(text):
        unit, count = match.group(1).upper(), int(match.group(2))
        seconds = _UNIT_SECONDS[unit] * count
    elif match := _NUMBER_FIRST.fullmatch(text):
        count, unit = int(match.group(1)), match.group(2)
        seconds = count * (_TYPICAL_SECONDS["M"] if unit == "M" else _UNIT_SECONDS[unit[0].upper()])
    else:
        return None
    return seconds or None


def step_ns(granularity: str) -> int | None:
    """Fixed length of a bar in ns, or None for D, W and M (their length varies with DST)."""
    seconds = _FIXED_SECONDS.get(check_granularity(granularity))
    return None if seconds is None else seconds * NS


def is_finer(a: str, b: str) -> bool:
    """True if bars of `a` nest exactly inside bars of `b` (M1 in H1, H1 in D)."""
    sa, sb = step_ns(a), step_ns(b)
    if sa is None:
        return GRANULARITIES.index(a) < GRANULARITIES.index(b)
    if sb is None:
        return 86400 * NS % sa == 0
    return sb % sa == 0 and sb > sa


def _to_datetime(t_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_ns // NS, tz=dt.UTC)


def _to_ns(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * NS


@lru_cache(maxsize=4096)
def _daily_open_ns(t_s: int, alignment: Alignment) -> int:
    zone = ZoneInfo(alignment.timezone)
    local = dt.datetime.fromtimestamp(t_s, tz=dt.UTC).astimezone(zone)
    day = (local - dt.timedelta(hours=alignment.daily_hour)).date()
    opening = dt.datetime(day.year, day.month, day.day, alignment.daily_hour, tzinfo=zone)
    return _to_ns(opening)


def _week_opening(moment: dt.datetime, alignment: Alignment) -> dt.datetime:
    """The FX week's opening (Sunday at the daily hour, local) at or before `moment` (local)."""
    back = (moment.weekday() - 6) % 7  # days since Sunday
    sunday = (moment - dt.timedelta(days=back)).date()
    opening = dt.datetime(
        sunday.year, sunday.month, sunday.day, alignment.daily_hour, tzinfo=moment.tzinfo
    )
    if opening > moment:
        back = opening - dt.timedelta(days=7)
        opening = dt.datetime(
            back.year, back.month, back.day, alignment.daily_hour, tzinfo=moment.tzinfo
        )
    return opening


def trading_deadline(start_ns: int, trading_ns: int, alignment: Alignment = OANDA_ALIGNMENT) -> int:
    """The instant `trading_ns` of open market after `start_ns` (ns UTC).

    The FX market is shut from Friday to Sunday at the daily hour of `alignment` (17:00 New York
    for OANDA), so a span that reaches into a weekend resumes at Sunday's opening: a decision
    taken before Friday's close and valid for ten minutes of market may fill at Sunday's first
    quote, as the backtest fills it at the next bar's open. Holidays are not known.
    """
    zone = ZoneInfo(alignment.timezone)
    now, left = start_ns, trading_ns
    while True:
        local = dt.datetime.fromtimestamp(now // NS, tz=dt.UTC).astimezone(zone)
        opening = _week_opening(local, alignment)
        closing = _to_ns(opening + dt.timedelta(days=5))  # Friday at the daily hour, local
        if now >= closing:  # the weekend: the span resumes at the next opening
            now = _to_ns(opening + dt.timedelta(days=7))
            continue
        if now + left <= closing:
            return now + left
        left -= closing - now
        now = closing


def bar_open(t_ns: int, granularity: str, alignment: Alignment = OANDA_ALIGNMENT) -> int:
    """Open time (ns UTC) of the bar of `granularity` that holds the instant `t_ns`."""
    step = step_ns(granularity)
    if step is not None:
        return t_ns - t_ns % step
    # Hour-resolution cache key: daily boundaries always fall on whole hours.
    day_open = _daily_open_ns(t_ns // NS // 3600 * 3600, alignment)
    if granularity == "D":
        return day_open
    zone = ZoneInfo(alignment.timezone)
    opening = _to_datetime(day_open).astimezone(zone)
    # The trading day that opens at 17:00 local belongs to the next calendar date.
    trading_date = (opening + dt.timedelta(days=1)).date()
    if granularity == "W":
        back = (trading_date.weekday() - (_WEEKDAYS.index(alignment.weekly_alignment) + 1)) % 7
        first = trading_date - dt.timedelta(days=back)
    else:
        first = trading_date.replace(day=1)
    start = dt.datetime(first.year, first.month, first.day, alignment.daily_hour, tzinfo=zone)
    return _to_ns(start - dt.timedelta(days=1))


def next_open(open_ns: int, granularity: str, alignment: Alignment = OANDA_ALIGNMENT) -> int:
    """Open time of the bar after the one that opens at `open_ns`."""
    step = step_ns(granularity)
    if step is not None:
        return open_ns + step
    guess = {"D": 26, "W": 24 * 7 + 2, "M": 24 * 31 + 2}[granularity] * 3600 * NS
    after = bar_open(open_ns + guess, granularity, alignment)
    while after <= open_ns:  # never loops more than once; guards DST edge cases
        guess += 24 * 3600 * NS
        after = bar_open(open_ns + guess, granularity, alignment)
    return after


def bar_opens(
    times_ns: np.ndarray, granularity: str, alignment: Alignment = OANDA_ALIGNMENT
) -> np.ndarray:
    """Vectorised :func:`bar_open` over an int64 array of instants."""
    times_ns = np.asarray(times_ns, dtype=np.int64)
    step = step_ns(granularity)
    if step is not None:
        return times_ns - times_ns % step
    hours = times_ns // (3600 * NS)
    unique_hours, index = np.unique(hours, return_inverse=True)
    opens = np.array(
        [bar_open(int(h) * 3600 * NS, granularity, alignment) for h in unique_hours], dtype=np.int64
    )
    return opens[index]
