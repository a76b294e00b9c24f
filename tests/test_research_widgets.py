"""The research widgets through a comm that records every message (the way ipywidgets tests its
widgets): the heatmap holds the sweep table's values, a hover shows a cell's metrics, a click
(sent the way bqplot sends it) backtests that cell, the walk-forward folds chart holds the fold
table; the sweep's progress bar is tqdm's notebook bar in a kernel and a text bar elsewhere."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import comm
import numpy as np
import pandas as pd
import pytest

from osm.research.backtest import backtest
from osm.research.sweep import sweep
from osm.research.synthetic import random_walk_bars
from osm.research.walkforward import walk_forward
from osm.strategies.sma_cross import SmaCross
from osm.widgets.research import equity_chart, sweep_heatmap, thin, walk_forward_chart

_ids = itertools.count()
SETTINGS = {"size": 10_000, "commission": 2e-5}


class RecordingComm:
    """Stands in for a kernel comm: keeps every message a widget sends."""

    kernel = "Truthy"
    log: list[tuple[str, dict, list]] = []

    def __init__(self, **kwargs) -> None:
        self.comm_id = f"comm-{next(_ids)}"
        # The widget's state at creation travels with the comm's opening.
        RecordingComm.log.append((self.comm_id, kwargs.get("data"), kwargs.get("buffers") or []))

    def open(self, *args, **kwargs) -> None:
        pass

    def on_msg(self, callback) -> None:
        pass

    def on_close(self, callback) -> None:
        pass

    def send(self, data=None, metadata=None, buffers=None) -> None:
        RecordingComm.log.append((self.comm_id, data, list(buffers or [])))

    def close(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def recorded(monkeypatch):
    RecordingComm.log = []
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))
    monkeypatch.setattr(comm, "get_comm_manager", lambda: None)
    return RecordingComm.log


@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    return random_walk_bars(3000, seed=3)


@pytest.fixture(scope="module")
def table(bars) -> pd.DataFrame:
    # (40, 30) is not a valid SmaCross: the sweep skips it and its cell is NaN.
    with pytest.warns(UserWarning, match="skipping 1 of 9"):
        return sweep(SmaCross, bars, grid={"fast": [5, 10, 40], "slow": [30, 60, 90]},
                     progress=False, **SETTINGS)  # fmt: skip


def bqplot_event(view, row: int, column: int) -> dict:
    """What bqplot's GridHeatMap sends for a cell: its d3 datum (see bqplot's GridHeatMapModel)."""
    return {
        "rowNum": row, "columnNum": column, "row": view.rows[row], "column": view.columns[column],
        "color": view.grid[row, column], "cellNum": row * len(view.columns) + column,
    }  # fmt: skip


def send(mark, event: str, data: dict) -> None:
    """Deliver a front end's custom message to a mark, as ipywidgets does."""
    mark._handle_custom_msgs(mark, {"event": event, "data": data})


def test_heatmap_cells_are_the_sweep_table(recorded, bars, table):
    view = sweep_heatmap(table, bars, **SETTINGS)
    assert (view.y, view.x, view.metric) == ("fast", "slow", "sharpe")
    assert view.rows == [5, 10, 40] and view.columns == [30, 60, 90]
    for (i, fast), (j, slow) in itertools.product(enumerate(view.rows), enumerate(view.columns)):
        row = table[(table["fast"] == fast) & (table["slow"] == slow)]
        if fast >= slow:
            assert row.empty and np.isnan(view.mark.color[i, j])
        else:
            assert view.mark.color[i, j] == row["sharpe"].item()
    # Sent as a binary float64 buffer holding those values.
    data, buffers = next(
        (d, b) for cid, d, b in recorded if cid == view.mark.comm.comm_id and "state" in d
    )
    assert data["state"]["color"]["dtype"] == "float64"
    sent = buffers[data["buffer_paths"].index(["color", "value"])]
    np.testing.assert_array_equal(np.frombuffer(sent, np.float64).reshape(3, 3), view.grid)


def test_hover_shows_the_cell_metrics(recorded, bars, table):
    view = sweep_heatmap(table, bars, **SETTINGS)
    send(view.mark, "hover", bqplot_event(view, 1, 2))  # fast 10, slow 90
    row = table[(table["fast"] == 10) & (table["slow"] == 90)].iloc[0]
    shown = view.tooltip.value
    assert f"{row['sharpe']:.4g}" in shown and f"{row['total_return']:.2%}" in shown
    assert f">{int(row['trades'])}<" in shown
    send(view.mark, "hover", bqplot_event(view, 2, 0))  # fast 40, slow 30: skipped
    assert "not swept" in view.tooltip.value


def test_clicking_a_cell_backtests_it_and_shows_its_equity(recorded, bars, table):
    view = sweep_heatmap(table, bars, **SETTINGS)
    before = len(recorded)
    send(view.mark, "element_click", bqplot_event(view, 0, 1))  # fast 5, slow 60
    expected = backtest(SmaCross(fast=5, slow=60), bars, **SETTINGS)
    shown = view.equity.result
    assert shown.strategy.fast == 5 and shown.strategy.slow == 60
    np.testing.assert_array_equal(shown.equity_values, expected.equity_values)
    row = table[(table["fast"] == 5) & (table["slow"] == 60)].iloc[0]
    assert shown.metrics["sharpe"] == pytest.approx(row["sharpe"], rel=1e-12)
    # The drawn line is that equity at the bars it keeps (thinned to 2000 points), with its
    # drawdown, and the lowest drawdown among them.
    times = bars["time"].astype("datetime64[ns]")
    kept = np.searchsorted(times, view.equity.equity.x)
    assert 1000 < len(kept) <= 2002 and np.all(times[kept] == view.equity.equity.x)
    np.testing.assert_array_equal(view.equity.equity.y, expected.equity_values[kept])
    drawdown = (expected.equity / expected.equity.cummax() - 1).to_numpy()
    np.testing.assert_allclose(view.equity.drawdown.y, drawdown[kept], atol=1e-15)
    assert view.equity.drawdown.y.min() == drawdown.min()
    assert view.mark.selected.tolist() == [[0, 1]]
    # In place: the equity line's existing widget changed, one message per mark.
    sent = {cid for cid, _, _ in recorded[before:]}
    assert view.equity.equity.comm.comm_id in sent
    # A click on a skipped cell says so and backtests nothing.
    send(view.mark, "element_click", bqplot_event(view, 2, 0))
    assert "not swept" in view.status.value and view.equity.result is shown


def test_heatmap_refuses_an_unknown_parameter(table):
    with pytest.raises(ValueError, match="'fsat' is not a parameter of the sweep"):
        sweep_heatmap(table, x="fsat")


def test_thin_keeps_the_extremes():
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.normal(size=70_000))
    keep = thin(values, 2000)
    assert len(keep) <= 2002 and np.all(np.diff(keep) > 0)
    assert values.argmin() in keep and values.argmax() in keep
    assert keep[0] == 0 and keep[-1] == len(values) - 1


def test_equity_chart_of_a_long_run_is_thinned(recorded):
    long_bars = random_walk_bars(20_000, seed=5)
    result = backtest(SmaCross(fast=5, slow=50), long_bars, **SETTINGS)
    chart = equity_chart(result)
    assert len(chart.equity.y) <= 2 * 2002
    drawdown = result.equity_values / np.maximum.accumulate(result.equity_values) - 1
    assert chart.drawdown.y.min() == drawdown.min()
    assert chart.equity.y.max() == result.equity_values.max()


def test_walk_forward_chart_holds_the_fold_table(recorded, bars):
    result = walk_forward(SmaCross, bars, 1500, 500, grid={"fast": [5, 10], "slow": [30, 60]},
                          progress=False, **SETTINGS)  # fmt: skip
    chart = walk_forward_chart(result)
    folds = result.folds
    np.testing.assert_array_equal(chart.bars.x, folds["fold"].to_numpy(np.float64))
    np.testing.assert_array_equal(chart.bars.y[0], folds["is_sharpe"].to_numpy())
    np.testing.assert_array_equal(chart.bars.y[1], folds["oos_sharpe"].to_numpy())
    np.testing.assert_array_equal(chart.equity.y, result.equity.to_numpy())
    assert len(chart.boundaries.x) == len(folds)


def test_sweep_progress_is_a_notebook_bar_in_a_kernel_and_text_elsewhere(bars, capsys):
    # In a terminal: tqdm's text bar on stderr.
    sweep(SmaCross, bars[:500], grid={"fast": [5], "slow": [30, 60]}, progress=True)
    assert "sweep SmaCross: 100%" in capsys.readouterr().err
    # In a kernel: the notebook bar, an ipywidgets progress bar.
    script = textwrap.dedent(
        """
        import sys
        import ipykernel.zmqshell  # what tqdm.auto looks for: a Jupyter kernel's shell
        import tqdm.notebook
        import osm.research.sweep
        bar = sys.modules["osm.research.sweep"].tqdm
        print(issubclass(bar, tqdm.notebook.tqdm_notebook))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.stdout.strip() == "True", done.stderr
