"""The router: kernels against slow oracles, then real feeder and router processes on real sockets."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
import zmq

from osm.core import wire
from osm.core.config import FeedConfig, RouterConfig, SystemConfig
from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS, as_ticks
from osm.core.granularity import NS, OANDA_ALIGNMENT, bar_open, step_ns
from osm.live.aggregate import (
    ACCEPTED,
    HELD,
    NO_BAR,
    REASONS,
    Guard,
    aggregate,
    ingest_screened,
    opens_of,
    to_bars,
    validate,
)
from osm.live.bus import feed_token
from osm.live.feeds.replay import load_ticks
from osm.live.router import LEAD_TICKS, PACE_TIMEOUT_S, REMIND_S, _Book
from osm.live.store import read_bars
from tests.live_helpers import LiveSystem, started_ok, wait_for

GRANULARITIES = ["S5", "M1", "M5", "H1"]


# ---------------------------------------------------------------- kernels against oracles


def oracle_bars(ticks: np.ndarray, granularity: str) -> np.ndarray:
    """Bars of `ticks` by plain pandas grouping: every bar, the last one included."""
    frame = pd.DataFrame(ticks)
    frame["open"] = [bar_open(int(t), granularity) for t in frame["time"]]
    grouped = frame.groupby("open", sort=True)
    bars = np.zeros(grouped.ngroups, BAR_DTYPE)
    bars["time"] = grouped.size().index
    for side in ("bid", "ask"):
        column = grouped[side]
        bars[f"{side}_open"], bars[f"{side}_close"] = column.first(), column.last()
        bars[f"{side}_high"], bars[f"{side}_low"] = column.max(), column.min()
    bars["ticks"], bars["complete"] = grouped.size(), True
    return bars


def run_kernel(ticks: np.ndarray, granularities: list[str], batch: int) -> dict[str, np.ndarray]:
    n = len(granularities)
    f_time, f_px, f_n = np.full(n, NO_BAR, np.int64), np.zeros((n, 8)), np.zeros(n, np.int64)
    out: dict[str, list[np.ndarray]] = {g: [] for g in granularities}
    for start in range(0, len(ticks), batch):
        chunk = ticks[start : start + batch]
        t, b, a = (np.ascontiguousarray(chunk[f]) for f in ("time", "bid", "ask"))
        opens = opens_of(t, granularities, OANDA_ALIGNMENT)
        room = opens.size
        c_gran, c_time, c_n = (np.empty(room, np.int64) for _ in range(3))
        c_px = np.empty((room, 8))
        k = aggregate(b, a, opens, f_time, f_px, f_n, c_gran, c_time, c_px, c_n)
        closed = to_bars(c_time[:k], c_px[:k], c_n[:k], True)
        for g, name in enumerate(granularities):
            out[name].append(closed[c_gran[:k] == g])
    for g, name in enumerate(granularities):  # the forming bar, to compare with the oracle's last
        out[name].append(to_bars(f_time[g : g + 1], f_px[g : g + 1], f_n[g : g + 1], True))
    return {name: np.concatenate(parts) for name, parts in out.items()}


@pytest.mark.parametrize("batch", [1, 7, 256, 100_000])
@pytest.mark.parametrize("seed", [0, 1])
def test_aggregate_equals_pandas_oracle(seed: int, batch: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    # Gaps from 0 (same instant) to hours, across a DST change and a month end (D bars move).
    times = pd.Timestamp("2014-03-08T20:00Z").value + np.cumsum(
        rng.choice([0, NS // 10, 3 * NS, 70 * NS, 4000 * NS], n, p=[0.1, 0.4, 0.3, 0.15, 0.05])
    )
    bid = np.round(1.3 + np.cumsum(rng.normal(0, 1e-4, n)), 5)
    ticks = as_ticks(times, bid, bid + np.round(rng.uniform(1e-5, 5e-4, n), 5))
    granularities = ["S5", "M1", "H4", "D", "W", "M"]
    result = run_kernel(ticks, granularities, batch)
    for name in granularities:
        np.testing.assert_array_equal(result[name], oracle_bars(ticks, name), err_msg=name)


def validate_oracle(ticks: np.ndarray) -> list[int]:
    codes, last = [], (NO_BAR, np.nan, np.nan)
    for t, b, a in ticks.tolist():
        if not (np.isfinite(b) and np.isfinite(a)):
            codes.append(REASONS.index("non_finite"))
        elif b <= 0 or a <= 0:
            codes.append(REASONS.index("non_positive"))
        elif a < b:
            codes.append(REASONS.index("crossed"))
        elif t < last[0]:
            codes.append(REASONS.index("out_of_order"))
        elif (t, b, a) == last:
            codes.append(REASONS.index("duplicate"))
        else:
            codes.append(0)
            last = (t, b, a)
    return codes


@pytest.mark.parametrize("seed", range(5))
def test_validate_equals_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    times = np.cumsum(rng.integers(-3, 5, n)) + 10**18
    choices = np.array([1.1, 1.1001, np.nan, np.inf, -1.0, 0.0, 1.2])
    bid = rng.choice(choices, n, p=[0.4, 0.3, 0.05, 0.05, 0.05, 0.05, 0.1])
    ask = rng.choice(choices, n, p=[0.3, 0.4, 0.05, 0.05, 0.05, 0.05, 0.1])
    ticks = as_ticks(times, bid, ask)
    codes = validate(
        ticks["time"].copy(), ticks["bid"].copy(), ticks["ask"].copy(), NO_BAR, np.nan, np.nan
    )
    assert codes.tolist() == validate_oracle(ticks)
    # The grid reaches every reason validate gives (the later ones are the router's screen's).
    assert set(codes.tolist()) == set(range(REASONS.index("duplicate") + 1))


def screen_oracle(ticks: np.ndarray, guard: Guard) -> list[int]:
    """The final code of every tick by the screening rule in plain Python, the stream at once.

    Invalid ticks are refused as by validate; a tick ahead of the clock is refused; a first tick,
    or one far in time or price from the last accepted one, starts a chain that is accepted when
    `confirm` following ticks side with it (each near the chain's last in time and price and,
    after a price spike, nearer its first than the last accepted mid), and refused as its first
    was otherwise.
    """

    def limit(elapsed: int, mid: float) -> float:
        minutes = elapsed / (60 * NS)
        return guard.band * mid * (minutes**0.5 if minutes > 1 else 1.0)

    codes: list[int] = []
    last: tuple[int, float, float] | None = None
    chain: list[int] = []
    why = ACCEPTED

    def mid_of(i: int) -> float:
        return (float(ticks["bid"][i]) + float(ticks["ask"][i])) / 2

    def suspect(i: int) -> int:
        if last is None:
            return REASONS.index("unconfirmed")
        t, last_mid = int(ticks["time"][i]), (last[1] + last[2]) / 2
        if t - last[0] > guard.jump_ns:
            return REASONS.index("time_jump")
        if abs(mid_of(i) - last_mid) > limit(t - last[0], last_mid):
            return REASONS.index("price_spike")
        return ACCEPTED

    for i, (t, b, a) in enumerate(ticks[["time", "bid", "ask"]].tolist()):
        codes.append(HELD)
        if not (np.isfinite(b) and np.isfinite(a)):
            codes[i] = REASONS.index("non_finite")
            continue
        if b <= 0 or a <= 0:
            codes[i] = REASONS.index("non_positive")
            continue
        if a < b:
            codes[i] = REASONS.index("crossed")
            continue
        if t > guard.max_time:
            codes[i] = REASONS.index("ahead_of_clock")
            continue
        last_time = -(2**63) if last is None else last[0]
        if chain:
            c, h = chain[-1], chain[0]
            if (t, b, a) == tuple(ticks[["time", "bid", "ask"]][c].tolist()):
                codes[i] = REASONS.index("duplicate")
                continue
            t_c = int(ticks["time"][c])
            if t >= t_c:
                last_mid = np.nan if last is None else (last[1] + last[2]) / 2
                near = t - t_c <= guard.jump_ns and abs(mid_of(i) - mid_of(c)) <= limit(
                    t - t_c, mid_of(c)
                )
                toward = abs(mid_of(i) - mid_of(h)) < abs(mid_of(i) - last_mid)
                if near and (why != REASONS.index("price_spike") or toward):
                    chain.append(i)
                    if len(chain) == guard.confirm + 1:
                        for k in chain:
                            codes[k] = ACCEPTED
                        chain, last = [], (t, b, a)
                    continue
            elif t < last_time:
                codes[i] = REASONS.index("out_of_order")
                continue
            for k in chain:
                codes[k] = why
            chain = []
        if t < last_time:
            codes[i] = REASONS.index("out_of_order")
        elif last is not None and (t, b, a) == last:
            codes[i] = REASONS.index("duplicate")
        elif why_i := suspect(i):
            chain, why = [i], why_i
        else:
            codes[i], last = ACCEPTED, (t, b, a)
    return codes


def run_ingest(
    ticks: np.ndarray, granularities: list[str], batch: int, guard: Guard
) -> tuple[dict, list]:
    """Feed `ticks` to the router's one-call kernel in batches, as the router does: the ticks
    still held after a batch go first in the next one. Return the bars and each tick's final code."""
    n = len(granularities)
    steps = np.array([step_ns(g) or 0 for g in granularities], np.int64)
    f_time, f_px, f_n = np.full(n, NO_BAR, np.int64), np.zeros((n, 8)), np.zeros(n, np.int64)
    closed, counts = np.empty((n, batch + guard.confirm + 1), BAR_DTYPE), np.zeros(n, np.int64)
    last = (NO_BAR, np.nan, np.nan)
    out: dict[str, list[np.ndarray]] = {g: [] for g in granularities}
    codes = np.full(len(ticks), HELD)
    held = np.zeros(0, np.int64)  # indices of the held ticks
    for start in range(0, len(ticks), batch):
        index = np.concatenate([held, np.arange(start, min(start + batch, len(ticks)))])
        chunk = ticks[index]
        calendar = opens_of(chunk["time"], granularities, OANDA_ALIGNMENT)
        chunk_codes, accepted, at = ingest_screened(
            chunk["time"], chunk["bid"], chunk["ask"], len(held), *last, *guard, steps, calendar,
            f_time, f_px, f_n, closed, counts,
        )  # fmt: skip
        codes[index] = chunk_codes
        held = index[chunk_codes == HELD]
        if accepted:
            last = (int(chunk["time"][at]), float(chunk["bid"][at]), float(chunk["ask"][at]))
        for g, name in enumerate(granularities):
            out[name].append(closed[g, : counts[g]].copy())
    for g, name in enumerate(granularities):
        out[name].append(to_bars(f_time[g : g + 1], f_px[g : g + 1], f_n[g : g + 1], True))
    return {name: np.concatenate(parts) for name, parts in out.items()}, codes.tolist()


def hostile_ticks(seed: int, n: int = 4000) -> np.ndarray:
    """Quotes with every tenth one broken, some far in the past, some spikes and time jumps."""
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2014-03-08T20:00Z").value + np.cumsum(
        rng.choice([0, NS // 10, 3 * NS, 70 * NS, 4000 * NS], n, p=[0.1, 0.4, 0.3, 0.15, 0.05])
    )
    bid = np.round(1.3 + np.cumsum(rng.normal(0, 1e-4, n)), 5)
    ask = bid + np.round(rng.uniform(1e-5, 5e-4, n), 5)
    bad = rng.random(n) < 0.1
    kind = rng.integers(0, 6, n)
    bid[bad & (kind == 0)] = np.nan
    ask[bad & (kind == 1)] = bid[bad & (kind == 1)] - 1e-4  # crossed
    times[bad & (kind == 2)] -= 10**13  # far in the past
    bid[bad & (kind == 3)] = -1.0
    spike = bad & (kind == 4)  # a lone bad print, 5% off
    bid[spike], ask[spike] = bid[spike] * 1.05, ask[spike] * 1.05
    times[bad & (kind == 5)] += 30 * 86_400 * NS  # a month ahead
    return as_ticks(times, bid, ask)


GUARDS = {
    "open": Guard(2**62, 2**62, np.inf, 1),  # screening off but for the first tick's confirmation
    "router": Guard(2**62, 3600 * NS, 0.01, 2),  # the router's defaults for a replay
    "strict": Guard(2**62, 60 * NS, 0.0005, 3),
}


@pytest.mark.parametrize("guard", sorted(GUARDS))
@pytest.mark.parametrize("batch", [1, 13, 4096])
def test_ingest_screened_codes_and_bars_equal_the_oracles(batch: int, guard: str) -> None:
    ticks = hostile_ticks(batch)
    result, codes = run_ingest(ticks, ["S5", "M1", "H4", "D", "M"], batch, GUARDS[guard])
    expected = screen_oracle(ticks, GUARDS[guard])
    assert codes == expected
    reached = {REASONS[c] for c in expected}
    assert {"accepted", "non_finite", "non_positive", "crossed", "out_of_order"} <= reached
    if guard != "open":  # the guard both holds and refuses
        assert {"time_jump", "price_spike"} <= reached, reached
    accepted = ticks[np.array(codes) == ACCEPTED]
    for name in result:
        np.testing.assert_array_equal(result[name], oracle_bars(accepted, name), err_msg=name)


# ---------------------------------------------------------------- real processes


def replay_config(ticks_file: Path, speed: float) -> SystemConfig:
    feed = FeedConfig(name="replay", kind="replay", file=str(ticks_file), speed=speed, batch=512)
    # Frequent heartbeats let the fault test kill the processes when it means to, mid-replay.
    return SystemConfig(
        feeds=[feed], router=RouterConfig(granularities=GRANULARITIES), heartbeat_s=0.1
    )


def stored(home: Path) -> dict[str, np.ndarray]:
    return {g: read_bars(home, "EUR_USD", g) for g in GRANULARITIES}


def run_replay(home: Path, ticks_file: Path, faults: bool) -> dict[str, np.ndarray]:
    """Replay the whole tick file through real processes; with faults, kill -9 both mid-way."""
    ticks = load_ticks(ticks_file)
    # With faults, the file's span is paced over ~9 s (other batches than the clean run's, too),
    # so the kills land mid-replay: the router at a fifth of the ticks, the feeder at three fifths.
    span_s = (int(ticks["time"][-1]) - int(ticks["time"][0])) / NS
    system = LiveSystem(home, replay_config(ticks_file, speed=span_s / 9 if faults else 0))
    try:
        system.start("router", "router")
        started_ok(system, "router")
        system.start("feeder", "replay")
        if faults:
            system.wait_counter("router", "ticks_applied", len(ticks) // 5, 60)
            system.kill("router", signal.SIGKILL)
            after_kill = stored(home)
            system.start("router", "router")
            started_ok(system, "router")
            system.wait_counter("replay", "acked", len(ticks) * 3 // 5, 60)
            system.kill("replay", signal.SIGKILL)
            system.start("feeder", "replay")
        feeder = system.wait_counter("replay", "finished", 1, 90)
        if faults:  # the restarted processes had work left: the kills were mid-replay
            assert feeder["ticks_sent"] > 0
            applied = system.wait_counter("router", "ticks_applied", 1, 10)["ticks_applied"]
            assert 0 < applied < len(ticks) - 1
        assert system.kill("router", signal.SIGTERM) == 0
        bars = stored(home)
        if faults:
            # What the killed router had journaled is a prefix of the final store, and not empty.
            assert len(after_kill["M1"]) > 100
            for g in GRANULARITIES:
                np.testing.assert_array_equal(after_kill[g], bars[g][: len(after_kill[g])])
        return bars
    finally:
        system.close()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, ticks_file: Path) -> dict[str, np.ndarray]:
    return run_replay(tmp_path_factory.mktemp("osm"), ticks_file, faults=False)


def read_m1(m1_file: Path, ticks_file: Path) -> pd.DataFrame:
    """The M1 file's bars within the tick file's span (the real M1 file also holds April 2018)."""
    frame = pd.read_csv(m1_file)
    stamps = pd.to_datetime(frame["time_utc"], utc=True, format="ISO8601")
    frame["time"] = stamps.dt.tz_localize(None).to_numpy("datetime64[ns]").view(np.int64)
    last_tick = pd.read_csv(ticks_file, usecols=["time_utc"])["time_utc"].iloc[-1]
    return frame[stamps <= pd.Timestamp(last_tick)].reset_index(drop=True)


def resample(m1: pd.DataFrame, step_s: int) -> pd.DataFrame:
    grouped = m1.groupby(m1["time"] - m1["time"] % (step_s * NS), sort=True)
    out = pd.DataFrame({"time": grouped.size().index})
    for side in ("bid", "ask"):
        out[f"{side}_open"] = grouped[f"{side}_open"].first().to_numpy()
        out[f"{side}_high"] = grouped[f"{side}_high"].max().to_numpy()
        out[f"{side}_low"] = grouped[f"{side}_low"].min().to_numpy()
        out[f"{side}_close"] = grouped[f"{side}_close"].last().to_numpy()
    return out


def assert_same_prices(bars: np.ndarray, expected: pd.DataFrame, name: str) -> None:
    # Every bar but the last one, which is still forming when the replay ends.
    expected = expected.iloc[:-1]
    np.testing.assert_array_equal(bars["time"], expected["time"].to_numpy(), err_msg=name)
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(
            bars[field], expected[field].to_numpy(), err_msg=f"{name} {field}"
        )
    assert bars["complete"].all()


def test_replayed_ticks_rebuild_oanda_bars(clean_run, ticks_file: Path, m1_file: Path) -> None:
    m1 = read_m1(m1_file, ticks_file)
    assert len(clean_run["M1"]) == len(m1) - 1 > 1_000
    assert_same_prices(clean_run["M1"], m1, "M1")
    assert_same_prices(clean_run["M5"], resample(m1, 300), "M5")
    assert_same_prices(clean_run["H1"], resample(m1, 3600), "H1")
    # Every tick before a series' forming bar is in exactly one of its closed bars, but exact
    # repeats of the tick before (dropped as duplicates: they change no price).
    ticks = load_ticks(ticks_file)
    for g in GRANULARITIES:
        used = ticks[ticks["time"] < clean_run[g]["time"][-1] + step_ns(g)]
        repeats = int((used[1:] == used[:-1]).sum())
        assert clean_run[g]["ticks"].sum() == len(used) - repeats, g


def test_kill_9_of_router_and_feeder_loses_and_duplicates_nothing(
    clean_run, ticks_file, home
) -> None:
    faulty = run_replay(home, ticks_file, faults=True)
    for g in GRANULARITIES:
        assert np.unique(faulty[g]["time"]).size == len(faulty[g])
        np.testing.assert_array_equal(faulty[g], clean_run[g], err_msg=g)


# ---------------------------------------------------------------- hostile input


class Batches:
    """Ticks batches of one feed with positions as seq, signed with the feed's token."""

    def __init__(self, feed: str, token: str) -> None:
        self.feed, self.token, self.position = feed, token, 0

    def next(self, instrument: str, ticks: np.ndarray) -> list[bytes]:
        self.position += len(ticks)
        return self.at(instrument, ticks, self.position)

    def at(self, instrument: str, ticks: np.ndarray, seq: int) -> list[bytes]:
        """A batch ending at position `seq`, which does not move this one's position."""
        message = wire.Ticks.of(instrument, ticks, self.feed, seq, self.token)
        return wire.frames("ticks", message)


def test_hostile_input_is_counted_and_valid_ticks_survive(home: Path) -> None:
    config = SystemConfig(
        feeds=[FeedConfig(name="f", instruments=["EUR_USD"])],
        router=RouterConfig(granularities=["S5", "M1"]),
    )
    system = LiveSystem(home, config)
    try:
        system.start("router", "router")
        started_ok(system, "router")
        dealer = system.socket(zmq.DEALER, "router_ticks")
        token = feed_token(system.rundir, "f")
        rng = np.random.default_rng(3)
        t0 = pd.Timestamp("2024-01-08T10:00Z").value
        valid = as_ticks(
            t0 + np.cumsum(rng.integers(1, 3 * NS, 3000)),
            np.round(1.1 + np.cumsum(rng.normal(0, 1e-5, 3000)), 5),
            np.zeros(3000),
        )
        valid["ask"] = valid["bid"] + 0.0001
        good = wire.Ticks.of("EUR_USD", valid[:10], "f", 10)
        payload = wire.encode(good)
        wrong_version = msgspec.msgpack.encode({**msgspec.to_builtins(good), "type": "ticks.v0"})
        malformed = [
            [rng.bytes(50)],
            [rng.bytes(10), rng.bytes(20), rng.bytes(30)],
            [b"ticks", rng.bytes(100)],
            [b"ticks", payload[: len(payload) // 2]],
            [b"ticks", wrong_version],
            [b"ticks", wire.encode(wire.Ticks("EUR_USD", 5, valid[:3].tobytes(), "f", 5, token))],
            [b"", b""],
        ]
        for frames in malformed:
            dealer.send_multipart(frames)
        dealer.send_multipart(wire.frames("ticks", wire.Ack("f", 1)))

        batches = Batches("f", token)
        expected = {
            "non_finite": 0,
            "non_positive": 0,
            "crossed": 0,
            "out_of_order": 0,
            "duplicate": 0,
        }
        sent_valid = 0
        for start in range(0, 3000, 100):
            chunk = valid[start : start + 100]
            bad = chunk[:5].copy()
            bad["bid"][0], bad["ask"][1] = np.nan, np.inf  # non-finite
            bad["bid"][2] = -bad["bid"][2]  # non-positive
            bad["ask"][3] = bad["bid"][3] - 0.0002  # crossed
            bad["time"][4] = t0 - NS  # before every accepted tick
            mixed = np.concatenate([chunk[:50], bad[:4], bad[4:5], chunk[49:50], chunk[50:]])
            for name in ("non_finite", "non_positive", "crossed", "out_of_order", "duplicate"):
                expected[name] += {"non_finite": 2, "non_positive": 1}.get(name, 1)
            frames = batches.next("EUR_USD", mixed)
            dealer.send_multipart(frames)
            if start == 1000:
                dealer.send_multipart(frames)  # a resend: dropped whole
                beyond = batches.position + 15
                dealer.send_multipart(batches.at("EUR_USD", chunk[:5], beyond))  # a gap
            sent_valid += len(chunk)
        dealer.send_multipart(batches.at("XXX_YYY", valid[:7], batches.position + 7))
        dealer.send_multipart(batches.at("GBP_USD", valid[:3], batches.position + 3))
        # A tick in a later minute closes every bar that holds the valid ticks.
        last_bid = valid["bid"][-1]
        closing = as_ticks([valid["time"][-1] + 120 * NS], [last_bid], [last_bid + 0.0001])
        dealer.send_multipart(batches.next("EUR_USD", closing))

        def acked() -> bool:
            while dealer.poll(0):
                _, ack = wire.parse(dealer.recv_multipart())
                if ack == wire.Ack("f", batches.position):
                    return True
            return False

        wait_for(acked, 30, f"ack of position {batches.position}")
        counters = wait_for(
            lambda: (
                (c := system.counters("router")).get("ticks_applied", 0) == sent_valid + 1 and c
            ),
            30,
            "router heartbeat with every valid tick applied",
        )
        for reason, count in expected.items():
            assert counters[f"rejected.{reason}"] == count, reason
        assert counters["rejected.malformed"] == len(malformed)
        assert counters["rejected.unexpected_message"] == 1
        assert counters["rejected.unknown_instrument"] == 10
        assert counters["batches_duplicate"] == 1
        assert counters["batches_gap"] == 1
        assert counters.get("errors", 0) == 0

        history = system.socket(zmq.DEALER, "router_history")
        for granularity in ("S5", "M1"):
            history.send_multipart(
                wire.frames("history", wire.HistoryRequest("EUR_USD", granularity, 10_000))
            )
            assert history.poll(10_000), "no history reply"
            topic, reply = wire.parse(history.recv_multipart())
            assert topic == f"history.EUR_USD.{granularity}"
            np.testing.assert_array_equal(reply.array(), oracle_bars(valid, granularity))
        # M5 is not built: it is resampled from M1, and only bars whose minutes all closed count.
        history.send_multipart(wire.frames("history", wire.HistoryRequest("EUR_USD", "M5", 500)))
        assert history.poll(10_000), "no history reply"
        topic, reply = wire.parse(history.recv_multipart())
        m1_closed = oracle_bars(valid, "M1")  # the closing tick closed every one of them
        m5 = oracle_bars(valid, "M5")
        m5 = m5[m5["time"] + 300 * NS <= m1_closed["time"][-1] + 60 * NS]
        assert topic == "history.EUR_USD.M5" and len(m5) > 10
        np.testing.assert_array_equal(reply.array(), m5)
        history.send_multipart(wire.frames("history", wire.HistoryRequest("EUR_USD", "M3", 1)))
        assert history.poll(10_000)
        topic, reply = wire.parse(history.recv_multipart())
        assert topic == "error" and "unknown granularity 'M3'" in reply.error and not reply.ok
        system.alive("router")
    finally:
        system.close()


@contextlib.contextmanager
def router_alone(home: Path, feed: FeedConfig) -> Iterator[tuple[LiveSystem, Batches]]:
    """A router building M1 bars of `feed`, and the signed batches the test sends as that feed."""
    config = SystemConfig(feeds=[feed], router=RouterConfig(granularities=["M1"]))
    system = LiveSystem(home, config)
    try:
        system.start("router", "router")
        started_ok(system, "router")
        yield system, Batches(feed.name, feed_token(system.rundir, feed.name))
    finally:
        system.close()


def test_closed_bars_name_the_bar_before_them_over_minutes_without_ticks(home: Path) -> None:
    """Each message of closed bars says which bar the series closed before its first
    (``previous``), so a follower tells a minute the market skipped from a message it lost."""
    with router_alone(home, FeedConfig(name="f")) as (system, batches):
        sub = system.socket(zmq.SUB, "router_bars")
        for topic in (b"bar.EUR_USD.M1", b"tick.EUR_USD"):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        dealer = system.socket(zmq.DEALER, "router_ticks")
        t0 = pd.Timestamp("2024-01-08T10:00Z").value

        def send(times_ns: list[int]) -> None:
            bid = np.full(len(times_ns), 1.1)
            dealer.send_multipart(batches.next("EUR_USD", as_ticks(times_ns, bid, bid + 1e-4)))

        def ticks_seen() -> bool:
            send([t0 + batches.position * 10**6])  # ticks 1 ms apart in minute 0: no bar closes
            return sub.poll(100) and sub.recv_multipart()[0] == b"tick.EUR_USD"

        wait_for(ticks_seen, 30, "the subscription to reach the router")
        minute = 60 * NS
        send([t0 + m * minute for m in (1, 4)])  # 2 and 3 without a tick: no bar
        send([t0 + m * minute for m in (5, 9, 10)])
        closed = []
        while len(closed) < 2:
            assert sub.poll(10_000), "no closed bars"
            topic, payload = sub.recv_multipart()
            if topic == b"bar.EUR_USD.M1":
                closed.append(wire.decode(payload))
        assert [(list((m.array()["time"] - t0) // minute), m.previous) for m in closed] == [
            ([0, 1], -1),  # the series' first bars
            ([4, 5, 9], t0 + minute),
        ]


class TickASecond:
    """A feed's ticks, one a second from `t0`, sent in batches of 1000; the router's count of
    those it applied."""

    def __init__(self, system: LiveSystem, batches: Batches) -> None:
        self.system, self.batches = system, batches
        self.dealer = system.socket(zmq.DEALER, "router_ticks")
        self.t0 = pd.Timestamp("2024-01-08T10:00Z").value
        self.sent = 0

    def send(self, n: int) -> None:
        for start in range(self.sent, self.sent + n, 1000):
            times = self.t0 + np.arange(start, start + 1000) * NS
            bid = np.full(1000, 1.1)
            ticks = as_ticks(times, bid, bid + 1e-4)
            self.dealer.send_multipart(self.batches.next("EUR_USD", ticks))
        self.sent += n

    def applied(self) -> int:
        return self.system.counters("router").get("ticks_applied", 0)


def test_a_flat_out_replay_waits_for_a_brain_whose_decisions_are_not_answered(home: Path) -> None:
    """Once LEAD_TICKS ticks came after the last bar a brain had answered, a flat-out feed's
    batches are held back (neither applied nor acknowledged), and a brain that does not move is
    sent the last closed bar again; they go on when the brain catches up, or when it falls
    silent (gone) for PACE_TIMEOUT_S."""
    with router_alone(home, FeedConfig(name="f", speed=0, batch=1000)) as (system, batches):
        brain = system.socket(zmq.DEALER, "router_history")
        feed = TickASecond(system, batches)

        def decided(until_ns: int, heard: int) -> None:
            message = wire.Decided("EUR_USD", "M1", until_ns)
            brain.send_multipart([b"decided", *wire.frames("decided", message)])
            system.wait_counter("router", "decided_heard", heard, 30)

        decided(0, 1)  # nothing answered yet
        feed.send(LEAD_TICKS + 10_000)
        held = system.wait_counter("router", "batches_paced", 1, 30)
        assert LEAD_TICKS <= held["ticks_applied"] <= LEAD_TICKS + 2000
        assert not wait_for_quiet(feed.applied, 1.0) < LEAD_TICKS  # it stays held back
        # A brain that does not move may have lost a bar: the last closed one is sent again.
        system.wait_counter("router", "bars_reminded", 1, REMIND_S + 2)
        decided(feed.t0 + feed.sent * NS + 3600 * NS, 2)  # caught up with every bar
        wait_for(lambda: feed.applied() == feed.sent, 30, "the held batches applied")
        decided(0, 3)  # far behind again, then silent
        feed.send(5000)
        system.wait_counter("router", "batches_paced", held["batches_paced"] + 5, 30)
        assert feed.applied() < feed.sent
        wait_for(
            lambda: feed.applied() == feed.sent, PACE_TIMEOUT_S + 20, "a silent brain forgotten"
        )


def test_a_flat_out_replay_waits_for_the_trader_to_take_its_quotes(home: Path) -> None:
    """The trader says how far it took an instrument's quotes (wire.Quoted): once LEAD_TICKS
    ticks came after that, a flat-out feed is held back, and goes on as the trader catches up,
    or when it does not move for REMIND_S (it lost quotes, which the coming ones replace). Each
    batch's ticks go out before the bars they close, so an order decided on a bar finds its
    fill quote at the trader."""
    with router_alone(home, FeedConfig(name="f", speed=0, batch=1000)) as (system, batches):
        trader = system.socket(zmq.DEALER, "router_history")
        sub = system.socket(zmq.SUB, "router_bars")
        for topic in (b"bar.EUR_USD.M1", b"tick.EUR_USD"):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        feed = TickASecond(system, batches)

        def quoted(until_ns: int, heard: int) -> None:
            trader.send_multipart(
                [b"quoted", *wire.frames("quoted", wire.Quoted("EUR_USD", until_ns))]
            )
            system.wait_counter("router", "quoted_heard", heard, 30)

        wait_for(lambda: sub.poll(0) or (feed.send(1000) or False) or sub.poll(200), 30, "a tick")
        quoted(feed.t0 + (feed.sent - 1) * NS, 1)  # every quote taken so far
        before = feed.sent
        feed.send(3 * LEAD_TICKS)
        held = system.wait_counter("router", "batches_paced", 1, 30)
        assert LEAD_TICKS <= held["ticks_applied"] - before <= LEAD_TICKS + 2000
        taken = held["ticks_applied"]
        quoted(
            feed.t0 + (taken - 1) * NS, 2
        )  # caught up: a lead more goes through, then held again
        wait_for(lambda: feed.applied() >= taken + LEAD_TICKS - 1000, 30, "a lead more applied")
        assert feed.applied() < feed.sent
        wait_for(lambda: feed.applied() == feed.sent, REMIND_S + 30, "a trader not moving let go")

        seen_ns = -1  # the newest tick published so far
        while sub.poll(1000):
            topic, payload = sub.recv_multipart()
            message = wire.decode(payload)
            if topic == b"tick.EUR_USD":
                seen_ns = max(seen_ns, int(message.array()["time"].max()))
            else:  # its last bar closed at a tick published before it
                assert seen_ns >= int(message.array()["time"][-1]) + 60 * NS


def wait_for_quiet(value: Callable[[], int], seconds: float) -> int:
    """`value` after it stayed the same for `seconds`."""
    last, since = value(), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.1)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_the_lead_is_measured_within_a_batch_of_any_size_in_bounded_memory() -> None:
    book = _Book("EUR_USD", ["M1"], 10)
    times = np.arange(3 * LEAD_TICKS, dtype=np.int64)
    book.mark(times)  # one batch, far larger than the lead
    start = book.lead_start(0)
    after = np.count_nonzero(times > start)  # ticks that came after it
    assert LEAD_TICKS <= after <= LEAD_TICKS + LEAD_TICKS // 8
    assert book.lead_start(LEAD_TICKS) > start  # a batch as long to come: held back sooner
    marks = len(book.marks)
    assert marks <= 10
    for _ in range(100):
        book.mark(times[:0])  # a batch whose every tick was refused: nothing noted
    assert len(book.marks) == marks
