"""Research widgets (bqplot): a sweep heatmap whose cells show their metrics on hover and backtest
on click, equity and drawdown, and the folds of a walk-forward.

- :func:`sweep_heatmap`: a ``GridHeatMap`` of one metric of a sweep table over two parameters
  (rows: `y`, columns: `x`; a combination the sweep skipped is NaN, drawn blank). Hovering a cell
  shows all its metrics in the tooltip; clicking it backtests that combination with the sweep's
  settings and shows its equity and drawdown below.
- :func:`equity_chart`: equity over drawdown of a backtest, on a shared time axis.
- :func:`walk_forward_chart`: each fold's in-sample objective beside its out-of-sample one, and the
  stitched out-of-sample equity with the fold boundaries.

Long series are thinned to at most :data:`MOST_POINTS` points for display (each bucket keeps its
lowest and highest value, so a drawdown's trough survives); arrays travel as float64 binary
buffers. Marks change in place under ``hold_sync``. Hover and click messages are handled on the
shell the front end sends them to, so they work while a cell is busy.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import bqplot as bq
import ipywidgets as w
import numpy as np
import pandas as pd

from osm.core.errors import ConfigError
from osm.research.backtest import BacktestResult, backtest
from osm.research.walkforward import WalkForwardResult
from osm.strategies.base import Strategy, load_strategy
from osm.widgets.controls import clicks_on_any_shell

MOST_POINTS = 2000
"""Most points drawn per line: a 70 000-bar equity is thinned to this, extremes kept."""

_PERCENT = {"total_return", "cagr", "max_drawdown", "win_rate", "exposure"}


def thin(values: np.ndarray, most: int = MOST_POINTS) -> np.ndarray:
    """Indices of at most about `most` points of `values` that keep each bucket's min and max."""
    n = len(values)
    if n <= most:
        return np.arange(n)
    edges = np.linspace(0, n, most // 2 + 1).astype(np.int64)
    keep = [0, n - 1]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            chunk = values[a:b]
            keep += [a + int(np.nanargmin(chunk)), a + int(np.nanargmax(chunk))]
    return np.unique(keep)


def _format(name: str, value: Any) -> str:
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return "–"
        return f"{value:.2%}" if name in _PERCENT else f"{value:.4g}"
    return html.escape(str(value))


def _table_html(rows: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><td style='padding-right:8px'>{html.escape(k)}</td>"
        f"<td style='text-align:right'>{_format(k, v)}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table style='font-size:12px'>{cells}</table>"


class EquityChart:
    """Equity over drawdown of one backtest; :meth:`show` replaces the run in place."""

    def __init__(self, height: str = "320px") -> None:
        x = bq.DateScale()
        self.equity = bq.Lines(
            x=np.empty(0), y=np.empty(0), scales={"x": x, "y": bq.LinearScale()},
            colors=["#1f77b4"], stroke_width=1.2,
        )  # fmt: skip
        self.drawdown = bq.Lines(
            x=np.empty(0), y=np.empty(0), scales={"x": x, "y": bq.LinearScale(max=0.0)},
            colors=["#d62728"], fill="bottom", fill_opacities=[0.4],
        )  # fmt: skip
        margin = {"top": 30, "bottom": 30, "left": 70, "right": 20}
        self.top = bq.Figure(
            marks=[self.equity],
            axes=[bq.Axis(scale=x, grid_lines="none"),
                  bq.Axis(scale=self.equity.scales["y"], side="left", label="equity")],
            fig_margin=margin, layout=w.Layout(width="100%", height=height),
        )  # fmt: skip
        self.bottom = bq.Figure(
            marks=[self.drawdown],
            axes=[bq.Axis(scale=x, label="UTC"),
                  bq.Axis(scale=self.drawdown.scales["y"], side="left",
                          tick_format=".0%", label="drawdown")],
            fig_margin=margin, layout=w.Layout(width="100%", height="160px"),
        )  # fmt: skip
        self.widget = w.VBox([self.top, self.bottom])
        self.result: BacktestResult | None = None

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def show(self, result: BacktestResult) -> None:
        """Draw `result`'s equity and drawdown (thinned to :data:`MOST_POINTS`)."""
        equity = result.equity_values.astype(np.float64)
        drawdown = equity / np.maximum.accumulate(equity) - 1.0
        keep = np.union1d(thin(equity), thin(drawdown))
        times = result.bars["time"][keep].astype("datetime64[ns]")
        with self.equity.hold_sync():
            self.equity.x, self.equity.y = times, equity[keep]
        with self.drawdown.hold_sync():
            self.drawdown.x, self.drawdown.y = times, drawdown[keep]
        m = result.metrics
        self.top.title = (
            f"{result.strategy!r}: total return {m['total_return']:.2%}, "
            f"Sharpe {m['sharpe']:.2f}, max drawdown {m['max_drawdown']:.2%}"
        )
        self.result = result

    def close(self) -> None:
        for widget in (self.widget, self.top, self.bottom, self.equity, self.drawdown):
            widget.close()


class SweepHeatmap:
    """One metric of a sweep over two parameters; see :func:`sweep_heatmap`."""

    def __init__(
        self,
        table: pd.DataFrame,
        bars: np.ndarray | None,
        x: str,
        y: str,
        metric: str,
        settings: dict[str, Any],
    ) -> None:
        self.table, self.bars, self.x, self.y, self.metric = table, bars, x, y, metric
        self.settings = settings
        self.strategy_cls: type[Strategy] = load_strategy(table.attrs["strategy"])
        self.params = list(self.strategy_cls.params)
        self.fixed = _fixed(table, self.params, (x, y), metric)
        chosen = table[_matches(table, self.fixed)]
        grid = chosen.pivot(index=y, columns=x, values=metric).sort_index().sort_index(axis=1)
        self.rows, self.columns = list(grid.index), list(grid.columns)
        self.grid = grid.to_numpy(np.float64)
        self.cells = {(r[y], r[x]): r for r in chosen.to_dict("records")}
        self.tooltip = w.HTML()
        self.mark = bq.GridHeatMap(
            row=np.asarray(self.rows, np.float64), column=np.asarray(self.columns, np.float64),
            color=self.grid, tooltip=self.tooltip, selected_style={"stroke": "black"},
            scales={"row": bq.OrdinalScale(reverse=True), "column": bq.OrdinalScale(),
                    "color": bq.ColorScale(scheme="RdYlGn")},
        )  # fmt: skip
        scales = self.mark.scales
        self.figure = bq.Figure(
            marks=[self.mark],
            axes=[bq.Axis(scale=scales["column"], label=x),
                  bq.Axis(scale=scales["row"], side="left", label=y),
                  bq.ColorAxis(scale=scales["color"], side="right", label=metric)],
            title=f"{self.strategy_cls.__name__} {metric}"
            + "".join(f", {k}={v}" for k, v in self.fixed.items()),
            fig_margin={"top": 40, "bottom": 50, "left": 60, "right": 90},
            layout=w.Layout(width="100%", height="380px"),
        )  # fmt: skip
        self.mark.on_hover(self._hovered)
        self.mark.on_element_click(self._clicked)
        clicks_on_any_shell(self.mark)
        self.status = w.HTML("hover a cell for its metrics; click it to backtest it")
        self.equity = EquityChart() if bars is not None else None
        parts: list[w.Widget] = [self.figure, self.status]
        self.widget = w.VBox(parts + ([self.equity.widget] if self.equity else []))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def cell(self, data: Mapping[str, Any]) -> tuple[int, int]:
        """The (row, column) of a bqplot hover or click event's data."""
        if "rowNum" in data and "columnNum" in data:
            return int(data["rowNum"]), int(data["columnNum"])
        index = int(data["cellNum"])
        return divmod(index, len(self.columns))

    def params_at(self, row: int, column: int) -> dict[str, Any]:
        """The full parameter set of a cell."""
        return {**self.fixed, self.y: self.rows[row], self.x: self.columns[column]}

    def metrics_at(self, row: int, column: int) -> dict[str, Any] | None:
        """The sweep table's row of a cell (None: the sweep skipped that combination)."""
        return self.cells.get((self.rows[row], self.columns[column]))

    def _hovered(self, _mark: Any, event: dict[str, Any]) -> None:
        row, column = self.cell(event.get("data") or {})
        found = self.metrics_at(row, column)
        if found is None:
            shown = {**self.params_at(row, column), "": "not swept (invalid combination)"}
        else:
            shown = {k: v for k, v in found.items()}
        self.tooltip.value = _table_html(shown)

    def _clicked(self, _mark: Any, event: dict[str, Any]) -> None:
        self.click(*self.cell(event.get("data") or {}))

    def click(self, row: int, column: int) -> BacktestResult | None:
        """Backtest the combination of a cell and show its equity (what a click does)."""
        params = self.params_at(row, column)
        if self.bars is None or self.equity is None:
            self.status.value = "pass the bars to sweep_heatmap to backtest a cell"
            return None
        if self.metrics_at(row, column) is None:
            self.status.value = f"{html.escape(str(params))}: not swept (invalid combination)"
            return None
        self.status.value = f"backtesting {html.escape(str(params))}…"
        result = backtest(self.strategy_cls, self.bars, **self.settings, **params)
        self.mark.selected = np.array([[row, column]])
        self.equity.show(result)
        self.status.value = f"{html.escape(str(params))}: {_format(self.metric, result.metrics[self.metric])} {self.metric}"
        return result

    def close(self) -> None:
        if self.equity is not None:
            self.equity.close()
        for widget in (self.widget, self.status, self.figure, self.mark, self.tooltip):
            widget.close()


class WalkForwardChart:
    """In-sample against out-of-sample objective per fold, and the stitched equity."""

    def __init__(self, result: WalkForwardResult) -> None:
        folds = result.folds
        objective = next(
            c[3:] for c in folds.columns
            if c.startswith("is_") and c not in ("is_from", "is_bars")
        )  # fmt: skip
        self.objective = objective
        self.in_sample = folds[f"is_{objective}"].to_numpy(np.float64)
        oos = f"oos_{objective}"
        self.out_of_sample = (
            folds[oos].to_numpy(np.float64) if oos in folds else np.full(len(folds), np.nan)
        )
        x, y = bq.OrdinalScale(), bq.LinearScale()
        self.bars = bq.Bars(
            x=folds["fold"].to_numpy(np.float64), y=np.vstack([self.in_sample, self.out_of_sample]),
            scales={"x": x, "y": y}, type="grouped", colors=["#9ecae1", "#1f77b4"],
            labels=["in sample", "out of sample"], display_legend=True,
            tooltip=bq.Tooltip(fields=["x", "y"], labels=["fold", objective], formats=["", ".3f"]),
        )  # fmt: skip
        self.folds_figure = bq.Figure(
            marks=[self.bars],
            axes=[bq.Axis(scale=x, label="fold"),
                  bq.Axis(scale=y, side="left", label=objective)],
            title=f"{objective} by fold: the gap is the optimiser's overfit",
            fig_margin={"top": 40, "bottom": 40, "left": 60, "right": 20},
            layout=w.Layout(width="100%", height="280px"),
        )  # fmt: skip
        equity = result.equity.to_numpy(np.float64)
        keep = thin(equity)
        t = bq.DateScale()
        ey = bq.LinearScale()
        self.equity = bq.Lines(
            x=result.equity.index.to_numpy("datetime64[ns]")[keep], y=equity[keep],
            scales={"x": t, "y": ey}, colors=["#1f77b4"], stroke_width=1.2,
        )  # fmt: skip
        starts = folds["oos_from"].to_numpy("datetime64[ns]")
        lo, hi = float(np.nanmin(equity)), float(np.nanmax(equity))
        self.boundaries = bq.Lines(
            x=np.repeat(starts[:, None], 2, axis=1), y=np.tile([lo, hi], (len(starts), 1)),
            scales={"x": t, "y": ey}, colors=["#999999"], line_style="dotted", stroke_width=0.8,
        )  # fmt: skip
        m = result.metrics
        self.equity_figure = bq.Figure(
            marks=[self.boundaries, self.equity],
            axes=[bq.Axis(scale=t, label="UTC"),
                  bq.Axis(scale=ey, side="left", label="equity")],
            title=f"stitched out-of-sample equity: {len(folds)} folds, "
            f"total return {m['total_return']:.2%}, Sharpe {m['sharpe']:.2f}",
            fig_margin={"top": 40, "bottom": 40, "left": 70, "right": 20},
            layout=w.Layout(width="100%", height="320px"),
        )  # fmt: skip
        self.widget = w.VBox([self.folds_figure, self.equity_figure])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        for widget in (self.widget, self.folds_figure, self.equity_figure, self.bars):
            widget.close()
        self.equity.close()
        self.boundaries.close()


def _matches(table: pd.DataFrame, values: Mapping[str, Any]) -> pd.Series:
    keep = pd.Series(True, index=table.index)
    for name, value in values.items():
        keep &= table[name] == value
    return keep


def _fixed(
    table: pd.DataFrame, params: list[str], axes: tuple[str, str], metric: str
) -> dict[str, Any]:
    """The other parameters' values: those of the best row where they vary."""
    for name in axes:
        if name not in params:
            raise ConfigError(f"{name!r} is not a parameter of the sweep; choose from {params}")
    if axes[0] == axes[1]:
        raise ConfigError(f"x and y must be two different parameters, got {axes[0]!r} twice")
    others = [p for p in params if p not in axes]
    if not others:
        return {}
    best = table.sort_values(metric, ascending=False, na_position="last").iloc[0]
    return {p: best[p].item() if hasattr(best[p], "item") else best[p] for p in others}


def sweep_heatmap(
    table: pd.DataFrame,
    bars: np.ndarray | None = None,
    x: str | None = None,
    y: str | None = None,
    metric: str | None = None,
    size: int | float = 10_000,
    commission: float = 0.0,
    financing: float = 0.0,
    cash: float = 100_000.0,
) -> SweepHeatmap:
    """A heatmap of a sweep table (:func:`osm.research.sweep.sweep`) over two parameters.

    Parameters
    ----------
    table
        The sweep's table; its ``attrs`` name the strategy and the objective.
    bars
        The bars the sweep ran on: clicking a cell backtests it on them (None: no click backtest).
    x, y
        The parameters on the columns and rows; default: the last and the first of the strategy.
        Any other parameter is held at its value in the best row.
    metric
        The colour; default the sweep's objective.
    size, commission, financing, cash
        The sweep's backtest settings, so that a clicked cell reproduces its row.
    """
    strategy_cls = load_strategy(table.attrs["strategy"])
    params = list(strategy_cls.params)
    if len(params) < 2 and (x is None or y is None):
        raise ConfigError(f"a heatmap needs two parameters; {strategy_cls.__name__} has {params}")
    y = y or params[0]
    x = x or next(p for p in reversed(params) if p != y)
    metric = metric or table.attrs.get("objective", "sharpe")
    if metric not in table.columns:
        raise ConfigError(f"metric {metric!r} is not a column of the table: {list(table.columns)}")
    settings = {"size": size, "commission": commission, "financing": financing, "cash": cash}
    return SweepHeatmap(table, bars, x, y, metric, settings)


def equity_chart(result: BacktestResult) -> EquityChart:
    """Equity over drawdown of a backtest (:func:`osm.research.backtest.backtest`)."""
    chart = EquityChart()
    chart.show(result)
    return chart


def walk_forward_chart(result: WalkForwardResult) -> WalkForwardChart:
    """Each fold's in-sample and out-of-sample objective, and the stitched equity with the fold
    boundaries (:func:`osm.research.walkforward.walk_forward`)."""
    return WalkForwardChart(result)
