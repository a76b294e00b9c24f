"""The bar store: a Parquet dataset of closed bars, with an append-only journal for the open part.

Layout under the store root (``$OSM_HOME/store/bars``), hive-partitioned so
``pyarrow.dataset.dataset(root, partitioning="hive")`` reads it too::

    instrument=EUR_USD/granularity=M1/period=2014-05/bars.parquet   (period: month below D, year for D W M)
    _journal/router.journal

A partition file is written once its period is over (the first bar of a later period closed), and
on a clean shutdown; always to a temporary file renamed over the old one, merged with what the old
one held. Until then its bars live in the journal, which the router appends to after every round of
batches. A journal record holds the bars that closed, the forming bars that changed, the feeds'
last applied seq, the instruments' last accepted tick and the ticks held until confirmed
(:func:`osm.live.aggregate.screen`), so a router killed with -9 restores all of it. Record format: 8-byte header (payload length, CRC-32, both uint32 little-endian) and a
msgpack :class:`JournalRecord`; the file starts with :data:`JOURNAL_MAGIC`; a torn or corrupt tail
(a kill during a write) ends the journal. When a partition is written, or the journal grows past
its limit, the journal is rewritten (temp + rename) as one record: the state and the bars not yet in
Parquet. Every rename is followed by an fsync of its folder, so a power loss cannot undo it after
the journal has dropped the bars the renamed file holds. Loading dedupes bars on open time (the journal wins), so a crash between a partition write
and the journal rewrite never duplicates a bar.

Readers never lock: they read the journal first, then the Parquet files. A writer renames the
partition before it drops its bars from the journal, so a reader sees every bar at least once.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from osm.core import wire
from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, empty_bars
from osm.core.granularity import check_granularity, step_ns

JOURNAL_MAGIC = b"OSMJRN1\n"
_HEADER = struct.Struct("<II")
_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("ns", tz="UTC")),
        *((f, pa.float64()) for f in PRICE_FIELDS),
        ("ticks", pa.int64()),
        ("complete", pa.bool_()),
    ]
)
SeriesKey = tuple[str, str]  # (instrument, granularity)


class JournalRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One round of the router's work, or (after a rewrite) its whole state."""

    closed: list[wire.Bars] = []
    forming: list[wire.Bars] = []
    seqs: dict[str, int] = {}
    last_ticks: dict[str, tuple[int, float, float]] = {}
    held: list[wire.Ticks] = []  # per instrument, the ticks held until confirmed (none: empty)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalRecord)


def store_root(home_or_store: str | Path) -> Path:
    """The bar store root of a run directory, or the path itself if it is a store root."""
    path = Path(home_or_store).expanduser()
    nested = path / "store" / "bars"
    return nested if nested.is_dir() else path


def periods(times: np.ndarray, granularity: str) -> np.ndarray:
    """Partition period of each bar: ``YYYY-MM`` below a day, ``YYYY`` for D, W and M."""
    unit = "M" if step_ns(granularity) is not None else "Y"
    return np.datetime_as_string(times.astype("datetime64[ns]").astype(f"datetime64[{unit}]"))


def period_span(time_ns: int, granularity: str) -> tuple[str, int, int]:
    """The partition period holding a bar opening at `time_ns`: its label and [start, end) in ns."""
    unit = "M" if step_ns(granularity) is not None else "Y"
    start = np.datetime64(time_ns, "ns").astype(f"datetime64[{unit}]")
    bounds = np.array([start, start + 1]).astype("datetime64[ns]").astype(np.int64)
    return str(start), int(bounds[0]), int(bounds[1])


def join_bars(chunks: list[np.ndarray]) -> np.ndarray:
    """One BAR_DTYPE array of many (``dtype=`` spares numpy a field promotion per chunk)."""
    return np.concatenate(chunks, dtype=BAR_DTYPE) if chunks else empty_bars()


def partition_path(root: Path, instrument: str, granularity: str, period: str) -> Path:
    return (
        root / f"instrument={instrument}" / f"granularity={granularity}" / f"period={period}"
    ) / "bars.parquet"


def dedupe(bars: np.ndarray) -> np.ndarray:
    """Sort bars by open time, keeping the last given of each time."""
    if len(bars) < 2:
        return bars
    order = np.lexsort((np.arange(len(bars)), bars["time"]))
    ordered = bars[order]
    keep = np.append(ordered["time"][1:] != ordered["time"][:-1], True)
    return ordered[keep]


def _to_table(bars: np.ndarray) -> pa.Table:
    columns = [
        pa.array(bars["time"].astype("datetime64[ns]"), pa.timestamp("ns")).cast(_SCHEMA[0].type)
    ]
    columns += [pa.array(bars[name]) for name in _SCHEMA.names[1:]]
    return pa.Table.from_arrays(columns, schema=_SCHEMA)


def _from_table(table: pa.Table) -> np.ndarray:
    bars = empty_bars(table.num_rows)
    bars["time"] = table.column("time").cast(pa.int64()).to_numpy()
    for name in _SCHEMA.names[1:]:
        bars[name] = table.column(name).to_numpy()
    return bars


def _read_partition(path: Path) -> np.ndarray:
    try:
        return _from_table(pq.read_table(path, schema=_SCHEMA))
    except FileNotFoundError:
        return empty_bars()


def _write_partition(path: Path, bars: np.ndarray) -> None:
    """Merge `bars` into the partition file, atomically (a reader sees the old or the new file)."""
    merged = dedupe(join_bars([_read_partition(path), bars]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(_to_table(merged), tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename into `folder` durable: without it a power loss can undo the rename."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: Path) -> Iterator[JournalRecord]:
    """The records of a journal, up to the first torn or corrupt one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if not data.startswith(JOURNAL_MAGIC):
        raise wire.WireError(f"{path} is not an osm bar journal; move it out of the store")
    offset = len(JOURNAL_MAGIC)
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        payload = data[offset + _HEADER.size : offset + _HEADER.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            return
        try:
            yield _decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        offset += _HEADER.size + length


def _record_bytes(record: JournalRecord) -> bytes:
    payload = _encoder.encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _as_ns(moment: object) -> int | None:
    if moment is None:
        return None
    if isinstance(moment, int | np.integer):
        return int(moment)
    stamp = pd.Timestamp(moment)  # str, datetime, np.datetime64, pd.Timestamp
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).value


def read_bars(
    home_or_store: str | Path,
    instrument: str,
    granularity: str,
    start: int | str | dt.datetime | None = None,
    end: int | str | dt.datetime | None = None,
) -> np.ndarray:
    """Closed bars of one series with open time in [start, end), oldest first, as BAR_DTYPE.

    Parameters
    ----------
    home_or_store
        A run directory ($OSM_HOME) or a bar store root.
    start, end
        int ns UTC, an ISO string, a datetime or a Timestamp (naive means UTC); None: unbounded.
    """
    check_granularity(granularity)
    root = store_root(home_or_store)
    start_ns, end_ns = _as_ns(start), _as_ns(end)
    parts = []
    # Journal first: a writer drops bars from it only after their partition file is in place.
    for journal in sorted((root / "_journal").glob("*.journal")):
        for record in read_journal(journal):
            parts += [
                b.array()
                for b in record.closed
                if (b.instrument, b.granularity) == (instrument, granularity)
            ]
    stored = _partitions(root, instrument, granularity, start_ns, end_ns)
    return _between(dedupe(join_bars([*stored, *parts])), start_ns, end_ns)


def _partitions(
    root: Path, instrument: str, granularity: str, start_ns: int | None, end_ns: int | None
) -> list[np.ndarray]:
    """The Parquet partitions of a series whose period may hold bars in [start_ns, end_ns)."""
    folder = root / f"instrument={instrument}" / f"granularity={granularity}"
    low = periods(np.array([start_ns]), granularity)[0] if start_ns is not None else ""
    high = periods(np.array([end_ns]), granularity)[0] if end_ns is not None else "~"
    return [
        _read_partition(p / "bars.parquet")
        for p in sorted(folder.glob("period=*"))
        if low <= p.name.removeprefix("period=") <= high
    ]


def _between(bars: np.ndarray, start_ns: int | None, end_ns: int | None) -> np.ndarray:
    mask = np.ones(len(bars), bool)
    if start_ns is not None:
        mask &= bars["time"] >= start_ns
    if end_ns is not None:
        mask &= bars["time"] < end_ns
    return np.ascontiguousarray(bars[mask])


class BarStore:
    """The writer of a bar store: one per store (the router's), never shared between processes.

    Parameters
    ----------
    root
        The store root (``RunDir.bar_store``).
    writer
        Names the journal file.
    max_journal_bytes
        Rewrite the journal when it grows past this (it holds a forming snapshot per round), or
        past twice its size after the last rewrite if that is more (an open period's bars stay in
        it, and rewriting them at every round would cost quadratic time).
    """

    def __init__(self, root: Path, writer: str = "router", max_journal_bytes: int = 256 << 20):
        self.root = Path(root)
        self.journal_path = self.root / "_journal" / f"{writer}.journal"
        self.max_journal_bytes = max_journal_bytes
        self.seqs: dict[str, int] = {}
        self.forming: dict[SeriesKey, np.ndarray] = {}
        self.last_ticks: dict[str, tuple[int, float, float]] = {}
        self.held: dict[str, np.ndarray] = {}
        self._pending: dict[SeriesKey, dict[str, list[np.ndarray]]] = {}
        # The period each series last closed a bar in: nearly every round's bars fall in it, and
        # labelling each bar (periods()) cost more than the rest of a round.
        self._spans: dict[SeriesKey, tuple[str, int, int]] = {}
        self._fd: int | None = None
        self._size = self._rewrite_at = 0

    def recover(self) -> None:
        """Load the journal (state and bars not yet in Parquet), write finished periods, rewrite it."""
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        for record in read_journal(self.journal_path):
            self._absorb(record)
        self._write_partitions(everything=False)
        self._rewrite_journal()

    def append(self, record: JournalRecord) -> None:
        """Journal one round; write partitions whose period is over."""
        if self._fd is None:
            raise RuntimeError("BarStore.recover() must run before append()")
        data = _record_bytes(record)
        os.write(self._fd, data)
        self._size += len(data)
        if self._absorb(record) or self._size > self._rewrite_at:
            self._write_partitions(everything=False)
            self._rewrite_journal()

    def flush(self) -> None:
        """Write every pending bar, open periods included, to Parquet (on a clean shutdown)."""
        self._write_partitions(everything=True)
        self._rewrite_journal()

    def sync(self) -> None:
        """Make appended records durable across a power loss (a killed process loses none anyway)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def pending(self, key: SeriesKey) -> np.ndarray:
        """Closed bars of a series that are in the journal only."""
        chunks = [a for arrays in self._pending.get(key, {}).values() for a in arrays]
        return dedupe(join_bars(chunks))

    def stored(self, key: SeriesKey, start_ns: int, end_ns: int) -> np.ndarray:
        """The closed bars of a series in [start_ns, end_ns) it holds, journaled or in Parquet
        (what it has in memory, not the journal file: the writer's own view, read cheaply)."""
        parts = _partitions(self.root, *key, start_ns, end_ns)
        return _between(dedupe(join_bars([*parts, self.pending(key)])), start_ns, end_ns)

    def _absorb(self, record: JournalRecord) -> bool:
        """Fold a record into memory; True if some series has moved past a period."""
        finished = False
        for message in record.closed:
            key = (message.instrument, message.granularity)
            bars = message.array()
            if not len(bars):
                continue
            by_period = self._pending.setdefault(key, {})
            times, span = bars["time"], self._spans.get(key)
            if span is not None and span[1] <= times.min() and times.max() < span[2]:
                by_period.setdefault(span[0], []).append(bars)
            else:
                labels = periods(times, message.granularity)
                for period in np.unique(labels):
                    by_period.setdefault(str(period), []).append(bars[labels == period])
                self._spans[key] = period_span(int(times.max()), message.granularity)
            finished |= len(by_period) > 1
        for message in record.forming:
            self.forming[(message.instrument, message.granularity)] = message.array().copy()
        self.seqs.update(record.seqs)
        self.last_ticks.update(record.last_ticks)
        for message in record.held:
            self.held[message.instrument] = message.array().copy()
        return finished

    def _write_partitions(self, everything: bool) -> None:
        for (instrument, granularity), by_period in self._pending.items():
            ordered = sorted(by_period)
            for period in ordered if everything else ordered[:-1]:
                bars = dedupe(join_bars(by_period.pop(period)))
                _write_partition(partition_path(self.root, instrument, granularity, period), bars)

    def _rewrite_journal(self) -> None:
        snapshot = JournalRecord(
            closed=[
                wire.Bars.of(i, g, self.pending((i, g)))
                for (i, g) in self._pending
                if self._pending[(i, g)]
            ],
            forming=[wire.Bars.of(i, g, bars) for (i, g), bars in self.forming.items()],
            seqs=dict(self.seqs),
            last_ticks=dict(self.last_ticks),
            held=[wire.Ticks.of(i, ticks) for i, ticks in self.held.items() if len(ticks)],
        )
        data = JOURNAL_MAGIC + _record_bytes(snapshot)
        tmp = self.journal_path.with_name(f".{self.journal_path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.journal_path)
        sync_folder(self.journal_path.parent)
        self.close()
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)
        self._rewrite_at = max(self.max_journal_bytes, 2 * len(data))
        self._pending = {key: by_period for key, by_period in self._pending.items() if by_period}
