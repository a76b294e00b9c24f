"""Loading, checking, resampling and aggregating market data, on the real OANDA files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, TICK_DTYPE
from osm.core.errors import DataError
from osm.core.granularity import bar_opens
from osm.research.data import (
    DataRepairWarning,
    bars_frame,
    load_bars,
    load_ticks,
    resample,
    ticks_to_bars,
)

HEADER = "time_utc,bid_open,bid_high,bid_low,bid_close,bid_size,ask_open,ask_high,ask_low,ask_close,ask_size"
GOOD = [
    "2014-05-01T00:00:00Z,1.1,1.2,1.0,1.1,0,1.1001,1.2001,1.0001,1.1001,0",
    "2014-05-01T00:01:00Z,1.1,1.3,1.0,1.2,0,1.1001,1.3001,1.0001,1.2001,0",
    "2014-05-01T00:02:00Z,1.2,1.3,1.1,1.2,0,1.2001,1.3001,1.1001,1.2001,0",
]
NS = 10**9


def _csv(tmp_path: Path, lines: list[str], header: str = HEADER, name: str = "b.csv.gz") -> Path:
    path = tmp_path / name
    with gzip.open(path, "wt") as out:
        out.write("\n".join([header, *lines]) + "\n")
    return path


def test_h1_file_loads_into_bar_records(h1_file) -> None:
    bars = load_bars(h1_file)
    assert bars.dtype == BAR_DTYPE and len(bars) == 74_439
    assert bars["time"][0] == pd.Timestamp("2007-01-01T21:00:00Z").value
    assert bars[0]["bid_open"] == 1.31927 and bars[0]["ask_close"] == 1.32035
    assert (np.diff(bars["time"]) > 0).all() and bars["complete"].all()


def test_ticks_file_loads_with_millisecond_times(ticks_file) -> None:
    ticks = load_ticks(ticks_file)
    assert ticks.dtype == TICK_DTYPE and len(ticks) == 532_903
    assert ticks["time"][0] == pd.Timestamp("2014-05-01T00:00:00.292Z").value
    assert (ticks["ask"] > ticks["bid"]).all()
    assert (np.diff(ticks["time"]) == 0).sum() == 4_494  # same-millisecond quotes are kept


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "2014-05-01T00:00:30Z,1.1,1.2,1.0,1.1,0,1.1001,1.2001,1.0001,1.1001,0",
            r"row 3 \(2014-05-01T00:00:30\+00:00\) is earlier than row 2.*repair=True",
        ),
        (
            "2014-05-01T00:02:00Z,1.1,1.2,1.0,1.1,0,1.1001,1.2001,1.0001,1.1001,0",
            r"row 3 \(2014-05-01T00:02:00\+00:00\) repeats the time of row 2.*de-duplicate",
        ),
        (
            "2014-05-01T00:03:00Z,1.1,,1.0,1.1,0,1.1001,1.2001,1.0001,1.1001,0",
            r"row 3 .*bid_high=nan.*repair=True",
        ),
        (
            "2014-05-01T00:03:00Z,1.1,1.2,1.0,1.1,0,1.0999,1.2001,1.0001,1.1001,0",
            r"row 3 .*crossed \(ask < bid\).*ask_open=1.0999",
        ),
        (
            "2014-05-01T00:03:00Z,1.1,1.05,1.0,1.1,0,1.1001,1.2001,1.0001,1.1001,0",
            r"row 3 .*high/low that does not contain",
        ),
    ],
    ids=["unsorted", "duplicated", "nan", "crossed", "high-below-open"],
)
def test_bad_bars_name_the_row_and_the_fix(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_bars(_csv(tmp_path, [*GOOD, row]))


def test_repair_sorts_deduplicates_and_drops_bad_rows(tmp_path: Path) -> None:
    lines = [
        GOOD[2],
        GOOD[0],
        "2014-05-01T00:00:00Z,1.15,1.2,1.0,1.1,0,1.1501,1.2001,1.0001,1.1001,0",  # same time, later
        "2014-05-01T00:03:00Z,1.1,1.2,1.0,1.1,0,1.0999,1.2001,1.0001,1.1001,0",  # crossed
        GOOD[1],
    ]
    with pytest.warns(DataRepairWarning, match="dropped 1 with bad prices and 1 duplicated times"):
        bars = load_bars(_csv(tmp_path, lines), repair=True)
    assert (bars["time"] // (60 * NS) - bars["time"][0] // (60 * NS)).tolist() == [0, 1, 2]
    assert bars["bid_open"].tolist() == [1.15, 1.1, 1.2]  # the last of the duplicated rows won


def test_missing_columns_files_and_types_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no column 'ask_close'.*rename or add it"):
        load_bars(_csv(tmp_path, GOOD, header=HEADER.replace("ask_close", "askclose")))
    with pytest.raises(DataError, match="no time column"):
        load_bars(_csv(tmp_path, GOOD, header=HEADER.replace("time_utc", "when")))
    with pytest.raises(DataError, match="no such data file"):
        load_bars(tmp_path / "absent.csv")
    (tmp_path / "bars.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"use \.csv, \.csv\.gz or \.parquet"):
        load_bars(tmp_path / "bars.xlsx")


def test_ticks_may_share_a_time_but_not_go_back(tmp_path: Path) -> None:
    header = "time_utc,bid,ask"
    good = ["2014-05-01T00:00:00.100Z,1.1,1.1001", "2014-05-01T00:00:00.100Z,1.1,1.1002"]
    assert len(load_ticks(_csv(tmp_path, good, header))) == 2
    back = [*good, "2014-05-01T00:00:00.050Z,1.1,1.1002"]
    with pytest.raises(DataError, match=r"row 2 .* is earlier than row 1.*sort"):
        load_ticks(_csv(tmp_path, back, header))
    crossed = [*good, "2014-05-01T00:00:01Z,1.1002,1.1"]
    with pytest.raises(DataError, match="row 2 .*crossed"):
        load_ticks(_csv(tmp_path, crossed, header))
    with pytest.warns(DataRepairWarning, match="dropped 1 with bad prices.*sorted"):
        ticks = load_ticks(_csv(tmp_path, [*back, crossed[-1]], header), repair=True)
    assert np.diff(ticks["time"]).min() >= 0 and len(ticks) == 3
    assert ticks["ask"].tolist() == [1.1002, 1.1001, 1.1002]  # stable: equal times keep their order


def test_parquet_in_either_column_convention_equals_the_csv(tmp_path: Path, m1_file) -> None:
    bars = load_bars(m1_file)
    frame = pd.read_csv(m1_file)
    frame.to_parquet(tmp_path / "shared.parquet")
    native = pd.DataFrame({name: bars[name] for name in BAR_DTYPE.names})
    native.to_parquet(tmp_path / "native.parquet")
    native["time"] = pd.to_datetime(native["time"], unit="ns", utc=True)
    native.to_parquet(tmp_path / "stamped.parquet")
    for name in ("shared.parquet", "native.parquet", "stamped.parquet"):
        np.testing.assert_array_equal(load_bars(tmp_path / name), bars)


def test_resampled_m1_matches_oanda_h1_which_is_smoothed(m1_file, h1_file) -> None:
    """OANDA's H1 history opens each bar at the previous H1 close (``smooth=true`` candles), while
    its M1 bars open at their first quote. So M1 -> H1 matches the H1 file on closes as is, and on
    every price with ``smooth=True``, except the first hour of each of the M1 file's two spans, whose
    previous H1 bar is absent from it."""
    m1, h1 = load_bars(m1_file), load_bars(h1_file)
    assert (h1["bid_open"][1:] == h1["bid_close"][:-1]).mean() > 0.9999
    plain = resample(m1, "H1")
    common, ours, theirs = np.intersect1d(plain["time"], h1["time"], return_indices=True)
    assert len(common) == len(plain) == 312
    for field in ("bid_close", "ask_close"):
        np.testing.assert_array_equal(plain[field][ours], h1[field][theirs])
    assert (plain["bid_open"][ours] != h1["bid_open"][theirs]).sum() > 200

    smooth = resample(m1, "H1", smooth=True)
    # Smoothing takes the previous bar's close; it is OANDA's when our previous bar is theirs
    # (across weekends too), i.e. everywhere but 2014-05-01 00:00 and 2018-04-03 00:00.
    has_previous = np.append(False, h1["time"][theirs[1:] - 1] == smooth["time"][ours[:-1]])
    assert (~has_previous).sum() == 2
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(
            smooth[field][ours][has_previous], h1[field][theirs][has_previous], err_msg=field
        )


def test_resample_matches_pandas_and_is_stamped_with_the_open(m1_file) -> None:
    m1 = load_bars(m1_file)
    frame = bars_frame(m1)
    for granularity, rule in [("M5", "5min"), ("H4", "4h")]:
        got = resample(m1, granularity)
        grouped = frame.resample(rule, label="left", closed="left")
        for side in ("bid", "ask"):
            want = pd.DataFrame(
                {
                    f"{side}_open": grouped[f"{side}_open"].first(),
                    f"{side}_high": grouped[f"{side}_high"].max(),
                    f"{side}_low": grouped[f"{side}_low"].min(),
                    f"{side}_close": grouped[f"{side}_close"].last(),
                }
            ).dropna()
            assert got["time"].tolist() == [t.value for t in want.index.as_unit("ns")]
            for column in want:
                np.testing.assert_array_equal(got[column], want[column].to_numpy(), err_msg=column)
    daily = resample(m1, "D")
    assert (daily["time"] == bar_opens(daily["time"], "D")).all()
    assert {pd.Timestamp(t, tz="UTC").hour for t in daily["time"]} == {21}  # 17:00 New York, DST


def test_resampling_a_prefix_never_changes_a_complete_bar(m1_file) -> None:
    m1 = load_bars(m1_file)
    full = resample(m1, "H1")
    assert full["complete"].all()  # the data ends on a whole hour
    for cut in [61, 100, 5000, len(m1) - 1]:
        part = resample(m1[:cut], "H1")
        done = part["complete"]
        assert not done[-1] or m1["time"][cut - 1] % (3600 * NS) == 59 * 60 * NS
        np.testing.assert_array_equal(part[done], full[: len(part)][done])


def test_ticks_aggregate_exactly_to_the_m1_file(ticks_file, m1_file) -> None:
    ticks, m1 = load_ticks(ticks_file), load_bars(m1_file)
    bars = ticks_to_bars(ticks, "M1")
    may_2014 = m1[m1["time"] < pd.Timestamp("2015-01-01", tz="UTC").value]
    assert bars["time"].tolist() == may_2014["time"].tolist()
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(bars[field], may_2014[field], err_msg=field)
    assert bars["ticks"].sum() == len(ticks)
    assert bars["complete"][:-1].all() and not bars["complete"][-1]
    assert ticks_to_bars(ticks, "M1", until=int(ticks["time"][-1]) + 60 * NS)["complete"].all()


def test_resample_refuses_unsorted_or_finer_targets(h1_file) -> None:
    h1 = load_bars(h1_file)[:100]
    with pytest.raises(DataError, match="coarser granularity"):
        resample(h1, "M15")
    with pytest.raises(DataError, match="sorted by time"):
        resample(h1[::-1], "H4")
