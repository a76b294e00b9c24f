"""The `osm` command line: start, watch and steer the live system from a terminal or cron.

Each subcommand parses its arguments and calls one plain function. User mistakes (a bad name, no
system running, missing keys, a setting out of range, a file that is not ticks or bars) print one
line to stderr and exit 2, before anything starts; a refused order exits 1.
Every command takes ``--home DIR`` (default ``$OSM_HOME``, else ``~/.osm``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import numpy as np

from osm.core import config as cfg
from osm.core.dtypes import PRICE_FIELDS, mid
from osm.core.errors import EXIT_CONFIG, ConfigError, OsmError
from osm.core.granularity import check_granularity
from osm.core.instruments import instrument
from osm.core.rundir import RunDir
from osm.core.times import iso_utc
from osm.live import supervisor
from osm.live.bus import curve_keys_exist, generate_curve_keys
from osm.live.client import Client

UP_TIMEOUT_S = 90.0  # a cold start imports numba, pandas and pyarrow in five processes at once


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _fail(message: str, code: int = 2) -> int:
    print(f"osm: {message}", file=sys.stderr)
    return code


# -- formatting ------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _utc(time_ns: int) -> str:
    """A time for a table: ``2024-03-05 08:06:00`` (UTC, to the second)."""
    return iso_utc(time_ns).replace("T", " ").removesuffix("Z")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def format_status(status: dict[str, Any]) -> str:
    """The supervisor's status as a header line and one table row per process."""
    head = (
        f"osm running in {status['home']}: supervisor pid {status['pid']}, "
        f"up {_duration(status['uptime_s'])}, {status['transport']}"
        + (" with CURVE" if status["curve"] else "")
        + (", background priority" if status.get("priority") == "background" else "")
    )
    if status.get("halted"):
        head += (
            f"\nTRADING HALTED ({status['halt_reason'] or 'no reason given'}): the trader refuses "
            "every new order, across restarts, until `osm resume`"
        )
    rows = []
    for p in status["processes"]:
        age = p["heartbeat_age_s"]
        state = p["state"] + (
            f" ({p['reason']})" if p["state"] != "running" and p["reason"] else ""
        )
        rows.append(
            [
                p["name"],
                p["role"],
                state,
                p["pid"],
                _duration(p["uptime_s"]),
                p["restarts"],
                p["messages"],
                p["rejected"],
                "-" if age is None else f"{age:.1f} s ago",
            ]
        )
    header = [
        "PROCESS",
        "ROLE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "MESSAGES",
        "REJECTED",
        "HEARTBEAT",
    ]
    return head + "\n" + _table(header, rows)


COLUMNS = {
    "orders": [
        "created_ns",
        "client_id",
        "brain",
        "instrument",
        "kind",
        "units",
        "status",
        "reason",
    ],
    "fills": ["time_ns", "client_id", "brain", "instrument", "units", "price", "commission"],
    "positions": ["instrument", "units", "average_price", "realized", "unrealized", "brains"],
    "flatten": ["instrument", "brain", "client_id", "units", "accepted", "reason"],
}


def _records(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The trader's rows (orders, fills, positions...) as a table of the chosen columns."""
    if not rows:
        return "(none)"

    def cell(name: str, value: Any) -> Any:
        if name.endswith("_ns") and isinstance(value, int):
            return _utc(value)
        return f"{value:.5f}" if isinstance(value, float) else value

    header = [c.upper().removesuffix("_NS") for c in columns]
    return _table(header, [[cell(c, r.get(c)) for c in columns] for r in rows])


# -- subcommands -----------------------------------------------------------------------------


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--param takes NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def build_config(args: argparse.Namespace) -> cfg.SystemConfig:
    """The SystemConfig that `osm up` flags describe (or the one in --config FILE).

    Its ``python_path`` is made absolute against the current folder, or is the current folder if
    it names none: a strategy beside the user imports in every process as it would in ``python``.
    Everything else is checked when the system starts (:mod:`osm.live.preflight`).
    """
    config = _config_from_file(args.config) if args.config else _config_from_flags(args)
    here = Path.cwd()
    search = [str((here / p).resolve()) for p in config.python_path] or [str(here)]
    return msgspec.structs.replace(config, python_path=search)


def _config_from_file(path: str) -> cfg.SystemConfig:
    try:
        return cfg.load(cfg.SystemConfig, Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None


def _config_from_flags(args: argparse.Namespace) -> cfg.SystemConfig:
    instruments = args.instrument or ["EUR_USD"]
    feed: dict[str, Any] = {"name": args.feed, "kind": args.feed, "instruments": instruments}
    feed["speed"] = args.speed
    if args.file:
        feed["file"] = str(Path(args.file).expanduser().resolve())
        if not Path(feed["file"]).exists():
            raise ConfigError(f"--file {args.file}: no such file")
    if args.start:
        feed["start"] = args.start
    router: dict[str, Any] = {}
    if args.granularities:
        router["granularities"] = args.granularities
    brains = []
    if args.brain:
        granularity = args.brain_granularity or (args.granularities or ["M1"])[0]
        name = args.brain.partition(":")[0].rsplit(".", 1)[-1]
        brains.append(
            {
                "name": name,
                "strategy": args.brain,
                "params": dict(map(_param, args.param or [])),
                "instrument": instruments[0],
                "granularity": granularity,
                "size": args.size,
            }
        )
    system = {
        "host": args.host,
        "transport": args.transport,
        "priority": args.priority,
        "feeds": [feed],
        "brains": brains,
    }
    trader = {"broker": args.broker}
    return cfg.load(cfg.SystemConfig, {**system, "router": router, "trader": trader})


def cmd_up(home: Path, args: argparse.Namespace) -> int:
    config = build_config(args)
    rundir = RunDir(home)
    if args.foreground:
        return supervisor.run_foreground(rundir, config, fresh=args.fresh)
    done = supervisor.up(rundir, config, timeout_s=UP_TIMEOUT_S, fresh=args.fresh)
    if done.set_aside:
        print(f"osm: the previous run's bars, feed positions and orders are in {done.set_aside}")
    if done.started:
        print(f"osm started in {rundir.home} (supervisor pid {done.pid})")
    else:
        print(f"osm is already running in {rundir.home} (supervisor pid {done.pid}); attached")
        ignored = ignored_flags(args, config, rundir)
        if ignored:
            print(
                f"osm: ignored {' '.join(ignored)}: the running system keeps its configuration; "
                f"to apply them, `osm down --home {rundir.home}` first, then `osm up` again",
                file=sys.stderr,
            )
    # Patient: processes starting at once on a busy machine can hold an answer for seconds.
    with Client(home, timeout_s=max(args.timeout, 15.0)) as client:
        status = settle(client, rundir, started=done.started)
    print(format_status(status))
    stuck = [p for p in status["processes"] if p["state"] not in ("running", "exited")]
    if stuck:
        names = ", ".join(
            f"{p['name']} ({p['state']}: {p['reason'] or '?'}; see logs/{p['name']}.log)"
            for p in stuck
        )
        return _fail(f"not every process came up: {names}", 1)
    return 0


def settle(client: Client, rundir: RunDir, started: bool) -> dict[str, Any]:
    """Wait until the system runs and return its status with the trader's halt.

    A process that exits on its configuration (EXIT_CONFIG) is not restarted; when this `osm up`
    started the system, such a process means it cannot run as asked: stop it all and raise.
    """
    status = with_trading(client, wait_running(client, UP_TIMEOUT_S))
    refused = [p for p in status["processes"] if p["exit_code"] == EXIT_CONFIG]
    if started and refused:
        supervisor.down(rundir)
        p = refused[0]
        raise ConfigError(
            f"{p['role']} {p['name']} cannot run as configured, so the system was stopped: "
            f"{p['reason']} (logs/{p['name']}.log in {rundir.home})"
        )
    return status


def ignored_flags(args: argparse.Namespace, config: cfg.SystemConfig, rundir: RunDir) -> list[str]:
    """The `osm up` flags given that an attach leaves without effect (none if they describe the
    running system's config exactly)."""
    defaults = vars(build_parser().parse_args(["up"]))
    given = [
        name
        for name, value in vars(args).items()
        if name not in ("home", "timeout", "func", "command") and value != defaults.get(name)
    ]
    try:
        running = cfg.load(cfg.SystemConfig, rundir.config_path.read_bytes())
    except (OSError, ConfigError):
        running = None
    if running == config and "fresh" not in given:
        return []
    return [_flag(name, getattr(args, name)) for name in given]


def _flag(name: str, value: Any) -> str:
    """An `osm up` option as typed: ``--speed 60``, ``--param a=1 --param b=2``, ``--fresh``."""
    flag = "--" + name.replace("_", "-")
    if value is True:
        return flag
    if name in ("param", "instrument"):  # given once per value
        return " ".join(f"{flag} {v}" for v in value)
    values = value if isinstance(value, list) else [value]
    return f"{flag} " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def with_trading(client: Client, status: dict[str, Any]) -> dict[str, Any]:
    """`status` with ``halted`` and ``halt_reason`` from the trader (None: it does not answer).

    A halt is kept in the trader's journal, so it survives `osm down` and `osm up`; the status
    says so on every look instead of leaving it to the first refused order.
    """
    status = {**status, "halted": None, "halt_reason": None}
    trader = next((p for p in status["processes"] if p["role"] == "trader"), None)
    if trader is None or trader["state"] != "running":
        return status
    with contextlib.suppress(OsmError), Client(client.rundir.home, timeout_s=2.0) as quick:
        answer = quick.trader("status")
        status["halted"], status["halt_reason"] = bool(answer["halted"]), answer["halt_reason"]
    return status


def wait_running(client: Client, timeout_s: float) -> dict[str, Any]:
    """Poll the status until no process is starting or waiting to restart, or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status()
        settled = all(p["state"] in ("running", "exited", "failed") for p in status["processes"])
        if settled or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def cmd_down(home: Path, args: argparse.Namespace) -> int:
    rundir = RunDir(home)
    if supervisor.down(rundir):
        print(f"osm stopped in {rundir.home}")
    else:
        print(f"osm was not running in {rundir.home}")
    return 0


def cmd_status(home: Path, args: argparse.Namespace) -> int:
    with Client(home, timeout_s=args.timeout) as client:
        status = with_trading(client, client.status())
    if args.json:
        _print_json(status)
    else:
        print(format_status(status))
    return 0


def cmd_bars(home: Path, args: argparse.Namespace) -> int:
    spec = instrument(args.instrument)
    check_granularity(args.granularity)
    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}")
    with Client(home, timeout_s=args.timeout) as client:
        bars = client.bars(args.instrument, args.granularity, args.count)
    fields = ["time", *PRICE_FIELDS, "ticks", "complete"]
    if args.json:
        _print_json([{f: _plain(row, f) for f in fields} for row in bars])
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(fields)
        writer.writerows([[_plain(row, f) for f in fields] for row in bars])
    elif not len(bars):
        print(f"no closed {args.instrument} {args.granularity} bars yet")
    else:
        px = spec.format
        rows = [
            [_utc(int(b["time"])), px(o), px(h), px(lo), px(c), f"{sp:.1f}", int(b["ticks"])]
            for b, o, h, lo, c, sp in zip(
                bars,
                mid(bars, "open"),
                mid(bars, "high"),
                mid(bars, "low"),
                mid(bars, "close"),
                spec.pips(bars["ask_close"] - bars["bid_close"]),
                strict=True,
            )
        ]
        header = ["TIME (UTC)", "OPEN", "HIGH", "LOW", "CLOSE", "SPREAD", "TICKS"]
        print(f"{args.instrument} {args.granularity}, mid prices, spread in pips at the close")
        print(_table(header, rows))
    return 0


def _plain(row: np.void, field: str) -> Any:
    """A bar's field for JSON or CSV: its open time as ISO-8601 UTC, numbers as Python's."""
    if field == "time":
        return iso_utc(int(row[field]))
    value = row[field]
    return value.item() if isinstance(value, np.generic) else value


def cmd_trader(home: Path, args: argparse.Namespace) -> int:
    """orders, fills, positions, halt, resume, flatten: one trader command each."""
    with Client(home, timeout_s=args.timeout) as client:
        data = client.trader(args.command)
    if args.json:
        _print_json(data)
    elif args.command in COLUMNS:
        print(_records(data, COLUMNS[args.command]))
    else:
        print(f"{args.command}: " + ", ".join(f"{k}={v}" for k, v in data.items()))
    return 0


def cmd_order(home: Path, args: argparse.Namespace) -> int:
    instrument(args.instrument)
    with Client(home, timeout_s=args.timeout) as client:
        reply = client.order(args.instrument, args.units)
    if not reply.accepted:
        return _fail(f"order {reply.client_id} refused: {reply.reason}", 1)
    print(f"order {reply.client_id} accepted: {reply.units:+d} {args.instrument}")
    return 0


def cmd_cancel(home: Path, args: argparse.Namespace) -> int:
    with Client(home, timeout_s=args.timeout) as client:
        answer = client.cancel(args.client_id)
    if args.json:
        _print_json(answer)
    elif answer["cancelled"]:
        print(f"order {args.client_id} cancelled")
    elif answer["status"]:
        print(f"order {args.client_id}: {answer['reason']}")
    if not answer["cancelled"] and not answer["status"]:
        return _fail(f"cancel {args.client_id}: {answer['reason']}", 1)
    return 0


def cmd_keys(home: Path, args: argparse.Namespace) -> int:
    rundir = RunDir(home)
    if curve_keys_exist(rundir) and not args.force:
        raise ConfigError(
            f"CURVE keys already exist in {rundir.home / 'keys'}; pass --force to replace them "
            "(every client then needs the new ones)"
        )
    server, client = generate_curve_keys(rundir)
    print(f"CURVE keys written to {server.parent} (secret files 0600):")
    print(f"  {server.name}, {server.stem}.key_secret: the system's key pair (stays on this host)")
    print(f"  {client.name}, {client.stem}.key_secret: the client key pair")
    print("copy server.key and client.key_secret to every client's keys/ folder; then")
    print("`osm up --transport tcp --host 0.0.0.0` serves over TCP and refuses unkeyed peers")
    return 0


DEMO_SPEED = 60.0  # one simulated minute per second: an M1 bar closes every second
DEMO_START = "2024-03-05T08:00:00Z"  # a Tuesday morning, so the market is open whatever today is


def demo_config() -> cfg.SystemConfig:
    """A synthetic EUR_USD market at DEMO_SPEED with SmaCross(3, 8) trading M1 bars on paper."""
    return cfg.SystemConfig(
        feeds=[cfg.FeedConfig(name="synthetic", speed=DEMO_SPEED, start=DEMO_START)],
        router=cfg.RouterConfig(granularities=["M1"]),
        brains=[
            cfg.BrainConfig(
                name="sma_cross",
                strategy="osm.strategies.sma_cross:SmaCross",
                params={"fast": 3, "slow": 8},
                granularity="M1",
                size=10_000,
                window=200,
            )
        ],
    )


def cmd_demo(home: Path | None, args: argparse.Namespace) -> int:
    """The whole story, headless (:mod:`osm.live.demo`): research, promotion, a live brain, parity."""
    from osm.live import demo

    argv = [f"--{name}={getattr(args, name)}" for name in ("history", "live", "seed", "window")]
    return demo.main(argv + ([] if home is None else ["--home", str(home)]))


# -- jobs ------------------------------------------------------------------------------------


def cmd_promote(home: Path, args: argparse.Namespace) -> int:
    """Check a strategy (lookahead, parity) and register it as a live-brain job; 2 if refused."""
    from osm.live.promote import promote

    print(promote(RunDir(home), **promote_arguments(args)))
    return 0


def promote_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of :func:`osm.live.promote.promote` that `osm promote` (or `%osm promote`)
    was given; strategy modules are looked for in the working folder first."""
    from osm.research.walkforward import ParameterSchedule

    schedule = ParameterSchedule.load(args.schedule) if args.schedule else None
    strategy = args.strategy or (schedule.strategy if schedule is not None else None)
    if strategy is None:
        raise ConfigError("give the strategy (MODULE:CLASS) or --schedule FILE (a walk-forward's)")
    if schedule is not None and args.param:
        raise ConfigError("--param and --schedule exclude each other: the schedule has the params")
    return {
        "strategy": strategy,
        "params": dict(map(_param, args.param or [])),
        "instrument": args.instrument,
        "granularity": args.granularity,
        "size": args.size,
        "window": args.window,
        "name": args.name,
        "bars": args.bars,
        "python_path": [str(Path.cwd())],
        "replace": args.replace,
        "schedule": schedule,
    }


def _window_text(job: dict[str, Any]) -> str:
    """A job's window for a table: ``0 21 * * 0 .. 0 21 * * 5 (open)``, or ``always``."""
    window = job["schedule"]
    if window is None:
        return "always"
    return f"{window['start']} .. {window['stop']} ({'open' if job['window_open'] else 'closed'})"


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """The job store's rows, with what the running supervisor says of each where it runs."""
    if not jobs:
        return "no jobs (osm promote registers one)"
    rows = [
        [
            j["name"],
            j["notebook"],
            "yes" if j["enabled"] else "no",
            j["state"] + (f" ({j['reason']})" if j["reason"] and j["state"] != "running" else ""),
            _window_text(j),
            j.get("pid"),
            j["restarts"],
            j.get("targets"),
            " ".join(f"{k}={v}" for k, v in j["parameters"].items() if k != "params")
            + (
                f" params={json.dumps(j['parameters']['params'])}"
                if "params" in j["parameters"]
                else ""
            ),
        ]
        for j in jobs
    ]
    header = [
        "JOB",
        "NOTEBOOK",
        "ENABLED",
        "STATE",
        "WINDOW (UTC)",
        "PID",
        "RESTARTS",
        "DECISIONS",
        "PARAMETERS",
    ]
    return _table(header, rows)


def _with_window(job: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """`job` (the store's row as plain data) with whether its window is open at `now` and when it
    next opens and closes (None for a job without a window)."""
    from osm.live.schedule import Window, window_at

    window = job["schedule"]
    at = None if window is None else window_at(Window(**window), now)
    return {
        **job,
        "window_open": None if at is None else at.open,
        "next_open": None if at is None else at.next_open.isoformat(),
        "next_close": None if at is None else at.next_close.isoformat(),
    }


def list_jobs(home: Path, timeout_s: float) -> list[dict[str, Any]]:
    """The jobs of the store, with the supervisor's live view merged in where a system runs."""
    from osm.live.jobs import JobStore, utc_now

    rundir = RunDir(home)
    with JobStore(rundir) as store:
        now = utc_now()
        jobs = [_with_window(msgspec.to_builtins(j), now) for j in store.list()]
    live: dict[str, dict[str, Any]] = {}
    if supervisor.running_pid(rundir) is not None:
        with contextlib.suppress(OsmError), Client(home, timeout_s=timeout_s) as client:
            live = {j["name"]: j for j in client.status().get("jobs", [])}
    for job in jobs:
        seen = live.get(job["name"])
        if seen:
            job.update(state=seen["state"], restarts=seen["restarts"], reason=seen["reason"])
            job.update(pid=seen["pid"], targets=seen["counters"].get("targets"))
    return jobs


def cmd_jobs(home: Path, args: argparse.Namespace) -> int:
    from osm.live.jobs import Job, JobStore

    rundir = RunDir(home)
    action = args.action or "list"
    if action == "list":
        jobs = list_jobs(home, args.timeout)
        if args.json:
            _print_json(jobs)
        else:
            print(format_jobs(jobs))
        return 0
    if not args.name:
        raise ConfigError(f"osm jobs {action} needs a job name")
    with JobStore(rundir) as store:
        if action == "add":
            if not args.notebook:
                raise ConfigError("osm jobs add NAME needs --notebook (live_brain or a path)")
            params = dict(map(_param, args.param or []))
            store.add(Job(name=args.name, notebook=args.notebook, parameters=params))
        elif action == "remove":
            store.remove(args.name)
        else:
            store.enable(args.name, action == "start")
    print(f"job {args.name}: {action} done (the running supervisor acts on it within a second)")
    return 0


def schedule_job(home: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Set (--start/--stop) or clear (--clear) the window of job NAME; return every job's window.

    The jobs of the store as plain data, each with its window, whether it is open now and when it
    next opens and closes.
    """
    from osm.live.jobs import JobStore, utc_now
    from osm.live.schedule import FX_WEEK, window

    given = args.start is not None or args.stop is not None
    if (given or args.clear) and not args.name:
        raise ConfigError(
            "osm schedule needs the job's name: osm schedule NAME --start .. --stop .."
        )
    if args.clear and given:
        raise ConfigError("osm schedule takes --clear or --start and --stop, not both")
    if given and (args.start is None or args.stop is None):
        raise ConfigError(
            f"osm schedule {args.name} needs both --start and --stop, e.g. the FX week: "
            f"--start {FX_WEEK[0]!r} --stop {FX_WEEK[1]!r} (cron, UTC)"
        )
    if args.name and not (given or args.clear):
        raise ConfigError(
            f"osm schedule {args.name} needs --start CRON --stop CRON, or --clear to run it "
            "whenever it is enabled"
        )
    with JobStore(RunDir(home)) as store:
        if args.name:
            store.schedule(args.name, None if args.clear else window(args.start, args.stop))
        now = utc_now()
        return [_with_window(msgspec.to_builtins(j), now) for j in store.list()]


def format_schedule(jobs: list[dict[str, Any]]) -> str:
    """Each job's window (UTC) and when it next opens and closes."""
    if not jobs:
        return "no jobs (osm promote registers one)"

    def when(text: str | None) -> str | None:
        return None if text is None else text.replace("T", " ").removesuffix("+00:00")

    rows = [
        [
            j["name"],
            *(
                ["always (no window)", None, None, None]
                if j["schedule"] is None
                else [
                    j["schedule"]["start"],
                    j["schedule"]["stop"],
                    "open" if j["window_open"] else "closed",
                    when(j["next_close"] if j["window_open"] else j["next_open"]),
                ]
            ),
        ]
        for j in jobs
    ]
    return _table(["JOB", "START (UTC)", "STOP (UTC)", "NOW", "NEXT CHANGE (UTC)"], rows)


def cmd_schedule(home: Path, args: argparse.Namespace) -> int:
    jobs = schedule_job(home, args)
    if args.name:
        done = "cleared: it runs whenever enabled" if args.clear else "set"
        print(f"job {args.name}: window {done} (the running supervisor acts on it within a second)")
    if args.json:
        _print_json(jobs)
    else:
        print(format_schedule(jobs))
    return 0


def cmd_runs(home: Path, args: argparse.Namespace) -> int:
    from osm.live.jobs import list_runs

    runs = list_runs(RunDir(home), args.job)
    if args.json:
        _print_json(runs)
    elif not runs:
        print("no runs archived yet")
    else:
        rows = [[r["job"], r["stamp"], r["error"] or "ok", r["notebook"]] for r in runs]
        print(_table(["JOB", "STAMP", "RESULT", "OUTPUT NOTEBOOK"], rows))
    return 0


def log_lines(home: Path, name: str, lines: int) -> list[str]:
    """The last `lines` lines of ``logs/NAME.log`` in `home`, its rotated generations
    (``NAME.log.3`` .. ``NAME.log.1``) before it, oldest first."""
    from osm.live.logfiles import tail

    if lines < 1:
        raise ConfigError(f"--lines must be at least 1, got {lines}")
    path = RunDir(home).home / "logs" / f"{Path(name).name}.log"
    if not path.exists():
        names = sorted(p.stem for p in path.parent.glob("*.log"))
        raise ConfigError(
            f"no log named {name!r} in {path.parent}; there are: {', '.join(names) or 'none'}"
        )
    return tail(path, lines)


def cmd_logs(home: Path, args: argparse.Namespace) -> int:
    print("\n".join(log_lines(home, args.name, args.lines)))
    return 0


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="run directory (default $OSM_HOME, else ~/.osm)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    parser = _Parser(prog="osm", description="Run and steer the osm live trading system.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", parents=[common], help="start the system (or attach to it)")
    up.add_argument(
        "--feed",
        default="synthetic",
        metavar="KIND",
        help="a registered source: synthetic (default), replay, or one a package adds",
    )
    up.add_argument(
        "--broker",
        default="paper",
        help="paper (default) or oanda (account and token from OANDA_ACCOUNT, "
        "OANDA_ACCESS_TOKEN; OANDA_ENVIRONMENT practice or live)",
    )
    up.add_argument("--file", help="replay: CSV(.gz) or Parquet of ticks or bars")
    up.add_argument("--speed", type=float, default=1.0, help="1 real time, 60 faster, 0 flat out")
    up.add_argument("--start", help="synthetic: ISO time of the first tick (default now)")
    up.add_argument("--instrument", action="append", help="repeat for more (default EUR_USD)")
    up.add_argument("--granularities", nargs="+", metavar="G", help="bars to build, e.g. S5 M1")
    up.add_argument(
        "--brain",
        metavar="MODULE:CLASS",
        help="run a strategy live, e.g. osm.strategies.sma_cross:SmaCross",
    )
    up.add_argument("--param", action="append", metavar="NAME=VALUE", help="strategy parameter")
    up.add_argument(
        "--brain-granularity",
        help="the brain's bars (default: the first of --granularities, else M1)",
    )
    up.add_argument("--size", type=int, default=10_000, help="brain units at target 1.0")
    up.add_argument("--host", default="127.0.0.1", help="bind address; not loopback needs keys")
    up.add_argument("--transport", choices=["ipc", "tcp"], default="ipc")
    up.add_argument(
        "--priority",
        choices=["auto", "normal", "background"],
        default="auto",
        help="CPU priority: background yields to interactive work; auto (default) is "
        "background for a replay at --speed 0 on the paper broker, normal otherwise",
    )
    up.add_argument("--config", help="a SystemConfig JSON file instead of the flags above")
    up.add_argument(
        "--fresh",
        action="store_true",
        help="first move the last run's bars, feed positions and orders to old/ in the home",
    )
    up.add_argument("--foreground", action="store_true", help="run here, logging to stderr")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", parents=[common], help="stop the system")
    down.set_defaults(func=cmd_down)

    keys = sub.add_parser("keys", parents=[common], help="create CURVE keys in the run directory")
    keys.add_argument("--force", action="store_true", help="replace existing keys")
    keys.set_defaults(func=cmd_keys)

    status = sub.add_parser("status", parents=[common], help="processes and their health")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    bars = sub.add_parser("bars", parents=[common], help="the last closed bars")
    bars.add_argument("instrument")
    bars.add_argument("granularity")
    bars.add_argument("--count", type=int, default=20)
    form = bars.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--csv", action="store_true")
    bars.set_defaults(func=cmd_bars)

    for name, text in (
        ("orders", "the trader's orders"),
        ("positions", "the trader's positions"),
        ("halt", "refuse every new order (kill switch)"),
        ("resume", "accept orders again after a halt"),
        ("flatten", "close every position with market orders"),
        ("fills", "the trader's fills"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_trader)

    order = sub.add_parser("order", parents=[common], help="send a market order through risk")
    order.add_argument("instrument")
    order.add_argument("units", type=int, help="signed: positive buys, negative sells")
    order.set_defaults(func=cmd_order)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel an order not yet filled")
    cancel.add_argument("client_id", help="the order's client id (osm orders lists them)")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(func=cmd_cancel)

    promote = sub.add_parser(
        "promote", parents=[common], help="check a strategy and register it as a live-brain job"
    )
    promote.add_argument("strategy", metavar="MODULE:CLASS", nargs="?")
    promote.add_argument(
        "--schedule",
        metavar="FILE",
        help="a walk-forward's parameter schedule (JSON) to trade instead of --param values",
    )
    promote.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="strategy parameter"
    )
    promote.add_argument("--instrument", default="EUR_USD")
    promote.add_argument("--granularity", default="M1")
    promote.add_argument("--size", type=int, default=10_000, help="brain units at target 1.0")
    promote.add_argument("--window", type=int, default=2000, help="bars the brain holds")
    promote.add_argument("--name", help="the job's name (default: the class name in lower case)")
    promote.add_argument("--bars", help="a bar or tick file to check on (default: the store's)")
    promote.add_argument("--replace", action="store_true", help="replace a job of that name")
    promote.set_defaults(func=cmd_promote)

    jobs = sub.add_parser("jobs", parents=[common], help="list, add, start, stop, remove jobs")
    jobs.add_argument("action", nargs="?", choices=["list", "add", "start", "stop", "remove"])
    jobs.add_argument("name", nargs="?")
    jobs.add_argument("--notebook", help="add: live_brain, or the path of a notebook")
    jobs.add_argument("--param", action="append", metavar="NAME=VALUE", help="add: a parameter")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    schedule = sub.add_parser(
        "schedule",
        parents=[common],
        help="a job's window: runs from each --start firing to the next --stop (cron, UTC)",
    )
    schedule.add_argument("name", nargs="?", help="the job (none: list every job's window)")
    schedule.add_argument("--start", metavar="CRON", help="opens the window, e.g. '0 21 * * 0'")
    schedule.add_argument("--stop", metavar="CRON", help="closes the window, e.g. '0 21 * * 5'")
    schedule.add_argument("--clear", action="store_true", help="no window: run whenever enabled")
    schedule.add_argument("--json", action="store_true")
    schedule.set_defaults(func=cmd_schedule)

    runs = sub.add_parser("runs", parents=[common], help="archived job runs (output notebooks)")
    runs.add_argument("job", nargs="?")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    logs = sub.add_parser("logs", parents=[common], help="the end of a process's or job's log")
    logs.add_argument("name", help="supervisor, router, trader, a feed, a brain or a job")
    logs.add_argument(
        "--lines", type=int, default=40, help="how many, across rotated files (default 40)"
    )
    logs.set_defaults(func=cmd_logs)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="sweep, walk-forward, promote and trade the winner live on generated bars (paper)",
    )
    demo.add_argument("--history", type=int, default=20_000, help="research bars (M1)")
    demo.add_argument("--live", type=int, default=3_000, help="bars replayed to the live brain")
    demo.add_argument("--seed", type=int, default=11, help="seed of the generated bars")
    demo.add_argument("--window", type=int, default=200, help="bars the live brain holds")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    home = Path(args.home).expanduser() if args.home else None
    try:
        if args.command == "demo":
            return args.func(home, args)
        return args.func(home or RunDir().home, args)
    except OsmError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `osm status | head`: the reader left; silence the flush at exit, which would fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
