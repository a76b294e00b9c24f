"""Tick sources: the synthetic market's microstructure and determinism, replay of ticks and bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osm.core.config import FeedConfig
from osm.core.dtypes import PRICE_FIELDS
from osm.core.errors import ConfigError, DataError, UnknownNameError
from osm.core.granularity import NS
from osm.live.feeds import open_source, register_source, source_class
from osm.live.feeds.replay import ReplaySource, replay_ticks
from osm.live.feeds.synthetic import SyntheticSource
from tests.test_router import run_kernel


def drain(source, total: int, limit: int = 1000) -> list[tuple[str, np.ndarray]]:
    out, n = [], 0
    while n < total:
        chunk = source.read(min(limit, total - n))
        if chunk is None:
            break
        out.append(chunk)
        n += len(chunk[1])
    return out


def stream(chunks: list[tuple[str, np.ndarray]]) -> list[tuple[str, int, float, float]]:
    return [(name, *row) for name, rows in chunks for row in rows.tolist()]


SYNTH = FeedConfig(instruments=["EUR_USD"], start="2024-01-03T00:00Z", seed=11)


@pytest.fixture(scope="module")
def week() -> np.ndarray:
    """Wednesday to the next Tuesday: four days of trading around a weekend."""
    ticks = np.concatenate([rows for _, rows in drain(open_source(SYNTH), 1_600_000, 65536)])
    assert ticks["time"][-1] - ticks["time"][0] > 6 * 86400 * NS
    return ticks


def test_synthetic_quotes_look_like_fx(week: np.ndarray) -> None:
    ticks = week
    assert np.all(np.diff(ticks["time"]) >= 0)
    spread = (ticks["ask"] - ticks["bid"]) / 1e-4
    assert np.all(spread >= 0.5 - 1e-9) and np.all(spread <= 15.5)
    assert 0.9 < np.median(spread) < 1.3
    assert np.all(np.round(ticks["bid"], 5) == ticks["bid"])  # quoted to 5 decimals
    # Poisson arrivals: exponential gaps have a coefficient of variation near 1.
    wall = pd.to_datetime(ticks["time"])
    weekday = ~((wall.day_of_week == 6) & (wall.hour == 21) & (wall.minute == 0))
    gaps = np.diff(ticks["time"])[weekday[1:]] / 1e9
    gaps = gaps[gaps < 3600]
    assert 0.2 < gaps.mean() < 0.3
    assert 0.9 < gaps.std() / gaps.mean() < 1.1
    assert (gaps == 0).mean() > 0.001  # some ticks share a millisecond, as real ones do
    # The mid moves like a currency: daily log returns of a few tenths of a percent.
    days = pd.Series((ticks["bid"] + ticks["ask"]) / 2, index=wall).resample("D").last().dropna()
    assert 0.0005 < np.log(days).diff().std() < 0.02


def test_synthetic_market_is_shut_on_weekends(week: np.ndarray) -> None:
    wall = pd.to_datetime(week["time"])
    hours = (wall.day_of_week * 24 + wall.hour).to_numpy()
    friday_close, sunday_open = 4 * 24 + 21, 6 * 24 + 21
    assert not np.any((hours >= friday_close) & (hours < sunday_open))
    assert np.any(hours == friday_close - 1) and np.any(hours == sunday_open)


def test_synthetic_is_deterministic_and_resumes_at_a_position() -> None:
    config = FeedConfig(instruments=["EUR_USD", "USD_JPY", "GBP_USD"], start="2024-01-05T20:00Z")
    whole = stream(drain(open_source(config), 20_000, 333))
    assert whole == stream(drain(open_source(config), 20_000, 4096))
    assert whole[7_777:] == stream(drain(open_source(config, position=7_777), 20_000 - 7_777, 50))
    other = FeedConfig(instruments=config.instruments, start=config.start, seed=8)
    assert whole[:100] != stream(drain(open_source(other), 100))
    times = [t for _, t, _, _ in whole]
    assert times == sorted(times)  # instruments merged in time order
    assert {name for name, *_ in whole} == set(config.instruments)


def test_synthetic_without_start_keeps_its_origin_across_restarts() -> None:
    config = FeedConfig(instruments=["EUR_USD"])
    first = open_source(config)
    state = first.state()
    before = stream(drain(first, 500))
    assert before[200:] == stream(drain(open_source(config, 200, state), 300))


def test_replay_of_ticks_equals_the_file(ticks_file: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(ticks_file, nrows=5000)
    config = FeedConfig(kind="replay", file=str(ticks_file), speed=0)
    chunks = drain(open_source(config), 5000, 512)
    ticks = np.concatenate([rows for _, rows in chunks])
    assert {name for name, _ in chunks} == {"EUR_USD"}
    np.testing.assert_array_equal(ticks["bid"], frame["bid"])
    np.testing.assert_array_equal(ticks["ask"], frame["ask"])
    expected = pd.to_datetime(frame["time_utc"]).dt.tz_localize(None).to_numpy("datetime64[ns]")
    np.testing.assert_array_equal(ticks["time"], expected.view(np.int64))
    parquet = tmp_path / "ticks.parquet"
    frame.to_parquet(parquet)
    np.testing.assert_array_equal(replay_ticks(parquet), ticks)


def test_replay_of_bars_rebuilds_those_bars(m1_file: Path) -> None:
    ticks = replay_ticks(m1_file)
    m1 = pd.read_csv(m1_file)
    assert len(ticks) == 4 * len(m1)
    assert np.all(ticks["ask"] >= ticks["bid"])
    bars = run_kernel(ticks, ["M1"], batch=1000)["M1"]
    stamps = pd.to_datetime(m1["time_utc"], utc=True, format="ISO8601").dt.tz_localize(None)
    np.testing.assert_array_equal(bars["time"], stamps.to_numpy("datetime64[ns]").view(np.int64))
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(bars[field], m1[field].to_numpy(), err_msg=field)


def test_replay_stops_or_loops(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "time_utc,bid,ask\n2024-01-02T10:00:00Z,1.1,1.1001\n2024-01-02T10:00:05Z,1.2,1.2001\n"
    )
    once = ReplaySource(FeedConfig(kind="replay", file=str(path)), 0, {})
    assert len(once.read(10)[1]) == 2 and once.read(10) is None
    looped = ReplaySource(FeedConfig(kind="replay", file=str(path), loop=True), 0, {})
    times = np.concatenate([looped.read(1)[1]["time"] for _ in range(6)])
    assert np.all(np.diff(times) > 0)
    assert times[2] - times[0] == 6 * NS  # the copy starts one second after the end


def test_registry() -> None:
    assert source_class("synthetic") is SyntheticSource
    assert source_class("replay") is ReplaySource
    with pytest.raises(UnknownNameError, match="Did you mean 'replay'"):
        source_class("replya")

    class Fake(SyntheticSource):
        pass

    register_source("fake", Fake)
    assert source_class("fake") is Fake


def test_replay_errors_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        ReplaySource(
            FeedConfig(kind="replay", file="x.csv", instruments=["EUR_USD", "USD_JPY"]), 0, {}
        )
    with pytest.raises(DataError, match="no such data file"):
        replay_ticks(tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time_utc,last\n2024-01-02T10:00:00Z,1.1\n")
    with pytest.raises(DataError, match=r"neither ticks.*columns=\{'Time': 'time', 'Bid'"):
        replay_ticks(wrong)
