"""Tick validation and tick-to-bar aggregation kernels of the router (numba, pure over arrays).

The aggregation itself is :func:`osm.core.resample.fold`, the one kernel research uses as well;
this module validates ticks and drives it batch by batch.

Array contract: a batch of ticks is three equal-length arrays in arrival order, `time` int64 ns UTC,
`bid` and `ask` float64. The forming bars of one instrument are three arrays over its G
granularities: `f_time` int64 (open time, or NO_BAR), `f_px` float64 (G, 8) in PRICE_FIELDS order
(bid OHLC then ask OHLC) and `f_n` int64 tick counts; the kernels update them in place. `opens` is
int64 (G, n): the open time of the bar of each granularity that holds each tick, computed by the
caller (D/W/M alignment needs time zones, which numba has not).

:func:`screen` is the router's defence against well-formed but implausible quotes (a tick dated
2100, a print at 1000.0 between quotes at 1.09): such a tick is held as *suspect* and accepted only
once the quotes that follow it confirm it; a lone one is dropped. docs/security.md says how it
decides.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from osm.core.granularity import Alignment, bar_opens, step_ns
from osm.core.resample import NO_BAR, Closed, Forming, fold, from_bars, tick_rows, to_bars

__all__ = [
    "ACCEPTED", "HELD", "NO_BAR", "REASONS", "Guard", "aggregate", "from_bars",
    "ingest_screened", "opens_of", "screen", "to_bars", "validate",
]  # fmt: skip

ACCEPTED = 0
NON_FINITE = 1
NON_POSITIVE = 2
CROSSED = 3
OUT_OF_ORDER = 4
DUPLICATE = 5
AHEAD_OF_CLOCK = 6
TIME_JUMP = 7
PRICE_SPIKE = 8
UNCONFIRMED = 9
HELD = 10
REASONS = (
    "accepted", "non_finite", "non_positive", "crossed", "out_of_order", "duplicate",
    "ahead_of_clock", "time_jump", "price_spike", "unconfirmed", "held",
)  # fmt: skip
"""Names of the codes :func:`validate` and :func:`screen` return, as counted in
`rejected.<reason>` (HELD is no refusal: the tick waits for the quotes that confirm it)."""
_MINUTE_NS = 60 * 10**9


class Guard(NamedTuple):
    """How :func:`screen` tells an implausible quote (the router's settings, in kernel units).

    max_time
        int ns: a later tick is refused as AHEAD_OF_CLOCK (the receiving clock plus a lead for a
        feed paced at real time or slower; int64 max for a replay at any other speed).
    jump_ns
        int ns: a tick this much later than the last accepted one is held until confirmed.
    band
        float: a mid that moved more than this fraction of the last mid, times the square root of
        the minutes elapsed (at least 1), is held until confirmed.
    confirm
        int >= 1: following ticks that must side with a held one before it is accepted.
    """

    max_time: int
    jump_ns: int
    band: float
    confirm: int


@njit(cache=True)
def validate(
    time: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    last_time: int,
    last_bid: float,
    last_ask: float,
) -> np.ndarray:
    """Code each tick (ACCEPTED or why not) against the previous accepted one of its instrument.

    A repeat of the last accepted tick (same time, bid and ask) is a DUPLICATE: it changes no price
    of any bar and would only inflate tick counts, and it is what a resend without seq looks like.
    """
    codes = np.zeros(len(time), np.int8)
    for i in range(len(time)):
        t, b, a = time[i], bid[i], ask[i]
        if not (np.isfinite(b) and np.isfinite(a)):
            codes[i] = NON_FINITE
        elif b <= 0.0 or a <= 0.0:
            codes[i] = NON_POSITIVE
        elif a < b:
            codes[i] = CROSSED
        elif t < last_time:
            codes[i] = OUT_OF_ORDER
        elif t == last_time and b == last_bid and a == last_ask:
            codes[i] = DUPLICATE
        else:
            last_time, last_bid, last_ask = t, b, a
    return codes


@njit(cache=True)
def aggregate(
    bid: np.ndarray,
    ask: np.ndarray,
    opens: np.ndarray,
    f_time: np.ndarray,
    f_px: np.ndarray,
    f_n: np.ndarray,
    c_gran: np.ndarray,
    c_time: np.ndarray,
    c_px: np.ndarray,
    c_n: np.ndarray,
) -> int:
    """Fold accepted ticks into the forming bars; write the bars they close to `c_*`, return how many.

    :func:`osm.core.resample.fold` on ticks, the kernel research's ``ticks_to_bars`` uses too.
    `c_*` need room for G * n bars (each tick closes at most one bar per granularity). A bar closes
    when the first tick of a later bar arrives; closed bars come out in time order per granularity.
    """
    forming = Forming(f_time, f_px, f_n)
    return fold(tick_rows(bid, ask), opens, forming, Closed(c_gran, c_time, c_px, c_n))


@njit(cache=True)
def _limit(elapsed_ns: int, mid: float, band: float) -> float:
    """The largest plausible move of `mid` in `elapsed_ns`: `band` a minute, growing as sqrt(t)."""
    minutes = elapsed_ns / _MINUTE_NS
    return band * mid * (np.sqrt(minutes) if minutes > 1.0 else 1.0)


@njit(cache=True)
def _suspect(t: int, mid: float, last_time: int, last_mid: float, jump_ns: int, band: float) -> int:
    """Why a tick after the last accepted one is implausible (0: it is plausible)."""
    if last_time == NO_BAR:
        return UNCONFIRMED  # nothing to compare with: the following ticks must agree with it
    if t - last_time > jump_ns:
        return TIME_JUMP
    if abs(mid - last_mid) > _limit(t - last_time, last_mid, band):
        return PRICE_SPIKE
    return ACCEPTED


@njit(cache=True)
def screen(
    time: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    n_held: int,
    last_time: int,
    last_bid: float,
    last_ask: float,
    max_time: int,
    jump_ns: int,
    band: float,
    confirm: int,
) -> np.ndarray:
    """Code each tick as :func:`validate` does, holding the implausible ones until confirmed.

    The first `n_held` ticks are the ones still HELD after the previous batch (the caller puts them
    before the batch). A tick later than `max_time` is AHEAD_OF_CLOCK. A tick more than `jump_ns`
    after the last accepted one, or whose mid moved more than :func:`_limit` from it, or the first
    tick of an instrument, starts a chain of HELD ticks. A following tick joins the chain if it is
    no earlier than the chain's last tick nor more than `jump_ns` after it, its mid within
    :func:`_limit` of that tick's and, for a
    price jump, nearer the chain's first mid than the last accepted one; when `confirm` ticks have
    joined, the whole chain is ACCEPTED. Any other following tick contradicts the chain: its ticks
    are refused (TIME_JUMP, PRICE_SPIKE or UNCONFIRMED, as its first tick was) and the tick is
    judged against the last accepted tick again. Ticks still HELD at the end wait for the next
    batch. Codes depend on the ticks only, never on how they were batched.
    """
    n = len(time)
    codes = np.zeros(n, np.int8)
    chain = np.empty(confirm + 1, np.int64)
    held, why = 0, ACCEPTED  # chain length, and why its first tick was held
    last_mid = (last_bid + last_ask) / 2
    for i in range(n):
        t, b, a = time[i], bid[i], ask[i]
        mid = (b + a) / 2
        if i < n_held:
            if held == 0:
                why = _suspect(t, mid, last_time, last_mid, jump_ns, band) or UNCONFIRMED
            chain[held], held, codes[i] = i, held + 1, HELD
            continue
        if not (np.isfinite(b) and np.isfinite(a)):
            codes[i] = NON_FINITE
            continue
        if b <= 0.0 or a <= 0.0:
            codes[i] = NON_POSITIVE
            continue
        if a < b:
            codes[i] = CROSSED
            continue
        if t > max_time:
            codes[i] = AHEAD_OF_CLOCK
            continue
        if held:
            c, h = chain[held - 1], chain[0]
            if t == time[c] and b == bid[c] and a == ask[c]:
                codes[i] = DUPLICATE
                continue
            if t >= time[c]:
                c_mid, h_mid = (bid[c] + ask[c]) / 2, (bid[h] + ask[h]) / 2
                # A link of the chain is itself plausible: not far in time, nor in price.
                near = t - time[c] <= jump_ns and abs(mid - c_mid) <= _limit(
                    t - time[c], c_mid, band
                )
                if near and (why != PRICE_SPIKE or abs(mid - h_mid) < abs(mid - last_mid)):
                    chain[held], held, codes[i] = i, held + 1, HELD
                    if held == confirm + 1:
                        for k in range(held):
                            codes[chain[k]] = ACCEPTED
                        held, last_time, last_bid, last_ask, last_mid = 0, t, b, a, mid
                    continue
            elif t < last_time:
                codes[i] = OUT_OF_ORDER
                continue
            for k in range(held):  # contradicted: the chain was the bad print
                codes[chain[k]] = why
            held = 0
        if t < last_time:
            codes[i] = OUT_OF_ORDER
        elif t == last_time and b == last_bid and a == last_ask:
            codes[i] = DUPLICATE
        else:
            why_i = _suspect(t, mid, last_time, last_mid, jump_ns, band)
            if why_i:
                chain[0], held, why, codes[i] = i, 1, why_i, HELD
            else:
                last_time, last_bid, last_ask, last_mid = t, b, a, mid
    return codes


@njit(cache=True)
def _fold_accepted(
    time: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    codes: np.ndarray,
    steps: np.ndarray,
    calendar_opens: np.ndarray,
    f_time: np.ndarray,
    f_px: np.ndarray,
    f_n: np.ndarray,
    closed: np.ndarray,
    counts: np.ndarray,
) -> tuple[int, int]:
    """Fold the ACCEPTED ticks into the forming bars and pack the bars they close (see `ingest_screened`)."""
    keep = np.flatnonzero(codes == ACCEPTED)
    n_gran, m = len(steps), len(keep)
    counts[:] = 0
    if m == 0:
        return 0, -1
    opens = np.empty((n_gran, m), np.int64)
    for g in range(n_gran):
        for j in range(m):
            t = time[keep[j]]
            opens[g, j] = t - t % steps[g] if steps[g] > 0 else calendar_opens[g, keep[j]]
    room = n_gran * m
    c_gran, c_time, c_n = (
        np.empty(room, np.int64),
        np.empty(room, np.int64),
        np.empty(room, np.int64),
    )
    c_px = np.empty((room, 8))
    k = aggregate(bid[keep], ask[keep], opens, f_time, f_px, f_n, c_gran, c_time, c_px, c_n)
    for j in range(k):
        g = c_gran[j]
        row = closed[g, counts[g]]
        counts[g] += 1
        row["time"], row["ticks"], row["complete"] = c_time[j], c_n[j], True
        # PRICE_FIELDS order; numba needs the field names as literals.
        row["bid_open"], row["bid_high"] = c_px[j, 0], c_px[j, 1]
        row["bid_low"], row["bid_close"] = c_px[j, 2], c_px[j, 3]
        row["ask_open"], row["ask_high"] = c_px[j, 4], c_px[j, 5]
        row["ask_low"], row["ask_close"] = c_px[j, 6], c_px[j, 7]
    return m, keep[m - 1]


@njit(cache=True)
def ingest_screened(
    time: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    n_held: int,
    last_time: int,
    last_bid: float,
    last_ask: float,
    max_time: int,
    jump_ns: int,
    band: float,
    confirm: int,
    steps: np.ndarray,
    calendar_opens: np.ndarray,
    f_time: np.ndarray,
    f_px: np.ndarray,
    f_n: np.ndarray,
    closed: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, int, int]:
    """Screen a batch, fold its accepted ticks into the forming bars, pack the bars they close.

    The router's kernel, one call per batch: the router's per-batch cost is dominated by
    Python-to-numba crossings and small allocations, not by the loops. The batch starts with the
    `n_held` ticks still held after the previous one; `last_*` is the last accepted tick and
    `max_time` .. `confirm` a :class:`Guard`'s fields (see :func:`screen`). `time`, `bid` and
    `ask` may be strided (the fields of a TICK_DTYPE array). `steps` int64 (G,) holds each
    granularity's bar length in ns, 0 for D, W and M, whose opens come precomputed in
    `calendar_opens` (G, n), which is (G, 0) when none is built. Closed bars go to `closed`,
    BAR_DTYPE (G, >= n): `counts[g]` rows for granularity g, in time order. Return the
    :func:`screen` codes, how many ticks it accepted and the index of the last accepted one
    (-1: none).
    """
    codes = screen(
        time, bid, ask, n_held, last_time, last_bid, last_ask, max_time, jump_ns, band, confirm
    )
    m, last = _fold_accepted(
        time, bid, ask, codes, steps, calendar_opens, f_time, f_px, f_n, closed, counts
    )
    return codes, m, last


def opens_of(time: np.ndarray, granularities: list[str], alignment: Alignment) -> np.ndarray:
    """The (G, n) `opens` array of a batch."""
    opens = np.empty((len(granularities), len(time)), np.int64)
    for g, name in enumerate(granularities):
        step = step_ns(name)
        opens[g] = time - time % step if step is not None else bar_opens(time, name, alignment)
    return opens
