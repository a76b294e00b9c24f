"""Loading, checking, resampling and aggregating market data, on the real OANDA files (or their
generated twins), and loading the other shapes users have data in."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, TICK_DTYPE
from osm.core.errors import ConfigError, DataError
from osm.core.granularity import bar_opens
from osm.research.data import (
    DataRepairWarning,
    bars_frame,
    load_bars,
    load_ticks,
    resample,
    ticks_to_bars,
)
from tests.conftest import H1_FILE, M1_FILE, real_file

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


def _utc_ns(stamps: pd.Series) -> list[int]:
    return [pd.Timestamp(s).value for s in stamps]


def test_h1_file_loads_into_bar_records(h1_file) -> None:
    bars, frame = load_bars(h1_file), pd.read_csv(h1_file)
    assert bars.dtype == BAR_DTYPE and len(bars) == len(frame) > 1000
    assert bars["time"].tolist() == _utc_ns(frame["time_utc"])
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(bars[field], frame[field], err_msg=field)
    assert (np.diff(bars["time"]) > 0).all() and bars["complete"].all()


def test_ticks_file_loads_with_millisecond_times(ticks_file) -> None:
    ticks, frame = load_ticks(ticks_file), pd.read_csv(ticks_file)
    assert ticks.dtype == TICK_DTYPE and len(ticks) == len(frame) > 10_000
    head = frame.head(3000)
    assert ticks["time"][:3000].tolist() == _utc_ns(head["time_utc"])
    assert ticks["time"][0] % 10**6 == 0 and (ticks["time"] % 10**6 != 0).sum() == 0
    assert (ticks["ask"] > ticks["bid"]).all()
    same = int((frame["time_utc"] == frame["time_utc"].shift()).sum())
    assert (np.diff(ticks["time"]) == 0).sum() == same > 0  # same-millisecond quotes are kept


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


def test_resampled_m1_matches_oanda_h1_which_is_smoothed() -> None:
    """OANDA's H1 history opens each bar at the previous H1 close (``smooth=true`` candles), while
    its M1 bars open at their first quote. So M1 -> H1 matches the H1 file on closes as is, and on
    every price with ``smooth=True``, except the first hour of each of the M1 file's two spans, whose
    previous H1 bar is absent from it."""
    m1, h1 = load_bars(real_file(M1_FILE)), load_bars(real_file(H1_FILE))
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
    new_york = pd.to_datetime(daily["time"], utc=True).tz_convert("America/New_York")
    assert set(new_york.hour) == {17} and set(new_york.minute) == {0}


def test_resampling_a_prefix_never_changes_a_complete_bar(m1_file) -> None:
    m1 = load_bars(m1_file)
    full = resample(m1, "H1")
    assert full["complete"].all()  # the data ends on a whole hour
    for cut in [61, 100, len(m1) // 2, len(m1) - 1]:
        part = resample(m1[:cut], "H1")
        done = part["complete"]
        assert not done[-1] or m1["time"][cut - 1] % (3600 * NS) == 59 * 60 * NS
        np.testing.assert_array_equal(part[done], full[: len(part)][done])


def test_ticks_aggregate_exactly_to_the_m1_file(ticks_file, m1_file) -> None:
    ticks, m1 = load_ticks(ticks_file), load_bars(m1_file)
    bars = ticks_to_bars(ticks, "M1")
    # The real M1 file also holds two days of 2018 that the ticks do not cover.
    span = m1[(m1["time"] >= bars["time"][0]) & (m1["time"] <= bars["time"][-1])]
    assert bars["time"].tolist() == span["time"].tolist()
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(bars[field], span[field], err_msg=field)
    assert bars["ticks"].sum() == len(ticks)
    assert bars["complete"][:-1].all() and not bars["complete"][-1]
    assert ticks_to_bars(ticks, "M1", until=int(ticks["time"][-1]) + 60 * NS)["complete"].all()


def test_resample_refuses_unsorted_or_finer_targets(h1_file) -> None:
    h1 = load_bars(h1_file)[:100]
    with pytest.raises(DataError, match="coarser granularity"):
        resample(h1, "M15")
    with pytest.raises(DataError, match="sorted by time"):
        resample(h1[::-1], "H4")


# ---------------------------------------------------------------- the shapes users have data in
#
# Each case writes bars or ticks whose UTC times are known in a shape found in the wild, and works
# out with pandas, from what it wrote, the bid and ask the loader must give back.

SPREAD = 0.0002
OHLC = ("open", "high", "low", "close")


@pytest.fixture(scope="module")
def m1(m1_file) -> np.ndarray:
    return load_bars(m1_file)[:600]


@pytest.fixture(scope="module")
def ticks(ticks_file) -> np.ndarray:
    return load_ticks(ticks_file)[:3000]


def _utc(records: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(records["time"], unit="ns", utc=True))


def _mids(bars: np.ndarray) -> dict[str, np.ndarray]:
    return {f: (bars[f"bid_{f}"] + bars[f"ask_{f}"]) / 2 for f in OHLC}


def _expected(times: np.ndarray, prices: dict, side: str, spread: float) -> np.ndarray:
    """Bars at `times` from one price per field (named like OHLC) of `side`, by plain arithmetic."""
    out = np.zeros(len(times), BAR_DTYPE)
    out["time"], out["complete"] = times, True
    below, above = {"mid": (spread / 2, spread / 2), "bid": (0, spread), "ask": (spread, 0)}[side]
    for field in OHLC:
        price = pd.Series(prices[field]).to_numpy(np.float64)
        out[f"bid_{field}"], out[f"ask_{field}"] = price - below, price + above
    return out


def plain_mid_csv(bars, tmp_path):
    """backtesting.py, yfinance exports: Datetime,Open,High,Low,Close,Volume, mid, stamps in UTC."""
    mids = _mids(bars)
    frame = pd.DataFrame({"Datetime": _utc(bars).strftime("%Y-%m-%d %H:%M:%S")})
    frame = frame.assign(**{f.title(): mids[f] for f in OHLC}, Volume=100)
    frame.to_csv(path := tmp_path / "mid.csv", index=False)
    written = pd.read_csv(path)
    want = _expected(bars["time"], {f: written[f.title()] for f in OHLC}, "mid", SPREAD)
    return path, {"tz": "UTC", "spread": SPREAD}, want


def bid_only_csv(bars, tmp_path):
    """One side in the shared format, spread in pips of the instrument."""
    frame = pd.DataFrame({"time_utc": _utc(bars).strftime("%Y-%m-%dT%H:%M:%SZ")})
    frame = frame.assign(**{f"bid_{f}": bars[f"bid_{f}"] for f in OHLC})
    frame.to_csv(path := tmp_path / "bid.csv.gz", index=False)
    want = _expected(bars["time"], {f: bars[f"bid_{f}"] for f in OHLC}, "bid", 1.5 * 0.0001)
    return path, {"spread_pips": 1.5, "instrument": "EUR_USD"}, want


def ask_only_csv(bars, tmp_path):
    """One side, capitalised names with spaces, offsets in the stamps (+02:00: no tz needed)."""
    stamps = _utc(bars).tz_convert("Europe/Berlin").strftime("%Y-%m-%dT%H:%M:%S%z")
    frame = pd.DataFrame({"Time": stamps, **{f"Ask {f.title()}": bars[f"ask_{f}"] for f in OHLC}})
    frame.to_csv(path := tmp_path / "ask.csv", index=False)
    want = _expected(bars["time"], {f: bars[f"ask_{f}"] for f in OHLC}, "ask", SPREAD)
    return path, {"spread": SPREAD}, want


def dukascopy_csv(bars, tmp_path):
    """Non-ISO stamps (day first, milliseconds) without a zone; bid prices under plain names."""
    stamps = _utc(bars).strftime("%d.%m.%Y %H:%M:%S.000")
    frame = pd.DataFrame({"Gmt time": stamps, **{f.title(): bars[f"bid_{f}"] for f in OHLC}})
    frame.to_csv(path := tmp_path / "dukascopy.csv", index=False)
    want = _expected(bars["time"], {f: bars[f"bid_{f}"] for f in OHLC}, "bid", SPREAD)
    options = {"time_format": "%d.%m.%Y %H:%M:%S.%f", "tz": "UTC", "side": "bid", "spread": SPREAD}
    return path, options, want


def new_york_csv(bars, tmp_path):
    """Both sides, stamps in New York wall time without a zone."""
    local = _utc(bars).tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M:%S")
    frame = pd.DataFrame({"time": local, **{f: bars[f] for f in PRICE_FIELDS}})
    frame.to_csv(path := tmp_path / "new_york.csv", index=False)
    want = bars.copy()
    want["ticks"] = 0
    return path, {"tz": "America/New_York"}, want


def histdata_csv(bars, tmp_path):
    """HistData ASCII: no header, ';', stamps in New York standard time all year, bid prices."""
    est = (_utc(bars) - pd.Timedelta(hours=5)).strftime("%Y%m%d %H%M%S")
    frame = pd.DataFrame({"t": est, **{f: bars[f"bid_{f}"] for f in OHLC}, "v": 0})
    frame.to_csv(path := tmp_path / "DAT_ASCII_EURUSD_M1.csv", index=False, header=False, sep=";")
    want = _expected(bars["time"], {f: bars[f"bid_{f}"] for f in OHLC}, "bid", SPREAD)
    options = {
        "columns": ["time", "open", "high", "low", "close", "volume"],
        "time_format": "%Y%m%d %H%M%S", "tz": "-05:00", "side": "bid", "spread": SPREAD,
    }  # fmt: skip
    return path, options, want


def metatrader_csv(bars, tmp_path):
    """MetaTrader export: <DATE>,<TIME> columns in server time (UTC+3), tick volume as ticks."""
    server = _utc(bars) + pd.Timedelta(hours=3)
    frame = pd.DataFrame(
        {
            "<DATE>": server.strftime("%Y.%m.%d"),
            "<TIME>": server.strftime("%H:%M:%S"),
            **{f"<{f.upper()}>": bars[f"bid_{f}"] for f in OHLC},
            "<TICKVOL>": np.arange(len(bars)) + 1,
        }
    )
    frame.to_csv(path := tmp_path / "EURUSD_M1.csv", index=False)
    want = _expected(bars["time"], {f: bars[f"bid_{f}"] for f in OHLC}, "bid", SPREAD)
    want["ticks"] = frame["<TICKVOL>"]
    options = {
        "columns": {"<TICKVOL>": "ticks"}, "time_format": "%Y.%m.%d %H:%M:%S", "tz": "+03:00",
        "side": "bid", "spread": SPREAD,
    }  # fmt: skip
    return path, options, want


def yfinance_frame(bars, tmp_path):
    """A DataFrame with a zoned DatetimeIndex and yfinance's columns (two levels: price, ticker)."""
    mids = _mids(bars)
    index = _utc(bars).tz_convert("Europe/London").rename("Datetime")
    frame = pd.DataFrame({f.title(): mids[f] for f in OHLC}, index=index)
    frame["Adj Close"], frame["Volume"] = frame["Close"], 0
    frame.columns = pd.MultiIndex.from_product([frame.columns, ["EURUSD=X"]])
    want = _expected(bars["time"], mids, "mid", SPREAD)
    return frame, {"spread": SPREAD}, want


def parquet_naive(bars, tmp_path):
    """Parquet with a timestamp column without a zone (UTC wall time) and mid prices."""
    frame = pd.DataFrame({"timestamp": _utc(bars).tz_convert(None), **_mids(bars)})
    frame.to_parquet(path := tmp_path / "mid.parquet")
    want = _expected(bars["time"], _mids(bars), "mid", SPREAD)
    return path, {"tz": "UTC", "spread": SPREAD}, want


def parquet_epoch_ms(bars, tmp_path):
    """Parquet with integer epoch milliseconds (unit inferred) and both sides."""
    frame = pd.DataFrame({"time": bars["time"] // 10**6, **{f: bars[f] for f in PRICE_FIELDS}})
    frame.to_parquet(path := tmp_path / "epoch.parquet")
    want = bars.copy()
    want["ticks"] = 0
    return path, {}, want


def epoch_seconds_csv(bars, tmp_path):
    """CSV with epoch seconds (unit inferred) and mid prices."""
    frame = pd.DataFrame({"timestamp": bars["time"] // NS, **_mids(bars)})
    frame.to_csv(path := tmp_path / "epoch_s.csv", index=False)
    written = pd.read_csv(path)
    return path, {"spread": SPREAD}, _expected(bars["time"], written, "mid", SPREAD)


SHAPES = [
    plain_mid_csv, bid_only_csv, ask_only_csv, dukascopy_csv, new_york_csv, histdata_csv,
    metatrader_csv, yfinance_frame, parquet_naive, parquet_epoch_ms, epoch_seconds_csv,
]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=[s.__name__ for s in SHAPES])
def test_each_shape_loads_into_the_bars_pandas_makes_of_it(shape, m1, tmp_path: Path) -> None:
    source, options, want = shape(m1, tmp_path)
    got = load_bars(source, **options)
    assert got["time"].tolist() == m1["time"].tolist()  # the true UTC times, whatever the stamps
    for field in BAR_DTYPE.names:
        np.testing.assert_array_equal(got[field], want[field], err_msg=field)


def test_bars_frame_loads_back(m1) -> None:
    np.testing.assert_array_equal(load_bars(bars_frame(m1)), m1)


def test_tick_shapes_load_like_pandas(ticks, tmp_path: Path) -> None:
    utc = _utc(ticks)
    mid = (ticks["bid"] + ticks["ask"]) / 2
    pd.DataFrame({"time": utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "mid": mid}).to_csv(
        path := tmp_path / "mid_ticks.csv", index=False
    )
    written = pd.read_csv(path)["mid"].to_numpy()
    got = load_ticks(path, spread=SPREAD)
    assert got["time"].tolist() == ticks["time"].tolist()
    np.testing.assert_array_equal(got["bid"], written - SPREAD / 2)
    np.testing.assert_array_equal(got["ask"], written + SPREAD / 2)

    frame = pd.DataFrame({"Bid": ticks["bid"]}, index=utc.tz_convert("Asia/Tokyo"))
    got = load_ticks(frame, spread_pips=0.5, instrument="EUR_USD")
    assert got["time"].tolist() == ticks["time"].tolist()
    np.testing.assert_array_equal(got["bid"], ticks["bid"])
    np.testing.assert_array_equal(got["ask"], ticks["bid"] + 0.5 * 0.0001)

    native = pd.DataFrame({name: ticks[name] for name in TICK_DTYPE.names})  # ns epochs
    native.to_csv(path := tmp_path / "native.csv", index=False)
    np.testing.assert_array_equal(load_ticks(path), ticks)


def test_local_stamps_across_daylight_saving_changes(tmp_path: Path) -> None:
    """Hourly New York stamps through the autumn change (01:00 twice) land on consecutive UTC hours;
    a stamp the spring change skipped is refused: the stamps are not in that zone."""
    utc = pd.date_range("2014-11-02T03:00Z", periods=6, freq="h")
    local = utc.tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M")
    assert local[2] == local[3] == "2014-11-02 01:00"
    prices = {f: np.full(len(utc), 1.25) for f in PRICE_FIELDS}
    pd.DataFrame({"time": local, **prices}).to_csv(path := tmp_path / "fall.csv", index=False)
    got = load_bars(path, tz="America/New_York")
    assert got["time"].tolist() == [t.value for t in utc.as_unit("ns")]

    skipped = ["2014-03-09 01:00", "2014-03-09 02:00", "2014-03-09 03:00"]
    pd.DataFrame({"time": skipped, **{f: 1.25 for f in PRICE_FIELDS}}).to_csv(
        path := tmp_path / "spring.csv", index=False
    )
    with pytest.raises(DataError, match=r"cannot be placed in tz='America/New_York'.*really"):
        load_bars(path, tz="America/New_York")


# ---------------------------------------------------------------- refusals that name the fix


def _suggested(message: str, function: str) -> str:
    """The first example call `function(...)` in an error message."""
    found = re.search(rf"{function}\([^()]*\)", message)
    assert found, f"no {function}(...) example in: {message}"
    return found.group(0)


@pytest.mark.parametrize(
    ("shape", "drop", "names"),
    [
        (plain_mid_csv, "spread", r"no spread.*spread=0\.0001.*spread_pips=1\.0, instrument="),
        (plain_mid_csv, "tz", r"without a time zone.*tz='UTC'.*America/New_York"),
        (bid_only_csv, "spread_pips", r"\(bid_open, bid_high, bid_low, bid_close\), read as bid"),
        (dukascopy_csv, "time_format", r"not ISO-8601.*time_format='%d\.%m\.%Y %H:%M:%S\.%f'"),
        (histdata_csv, "columns", r"no header row.*columns=\['time', 'open'"),
        (metatrader_csv, "tz", r"'<DATE> \+ <TIME>' has stamps without a time zone"),
        (new_york_csv, "tz", r"column 'time' has stamps without a time zone \(first '20\d\d-"),
        (yfinance_frame, "spread", r"load_bars\(frame, spread=0\.0001\)"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_an_option_left_out_is_named_and_the_suggested_call_loads(
    shape, drop: str, names: str, m1, tmp_path: Path
) -> None:
    source, options, want = shape(m1, tmp_path)
    left_out = {drop, "instrument"} if drop == "spread_pips" else {drop}
    given = {k: v for k, v in options.items() if k not in left_out}
    with pytest.raises(DataError, match=names) as refused:
        load_bars(source, **given)
    # The call the message suggests, run as written, loads the source. Its value of the option is
    # an example (a spread of 1 pip, tz='UTC'), so what that option decides may differ.
    call = _suggested(str(refused.value), "load_bars")
    got = eval(call, {"load_bars": load_bars, "frame": source})  # noqa: S307
    if drop == "tz":
        np.testing.assert_array_equal(got[list(PRICE_FIELDS)], want[list(PRICE_FIELDS)])
    elif drop in ("spread", "spread_pips"):
        assert got["time"].tolist() == want["time"].tolist()
    else:
        np.testing.assert_array_equal(got, want)


def test_epoch_numbers_of_no_single_unit_are_refused(m1, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"time": np.arange(len(m1)) * 1000 + 20_000, **{f: m1[f] for f in PRICE_FIELDS}}
    )
    frame.to_csv(path := tmp_path / "counter.csv", index=False)
    with pytest.raises(DataError, match=r"not epoch stamps.*time_unit='ms'.*time_format='%Y%m%d'"):
        load_bars(path)
    mixed = frame.assign(time=m1["time"] // 10**6)
    mixed.loc[5, "time"] = m1["time"][5] // NS
    mixed.to_csv(path, index=False)
    with pytest.raises(DataError, match="not epoch stamps of one unit"):
        load_bars(path)
    mixed.loc[5, "time"] = m1["time"][5] // 10**6
    mixed.to_csv(path, index=False)
    got = load_bars(path, time_unit="ms")
    assert got["time"].tolist() == (m1["time"] // 10**6 * 10**6).tolist()


def test_other_refusals_name_the_fix(m1, tmp_path: Path) -> None:
    path, _, _ = bid_only_csv(m1, tmp_path)
    with pytest.raises(DataError, match=r"columns= names 'Bid Open', which is not a column"):
        load_bars(path, columns={"Bid Open": "bid_open"}, spread=SPREAD)
    with pytest.raises(ConfigError, match=r"maps 'x' to 'opne'.*Did you mean 'open'"):
        load_bars(path, columns={"x": "opne"})
    with pytest.raises(
        ConfigError, match=r"spread_pips needs the instrument.*instrument='EUR_USD'"
    ):
        load_bars(path, spread_pips=1.0)
    with pytest.raises(ConfigError, match="spread= .* or spread_pips=, not both"):
        load_bars(path, spread=0.0001, spread_pips=1.0, instrument="EUR_USD")
    with pytest.raises(ConfigError, match=r"unknown time zone tz='New York'.*'-05:00'"):
        load_bars(path, tz="New York")
    with pytest.raises(ConfigError, match=r"side='mild'.*Did you mean 'mid'"):
        load_bars(path, side="mild")
    with pytest.raises(TypeError, match="takes a file path or a pandas DataFrame, got list"):
        load_bars([1, 2])

    def written(name: str, columns: dict) -> Path:
        pd.DataFrame(columns).to_csv(path := tmp_path / name, index=False)
        return path

    one_bar = {"time_utc": ["2014-05-01T00:00:00Z"], **dict.fromkeys(PRICE_FIELDS, [1.1])}
    with pytest.raises(DataError, match=r"has bid and ask prices; spread= .*load_bars\('[^']*'\)"):
        load_bars(written("both.csv", one_bar), spread=SPREAD)
    half = written("half.csv", {"time_utc": ["2014-05-01T00:00:00Z"], "bid_open": [1.1]})
    with pytest.raises(DataError, match=r"no column 'bid_high'.*\{'Bid High': 'bid_high'\}"):
        load_bars(half, spread=SPREAD)
    stamps = ["2014-05-01T00:00:00Z", "2014-05-01T00:01:00", "2014-05-01T00:02:00+01:00"]
    mixed = written("mixed.csv", {"time": stamps, **dict.fromkeys(PRICE_FIELDS, [1.1] * 3)})
    with pytest.raises(DataError, match=r"mixes stamps with a zone and without \(row 1"):
        load_bars(mixed)
