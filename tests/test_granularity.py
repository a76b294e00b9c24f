"""Bar alignment: UTC for sub-daily bars, New York close for D, W and M, across daylight saving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osm.core.errors import UnknownNameError
from osm.core.granularity import (
    GRANULARITIES,
    NS,
    Alignment,
    bar_open,
    bar_opens,
    check_granularity,
    nearest_granularities,
    next_open,
    step_ns,
    trading_deadline,
)


def ns(text: str) -> int:
    return pd.Timestamp(text).value


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        # OANDA: the D candle of 2014-05-06 opens 2014-05-05T21:00Z (EDT, summer) ...
        ("2014-05-05T21:00Z", "2014-05-05T21:00Z"),
        ("2014-05-06T12:00Z", "2014-05-05T21:00Z"),
        ("2014-05-06T20:59:59.999Z", "2014-05-05T21:00Z"),
        ("2014-05-06T21:00Z", "2014-05-06T21:00Z"),
        # ... and in winter (EST) at 22:00Z: the D candle of 2014-01-07 opens 2014-01-06T22:00Z.
        ("2014-01-07T12:00Z", "2014-01-06T22:00Z"),
        ("2014-01-06T21:30Z", "2014-01-05T22:00Z"),
        # Daylight saving starts 2014-03-09: the Saturday bar opens at 22:00Z, the Sunday bar at 21:00Z.
        ("2014-03-09T20:30Z", "2014-03-08T22:00Z"),
        ("2014-03-09T21:30Z", "2014-03-09T21:00Z"),
        # ... and ends 2014-11-02.
        ("2014-11-02T21:30Z", "2014-11-01T21:00Z"),
        ("2014-11-02T22:00Z", "2014-11-02T22:00Z"),
    ],
)
def test_daily_bars_open_at_new_york_close(instant: str, expected: str) -> None:
    assert bar_open(ns(instant), "D") == ns(expected)


@pytest.mark.parametrize(
    ("granularity", "instant", "expected"),
    [
        ("W", "2014-05-06T12:00Z", "2014-05-02T21:00Z"),  # the Friday 17:00 New York before
        ("W", "2014-05-02T20:59Z", "2014-04-25T21:00Z"),
        ("W", "2014-01-08T12:00Z", "2014-01-03T22:00Z"),  # winter: 22:00Z
        ("M", "2014-05-15T12:00Z", "2014-04-30T21:00Z"),  # the first trading day of May opens then
        ("M", "2014-04-30T21:00Z", "2014-04-30T21:00Z"),
        ("M", "2014-04-30T20:59Z", "2014-03-31T21:00Z"),
        ("M", "2014-01-15T12:00Z", "2013-12-31T22:00Z"),
    ],
)
def test_weekly_and_monthly_bars(granularity: str, instant: str, expected: str) -> None:
    assert bar_open(ns(instant), granularity) == ns(expected)


def test_daily_bar_lengths_change_with_daylight_saving() -> None:
    assert next_open(ns("2014-03-08T22:00Z"), "D") == ns("2014-03-09T21:00Z")  # 23 hours
    assert next_open(ns("2014-11-01T21:00Z"), "D") == ns("2014-11-02T22:00Z")  # 25 hours
    assert next_open(ns("2014-05-05T21:00Z"), "D") == ns("2014-05-06T21:00Z")


def test_alignment_is_a_setting() -> None:
    utc_midnight = Alignment(daily_hour=0, timezone="UTC", weekly_alignment="Sunday")
    assert bar_open(ns("2014-05-06T12:00Z"), "D", utc_midnight) == ns("2014-05-06T00:00Z")
    with pytest.raises(KeyError, match="Did you mean 'Friday'"):
        Alignment(weekly_alignment="Fridya")


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_bars_tile_time_and_vectorised_form_agrees(granularity: str) -> None:
    rng = np.random.default_rng(1)
    # Two years around both DST changes, at random instants (some exactly on boundaries).
    times = np.sort(ns("2013-12-20") + rng.integers(0, 730 * 86400, 400) * NS)
    times[::7] = times[::7] - times[::7] % (3600 * NS)
    opens = bar_opens(times, granularity)
    for t, o in zip(times.tolist(), opens.tolist(), strict=True):
        assert o == bar_open(t, granularity)
        following = next_open(o, granularity)
        assert o <= t < following
        assert bar_open(following, granularity) == following  # a bar opens where the last closed
        assert bar_open(following - 1, granularity) == o
        step = step_ns(granularity)
        if step is not None:
            assert following - o == step


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("M7", ["M5", "M10"]),  # 7/5 = 1.40 is nearer than 10/7 = 1.43
        ("M3", ["M4", "M2"]),
        ("H5", ["H6", "H4"]),
        ("H9", ["H8", "H12"]),
        ("S1", ["S5"]),  # nothing shorter
        ("M60", ["H1"]),  # the same length
        ("H24", ["D"]),
        ("W2", ["W", "M"]),
        ("h4", ["H4"]),  # the case
        ("m", ["M"]),
        ("15m", ["M15"]),  # number first, as other libraries write it
        ("4h", ["H4"]),
        ("1M", ["M"]),
        ("hourly", []),
    ],
)
def test_an_unknown_granularity_suggests_the_nearest_in_length(name, nearest) -> None:
    assert nearest_granularities(name) == nearest
    with pytest.raises(UnknownNameError) as caught:
        check_granularity(name)
    if nearest:
        assert f"Did you mean {' or '.join(map(repr, nearest))}?" in str(caught.value)
    assert "Known: S5 S10 S15 S30 M1 M2 M4 M5 M10 M15 M30 H1 H2 H3 H4" in str(caught.value)


def test_m7_no_longer_suggests_the_monthly_granularity() -> None:
    with pytest.raises(KeyError, match=r"unknown granularity 'M7'\. Did you mean 'M5' or 'M10'\?"):
        check_granularity("M7")
    assert all(check_granularity(g) == g for g in GRANULARITIES)


def _open_minutes_oracle(start: pd.Timestamp, minutes: int) -> pd.Timestamp:
    """Step minute by minute through New York time, counting only the open FX week."""
    t = start
    while minutes:
        local = t.tz_convert("America/New_York")
        shut = (
            (local.weekday() == 4 and local.hour >= 17)
            or local.weekday() == 5
            or (local.weekday() == 6 and local.hour < 17)
        )
        if not shut:
            minutes -= 1
        t += pd.Timedelta(minutes=1)
    return t


@pytest.mark.parametrize("span_minutes", [1, 10, 600, 1440])
def test_trading_deadline_skips_the_weekend_like_a_minute_by_minute_oracle(span_minutes):
    # Fridays and weekends around the March 2014 daylight-saving change in New York, and others.
    starts = pd.date_range("2014-03-06T18:00Z", "2014-03-10T06:00Z", freq="97min")
    starts = starts.append(pd.date_range("2014-11-07T20:00Z", "2014-11-09T23:00Z", freq="131min"))
    for start in starts:
        got = trading_deadline(start.value, span_minutes * 60 * NS)
        want = _open_minutes_oracle(start, span_minutes)
        # The oracle counts whole minutes from a minute on the grid: compare on that grid.
        assert abs(got - want.value) < 60 * NS, (start, span_minutes, pd.Timestamp(got, tz="UTC"))
