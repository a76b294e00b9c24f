"""Frozen, strict, JSON-round-trippable configuration: one struct per component.

Unknown fields are rejected, so a typo fails at start with the field's name instead of being
silently ignored. A whole system (or one brain) can travel as JSON, e.g. as papermill parameters.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from osm.core.errors import ConfigError, did_you_mean
from osm.core.granularity import Alignment, check_granularity
from osm.core.instruments import instrument


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class FeedConfig(_Config):
    """One feeder: where its ticks come from."""

    name: str = "synthetic"
    kind: Literal["synthetic", "replay", "oanda"] = "synthetic"
    instruments: list[str] = msgspec.field(default_factory=lambda: ["EUR_USD"])
    file: str | None = None  # replay: CSV(.gz) or Parquet of ticks or bars
    speed: float = (
        1.0  # replay and synthetic: 1 real time, 60 sixty times faster, 0 as fast as possible
    )
    seed: int = 7
    start: str | None = None  # synthetic: ISO time of the first tick; default: now
    batch: int = 256  # most ticks in one message
    loop: bool = False  # replay: start again at the end

    def __post_init__(self) -> None:
        for name in self.instruments:
            instrument(name)
        if self.kind == "replay" and not self.file:
            raise ConfigError(
                "a replay feed needs file=PATH (CSV, CSV.gz or Parquet of ticks or bars)"
            )
        if self.speed < 0:
            raise ConfigError(f"speed must be >= 0 (0 means as fast as possible), got {self.speed}")
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")


class RouterConfig(_Config):
    granularities: list[str] = msgspec.field(default_factory=lambda: ["S5", "M1", "M5", "H1"])
    history: int = 5000  # closed bars kept in memory per instrument and granularity
    partial_hz: float = 4.0  # most forming-bar updates per second per series
    persist: bool = True
    alignment: Alignment = Alignment()

    def __post_init__(self) -> None:
        for g in self.granularities:
            check_granularity(g)


class RiskLimits(_Config):
    max_position: int = 1_000_000  # units, absolute, per instrument
    max_order: int = 500_000  # units, absolute, per order
    max_orders_per_minute: int = 120


class TraderConfig(_Config):
    broker: str = "paper"
    commission: float = 0.0  # fraction of traded notional, e.g. 2e-5 for 0.2 bp
    balance: float = 100_000.0
    risk: RiskLimits = RiskLimits()
    # "normal": the order journal survives any process crash; "full": power loss too (slower).
    journal_sync: Literal["normal", "full"] = "normal"


class BrainConfig(_Config):
    name: str
    strategy: str = "osm.strategies.sma_cross:SmaCross"  # importable "module:Class"
    params: dict[str, Any] = {}
    instrument: str = "EUR_USD"
    granularity: str = "M1"
    size: int = 10_000  # units at target 1.0
    window: int = 2000  # bars kept; at least the strategy's warm-up

    def __post_init__(self) -> None:
        instrument(self.instrument)
        check_granularity(self.granularity)


class SystemConfig(_Config):
    host: str = "127.0.0.1"  # anything but loopback needs CURVE keys (osm keys)
    transport: Literal["ipc", "tcp"] = "ipc"
    heartbeat_s: float = 1.0
    restart_backoff_s: float = 0.5
    max_restarts: int = 20
    feeds: list[FeedConfig] = msgspec.field(default_factory=lambda: [FeedConfig()])
    router: RouterConfig = RouterConfig()
    trader: TraderConfig = TraderConfig()
    brains: list[BrainConfig] = []

    def __post_init__(self) -> None:
        names = [f.name for f in self.feeds] + [b.name for b in self.brains]
        if len(set(names)) != len(names):
            raise ConfigError(f"feed and brain names must be unique, got {names}")


C = TypeVar("C", bound=_Config)


def load(kind: type[C], data: dict | str | bytes) -> C:
    """Build a config struct from a dict or JSON, with errors that name the bad field."""
    try:
        if isinstance(data, str | bytes):
            return msgspec.json.decode(data, type=kind)
        return msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.startswith("Object contains unknown field"):
            bad = text.split("`")[1]
            text += did_you_mean(bad, [f for f in kind.__struct_fields__])
        raise ConfigError(f"invalid {kind.__name__}: {text}") from None
    except (ValueError, KeyError) as exc:  # raised by __post_init__ checks
        raise ConfigError(f"invalid {kind.__name__}: {exc}") from None


def dump(config: _Config) -> bytes:
    return msgspec.json.encode(config)
