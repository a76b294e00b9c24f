"""Market data from OANDA: candle history with paging, and the pricing stream as a feeder source.

History asks ``price=BA`` candles forward from a time, 5,000 at a time (``from`` then ``from=<last
time>&includeFirst=false``), drops incomplete candles and de-duplicates by time at page edges.

The pricing stream runs on a thread of its own (:class:`PriceStream`) that hands ticks over a
queue. A stream is never trusted to stay up: no line (price or heartbeat) for ``stream_silence_s``
(a read timeout), a clean end, a cut mid-line (``ChunkedEncodingError`` / a JSON error), a refused
connection and a 429/5xx at connect all count as one disconnect, and the thread reconnects after
``backoff_s``, doubling to ``backoff_cap_s``, reset by the first line received. A 401/403/404 is
fatal: the thread stops with :class:`AuthError` instead of retrying. Each gap (from the last line
of a dead connection to the first of the next) is logged with its length and kept in
:attr:`PriceStream.gaps` so the caller can backfill it from candles. A live stream is not a
replay: after a restart it resumes from now.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests
from oandapyV20.endpoints import instruments as v20instruments
from oandapyV20.endpoints import pricing as v20pricing
from oandapyV20.exceptions import V20Error

from osm.core.config import FeedConfig
from osm.core.dtypes import BAR_DTYPE, TICK_DTYPE
from osm.core.granularity import step_ns
from osm.live.adapters.oanda.config import (
    AuthError,
    OandaConfig,
    Secret,
    load_token,
    make_api,
    redact,
    settings,
)
from osm.live.adapters.oanda.parsing import (
    error_body,
    error_reason,
    format_time,
    parse_candles,
    parse_price,
)
from osm.live.adapters.oanda.ratelimit import RateLimiter

log = logging.getLogger("osm.oanda")

MAX_COUNT = 5000
_HOUR_NS = 3600 * 10**9
_FATAL = (401, 403, 404)


def fetch_candles(
    api: Any,
    instrument: str,
    granularity: str,
    start_ns: int,
    end_ns: int | None = None,
    limiter: RateLimiter | None = None,
    page: int = MAX_COUNT,
) -> np.ndarray:
    """Complete ``price=BA`` candles opening at or after `start_ns` (and before `end_ns`), as
    BAR_DTYPE rows oldest first, paging `page` (≤ 5000) at a time until a short page or the first
    incomplete candle."""
    if not 0 < page <= MAX_COUNT:
        raise ValueError(f"page must be in 1..{MAX_COUNT}, got {page}")
    pages: list[np.ndarray] = []
    params: dict[str, Any] = {"price": "BA", "granularity": granularity, "count": page,
                              "from": format_time(start_ns), "includeFirst": "true"}  # fmt: skip
    last = None
    while True:
        if limiter is not None:
            limiter.acquire()
        body = api.request(v20instruments.InstrumentsCandles(instrument, params=dict(params)))
        raw = body.get("candles", [])
        bars = parse_candles(body)
        if last is not None:
            bars = bars[bars["time"] > last]  # de-duplicate at the page edge
        if end_ns is not None:
            bars = bars[bars["time"] < end_ns]
        if len(bars):
            pages.append(bars)
            last = int(bars["time"][-1])
        complete_page = len(raw) == page and all(c.get("complete", True) for c in raw)
        if not complete_page or not len(bars) or (end_ns is not None and last >= end_ns):
            break
        params.update({"from": format_time(last), "includeFirst": "false"})
    return np.concatenate(pages) if pages else np.zeros(0, dtype=BAR_DTYPE)


class PriceStream:
    """The pricing stream of `instruments` on a thread this object owns; ticks go to `on_tick`.

    ``on_tick(instrument, time_ns, bid, ask)`` is called on the stream thread, in the order the
    venue sent the prices; a partial line is never delivered. `sleep` is injectable so tests
    observe the backoff without waiting; `on_fatal` is told once if the stream stops for good.
    """

    def __init__(
        self,
        config: OandaConfig,
        token: Secret,
        on_tick: Callable[[str, int, float, float], None],
        on_fatal: Callable[[BaseException], None] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config, self._token = config, token
        self.on_tick, self.on_fatal = on_tick, on_fatal
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._connects = RateLimiter(config.connections_per_s, 1, sleep=self._sleep)
        self.reconnects = 0
        self.backoffs: list[float] = []  # every wait before a reconnect, in order
        self.gaps: list[tuple[int, int]] = []  # (last line ns, first line after it ns)
        self.heartbeats = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="oanda-prices", daemon=True)

    def __repr__(self) -> str:
        return f"PriceStream({self.config.instruments}, reconnects={self.reconnects})"

    def start(self) -> PriceStream:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = getattr(self, "_response", None)
        if response is not None:
            response.close()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - logged, reported, never silent
            self.error = exc
            log.error("price stream stopped: %s", redact(str(exc), self._token))
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _loop(self) -> None:
        cfg = self.config
        api = make_api(cfg, self._token, (cfg.request_timeout_s, cfg.stream_silence_s))
        account = cfg.account_id()
        backoff = cfg.backoff_s
        last_line_ns = 0
        while not self._stop.is_set():
            self._connects.acquire()
            endpoint = v20pricing.PricingStream(
                account, params={"instruments": ",".join(cfg.instruments)}
            )
            received = False
            reason = "stream ended"
            try:
                for line in api.request(endpoint):
                    now = time.time_ns()
                    if not received:
                        received, backoff = True, cfg.backoff_s
                        if last_line_ns:
                            self.gaps.append((last_line_ns, now))
                            log.warning("price stream gap of %.1f s", (now - last_line_ns) / 1e9)
                    last_line_ns = now
                    if self._stop.is_set():
                        break
                    if line.get("type") == "HEARTBEAT":
                        self.heartbeats += 1
                        continue
                    price = parse_price(line)
                    if price is not None:
                        self.on_tick(*price)
            except V20Error as exc:
                if exc.code in _FATAL:
                    raise AuthError(
                        f"OANDA refused the pricing stream ({exc.code}: "
                        f"{error_reason(error_body(exc.msg))}); check the token and account"
                    ) from None
                reason = f"HTTP {exc.code}"
            except (requests.RequestException, json.JSONDecodeError) as exc:
                reason = type(exc).__name__
            if self._stop.is_set():
                return
            self.reconnects += 1
            log.info("price stream lost (%s); reconnecting in %.1f s", reason, backoff)
            self.backoffs.append(backoff)
            self._sleep(backoff)
            backoff = min(cfg.backoff_cap_s, max(backoff * 2, cfg.backoff_s))


class OandaSource:
    """The feeder source ``oanda``: live bid/ask ticks from the pricing stream.

    Follows the source contract of :mod:`osm.live.feeds` with one difference a live stream
    forces: `position` is a counter, not a place to seek to (after a restart the stream resumes
    from now), and :meth:`read` returns an empty batch when nothing has arrived within
    :attr:`wait_s`. Settings come from the feed's ``adapter`` section (account, environment,
    stream_silence_s, backoff_s...; ``OANDA_ACCOUNT`` and ``OANDA_ENVIRONMENT`` when it has none),
    the token per :func:`load_token`, the instruments from the feed.
    """

    wait_s = 0.05
    live = True  # the router closes its bars by the clock, not only by the next tick

    def __init__(self, config: FeedConfig, position: int, state: dict[str, Any]) -> None:
        self.oanda = self.settings(config)
        self._queue: queue.Queue[tuple[str, int, float, float]] = queue.Queue()
        self._held: tuple[str, int, float, float] | None = None
        self._token = load_token()
        self._api: Any = None  # for candles, made at the first backfill
        self._limiter = RateLimiter(self.oanda.requests_per_s, burst=5)
        self.stream = PriceStream(self.oanda, self._token, self._on_tick).start()

    @staticmethod
    def settings(config: FeedConfig) -> OandaConfig:
        return settings(
            f"feeds[{config.name}].adapter", config.adapter, instruments=list(config.instruments)
        )

    @classmethod
    def check(cls, config: FeedConfig, home: Path) -> None:
        """Raise a ConfigError, with the fix, if this feed could not start from `home`."""
        cls.settings(config).account_id()
        load_token(home)

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """The stream's gaps so far, (last line before, first line after) in ns, oldest first."""
        return self.stream.gaps

    def candles(self, instrument: str, granularity: str, start_ns: int, end_ns: int) -> np.ndarray:
        """Complete bars of `instrument` opening in [start_ns, end_ns), from OANDA's candles.

        None above H1: OANDA aligns those candles to its daily alignment (17:00 New York), which
        is not the router's UTC grid (the router would refuse them all).
        """
        step = step_ns(granularity)
        if step is None or _HOUR_NS % step:
            return np.zeros(0, dtype=BAR_DTYPE)
        if self._api is None:
            self._api = make_api(self.oanda, self._token, self.oanda.request_timeout_s)
        try:
            return fetch_candles(
                self._api, instrument, granularity, start_ns, end_ns, self._limiter
            )
        except V20Error as exc:
            if exc.code in _FATAL:
                raise AuthError(
                    f"OANDA refused the candles of {instrument} ({exc.code}: "
                    f"{error_reason(error_body(exc.msg))}); check the token and account"
                ) from None
            raise

    def _on_tick(self, instrument: str, time_ns: int, bid: float, ask: float) -> None:
        self._queue.put((instrument, time_ns, bid, ask))

    def read(self, limit: int) -> tuple[str, np.ndarray] | None:
        if self.stream.error is not None and isinstance(self.stream.error, AuthError):
            raise self.stream.error
        first = self._held
        self._held = None
        if first is None:
            try:
                first = self._queue.get(timeout=self.wait_s)
            except queue.Empty:
                return self.oanda.instruments[0], np.zeros(0, dtype=TICK_DTYPE)
        rows = [first]
        while len(rows) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[0] != first[0]:
                self._held = item  # one instrument per batch; the next read starts with it
                break
            rows.append(item)
        out = np.zeros(len(rows), dtype=TICK_DTYPE)
        for i, (_, t, b, a) in enumerate(rows):
            out[i] = (t, b, a)
        return first[0], out

    def state(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.stream.stop()
