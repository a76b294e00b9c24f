"""What each ``%osm`` subcommand does: one plain function per subcommand, returning data.

Every function takes the session and the parsed arguments (the `osm` command line's parser, see
:mod:`osm.magics`) and returns what a notebook shows: a DataFrame for bars, orders, fills and
positions, a :class:`StatusTable` for the status, a widget for chart and blotter. They raise
:class:`~osm.core.errors.OsmError` for anything the user can fix; the magic turns it into a
`UsageError`.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd

from osm.core.dtypes import PRICE_FIELDS, mid
from osm.core.errors import ConfigError, OsmError
from osm.core.granularity import check_granularity
from osm.core.instruments import instrument
from osm.core.rundir import RunDir
from osm.live import cli, supervisor
from osm.session import Session


class OrderRefused(OsmError):
    """The trader refused an order; the message says why and what to change."""


class StatusTable:
    """The system's status: shown as the `osm status` table, with the data underneath.

    ``data`` is the supervisor's answer (with the trader's halt state); ``frame`` one row per
    process.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.data["processes"]).set_index("name")

    @property
    def halted(self) -> bool | None:
        return self.data.get("halted")

    def __repr__(self) -> str:
        table = cli.format_status(self.data)
        if self.data.get("attached"):
            return "attached to the system already running (it keeps its configuration)\n" + table
        return table

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def bars_frame(bars: np.ndarray, name: str) -> pd.DataFrame:
    """Bars as a DataFrame indexed by open time (UTC): mid OHLC, spread in pips, ticks, then
    every bid and ask field."""
    spec = instrument(name)
    frame = pd.DataFrame(
        {
            "open": mid(bars, "open"),
            "high": mid(bars, "high"),
            "low": mid(bars, "low"),
            "close": mid(bars, "close"),
            "spread": spec.pips(bars["ask_close"] - bars["bid_close"]),
            "ticks": bars["ticks"],
            **{f: bars[f] for f in PRICE_FIELDS},
            "complete": bars["complete"],
        },
        index=pd.DatetimeIndex(pd.to_datetime(bars["time"], unit="ns", utc=True), name="time"),
    )
    return frame


def records_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The trader's rows as a DataFrame of `columns`; ``*_ns`` times become UTC datetimes named
    without the suffix."""
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns:
        if column.endswith("_ns"):
            times = pd.to_datetime(frame[column].astype("int64"), unit="ns", utc=True)
            frame[column] = times
            frame = frame.rename(columns={column: column.removesuffix("_ns")})
    return frame


# -- subcommands -----------------------------------------------------------------------------


def up(session: Session, args: argparse.Namespace) -> StatusTable:
    """Start the system detached (it outlives the kernel), or attach to the running one."""
    if args.foreground:
        raise ConfigError(
            "--foreground runs the supervisor in this process and would tie the system to the "
            "kernel; run it in a terminal (osm up --foreground), or drop --foreground here"
        )
    config = cli.build_config(args)
    rundir = RunDir(session.home(args.home))
    done = supervisor.up(rundir, config, timeout_s=cli.UP_TIMEOUT_S, fresh=args.fresh)
    with session.client(rundir.home, args.timeout) as client:
        status = cli.settle(client, rundir, started=done.started)
    status["attached"] = not done.started
    if not done.started:
        ignored = cli.ignored_flags(args, config, rundir)
        if ignored:
            print(
                f"osm is already running in {rundir.home}; attached and ignored "
                f"{' '.join(ignored)}: `%osm down` first to apply them"
            )
    return StatusTable(status)


def down(session: Session, args: argparse.Namespace) -> str:
    rundir = RunDir(session.home(args.home))
    stopped = supervisor.down(rundir)
    return f"osm {'stopped' if stopped else 'was not running'} in {rundir.home}"


def status(session: Session, args: argparse.Namespace) -> StatusTable:
    with session.client(args.home, args.timeout) as client:
        return StatusTable(cli.with_trading(client, client.status()))


def bars(session: Session, args: argparse.Namespace) -> pd.DataFrame:
    instrument(args.instrument)
    check_granularity(args.granularity)
    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}")
    with session.client(args.home, args.timeout) as client:
        got = client.bars(args.instrument, args.granularity, args.count)
    return bars_frame(got, args.instrument)


def trader(session: Session, args: argparse.Namespace) -> pd.DataFrame | dict[str, Any]:
    """orders, fills, positions, halt, resume, flatten: one trader command each."""
    with session.client(args.home, args.timeout) as client:
        data = client.trader(args.command)
    if args.command in cli.COLUMNS and not args.json:
        return records_frame(data, cli.COLUMNS[args.command])
    return data


def order(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    instrument(args.instrument)
    with session.client(args.home, args.timeout) as client:
        reply = client.order(args.instrument, args.units)
    if not reply.accepted:
        raise OrderRefused(f"order {reply.client_id} refused: {reply.reason}")
    return {"client_id": reply.client_id, "units": reply.units, "accepted": True}


def cancel(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    """The trader's answer: ``cancelled``, the order's ``status`` and why not."""
    with session.client(args.home, args.timeout) as client:
        return client.cancel(args.client_id)


def chart(session: Session, args: argparse.Namespace) -> Any:
    from osm.widgets.chart import chart as open_chart

    params = dict(map(cli._param, args.param or []))
    return open_chart(
        args.instrument,
        args.granularity,
        strategy=args.strategy,
        params=params,
        window=args.window,
        home=args.home,
        session=session,
    )


def blotter(session: Session, args: argparse.Namespace) -> Any:
    from osm.widgets.blotter import blotter as open_blotter

    return open_blotter(home=args.home, session=session)


def controls(session: Session, args: argparse.Namespace) -> Any:
    from osm.widgets.controls import controls as open_controls

    return open_controls(home=args.home, session=session)


def promote(session: Session, args: argparse.Namespace) -> Any:
    """Check a strategy (lookahead, parity) and register it as a live-brain job."""
    from osm.live.promote import promote as run_promote

    return run_promote(RunDir(session.home(args.home)), **cli.promote_arguments(args))


def jobs(session: Session, args: argparse.Namespace) -> pd.DataFrame | str:
    """``%osm jobs``: the jobs as a DataFrame; ``%osm jobs start|stop|remove|add NAME`` as in a
    terminal."""
    home = RunDir(session.home(args.home)).home
    if (args.action or "list") != "list":
        cli.cmd_jobs(home, args)
        return f"job {args.name}: {args.action} done"
    listed = cli.list_jobs(home, args.timeout)
    return pd.DataFrame(listed).set_index("name") if listed else pd.DataFrame()


def schedule(session: Session, args: argparse.Namespace) -> pd.DataFrame:
    """``%osm schedule [NAME --start CRON --stop CRON | NAME --clear]``: set or clear a job's
    window as in a terminal; every job's window, open or not, next open and close."""
    home = RunDir(session.home(args.home)).home
    listed = cli.schedule_job(home, args)
    columns = ["name", "schedule", "window_open", "next_open", "next_close"]
    return pd.DataFrame(listed, columns=columns).set_index("name")


def runs(session: Session, args: argparse.Namespace) -> pd.DataFrame:
    from osm.live.jobs import list_runs

    return pd.DataFrame(list_runs(RunDir(session.home(args.home)), args.job))


class LogLines:
    """The end of a log, shown as ``osm logs`` prints it; ``lines`` holds them, oldest first."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __repr__(self) -> str:
        return "\n".join(self.lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def logs(session: Session, args: argparse.Namespace) -> LogLines:
    """``%osm logs NAME [--lines N]``: the last lines of a process's or job's log, across the
    files it rotated to, as in a terminal."""
    return LogLines(cli.log_lines(session.home(args.home), args.name, args.lines))


def terminal_only(session: Session, args: argparse.Namespace) -> Any:
    raise ConfigError(
        f"{args.command} runs in a terminal, not in a notebook; "
        f"!osm {args.command} --help shows how"
    )


ROUTES = {
    "up": up,
    "down": down,
    "status": status,
    "bars": bars,
    "orders": trader,
    "fills": trader,
    "positions": trader,
    "halt": trader,
    "resume": trader,
    "flatten": trader,
    "order": order,
    "cancel": cancel,
    "chart": chart,
    "blotter": blotter,
    "controls": controls,
    "promote": promote,
    "jobs": jobs,
    "schedule": schedule,
    "runs": runs,
    "logs": logs,
    "keys": terminal_only,
    "demo": terminal_only,
}
