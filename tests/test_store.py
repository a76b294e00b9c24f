"""The bar store: atomic partition writes, journal recovery after a crash, dedupe, readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from osm.core import wire
from osm.core.dtypes import BAR_DTYPE
from osm.core.granularity import NS
from osm.core.rundir import RunDir
from osm.live import store as store_module
from osm.live.store import BarStore, JournalRecord, partition_path, read_bars

MAY = pd.Timestamp("2014-05-30T23:50Z").value


def minute_bars(start_ns: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bars = np.zeros(n, BAR_DTYPE)
    bars["time"] = start_ns + np.arange(n) * 60 * NS
    for name in BAR_DTYPE.names[1:9]:
        bars[name] = np.round(1.3 + rng.normal(0, 1e-3, n), 5)
    bars["ticks"], bars["complete"] = rng.integers(1, 50, n), True
    return bars


def record(bars: np.ndarray, seq: int, granularity: str = "M1") -> JournalRecord:
    forming = bars[-1:].copy()
    forming["complete"] = False
    return JournalRecord(
        closed=[wire.Bars.of("EUR_USD", granularity, bars)],
        forming=[wire.Bars.of("EUR_USD", granularity, forming)],
        seqs={"feed": seq},
        last_ticks={"EUR_USD": (int(bars["time"][-1]), 1.3, 1.3001)},
    )


@pytest.fixture
def root(home: Path) -> Path:
    return RunDir(home).bar_store


def test_journal_covers_the_open_period_and_a_crash_loses_nothing(root: Path, home: Path) -> None:
    writer = BarStore(root)
    writer.recover()
    data = minute_bars(MAY - 100 * 60 * NS, 30)
    for i in range(3):
        writer.append(record(data[i * 10 : (i + 1) * 10], seq=(i + 1) * 100))
    # A kill -9 now: nothing closed, nothing flushed. Readers already see every bar...
    assert not list(root.rglob("*.parquet"))
    np.testing.assert_array_equal(read_bars(home, "EUR_USD", "M1"), data)
    # ... and a new writer restores the state.
    again = BarStore(root)
    again.recover()
    assert again.seqs == {"feed": 300}
    assert again.last_ticks["EUR_USD"][0] == data["time"][-1]
    assert again.forming[("EUR_USD", "M1")]["time"][0] == data["time"][-1]
    np.testing.assert_array_equal(again.pending(("EUR_USD", "M1")), data)
    writer.close()
    again.close()


def test_a_torn_or_corrupt_tail_ends_the_journal(root: Path) -> None:
    writer = BarStore(root)
    writer.recover()
    data = minute_bars(MAY - 100 * 60 * NS, 20)
    writer.append(record(data[:10], seq=10))
    size = writer.journal_path.stat().st_size
    writer.append(record(data[10:], seq=20))
    writer.close()
    whole = writer.journal_path.read_bytes()
    for damaged in (whole[:-3], whole[:size] + b"\x00" * 12, whole[: size + 5]):
        writer.journal_path.write_bytes(damaged)
        again = BarStore(root)
        again.recover()
        assert again.seqs == {"feed": 10}
        np.testing.assert_array_equal(again.pending(("EUR_USD", "M1")), data[:10])
        again.close()
        writer.journal_path.write_bytes(whole)


def test_a_finished_period_goes_to_parquet_and_leaves_the_journal(root: Path, home: Path) -> None:
    writer = BarStore(root)
    writer.recover()
    data = minute_bars(MAY, 2 * 1440)  # from 30 May 23:50 into June
    may = data[data["time"] < pd.Timestamp("2014-06-01").value]
    writer.append(record(data[:100], seq=1))
    journal_before = writer.journal_path.stat().st_size
    assert not partition_path(root, "EUR_USD", "M1", "2014-05").exists()
    writer.append(record(data[100:], seq=2))  # June bars close: May is over
    stored = pd.read_parquet(partition_path(root, "EUR_USD", "M1", "2014-05"))
    assert len(stored) == len(may)
    assert stored["time"].iloc[0] == pd.Timestamp(int(may["time"][0]), tz="UTC")
    assert len(writer.pending(("EUR_USD", "M1"))) == len(data) - len(may)
    assert writer.journal_path.stat().st_size > journal_before  # June is still journaled
    np.testing.assert_array_equal(read_bars(home, "EUR_USD", "M1"), data)
    writer.flush()
    writer.close()
    assert partition_path(root, "EUR_USD", "M1", "2014-06").exists()
    assert len(writer.pending(("EUR_USD", "M1"))) == 0
    np.testing.assert_array_equal(read_bars(root, "EUR_USD", "M1"), data)
    # The layout is a hive-partitioned dataset any pyarrow user can open.
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(data)
    assert set(table.column("period").to_pylist()) == {"2014-05", "2014-06"}


@pytest.mark.parametrize("granularity", ["M1", "D"])
def test_every_bar_lands_in_its_own_period_whatever_the_rounds(
    root: Path, granularity: str
) -> None:
    """Rounds of a few bars, one straddling a period's end, one going back into an older period
    and one after a flush: each bar is in the partition its own time names (labelled one by one)."""
    step = 60 * NS if granularity == "M1" else 86_400 * NS
    start = pd.Timestamp("2014-05-31T23:50Z" if granularity == "M1" else "2013-12-20T00:00Z").value
    data = minute_bars(0, 40)
    data["time"] = start + np.arange(40) * step
    rounds = [data[:5], data[5:18], data[18:19], data[2:4], data[19:30]]
    writer = BarStore(root)
    writer.recover()
    for seq, bars in enumerate(rounds, 1):
        writer.append(record(bars, seq, granularity))
    writer.flush()
    writer.append(record(data[30:], 6, granularity))
    writer.flush()
    writer.close()
    labels = store_module.periods(data["time"], granularity)
    assert len(set(labels)) == 2
    for period in set(labels):
        stored = store_module._read_partition(partition_path(root, "EUR_USD", granularity, period))
        np.testing.assert_array_equal(stored["time"], data["time"][labels == period])


def test_bars_in_both_parquet_and_journal_are_read_once(root: Path) -> None:
    writer = BarStore(root)
    writer.recover()
    data = minute_bars(MAY - 600 * NS, 10)
    writer.append(record(data, seq=1))
    # A crash after the partition was renamed into place but before the journal was rewritten.
    store_module._write_partition(partition_path(root, "EUR_USD", "M1", "2014-05"), data[:6])
    writer.close()
    np.testing.assert_array_equal(read_bars(root, "EUR_USD", "M1"), data)
    again = BarStore(root)
    again.recover()
    again.flush()
    again.close()
    stored = pd.read_parquet(partition_path(root, "EUR_USD", "M1", "2014-05"))
    assert stored["time"].is_unique and len(stored) == 10
    np.testing.assert_array_equal(read_bars(root, "EUR_USD", "M1"), data)


def test_partition_writes_are_atomic(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = partition_path(root, "EUR_USD", "M1", "2014-05")
    first = minute_bars(MAY - 600 * NS, 5)
    store_module._write_partition(path, first)

    def crash(table, where, **_):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store_module.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        store_module._write_partition(path, minute_bars(MAY, 5, seed=1))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_bars(root, "EUR_USD", "M1"), first)  # the old file, intact
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == ["bars.parquet"]


def test_read_bars_selects_a_time_range(root: Path) -> None:
    writer = BarStore(root)
    writer.recover()
    data = minute_bars(pd.Timestamp("2014-04-30T23:00Z").value, 240)
    writer.append(record(data, seq=1))
    writer.flush()
    writer.close()
    start, end = data["time"][30], data["time"][200]
    np.testing.assert_array_equal(read_bars(root, "EUR_USD", "M1", start, end), data[30:200])
    iso = read_bars(root, "EUR_USD", "M1", "2014-05-01T00:00", pd.Timestamp("2014-05-01T01:00Z"))
    np.testing.assert_array_equal(iso, data[60:120])
    assert len(read_bars(root, "EUR_USD", "H1")) == 0
    assert len(read_bars(root, "GBP_USD", "M1")) == 0
    with pytest.raises(KeyError, match="Did you mean 'M1'"):
        read_bars(root, "EUR_USD", "m1")


def test_readers_see_every_bar_while_the_writer_appends(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = BarStore(root, max_journal_bytes=4096)  # rewrites often: the riskiest moment to read
    writer.recover()
    rewrites = []
    rewrite = writer._rewrite_journal
    monkeypatch.setattr(writer, "_rewrite_journal", lambda: rewrites.append(1) or rewrite())
    data = minute_bars(MAY - 3000 * 60 * NS, 4000)
    for i in range(0, 4000, 50):
        writer.append(record(data[i : i + 50], seq=i + 50))
        seen = read_bars(root, "EUR_USD", "M1")
        np.testing.assert_array_equal(seen, data[: i + 50])
    writer.close()
    leftovers = [p for p in root.rglob(".*") if p.is_file()]
    assert leftovers == [], "temporary files left behind"
    # The open period stays journaled, so rewrites back off (doubling) instead of coming every round.
    assert 5 <= len(rewrites) <= 12
    assert os.stat(writer.journal_path).st_size < 3 * len(data) * BAR_DTYPE.itemsize
