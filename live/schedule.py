"""A job's window: when a job runs, as a start cron and a stop cron (croniter, UTC).

A window is open while the last firing of its start expression is more recent than the last firing
of its stop expression. The FX week is ``Window(start="0 21 * * 0", stop="0 21 * * 5")``: it opens
at Sunday 21:00 UTC and closes at Friday 21:00 UTC. An expression has the five fields of a crontab
line (minute, hour, day of month, month, day of week), so a window changes on a minute. Times are
aware UTC datetimes; the caller passes "now", so a test drives a window with a clock of its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgspec
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from osm.core.errors import ConfigError

FIELDS = "minute hour day-of-month month day-of-week"
FX_WEEK = ("0 21 * * 0", "0 21 * * 5")  # Sunday 21:00 to Friday 21:00 UTC
_STEP = dt.timedelta(seconds=1)  # a firing at exactly "now" counts as the last one


class Window(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The cron expressions that open (`start`) and close (`stop`) a job's window, in UTC."""

    start: str
    stop: str


@dataclass(frozen=True)
class WindowState:
    """Where `now` is in a window."""

    open: bool
    opened: dt.datetime | None  # the start firing that opened the current window; None: closed
    next_open: dt.datetime  # the next start firing after now
    next_close: dt.datetime  # the next stop firing after now

    @property
    def changes(self) -> dt.datetime:
        """When the window next opens (closed) or closes (open)."""
        return self.next_close if self.open else self.next_open


def check_cron(expression: str, which: str) -> str:
    """Return `expression` if croniter takes it as five fields that fire; ConfigError if not."""
    example = FX_WEEK[0] if which == "start" else FX_WEEK[1]
    fields = expression.split() if isinstance(expression, str) else []
    if len(fields) != 5:
        raise ConfigError(
            f"--{which} {expression!r} is not a cron expression of five fields ({FIELDS}), "
            f"e.g. {example!r}: quote it as one argument"
        )
    try:
        croniter(expression, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).get_next(dt.datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterError, ValueError) as exc:
        raise ConfigError(
            f"--{which} {expression!r} is not a cron expression croniter accepts ({exc}); "
            f"five fields ({FIELDS}), e.g. {example!r}"
        ) from None
    return " ".join(fields)


def window(start: str, stop: str) -> Window:
    """A checked window: both expressions valid, and different (else it would never open)."""
    checked = Window(start=check_cron(start, "start"), stop=check_cron(stop, "stop"))
    if checked.start == checked.stop:
        raise ConfigError(
            f"--start and --stop are both {start!r}, so the window never opens; give the stop "
            f"the time it closes, e.g. --start {FX_WEEK[0]!r} --stop {FX_WEEK[1]!r}"
        )
    return checked


def window_at(win: Window, now: dt.datetime) -> WindowState:
    """Whether `win` is open at `now` (aware UTC), since when, and when it next opens and closes."""
    if now.tzinfo is None:
        raise ValueError(f"now must be an aware UTC datetime, got {now!r}")
    now = now.astimezone(dt.UTC)
    last_start = _firing(win.start, now + _STEP, -1)
    last_stop = _firing(win.stop, now + _STEP, -1)
    is_open = last_start > last_stop
    return WindowState(
        open=is_open,
        opened=_firing(win.start, last_stop, 1) if is_open else None,
        next_open=_firing(win.start, now, 1),
        next_close=_firing(win.stop, now, 1),
    )


def _firing(expression: str, base: dt.datetime, direction: int) -> dt.datetime:
    """The firing of `expression` before (-1) or after (1) `base`, in UTC."""
    cron = croniter(expression, base)
    return (cron.get_next if direction > 0 else cron.get_prev)(dt.datetime).astimezone(dt.UTC)
