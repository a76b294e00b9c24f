"""The live chart: candles of the last `window` bars, the forming bar, a strategy's indicators and
the fills, fed by a follower (:meth:`osm.live.client.Client.follow`).

Layout of the figure (bqplot):

- x counts bars, not time, so a weekend does not squeeze the candles: the newest closed bar is at
  -1, the one before at -2, the forming bar at 0; the x axis labels a few of them with their UTC
  open time.
- Both scales are fixed by the chart, not by the data, because in bqplot a mark redraws whenever
  a scale's domain moves and every mark's data moves it: with data-driven scales the 500 closed
  candles were redrawn three times per update (their own data, then the x and y domains moved by
  the other marks), which is most of the browser's work. x spans the window for good; y is fitted
  to the candles in view with a margin and moves only when they leave it or fill less than half
  of it.
- ``candles``: the closed bars in view (mid prices), drawn as three SVG paths, not one SVG group
  per candle: a Lines mark (``fill="inside"``) whose rows are the wicks, the rising bodies and the
  falling bodies, each candle a few points closed by NaN (see :func:`candle_paths`). bqplot's OHLC
  mark makes a ``g.stick`` of three paths per candle and, on any change, sets every one of them
  again: the browser restyles, lays out and repaints thousands of SVG elements per update (80 ms
  and more per update for 500 candles with software rendering, most of a second for 2,000). Three
  paths cost the same whatever the count. They look the same: bodies 3/4 of a bar's slot in data
  units (they scale with zoom), filled green or red, outlined; wicks from high to low behind them.
  The numbers drawn are kept in :attr:`LiveChart.ohlc_x` and :attr:`LiveChart.ohlc`.
- ``forming``: a second OHLC mark holding the last closed bar (invisible) and the forming bar, so
  a tick sends one short message (two rows) and the closed candles are resent once per closed
  bar, not on every tick. The invisible row is there for the width: bqplot sizes a candle from
  the smallest x step of its own mark, and a one-row mark would get half the axis. It stays an
  OHLC mark (two ``g.stick``): two candles are cheap.
- ``lines``: one Lines mark, a row per indicator of the strategy (see :data:`OVERLAYS`).
- ``buys`` / ``sells``: Scatter marks of the fills, at their bar and price.

Updates come on the follower's thread, at most `hz` batches a second; each mark changes in place
under ``hold_sync`` (one message per mark per batch). Widgets are created on the caller's thread
only. Arrays travel as binary buffers (bqplot's array serializer; int64 would be cast to int32):
float64, except the candle paths, float32 (half the bytes; 7 significant digits place a price to
a tenth of a pipette on screen). Once the window is full the candles' x never changes, so an
update sends only their y.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bqplot as bq
import ipywidgets as w
import numpy as np

from osm.core.barseries import BarSeries
from osm.core.dtypes import mid
from osm.core.errors import ConfigError
from osm.core.granularity import check_granularity, next_open, step_ns
from osm.core.instruments import instrument as check_instrument
from osm.core.times import iso_utc
from osm.live.client import Batch, Follower
from osm.session import Session
from osm.strategies.base import Bars, Strategy, load_strategy
from osm.strategies.bollinger import Bollinger
from osm.strategies.donchian import Donchian
from osm.strategies.indicators import prior_max, prior_min, rolling_std, sma
from osm.strategies.sma_cross import SmaCross

log = logging.getLogger(__name__)

Overlay = Callable[[Strategy, Bars], dict[str, np.ndarray]]

OVERLAYS: dict[type[Strategy], Overlay] = {}
"""How to draw a strategy's indicators: a function of (strategy, bars) returning named float64
arrays, one value per bar, in price units. A strategy may instead define ``overlays(bars)``;
register one for a strategy you cannot change with :func:`register_overlays`."""


def register_overlays(strategy: type[Strategy], overlay: Overlay) -> None:
    OVERLAYS[strategy] = overlay


def _sma_cross(s: SmaCross, bars: Bars) -> dict[str, np.ndarray]:
    return {f"sma {s.fast}": sma(bars.close, s.fast), f"sma {s.slow}": sma(bars.close, s.slow)}


def _bollinger(s: Bollinger, bars: Bars) -> dict[str, np.ndarray]:
    mean, std = sma(bars.close, s.window), rolling_std(bars.close, s.window)
    return {"mean": mean, "upper": mean + s.k * std, "lower": mean - s.k * std}


def _donchian(s: Donchian, bars: Bars) -> dict[str, np.ndarray]:
    return {
        "upper": prior_max(bars.high, s.window),
        "lower": prior_min(bars.low, s.window),
    }


register_overlays(SmaCross, _sma_cross)
register_overlays(Bollinger, _bollinger)
register_overlays(Donchian, _donchian)


def overlays(strategy: Strategy | None, bars: np.ndarray) -> dict[str, np.ndarray]:
    """The strategy's indicators over `bars` as float64 arrays (none without a strategy)."""
    if strategy is None or not len(bars):
        return {}
    view = Bars(bars)
    own = getattr(strategy, "overlays", None)
    draw = own if callable(own) else None
    if draw is None:
        found = next((f for k, f in OVERLAYS.items() if isinstance(strategy, k)), None)
        if found is None:
            return {}
        return {k: np.asarray(v, np.float64) for k, v in found(strategy, view).items()}
    return {k: np.asarray(v, np.float64) for k, v in draw(view).items()}


def _strategy(strategy: str | type[Strategy] | Strategy | None, params: dict) -> Strategy | None:
    if strategy is None or isinstance(strategy, Strategy):
        if params:
            raise ConfigError("params go with a strategy path or class, not an instance or None")
        return strategy
    return load_strategy(strategy)(**params)


def _check(instrument: str, granularity: str, window: int) -> None:
    check_instrument(instrument)
    check_granularity(granularity)
    if not 10 <= window <= 20_000:
        raise ConfigError(f"window must be 10 to 20000 bars, got {window}")


class LiveChart:
    """A live candle chart of one series; see :func:`chart`.

    ``apply(batch)`` is the follower's sink; tests call it directly with hand-made batches.
    """

    def __init__(
        self,
        instrument: str,
        granularity: str,
        strategy: Strategy | None = None,
        window: int = 500,
        fills: list[dict[str, Any]] | None = None,
    ) -> None:
        _check(instrument, granularity, window)
        self.instrument, self.granularity, self.window = instrument, granularity, window
        self.strategy = strategy
        warmup = (strategy.warmup or 0) if strategy is not None else 0
        self.series = BarSeries(window + warmup, None, instrument, granularity)
        self.seen = 0  # closed bars taken or skipped: the next one's index
        self._skipped = 0  # skipped bars not yet counted in `seen` (counted with the next bars)
        self.follower: Follower | None = None
        self.closed = False
        self._fills: list[tuple[int, int, float]] = []  # (time_ns, units, price)
        self._forming_time = -1
        self._lock = threading.Lock()  # apply (follower thread) against close (any thread)
        self._on_close: list[Callable[[], None]] = []
        self._build()
        for fill in fills or []:
            if fill["instrument"] == instrument:
                self._fills.append((int(fill["time_ns"]), int(fill["units"]), fill["price"]))

    def _build(self) -> None:
        x = bq.LinearScale(min=-self.window - 0.5, max=0.5)
        y = bq.LinearScale()
        scales = {"x": x, "y": y}
        empty_x, empty_y = np.empty(0), np.empty((0, 4))
        # No rows until there are candles: bqplot places each row's label at its last point,
        # and an empty row has none (the view fails to render).
        self.candles = bq.Lines(
            x=empty_x, y=np.empty((0, 0)), scales=scales, labels=["wicks", "rising", "falling"],
            colors=["#444"] * 3, fill="inside", fill_colors=["#444", *CANDLE_COLORS],
            fill_opacities=[0.0, 1.0, 1.0], stroke_width=1, display_legend=False,
        )  # fmt: skip
        self.ohlc_x, self.ohlc = np.empty(0), np.empty((0, 4))  # the candles drawn
        self._drawn = -1  # len(self.ohlc_x) when the candles' x was last sent
        self.forming = bq.OHLC(
            x=empty_x, y=empty_y, scales=scales, marker="candle", format="ohlc",
            colors=["#98df8a", "#ff9896"], stroke="#999", opacities=[0.0, 0.8],
        )  # fmt: skip
        self.lines = bq.Lines(
            x=empty_x, y=np.empty((0, 0)), scales=scales, stroke_width=1.5, display_legend=True
        )
        self.buys = bq.Scatter(
            x=empty_x, y=empty_x, scales=scales, marker="triangle-up", colors=["#1f77b4"],
            default_size=64, names=[],
        )  # fmt: skip
        self.sells = bq.Scatter(
            x=empty_x, y=empty_x, scales=scales, marker="triangle-down", colors=["#ff7f0e"],
            default_size=64, names=[],
        )  # fmt: skip
        self.x_axis = bq.Axis(scale=x, label="UTC", grid_lines="none", tick_values=np.empty(0))
        y_axis = bq.Axis(scale=y, side="left", tick_format=".5f", label="mid")
        self.figure = bq.Figure(
            marks=[self.candles, self.lines, self.forming, self.buys, self.sells],
            axes=[self.x_axis, y_axis],
            title=f"{self.instrument} {self.granularity}"
            + (f" · {self.strategy!r}" if self.strategy is not None else ""),
            interaction=bq.interacts.PanZoom(scales={"x": [x], "y": [y]}),
            fig_margin={"top": 40, "bottom": 40, "left": 70, "right": 20},
            layout=w.Layout(width="100%", height="420px"),
        )
        self.status = w.HTML("waiting for the first bars")
        self.widget = w.VBox([self.figure, self.status])
        self.figure.observe(self._figure_closed, names="comm")
        on_comm_close = getattr(self.figure.comm, "on_close", None)
        if callable(on_comm_close):  # the front end closed the figure
            on_comm_close(lambda _msg: self.close())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- updates (the follower's thread) -------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Show a follower's batch: closed bars, the forming bar, fills."""
        with self._lock:
            if self.closed:
                return
            fills = [
                (f.time_ns, f.units, f.price)
                for f in batch.fills
                if f.instrument == self.instrument
            ]
            self._fills.extend(fills)
            # Bars the follower skipped (it fell behind) still count in the index, so the x
            # axis numbers every bar the series made, not only those drawn.
            self._skipped += batch.skipped
            if len(batch.bars):
                self.series.extend(batch.bars)
                self.seen += self._skipped + len(batch.bars)
                self._skipped = 0
                self._draw_closed()
            if len(batch.bars) or fills:
                self._draw_fills()
            if len(batch.forming) or len(batch.bars):
                self._draw_forming(batch.forming)

    def _first_index(self) -> int:
        return self.seen - len(self.series)

    def _draw_closed(self) -> None:
        bars = self.series.view
        shown = bars[-self.window :]
        x = np.arange(-len(shown), 0, dtype=np.float64)
        rows = _ohlc(shown)
        drawn = overlays(self.strategy, bars)
        self._fit_y(rows, drawn, len(shown))
        self.ohlc_x, self.ohlc = x, rows
        xs, ys = candle_paths(x, rows)
        # x depends only on the count in view: once the window is full, updates send y alone
        # (the browser then rewrites one attribute per path, not the x scale's mapping too).
        moved = len(shown) != self._drawn
        self._drawn = len(shown)
        with self.candles.hold_sync():
            if moved:
                self.candles.x = xs
            self.candles.y = ys
        if drawn:
            with self.lines.hold_sync():
                if moved or len(self.lines.x) != len(x):
                    self.lines.x = x
                self.lines.y = np.vstack([v[-len(shown) :] for v in drawn.values()])
                self.lines.labels = list(drawn)
        values, labels = _ticks(shown["time"], x, self.granularity)
        with self.x_axis.hold_sync():
            self.x_axis.tick_values = values
            self.x_axis.tick_labels = labels
        last = iso_utc(int(shown["time"][-1])).replace("T", " ")
        self.status.value = f"{self.seen} bars; last closed {last}"

    def _draw_forming(self, forming: np.ndarray) -> None:
        if len(forming):
            self._forming_time = int(forming["time"][0])
        last = self.series.last
        if last is None or self._forming_time <= int(last["time"]):
            if len(self.forming.x):
                with self.forming.hold_sync():
                    self.forming.x, self.forming.y = np.empty(0), np.empty((0, 4))
            return
        if not len(forming):
            return
        # Row 0 is the last closed bar, drawn with opacity 0: it gives the forming candle the
        # closed candles' width and lies inside their y range, so it moves no axis.
        x = np.array([-1.0, 0.0])
        y = _ohlc(np.concatenate([self.series.view[-1:], forming[:1]]))
        self._fit_y(y[1:])
        with self.forming.hold_sync():
            if not np.array_equal(self.forming.x, x):
                self.forming.x = x
            self.forming.y = y

    def _draw_fills(self) -> None:
        times = self.series.view["time"]
        if not len(times):
            return
        first = self._first_index()
        shown_from = self.seen - min(len(times), self.window)
        next_bar = next_open(int(times[-1]), self.granularity)
        kept = []
        xs, ys, sides = [], [], []
        for t, units, price in self._fills:
            position = int(np.searchsorted(times, t, side="right")) - 1
            index = self.seen if t >= next_bar else first + position
            if position < 0 or index < shown_from:
                continue  # rolled out of view: forget it
            kept.append((t, units, price))
            xs.append(float(index - self.seen))
            ys.append(price)
            sides.append(units > 0)
        self._fills = kept
        xs_a, ys_a, buy = np.array(xs, np.float64), np.array(ys, np.float64), np.array(sides, bool)
        for mark, pick in ((self.buys, buy), (self.sells, ~buy)):
            with mark.hold_sync():
                mark.x, mark.y = xs_a[pick], ys_a[pick]

    def _fit_y(
        self, rows: np.ndarray, overlays: dict[str, np.ndarray] | None = None, shown: int = 0
    ) -> None:
        """Keep the y scale around the OHLC `rows` (and the last `shown` values of each
        overlay): refit with a 10% margin when they reach out of it or, for the closed candles
        (`shown` > 0), span less than half of it; otherwise leave it, so most updates move no
        domain. The forming bar (`shown` 0) only ever widens it."""
        if not len(rows):
            return
        lows, highs = [rows.min()], [rows.max()]
        for values in (overlays or {}).values():
            tail = values[-shown:] if shown else values[:0]
            tail = tail[np.isfinite(tail)]
            if len(tail):
                lows.append(tail.min())
                highs.append(tail.max())
        lo, hi = float(min(lows)), float(max(highs))
        y = self.candles.scales["y"]
        if y.min is not None and y.max is not None:
            inside = y.min <= lo and hi <= y.max
            if not shown:  # the forming bar only widens the range
                if inside:
                    return
                lo, hi = min(lo, y.min), max(hi, y.max)
            elif inside and hi - lo >= (y.max - y.min) / 2:
                return
        pad = (hi - lo) * 0.1 or abs(hi) * 1e-4 or 1e-4
        with y.hold_sync():
            y.min, y.max = lo - pad, hi + pad

    # -- closing -------------------------------------------------------------------------------

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def _figure_closed(self, change: dict) -> None:
        if change["new"] is None:
            self.close()

    def close(self) -> None:
        """Stop the follower and close the widgets (idempotent, from any thread)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if self.follower is not None:
            self.follower.stop()
        self.figure.unobserve(self._figure_closed, names="comm")
        for widget in (self.widget, self.status, self.figure, self.candles, self.forming):
            widget.close()
        for widget in (self.lines, self.buys, self.sells, self.x_axis):
            widget.close()
        for callback in self._on_close:
            callback()


CANDLE_COLORS = ("#2ca02c", "#d62728")  # rising, falling
CANDLE_HALF_WIDTH = 0.375  # a body spans 3/4 of a bar's slot, as bqplot's OHLC mark draws it
CANDLE_POINTS = 6  # path points per candle in each row of :func:`candle_paths`


def candle_paths(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candles at `x` with OHLC `rows` as three rows of path points, float32 ``(3, 6 n)``.

    Row 0, the wicks: per candle (x, high), (x, low), then NaN. Rows 1 and 2, the rising bodies
    (close at or above open, as bqplot's OHLC fills them) and the falling ones: per candle a
    closed rectangle (x -/+ :data:`CANDLE_HALF_WIDTH`, open and close), then NaN. bqplot's Lines
    breaks a line where y is NaN, so each candle is its own sub-path. A candle not in a body
    row has NaN y there but the same x, so x depends only on `x` (unchanged updates send no x).
    """
    n = len(x)
    xs = np.full((3, n, CANDLE_POINTS), np.nan, np.float32)
    ys = np.full((3, n, CANDLE_POINTS), np.nan, np.float32)
    o, h, lo, c = rows.T
    xs[0, :, 0] = xs[0, :, 1] = x
    ys[0, :, 0], ys[0, :, 1] = h, lo
    left, right = x - CANDLE_HALF_WIDTH, x + CANDLE_HALF_WIDTH
    xs[1:, :, :5] = np.column_stack([left, right, right, left, left])
    body = np.column_stack([o, o, c, c, o])
    rising = c >= o
    ys[1, rising, :5] = body[rising]
    ys[2, ~rising, :5] = body[~rising]
    return xs.reshape(3, -1), ys.reshape(3, -1)


def _ohlc(bars: np.ndarray) -> np.ndarray:
    """Mid OHLC rows, float64, with high and low made the row's max and min (bqplot blanks the
    whole chart for a row where they are not)."""
    o, h, lo, c = (mid(bars, f) for f in ("open", "high", "low", "close"))
    rows = np.column_stack([o, h, lo, c]).astype(np.float64)
    rows[:, 1] = rows.max(axis=1)
    rows[:, 2] = rows.min(axis=1)
    return rows


def _ticks(times: np.ndarray, x: np.ndarray, granularity: str) -> tuple[np.ndarray, dict]:
    """About six x positions, evenly spread, labelled with their bar's UTC open time."""
    if not len(times):
        return np.empty(0), {}
    picks = np.unique(np.linspace(0, len(times) - 1, num=min(6, len(times))).round().astype(int))
    step = step_ns(granularity)
    unit = "s" if step is not None and step < 60 * 10**9 else "m"
    labels = {}
    for i in picks:
        text = iso_utc(int(times[i]), unit).removesuffix("Z").replace("T", " ")
        labels[int(x[i])] = text[5:]  # month-day and time
    return x[picks].astype(np.float64), labels


def chart(
    instrument: str,
    granularity: str,
    strategy: str | type[Strategy] | Strategy | None = None,
    params: dict | None = None,
    window: int = 500,
    hz: float = 10.0,
    home: str | Path | None = None,
    session: Session | None = None,
) -> LiveChart:
    """Open a live chart of `instrument` `granularity` bars on the running system.

    Parameters
    ----------
    strategy
        Draw its indicators: an importable path (``"osm.strategies.sma_cross:SmaCross"``), a
        class (with `params`) or an instance.
    window
        Bars shown; the chart keeps no more.
    hz
        Most updates a second (the follower batches between them). An update is about five
        comm messages (candles, overlays, axis, forming bar, status), so the default stays
        under 60 messages a second; it keeps a closed bar's wait for its update under 100 ms.
    home, session
        The system: the ``%osm`` session's by default.

    The chart follows the system until :meth:`LiveChart.close`, the figure is closed, or the
    session ends (``%unload_ext osm``, kernel shutdown).
    """
    from osm.widgets import current_session

    _check(instrument, granularity, window)
    strategy = _strategy(strategy, params or {})
    session = session or current_session()
    client = session.client(home)
    try:
        fills = client.fills()
    except Exception:
        client.close()
        raise
    view = LiveChart(instrument, granularity, strategy, window, fills=fills)
    warmup = (strategy.warmup or 0) if strategy is not None else 0
    try:
        view.follower = client.follow(
            instrument, granularity, window + warmup, view.apply, hz, only_last=True
        )
    except Exception:
        view.close()
        client.close()
        raise
    session.track(view)
    view.on_close(lambda: (client.close(), session.forget(view)))
    return view
