"""The live chart, blotter and controls, through a comm that records every message (the way
ipywidgets tests its widgets): mark arrays after N bars, the forming bar in place, message sizes
and rates, threads gone after close and at kernel shutdown."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import comm
import numpy as np
import pandas as pd
import pytest

from osm.core.dtypes import empty_bars
from osm.core.granularity import NS
from osm.core.wire import Fill
from osm.live.client import Batch, Client
from osm.session import Session
from osm.strategies.sma_cross import SmaCross
from osm.widgets.chart import CANDLE_POINTS, LiveChart, candle_paths, chart
from osm.widgets.controls import controls
from tests.live_helpers import wait_for
from tests.system_helpers import running_system

M1 = 60 * NS
T0 = 1_709_625_600 * NS  # 2024-03-05 08:00 UTC
_ids = itertools.count()


class RecordingComm:
    """Stands in for a kernel comm: keeps every message a widget sends, with its time."""

    kernel = "Truthy"
    log: list[tuple[float, str, dict, list]] = []

    def __init__(self, **kwargs) -> None:
        self.comm_id = f"comm-{next(_ids)}"
        self.closed = False

    def open(self, *args, **kwargs) -> None:
        pass

    def on_msg(self, callback) -> None:
        pass

    def on_close(self, callback) -> None:
        self.close_callback = callback

    def send(self, data=None, metadata=None, buffers=None) -> None:
        RecordingComm.log.append((time.monotonic(), self.comm_id, data, list(buffers or [])))

    def close(self, *args, **kwargs) -> None:
        self.closed = True


@pytest.fixture
def recorded(monkeypatch):
    RecordingComm.log = []
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))
    monkeypatch.setattr(comm, "get_comm_manager", lambda: None)
    return RecordingComm.log


def messages_to(log, widget) -> list[tuple[float, dict, list]]:
    return [(t, d, b) for t, cid, d, b in log if cid == widget.comm.comm_id]


def size(data: dict, buffers: list) -> int:
    return len(json.dumps(data)) + sum(len(memoryview(b).cast("B")) for b in buffers)


def bars(start: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + start)
    out = empty_bars(n)
    out["time"] = T0 + np.arange(start, start + n) * M1
    close = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    opened = close + rng.normal(0, 5e-5, n)
    high = np.maximum(opened, close) + rng.uniform(0, 1e-4, n)
    low = np.minimum(opened, close) - rng.uniform(0, 1e-4, n)
    for side, shift in (("bid", -5e-6), ("ask", 5e-6)):
        out[f"{side}_open"], out[f"{side}_close"] = opened + shift, close + shift
        out[f"{side}_high"], out[f"{side}_low"] = high + shift, low + shift
    out["ticks"], out["complete"] = 10, True
    return out


def batch(closed=None, forming=None, fills=(), skipped=0) -> Batch:
    none = empty_bars(0)
    return Batch(none if closed is None else closed, none if forming is None else forming,
                 list(fills), [], skipped)  # fmt: skip


def mid_ohlc(rows: np.ndarray) -> np.ndarray:
    return np.column_stack(
        [(rows[f"bid_{f}"] + rows[f"ask_{f}"]) / 2 for f in ("open", "high", "low", "close")]
    )


def decode_candles(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (x, OHLC rows) that the candle mark's three paths draw, read back point by point:
    the wick's ends are the high and the low, a body's first and third corners the open and the
    close, in the rising row or the falling one (checked to be the only one)."""
    xs, ys = (np.asarray(a, np.float64).reshape(3, -1, CANDLE_POINTS) for a in (xs, ys))
    x, high, low = xs[0, :, 0], ys[0, :, 0], ys[0, :, 1]
    rising, falling = ~np.isnan(ys[1, :, 0]), ~np.isnan(ys[2, :, 0])
    assert np.all(rising ^ falling)
    body = np.where(rising[:, None], ys[1], ys[2])
    assert np.all(np.isnan(ys[:, :, -1])), "each candle ends its sub-path with NaN"
    np.testing.assert_allclose(xs[1, :, [0, 1]].T, x[:, None] + [-0.375, 0.375], atol=1e-6)
    open_, close = body[:, 0], body[:, 2]
    assert np.all(close[rising] >= open_[rising]) and np.all(close[falling] < open_[falling])
    return x, np.column_stack([open_, high, low, close])


def test_candle_paths_draw_each_candle_against_an_ohlc_oracle():
    rng = np.random.default_rng(3)
    o = 1.1 + rng.normal(0, 1e-3, 40)
    c = o + rng.normal(0, 1e-4, 40)
    c[::7] = o[::7]  # open == close: filled as rising, like bqplot's OHLC
    h, lo = np.maximum(o, c) + 2e-4, np.minimum(o, c) - 1e-4
    rows = np.column_stack([o, h, lo, c])
    x = np.arange(-40, 0, dtype=np.float64)
    xs, ys = candle_paths(x, rows)
    assert xs.shape == ys.shape == (3, 40 * CANDLE_POINTS) and xs.dtype == np.float32
    got_x, got = decode_candles(xs, ys)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_allclose(got, rows, rtol=0, atol=1e-6)
    assert np.count_nonzero(~np.isnan(ys[1, ::CANDLE_POINTS])) == np.count_nonzero(c >= o)


# -- the chart on hand-made batches ----------------------------------------------------------


def test_chart_holds_exactly_the_last_window_bars_with_overlays(recorded):
    strategy = SmaCross(fast=3, slow=8)
    view = LiveChart("EUR_USD", "M1", strategy, window=20)
    all_bars = bars(0, 57)
    for lo, hi in ((0, 1), (1, 9), (9, 30), (30, 31), (31, 57)):
        view.apply(batch(all_bars[lo:hi]))
    last = all_bars[-20:]
    # x counts back from the newest closed bar (-1); the forming bar is at 0.
    np.testing.assert_array_equal(view.ohlc_x, np.arange(-20, 0, dtype=np.float64))
    assert view.ohlc_x.dtype == np.float64 and view.ohlc.dtype == np.float64
    np.testing.assert_allclose(view.ohlc, mid_ohlc(last), rtol=0, atol=1e-12)
    # What the candle mark draws decodes back to the same candles.
    x, ohlc = decode_candles(view.candles.x, view.candles.y)
    np.testing.assert_array_equal(x, view.ohlc_x)
    np.testing.assert_allclose(ohlc, mid_ohlc(last), rtol=0, atol=1e-6)
    # The overlays are the strategy's moving averages of the mid close (a pandas oracle),
    # computed with the warm-up before the window, so none is NaN in view.
    closes = pd.Series(mid_ohlc(all_bars)[:, 3])
    for row, n in zip(view.lines.y, (3, 8), strict=True):
        np.testing.assert_allclose(row, closes.rolling(n).mean().to_numpy()[-20:], atol=1e-12)
    assert list(view.lines.labels) == ["sma 3", "sma 8"]
    assert set(view.x_axis.tick_labels) <= set(view.ohlc_x.astype(int))
    assert view.x_axis.tick_labels[-1] == "03-05 08:56"
    # Sent as binary float32 buffers (three paths), never JSON lists or int64.
    _, data, buffers = messages_to(recorded, view.candles)[-1]
    assert buffers and data["state"]["y"]["dtype"] == "float32"
    assert list(data["state"]["y"]["shape"]) == [3, 20 * CANDLE_POINTS]
    # Once the window is full x is the same every time: only y travels.
    assert "x" not in data["state"]
    assert any(d["state"].get("x", {}).get("dtype") == "float32"
               for _, d, _ in messages_to(recorded, view.candles))  # fmt: skip
    # So are the overlays' x: the last two updates (window full) sent their y alone.
    assert [set(d["state"]) for _, d, _ in messages_to(recorded, view.lines)[-2:]] == [{"y"}] * 2


def test_forming_bar_updates_in_place_with_small_messages(recorded):
    view = LiveChart("EUR_USD", "M1", window=500)
    view.apply(batch(bars(0, 500)))
    before = len(recorded)
    forming = bars(500, 1)
    forming["complete"] = False
    for k in range(5):
        forming["bid_close"] += 1e-5 * k
        view.apply(batch(forming=forming.copy()))
        # Two rows: the last closed bar, invisible, then the forming bar.
        np.testing.assert_array_equal(view.forming.x, [-1.0, 0.0])
        np.testing.assert_allclose(view.forming.y[1], mid_ohlc(forming)[0])
        np.testing.assert_array_equal(view.forming.y[0], view.ohlc[-1])
    # bqplot sizes a candle by the smallest x step within its own mark (a lone candle gets half
    # the axis): the forming mark's step must be the closed candles' step, its first row hidden.
    assert np.diff(view.forming.x).min() == np.diff(view.ohlc_x).min() == 1.0
    assert view.forming.opacities[0] == 0 and view.forming.opacities[1] > 0
    sent = recorded[before:]
    assert {cid for _, cid, _, _ in sent} == {view.forming.comm.comm_id}
    assert len(sent) == 5 and max(size(d, b) for _, _, d, b in sent) < 1024
    # x moves only when a bar closes: later ticks send y alone.
    assert [set(d["state"]) for _, d, _ in messages_to(recorded, view.forming)[-4:]] == [{"y"}] * 4
    # The bar closes: it joins the candles and the forming mark empties until the next one.
    closed = forming.copy()
    closed["complete"] = True
    view.apply(batch(closed))
    assert view.ohlc_x[-1] == -1.0 and len(view.ohlc_x) == 500
    np.testing.assert_allclose(view.ohlc[-1], mid_ohlc(closed)[0])
    assert len(view.forming.x) == 0
    # The next bar forms one step further on, beside the bar that just closed.
    following = bars(501, 1)
    following["complete"] = False
    view.apply(batch(forming=following))
    np.testing.assert_array_equal(view.forming.x, [-1.0, 0.0])
    np.testing.assert_array_equal(view.forming.y[0], view.ohlc[-1])
    following["complete"] = True
    view.apply(batch(following))
    # A forming update late for a bar already closed is not drawn.
    view.apply(batch(forming=forming))
    assert len(view.forming.x) == 0


def test_bars_the_follower_skipped_still_count_in_the_index(recorded):
    view = LiveChart("EUR_USD", "M1", window=10)
    view.apply(batch(bars(0, 12)))
    assert view.seen == 12
    # The follower fell behind: 30 bars were skipped (counted, not handed), then 4 came.
    sent = len(recorded)
    view.apply(batch(skipped=30))  # nothing to draw yet: the count waits for the bars
    assert view.seen == 12 and len(recorded) == sent
    view.apply(batch(bars(42, 4), skipped=5))
    assert view.seen == 12 + 35 + 4
    np.testing.assert_array_equal(view.ohlc_x, np.arange(-10, 0, dtype=np.float64))
    np.testing.assert_allclose(view.ohlc[-4:], mid_ohlc(bars(42, 4)), rtol=0, atol=1e-12)
    forming = bars(46, 1)
    forming["complete"] = False
    view.apply(batch(forming=forming))
    assert "51 bars" in view.status.value


def test_fills_become_markers_at_their_bar(recorded):
    view = LiveChart("EUR_USD", "M1", window=10)
    view.apply(batch(bars(0, 10)))
    fills = [
        Fill("a", "b", "EUR_USD", 1000, 1.1001, T0 + 4 * M1 + 1),
        Fill("c", "b", "EUR_USD", -1000, 1.1002, T0 + 10 * M1 + 5),  # in the forming bar
        Fill("d", "b", "USD_JPY", 1000, 150.0, T0 + 5 * M1),  # another instrument
    ]
    view.apply(batch(fills=fills))
    np.testing.assert_array_equal(view.buys.x, [-6.0])  # bar 4 of 10
    np.testing.assert_array_equal(view.buys.y, [1.1001])
    np.testing.assert_array_equal(view.sells.x, [0.0])  # the forming bar
    view.apply(batch(bars(10, 8)))  # the buy's bar rolls out of view
    assert len(view.buys.x) == 0 and list(view.sells.x) == [-8.0]


def test_scales_move_only_when_the_candles_leave_them(recorded):
    """Every move of a scale's domain redraws every candle in the browser: x never moves, y
    only when the candles reach out of it or fill less than half of it."""
    view = LiveChart("EUR_USD", "M1", window=50)
    x, y = view.candles.scales["x"], view.candles.scales["y"]
    assert (x.min, x.max) == (-50.5, 0.5)
    flat = bars(0, 60)
    for side in ("bid", "ask"):  # a quiet market: every bar in 1.1000 .. 1.1010
        flat[f"{side}_low"], flat[f"{side}_high"] = 1.1000, 1.1010
        flat[f"{side}_open"], flat[f"{side}_close"] = 1.1003, 1.1006
    view.apply(batch(flat[:50]))
    assert y.min == pytest.approx(1.1000 - 1e-4) and y.max == pytest.approx(1.1010 + 1e-4)
    moves = len(messages_to(recorded, y))
    for k in range(50, 60):  # ten more bars and their forming bars inside the range
        forming = flat[k : k + 1].copy()
        forming["complete"] = False
        view.apply(batch(forming=forming))
        view.apply(batch(flat[k : k + 1]))
    assert len(messages_to(recorded, y)) == moves
    assert not messages_to(recorded, x)
    # A forming bar above the range widens it at once; the next closed bars refit it.
    spike = bars(60, 1)
    for side in ("bid", "ask"):
        spike[f"{side}_high"] = spike[f"{side}_close"] = 1.1030
        spike[f"{side}_low"] = spike[f"{side}_open"] = 1.1005
    forming = spike.copy()
    forming["complete"] = False
    view.apply(batch(forming=forming))
    assert y.max >= 1.1030 and y.min <= 1.1000
    view.apply(batch(spike))
    assert y.min <= 1.1000 and y.max >= 1.1030 and len(messages_to(recorded, y)) > moves
    # The candles in view all sit well inside: a range more than twice theirs is refitted.
    calm = bars(61, 50)
    for side in ("bid", "ask"):
        calm[f"{side}_low"], calm[f"{side}_high"] = 1.1000, 1.1002
        calm[f"{side}_open"], calm[f"{side}_close"] = 1.1001, 1.1001
    view.apply(batch(calm))
    assert y.min == pytest.approx(1.1000 - 2e-5) and y.max == pytest.approx(1.1002 + 2e-5)


def test_ohlc_rows_keep_high_and_low_the_extremes(recorded):
    view = LiveChart("EUR_USD", "M1", window=10)
    odd = bars(0, 3)
    odd["bid_high"][1] = odd["bid_low"][1] - 1e-3  # a high below the low from a bad source
    view.apply(batch(odd))
    y = view.ohlc
    assert np.all(y[:, 1] == y.max(axis=1)) and np.all(y[:, 2] == y.min(axis=1))


def test_chart_refuses_a_bad_window_with_the_range():
    with pytest.raises(ValueError, match="window must be 10 to 20000"):
        LiveChart("EUR_USD", "M1", window=5)


# -- against a running system ----------------------------------------------------------------


@pytest.fixture
def system(home):
    yield from running_system(home)


def osm_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("osm-follow", "osm-blot"))]


def test_streaming_chart_respects_the_throttle_and_stops_on_close(home, system, recorded):
    system("--speed", "600", "--start", "2024-03-05T08:00:00Z", "--granularities", "S5", "M1")
    session = Session(home)
    view = chart("EUR_USD", "S5", strategy="osm.strategies.sma_cross:SmaCross",
                 params={"fast": 3, "slow": 8}, window=50, hz=4, session=session)  # fmt: skip
    assert session.open == [view]
    wait_for(lambda: view.seen >= 60, 60, "S5 bars on the chart")
    start = len(recorded)
    time.sleep(3.0)
    window = recorded[start:]
    elapsed = window[-1][0] - window[0][0]
    per_batch = 6  # candles, lines, axis, forming, buys, sells
    assert len(window) / max(elapsed, 1.0) <= 4 * per_batch + per_batch
    assert len(view.ohlc_x) == 50 and view.ohlc_x[-1] == -1
    view.close()  # its follower writes the series: compared once it has stopped
    assert not view.follower.is_alive() and session.open == []
    shown = view.series.view[-50:].copy()
    assert np.all(np.diff(shown["time"]) > 0)
    with Client(home) as client:
        stored = client.bars("EUR_USD", "S5", 2000)  # the router went on meanwhile
    np.testing.assert_array_equal(shown, stored[np.isin(stored["time"], shown["time"])])
    # Closed from the front end (the figure's comm), a second chart stops too.
    other = chart("EUR_USD", "M1", window=20, session=session)
    wait_for(lambda: other.seen > 0, 30, "M1 bars on the second chart")
    other.figure.close()
    assert not other.follower.is_alive() and other.closed
    assert not osm_threads()


def test_session_close_stops_every_follower(home, system, recorded):
    system("--speed", "60", "--granularities", "M1")
    session = Session(home)
    charts = [chart("EUR_USD", "M1", window=20, session=session) for _ in range(2)]
    assert len(osm_threads()) == 2
    session.close()  # what unloading the extension and kernel shutdown do
    assert all(c.closed and not c.follower.is_alive() for c in charts)
    assert not osm_threads()


def test_followers_are_gone_at_kernel_shutdown(home, system):
    system("--speed", "60", "--granularities", "M1")
    script = textwrap.dedent(
        f"""
        import atexit, threading
        # Registered first, so it runs last at exit: after the extension's session closed.
        atexit.register(lambda: print("LEFT", [t.name for t in threading.enumerate()
                                              if t.name.startswith("osm-")]))
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "osm")
        c = ip.run_line_magic("osm", "chart EUR_USD M1 --window 20 --home {home}")
        print("FOLLOWING", c.follower.is_alive())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "FOLLOWING True" in done.stdout, done.stderr
    assert "LEFT []" in done.stdout, done.stdout + done.stderr


def test_controls_halt_resume_and_flatten_after_confirmation(home, system, recorded):
    system("--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1")
    session = Session(home)
    buttons = controls(session=session)
    with Client(home) as client:
        assert client.order("EUR_USD", 2000).accepted

        def units() -> int:
            return sum(p["units"] for p in client.positions())

        wait_for(lambda: units() == 2000, 30, "the paper fill")
        # A click runs on another thread (JupyterLab sends it to a subshell) while this one is busy.
        clicker = threading.Thread(target=buttons.halt.click, name="click")
        clicker.start()
        clicker.join(10)
        assert client.trader("status")["halted"]
        assert "halt" in buttons.message.value
        buttons.flatten.click()  # asks first: nothing is sent
        assert buttons.confirmation.layout.display == "flex"
        time.sleep(0.5)
        assert units() == 2000
        buttons.cancel.click()
        assert buttons.confirmation.layout.display == "none"
        buttons.flatten.click()
        buttons.confirm.click()  # allowed while halted
        wait_for(lambda: units() == 0, 30, "the flatten")
        buttons.resume.click()
        assert not client.trader("status")["halted"]
    buttons.close()
    assert session.open == []


# -- the explore notebook ----------------------------------------------------------------------


def test_explore_notebook_runs_headless_against_a_running_system(home, system, tmp_path):
    papermill = pytest.importorskip("papermill")
    import nbformat

    system("--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1",
           "--brain", "osm.strategies.sma_cross:SmaCross", "--param", "fast=5",
           "--param", "slow=20")  # fmt: skip
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(
        str(notebooks / "01_explore.ipynb"), str(out), parameters={"home": str(home), "watch_s": 3.0},
        kernel_name="python3", cwd=str(notebooks), progress_bar=False,
    )  # fmt: skip
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in nbformat.read(out, as_version=4).cells
        for o in cell.get("outputs", [])
    )
    assert f"run directory: {home}" in text
    assert "attached to the system already running" in text
    assert "closed bars on the chart" in text and "halted: True" in text
    assert "TRADING HALTED" in text
    with Client(home) as client:
        assert client.trader("status")["halted"]  # the notebook's click reached the trader
        assert any(f["units"] == 10_000 and f["brain"] == "cli" for f in client.fills())
        client.resume()
