"""Walk-forward testing: optimise on each in-sample window, trade the winner on the next one.

Folds are rolling (the in-sample window slides) or anchored (it always starts at the first bar),
sized in bars (ints) or time spans (``"365D"``, ``pd.Timedelta``). Each fold's in-sample window is
swept (:func:`osm.research.sweep.sweep`) and the parameters with the best `objective` are tested
on the out-of-sample window that follows.

The out-of-sample windows are stitched into one run, as a live brain following the
:class:`ParameterSchedule` would trade them: the parameters chosen on fold ``k`` set the targets of
the bars of its out-of-sample window, each computed with enough earlier bars that indicators are
warm (by default the whole in-sample window before it), and the position carries over from one
window into the next instead of being closed at each boundary. Trading happens only inside the
out-of-sample span: the first target executes at its second bar's open. The stitched equity is the
honest result; the in-sample figures only say how well the optimiser fitted the past.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from osm.core.errors import ConfigError
from osm.research.backtest import check_settings
from osm.research.data import check_bars
from osm.research.metrics import N_METRICS, TRADE_DTYPE, metrics_dict, metrics_nb, trades_nb
from osm.research.nb import FILL_DTYPE, backtest_nb
from osm.research.sweep import best, sweep
from osm.research.sweep_nb import target_units_nb
from osm.strategies.base import Bars, Strategy, load_strategy

Span = int | str | pd.Timedelta | timedelta
_FOLD_METRICS = ("total_return", "sharpe", "max_drawdown", "trades")


class Fold(NamedTuple):
    """One fold as bar indices: optimise on ``[is_start, oos_start)``, test on ``[oos_start, oos_end)``."""

    is_start: int
    oos_start: int
    oos_end: int


class ScheduleEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Trade `params` on bars that open at or after `from_time` (UTC)."""

    from_time: datetime
    params: dict[str, Any]


class ParameterSchedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which parameters to trade from when: the output of a walk-forward, the input of promotion.

    Entries are in time order; the last one stays in force after its out-of-sample window.
    JSON round trip: ``ParameterSchedule.from_json(schedule.to_json())``.
    """

    strategy: str  # importable "module:Class"
    entries: list[ScheduleEntry]
    objective: str = "sharpe"
    version: int = 1

    def __post_init__(self) -> None:
        if not self.entries:
            raise ConfigError("a parameter schedule needs at least one entry")
        times = [entry.from_time for entry in self.entries]
        if any(t.tzinfo is None for t in times):
            raise ConfigError("schedule times must carry a time zone (UTC); add tzinfo=UTC")
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ConfigError(f"schedule entries must be in increasing time order, got {times}")

    def params_at(self, when: datetime | pd.Timestamp | str | int) -> dict[str, Any]:
        """Return the parameters in force at `when` (a datetime, ISO string or int ns UTC)."""
        moment = _as_utc(when)
        current = None
        for entry in self.entries:
            if entry.from_time > moment:
                break
            current = entry
        if current is None:
            raise ValueError(
                f"{moment.isoformat()} is before the schedule starts "
                f"({self.entries[0].from_time.isoformat()}); trade from then on"
            )
        return dict(current.params)

    def to_frame(self) -> pd.DataFrame:
        """One row per entry: ``from_time`` then one column per parameter."""
        rows = [{"from_time": e.from_time, **e.params} for e in self.entries]
        return pd.DataFrame(rows)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> ParameterSchedule:
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:  # malformed JSON, or not a schedule
            raise ConfigError(f"invalid parameter schedule: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the schedule as indented JSON to `path` and return it."""
        path = Path(path)
        path.write_text(json.dumps(json.loads(self.to_json()), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ParameterSchedule:
        return cls.from_json(Path(path).read_bytes())


@dataclass(frozen=True, eq=False)
class WalkForwardResult:
    """What a walk-forward produced.

    Attributes
    ----------
    folds
        One row per fold: its windows (bars and times), the chosen parameters, the in-sample
        objective and the out-of-sample ``oos_*`` metrics.
    equity
        The stitched out-of-sample equity, indexed by UTC bar open time.
    fills
        The stitched run's fills: time, bar (index into the bars given), units, price, commission,
        position.
    metrics
        The metrics of the stitched out-of-sample run.
    schedule
        The parameters to trade from when.
    sweeps
        Each fold's in-sample sweep table.
    """

    folds: pd.DataFrame
    equity: pd.Series
    fills: pd.DataFrame
    metrics: dict[str, float]
    schedule: ParameterSchedule
    sweeps: list[pd.DataFrame]


def make_folds(
    times: np.ndarray,
    in_sample: Span,
    out_of_sample: Span,
    *,
    step: Span | None = None,
    anchored: bool = False,
) -> list[Fold]:
    """Cut bars into walk-forward folds; an out-of-sample window the data does not cover is dropped.

    Parameters
    ----------
    times
        The bars' open times, int64 ns UTC, increasing.
    in_sample, out_of_sample
        Window lengths: all ints (bars) or all time spans (``"180D"``, ``pd.Timedelta``).
    step
        How far each fold moves on (default: `out_of_sample`, so out-of-sample windows tile).
    anchored
        Start every in-sample window at the first bar instead of sliding it.
    """
    step = out_of_sample if step is None else step
    spans = (in_sample, out_of_sample, step)
    if all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in spans):
        edges = _bar_edges(len(times), *(int(s) for s in spans), anchored)
    else:
        edges = _time_edges(np.asarray(times, dtype=np.int64), *(_span(s) for s in spans), anchored)
    folds = [Fold(*e) for e in edges if e[0] < e[1] < e[2]]
    if not folds:
        raise ConfigError(
            f"no complete fold in {len(times)} bars with in_sample={in_sample!r}, "
            f"out_of_sample={out_of_sample!r}; shorten the windows or give more bars"
        )
    return folds


def walk_forward(
    strategy_cls: type[Strategy] | str,
    bars: np.ndarray | Bars,
    in_sample: Span,
    out_of_sample: Span,
    *,
    step: Span | None = None,
    anchored: bool = False,
    grid: dict[str, Any] | None = None,
    n_random: int | None = None,
    seed: int = 0,
    objective: str = "sharpe",
    warmup: int | None = None,
    size: int = 10_000,
    commission: float = 0.0,
    financing: float = 0.0,
    cash: float = 100_000.0,
    executor: str = "local",
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = True,
) -> WalkForwardResult:
    """Optimise on rolling or anchored in-sample windows and test on the out-of-sample ones.

    Parameters
    ----------
    strategy_cls
        A Strategy class or its path ``"package.module:Class"``.
    bars
        BAR_DTYPE bars (or Bars), oldest first.
    in_sample, out_of_sample, step, anchored
        The folds; see :func:`make_folds`.
    grid, n_random, seed, objective, executor, scheduler, workers
        The in-sample search; see :func:`osm.research.sweep.sweep`. The largest `objective` wins.
    warmup
        Bars before each out-of-sample window the strategy sees to warm its indicators (they
        are not traded). None: the whole in-sample window.
    size, commission, financing, cash
        Backtest settings, as :func:`osm.research.backtest.backtest` takes them.
    progress
        Show a progress bar over the folds.

    Returns
    -------
    WalkForwardResult
        The fold table, the stitched out-of-sample equity, fills and metrics, and the schedule.
    """
    cls = load_strategy(strategy_cls)
    records = check_bars(bars.records if isinstance(bars, Bars) else bars)
    check_settings(size, commission, financing, cash)
    if warmup is not None and (isinstance(warmup, bool) or warmup < 0):
        raise ConfigError(f"warmup must be a number of bars >= 0 or None, got {warmup!r}")
    folds = make_folds(records["time"], in_sample, out_of_sample, step=step, anchored=anchored)
    search = {
        "grid": grid, "n_random": n_random, "seed": seed, "objective": objective,
        "size": size, "commission": commission, "financing": financing, "cash": cash,
        "executor": executor, "scheduler": scheduler, "workers": workers, "progress": False,
    }  # fmt: skip
    chosen, sweeps = [], []
    with _connected(executor, scheduler) as client:
        search["scheduler"] = client
        for fold in tqdm(folds, disable=not progress, desc=f"walk-forward {cls.__name__}"):
            table = sweep(cls, records[fold.is_start : fold.oos_start], **search)
            chosen.append(_pick(cls, table, chosen, fold, records))
            sweeps.append(table)
    segments = _segments(folds)
    units = _stitched_units(cls, records, folds, segments, chosen, warmup, size)
    run = _run(records[segments[0][0] : segments[-1][1]], units, commission, financing, cash)
    schedule = ParameterSchedule(
        strategy=f"{cls.__module__}:{cls.__qualname__}",
        entries=[
            ScheduleEntry(from_time=_as_utc(int(records["time"][a])), params=params)
            for (a, _), params in zip(segments, chosen, strict=True)
        ],
        objective=objective,
    )
    return WalkForwardResult(
        folds=_fold_table(records, folds, segments, chosen, sweeps, run, objective),
        equity=pd.Series(run["equity"], index=_index(run["time"]), name="oos_equity"),
        fills=_fills_frame(run, offset=segments[0][0]),
        metrics=metrics_dict(run["metrics"]),
        schedule=schedule,
        sweeps=sweeps,
    )


@contextmanager
def _connected(executor: str, scheduler: Any) -> Iterator[Any]:
    """Connect to a scheduler given by address once for all folds, not once per fold's sweep."""
    if executor != "dask" or not isinstance(scheduler, str):
        yield scheduler
        return
    from distributed import Client

    with Client(scheduler) as client:
        yield client


def _bar_edges(n: int, in_sample: int, oos: int, step: int, anchored: bool) -> list[tuple]:
    if min(in_sample, oos, step) < 1:
        raise ConfigError(
            f"in_sample, out_of_sample and step must be >= 1 bar, got {in_sample, oos, step}"
        )
    edges, k = [], 0
    while in_sample + k * step + oos <= n:
        start = 0 if anchored else k * step
        edges.append((start, in_sample + k * step, in_sample + k * step + oos))
        k += 1
    return edges


def _time_edges(
    times: np.ndarray, in_sample: int, oos: int, step: int, anchored: bool
) -> list[tuple]:
    if len(times) < 2:
        return []
    # The data covers an instant up to one bar after the last open.
    covered = int(times[-1]) + int(times[-1] - times[-2])
    edges, k, first = [], 0, int(times[0])
    while first + in_sample + k * step + oos <= covered:
        bounds = (
            first if anchored else first + k * step,
            first + in_sample + k * step,
            first + in_sample + k * step + oos,
        )
        edges.append(tuple(int(i) for i in np.searchsorted(times, bounds)))
        k += 1
    return edges


def _span(value: Span) -> int:
    if isinstance(value, bool | int | np.integer):
        raise ConfigError(
            "give in_sample, out_of_sample and step all in bars (ints) or all as time spans "
            f"('90D', pd.Timedelta), not a mix; got {value!r} among spans"
        )
    try:
        span = pd.Timedelta(value).value
    except ValueError:
        raise ConfigError(f"{value!r} is not a time span; write e.g. '180D' or '12h'") from None
    if span <= 0:
        raise ConfigError(f"time spans must be positive, got {value!r}")
    return span


def _pick(
    cls: type[Strategy], table: pd.DataFrame, chosen: list, fold: Fold, records: np.ndarray
) -> dict[str, Any]:
    """The best parameters of a fold's sweep; if no combination has an objective, carry on with
    the previous fold's (or the defaults) and say so."""
    params = best(table, cls)
    if params is not None:
        return params
    fallback = chosen[-1] if chosen else cls().values
    when = _as_utc(int(records["time"][fold.is_start])).isoformat()
    warnings.warn(
        f"fold from {when}: no combination has a {table.attrs['objective']} (no trades?); "
        f"keeping {fallback}. Widen the grid or lengthen in_sample.",
        stacklevel=3,
    )
    return fallback


def _segments(folds: list[Fold]) -> list[tuple[int, int]]:
    """The bars each fold's parameters trade: its out-of-sample window, cut where the next
    fold's begins (when steps are shorter than the window)."""
    ends = [min(f.oos_end, nxt.oos_start) for f, nxt in zip(folds, folds[1:], strict=False)]
    return [(f.oos_start, end) for f, end in zip(folds, [*ends, folds[-1].oos_end], strict=True)]


def _stitched_units(
    cls: type[Strategy],
    records: np.ndarray,
    folds: list[Fold],
    segments: list[tuple[int, int]],
    chosen: list[dict],
    warmup: int | None,
    size: int,
) -> np.ndarray:
    """Units wanted at each bar of the out-of-sample span; 0 (flat) in gaps between windows."""
    span_start = segments[0][0]
    units = np.zeros(segments[-1][1] - span_start)
    for fold, (a, b), params in zip(folds, segments, chosen, strict=True):
        context = a - fold.is_start if warmup is None else min(warmup, a)
        target = cls(**params).targets(records[a - context : b])[context:]
        target_units_nb(target, float(size), units[a - span_start : b - span_start])
    return units


def _run(
    records: np.ndarray, units: np.ndarray, commission: float, financing: float, cash: float
) -> dict[str, np.ndarray]:
    """Backtest `units` on `records` with the kernels; return the arrays a result needs."""
    bars, n = Bars(records), len(records)
    equity, fills = np.empty(n), np.empty(n, dtype=FILL_DTYPE)
    n_fills = backtest_nb(
        bars.bid_open, bars.ask_open, bars.bid_close, bars.ask_close, units, float(commission),
        float(financing), float(cash), equity, fills,
    )  # fmt: skip
    trades = np.empty(max(n_fills, 1), dtype=TRADE_DTYPE)
    n_trades = trades_nb(fills, n_fills, bars.bid_close, bars.ask_close, float(financing), trades)
    values = np.empty(N_METRICS)
    metrics_nb(bars.time, equity, float(cash), trades, n_trades, units, values)
    return {
        "time": bars.time, "equity": equity, "fills": fills[:n_fills], "trades": trades[:n_trades],
        "units": units, "metrics": values, "cash": np.float64(cash),
    }  # fmt: skip


def _fold_metrics(run: dict[str, np.ndarray], a: int, b: int) -> dict[str, float]:
    """Metrics of one segment of the stitched run (offsets into it), from the equity at its start."""
    base = float(run["equity"][a - 1]) if a > 0 else float(run["cash"])
    trades = run["trades"]
    inside = trades[(trades["exit_bar"] >= a) & (trades["exit_bar"] < b)]
    values = np.empty(N_METRICS)
    metrics_nb(
        run["time"][a:b], run["equity"][a:b], base, inside, len(inside), run["units"][a:b], values
    )
    named = metrics_dict(values)
    return {f"oos_{k}": named[k] for k in _FOLD_METRICS}


def _fold_table(
    records: np.ndarray,
    folds: list[Fold],
    segments: list[tuple[int, int]],
    chosen: list[dict],
    sweeps: list[pd.DataFrame],
    run: dict[str, np.ndarray],
    objective: str,
) -> pd.DataFrame:
    times, offset = records["time"], segments[0][0]
    rows = []
    for k, (fold, (a, b), params, table) in enumerate(
        zip(folds, segments, chosen, sweeps, strict=True)
    ):
        fitted = table[objective][_matches(table, params)]
        rows.append(
            {
                "fold": k,
                "is_from": times[fold.is_start],
                "oos_from": times[a],
                "oos_to": times[b - 1],
                "is_bars": fold.oos_start - fold.is_start,
                "oos_bars": b - a,
                **params,
                f"is_{objective}": float(fitted.iloc[0]) if len(fitted) else np.nan,
                **_fold_metrics(run, a - offset, b - offset),
            }
        )
    frame = pd.DataFrame(rows)
    frame["oos_trades"] = frame["oos_trades"].astype(np.int64)
    for column in ("is_from", "oos_from", "oos_to"):
        frame[column] = _index(frame[column].to_numpy(np.int64))
    return frame


def _matches(table: pd.DataFrame, params: dict[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for name, value in params.items():
        mask &= table[name] == value
    return mask


def _fills_frame(run: dict[str, np.ndarray], offset: int) -> pd.DataFrame:
    fills = run["fills"]
    return pd.DataFrame(
        {
            "time": _index(run["time"][fills["bar"]]),
            "bar": fills["bar"] + offset,
            "units": fills["units"],
            "price": fills["price"],
            "commission": fills["commission"],
            "position": fills["position"],
        }
    )


def _index(ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True))


def _as_utc(when: datetime | pd.Timestamp | str | int) -> datetime:
    if isinstance(when, int | np.integer):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(when) // 1000)
    stamp = pd.Timestamp(when)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()
