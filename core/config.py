"""Frozen, strict, JSON-round-trippable configuration: one struct per component.

Unknown fields are rejected, so a typo fails at start with the field's full path and the closest
field of the struct it belongs to (``trader.risk.max_ordr``: did you mean ``max_order``). Every
number, size, window, limit and name carries its range (``Annotated[..., Meta(...)]``), checked when
a config is loaded from JSON or a dict and when a struct is built in code; the error names the
field, the accepted range, what the field means and the value given.

What one struct cannot see is checked by :func:`check_system`: a feed for every brain's instrument,
the router building every brain's granularity. Names that registries resolve (a feed's ``kind``,
the trader's ``broker``) and strategy paths are checked against those registries by
:mod:`osm.live.preflight` before a system starts. A whole system (or one brain) can travel as JSON,
e.g. as papermill parameters.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta
from msgspec import inspect as mi

from osm.core.errors import ConfigError, did_you_mean
from osm.core.granularity import Alignment, check_granularity
from osm.core.instruments import CURRENCIES, instrument

_BOUNDS = (("gt", ">", operator.gt), ("ge", ">=", operator.ge))
_BOUNDS += (("lt", "<", operator.lt), ("le", "<=", operator.le))


@cache
def _constrained_fields(cls: type) -> tuple[tuple[str, mi.Metadata], ...]:
    info = mi.type_info(cls)
    return tuple((f.name, f.type) for f in info.fields if isinstance(f.type, mi.Metadata))


def _violation(value: Any, info: mi.Type) -> str:
    """Why `value` is outside the range `info` declares ('must be >= 1 (units)'), or ''."""
    if not isinstance(info, mi.Metadata):
        return ""
    description = (info.extra_json_schema or {}).get("description")
    info = info.type
    rules: list[str] = []  # what the field must satisfy, as "be >= 1", "match ^x$"
    ok = True
    if isinstance(info, mi.IntType | mi.FloatType) and isinstance(value, int | float):
        bounds = []
        for attr, symbol, holds in _BOUNDS:
            bound = getattr(info, attr)
            if bound is not None:
                bounds.append(f"{symbol} {bound}")
                ok &= bool(holds(value, bound))
        if isinstance(info, mi.FloatType) and not math.isfinite(value):
            bounds, ok = ["finite", *bounds], False
        rules.append("be " + " and ".join(bounds))
    elif isinstance(info, mi.StrType | mi.ListType) and isinstance(value, str | list):
        unit = "character" if isinstance(info, mi.StrType) else "item"
        lengths = []
        if info.min_length is not None:
            lengths.append(f"at least {info.min_length}")
            ok &= len(value) >= info.min_length
        if info.max_length is not None:
            lengths.append(f"at most {info.max_length}")
            ok &= len(value) <= info.max_length
        if lengths:
            rules.append(f"have {' and '.join(lengths)} {unit}(s)")
        pattern = getattr(info, "pattern", None)
        if pattern is not None:
            rules.append(f"match {pattern}")
            ok &= re.search(pattern, value) is not None
    if ok:
        return ""
    return f"must {' and '.join(rules)}" + (f" ({description})" if description else "")


RESERVED_NAMES = ("supervisor", "router", "trader")  # processes every system has

Name = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
        description="a process name: a letter, then letters, digits, '_', '.' or '-'",
    ),
]


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    def __post_init__(self) -> None:
        # msgspec checks Meta ranges when it decodes, not when a struct is built in code.
        for name, info in _constrained_fields(type(self)):
            value = getattr(self, name)
            problem = _violation(value, info)
            if problem:
                raise ConfigError(f"{type(self).__name__}.{name} {problem}, got {value!r}")
        self._check()

    def _check(self) -> None:
        """Checks across the fields of one struct."""


class FeedConfig(_Config):
    """One feeder: where its ticks come from."""

    name: Name = "synthetic"
    kind: Annotated[
        str,
        Meta(
            min_length=1,
            description="a registered source: synthetic, replay, or one added by register_source "
            "or the osm.sources entry points",
        ),
    ] = "synthetic"
    instruments: Annotated[list[str], Meta(min_length=1, description="what the feed quotes")] = (
        msgspec.field(default_factory=lambda: ["EUR_USD"])
    )
    file: str | None = None  # replay: CSV(.gz) or Parquet of ticks or bars
    speed: Annotated[
        float, Meta(ge=0, description="1 real time, 60 sixty times faster, 0 as fast as possible")
    ] = 1.0
    seed: Annotated[int, Meta(ge=0, description="seed of the synthetic market")] = 7
    start: str | None = None  # synthetic: ISO time of the first tick; default: now
    batch: Annotated[int, Meta(ge=1, le=1_000_000, description="most ticks in one message")] = 256
    loop: bool = False  # replay: start again at the end
    # The source's own settings, checked by it (oanda: account, environment, stream_silence_s...).
    adapter: dict[str, Any] = {}

    def _check(self) -> None:
        for name in self.instruments:
            instrument(name)
        if len(set(self.instruments)) != len(self.instruments):
            raise ConfigError(f"feed {self.name!r} lists an instrument twice: {self.instruments}")
        if self.kind == "replay" and not self.file:
            raise ConfigError(
                "a replay feed needs file=PATH (CSV, CSV.gz or Parquet of ticks or bars)"
            )
        if self.start is not None:
            try:
                dt.datetime.fromisoformat(self.start)
            except ValueError:
                raise ConfigError(
                    f"feed {self.name!r}: start must be an ISO-8601 time such as "
                    f"2024-03-05T08:00:00Z, got {self.start!r}"
                ) from None


class RouterConfig(_Config):
    granularities: Annotated[list[str], Meta(min_length=1, description="the bars to build")] = (
        msgspec.field(default_factory=lambda: ["S5", "M1", "M5", "H1"])
    )
    history: Annotated[
        int, Meta(ge=1, description="closed bars kept in memory per instrument and granularity")
    ] = 5000
    partial_hz: Annotated[
        float, Meta(ge=0, description="most forming-bar updates a second per series; 0 sends none")
    ] = 4.0
    persist: bool = True
    alignment: Alignment = Alignment()
    # Implausible quotes are held until the following ones confirm them (docs/security.md).
    spike_band: Annotated[
        float, Meta(gt=0, description="a mid move, as a fraction per minute, held as suspect")
    ] = 0.01
    time_jump_s: Annotated[
        float, Meta(gt=0, description="seconds after the last tick from which a tick is suspect")
    ] = 3600.0
    confirm_ticks: Annotated[
        int, Meta(ge=1, le=100, description="following ticks that confirm a suspect one")
    ] = 2
    clock_lead_s: Annotated[
        float, Meta(gt=0, description="seconds a feed at speed <= 1 may run ahead of this clock")
    ] = 60.0
    journal_sync: Literal["normal", "full"] = "normal"  # full: fsync before every acknowledgement
    live_close_s: Annotated[
        float,
        Meta(
            ge=0,
            le=60,
            description="live feeds: seconds after a bar's end that it closes "
            "without waiting for a later tick",
        ),
    ] = 2.0

    def _check(self) -> None:
        for g in self.granularities:
            check_granularity(g)
        if len(set(self.granularities)) != len(self.granularities):
            raise ConfigError(f"router.granularities lists one twice: {self.granularities}")


class RiskLimits(_Config):
    max_position: Annotated[int, Meta(ge=1, description="units, absolute, per instrument")] = (
        1_000_000
    )
    max_order: Annotated[int, Meta(ge=1, description="units, absolute, per order")] = 500_000
    max_orders_per_minute: Annotated[int, Meta(ge=1, description="orders sent per minute")] = 120
    max_decision_age_s: Annotated[
        float,
        Meta(
            gt=0,
            description="market seconds after its after_ns (its bar's close) that a decision may "
            "still fill; a brain's own bar is allowed when longer; later it is refused as stale",
        ),
    ] = 600.0
    max_decision_ahead_s: Annotated[
        float,
        Meta(gt=0, description="how far after the market clock a decision's after_ns may lie"),
    ] = 86_400.0


class TraderConfig(_Config):
    broker: Annotated[
        str,
        Meta(
            min_length=1,
            description="a registered broker: paper, or one added by the osm.brokers entry points",
        ),
    ] = "paper"
    commission: Annotated[
        float, Meta(ge=0, lt=0.01, description="fraction of traded notional, e.g. 2e-5 for 0.2 bp")
    ] = 0.0
    balance: Annotated[float, Meta(gt=0, description="the paper account's starting cash")] = (
        100_000.0
    )
    currency: Annotated[
        str, Meta(description="the paper account's currency: balance and PnL are booked in it")
    ] = "USD"
    risk: RiskLimits = RiskLimits()
    # The broker adapter's own settings, checked by it (oanda: account, environment, ...).
    adapter: dict[str, Any] = {}
    # "normal": the order journal survives any process crash; "full": power loss too (slower).
    journal_sync: Literal["normal", "full"] = "normal"

    def _check(self) -> None:
        if self.currency not in CURRENCIES:
            raise ConfigError(
                f"trader.currency {self.currency!r} is no currency of a known instrument; "
                f"one of {', '.join(sorted(CURRENCIES))}"
            )


class BrainConfig(_Config):
    name: Name
    strategy: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
            description="an importable 'package.module:ClassName'",
        ),
    ] = "osm.strategies.sma_cross:SmaCross"
    params: dict[str, Any] = {}
    instrument: str = "EUR_USD"
    granularity: str = "M1"
    size: Annotated[int, Meta(ge=1, description="units at target 1.0")] = 10_000
    window: Annotated[int, Meta(ge=1, description="bars kept; at least the strategy's warm-up")] = (
        2000
    )
    # Price distances from the fill price at which the trade an order opens is closed (by the
    # broker: OANDA's stopLossOnFill / takeProfitOnFill, the paper broker on its quotes).
    stop_loss: Annotated[float, Meta(gt=0, description="a price distance, 0.0020")] | None = None
    take_profit: Annotated[float, Meta(gt=0, description="a price distance")] | None = None

    def _check(self) -> None:
        instrument(self.instrument)
        check_granularity(self.granularity)


class SystemConfig(_Config):
    host: Annotated[
        str, Meta(min_length=1, description="bind address; anything but loopback needs keys")
    ] = "127.0.0.1"
    transport: Literal["ipc", "tcp"] = "ipc"
    heartbeat_s: Annotated[
        float, Meta(gt=0, le=60, description="seconds between a process's heartbeats")
    ] = 1.0
    restart_backoff_s: Annotated[
        float, Meta(ge=0, le=60, description="first wait before a restart, in seconds")
    ] = 0.5
    max_restarts: Annotated[int, Meta(ge=0, description="restarts of one process at most")] = 20
    # CPU priority of every process (osm.live.priority): "background" yields the machine to
    # interactive work; "auto" is background when every feed replays flat out into paper.
    priority: Literal["auto", "normal", "background"] = "auto"
    feeds: list[FeedConfig] = msgspec.field(default_factory=lambda: [FeedConfig()])
    router: RouterConfig = RouterConfig()
    trader: TraderConfig = TraderConfig()
    brains: list[BrainConfig] = []
    # Folders every process searches first for strategy modules: `osm up` puts the folder it was
    # run in here, so `--brain mycross:MyCross` finds ./mycross.py as `python` would.
    python_path: list[str] = []

    def _check(self) -> None:
        names = [f.name for f in self.feeds] + [b.name for b in self.brains]
        taken = [n for n in names if n in RESERVED_NAMES]
        if taken:
            raise ConfigError(
                f"{taken[0]!r} names a process every system has ({', '.join(RESERVED_NAMES)}); "
                "give the feed or brain another name"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"feed and brain names must be unique, got {names}")


def check_system(config: SystemConfig) -> None:
    """Refuse a system in which a brain would wait forever: every brain's instrument quoted by a
    feed and its granularity built by the router.

    The router builds what ``router.granularities`` lists and nothing else (a brain's history can
    be resampled from a finer series, its live bars cannot), so a brain on another granularity is
    refused here with the fix rather than the router quietly building more than it was told.
    """
    if not config.feeds:
        raise ConfigError("a system needs at least one feed; add one to feeds")
    quoted = sorted({i for feed in config.feeds for i in feed.instruments})
    built = config.router.granularities
    for brain in config.brains:
        if brain.instrument not in quoted:
            raise ConfigError(
                f"brain {brain.name!r} trades {brain.instrument} but no feed quotes it (the feeds "
                f"quote {', '.join(quoted)}); add {brain.instrument} to a feed's instruments "
                "(osm up --instrument) or trade one of those"
            )
        if brain.granularity not in built:
            raise ConfigError(
                f"brain {brain.name!r} decides on {brain.granularity} bars but the router builds "
                f"only {', '.join(built)}; add {brain.granularity} to router.granularities "
                f"(osm up --granularities ... {brain.granularity})"
            )


C = TypeVar("C", bound=_Config)


def load(kind: type[C], data: dict | str | bytes) -> C:
    """Build a config struct from a dict or JSON, with errors that name the bad field's path."""
    try:
        raw = msgspec.json.decode(data) if isinstance(data, str | bytes) else data
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid {kind.__name__}: not JSON ({exc})") from None
    try:
        return msgspec.convert(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid {kind.__name__}: {_explain(kind, raw, str(exc))}") from None
    except (ValueError, KeyError) as exc:  # raised by _check, e.g. an unknown instrument
        raise ConfigError(f"invalid {kind.__name__}: {exc}") from None


def dump(config: _Config) -> bytes:
    return msgspec.json.encode(config)


# -- explaining mistakes ---------------------------------------------------------------------


def _tokens(where: str) -> list[str | int]:
    """`.feeds[0].batch` -> ['feeds', 0, 'batch']."""
    return [int(i) if i else name for name, i in re.findall(r"\.(\w+)|\[(\d+)\]", where)]


def _dotted(tokens: list[str | int]) -> str:
    return "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens).lstrip(".")


def _type_at(kind: type, tokens: list[str | int]) -> mi.Type | None:
    """The declared type at a path of fields and list indexes, or None if the path leaves it."""
    info: mi.Type | None = mi.type_info(kind)
    for token in tokens:
        base = info.type if isinstance(info, mi.Metadata) else info
        if isinstance(base, mi.UnionType):
            base = next((t for t in base.types if not isinstance(t, mi.NoneType)), None)
        if isinstance(token, int) and isinstance(base, mi.ListType):
            info = base.item_type
        elif isinstance(token, str) and isinstance(base, mi.StructType):
            info = next((f.type for f in base.fields if f.name == token), None)
        else:
            return None
    return info


def _value_at(data: Any, tokens: list[str | int]) -> Any:
    for token in tokens:
        try:
            data = data[token]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _explain(kind: type, data: Any, text: str) -> str:
    """msgspec's message, with the dotted path of the field, its range and the value given."""
    message, _, where = text.partition(" - at `$")
    tokens = _tokens(where.rstrip("`"))
    path = _dotted(tokens)
    if message.startswith("Object contains unknown field"):
        bad = message.split("`")[1]
        struct = _type_at(kind, tokens)
        fields = [f.name for f in struct.fields] if isinstance(struct, mi.StructType) else []
        owner = path or kind.__name__
        return (
            f"unknown field `{_dotted([*tokens, bad])}`.{did_you_mean(bad, fields)} "
            f"The fields of {owner} are: {', '.join(fields)}"
        )
    if not path:
        return message
    info, value = _type_at(kind, tokens), _value_at(data, tokens)
    if isinstance(info, mi.LiteralType):
        choices = [str(v) for v in info.values]
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"{path} must be one of {', '.join(choices)}, got {value!r}.{hint}".rstrip(".")
    problem = _violation(value, info) if info is not None else ""
    if problem:
        return f"{path} {problem}, got {value!r}"
    return f"{path}: {message}"
