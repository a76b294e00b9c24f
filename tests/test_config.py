"""Config structs are strict, explain mistakes with the field's path and range, and survive JSON."""

from __future__ import annotations

import re

import pytest

from osm.core import config as cfg
from osm.core.errors import ConfigError, UnknownNameError
from osm.core.instruments import instrument
from osm.core.rundir import RunDir
from osm.live import feeds, preflight
from osm.live.feeds.synthetic import SyntheticSource


def test_system_config_round_trips_through_json():
    original = cfg.SystemConfig(
        feeds=[cfg.FeedConfig(name="r", kind="replay", file="x.csv.gz", speed=0)],
        brains=[cfg.BrainConfig(name="b", params={"fast": 5, "slow": 20})],
        python_path=["/somewhere/strategies"],
    )
    assert cfg.load(cfg.SystemConfig, cfg.dump(original)) == original


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"feedz": []}, r"unknown field `feedz`\. Did you mean 'feeds'\?"),
        # Suggested from the struct the field is in, not from the top level (max_restarts).
        (
            {"trader": {"risk": {"max_ordr": 5}}},
            r"unknown field `trader\.risk\.max_ordr`\. Did you mean 'max_order'\? The fields of "
            r"trader\.risk are: max_position, max_order, max_orders_per_minute, max_decision_age_s, max_decision_ahead_s$",
        ),
        (
            {"feeds": [{}, {"name": "b", "bach": 3}]},
            r"unknown field `feeds\[1\]\.bach`\. Did you mean 'batch'\?",
        ),
        ({"brains": [{"name": "b", "sise": 3}]}, r"`brains\[0\]\.sise`\. Did you mean 'size'\?"),
        ({"router": {"alignment": {"daily_hr": 3}}}, r"Did you mean 'daily_hour'\?"),
    ],
)
def test_unknown_field_is_named_by_its_path_with_a_suggestion_from_its_own_struct(data, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load(cfg.SystemConfig, data)


def test_wrong_type_names_the_path():
    with pytest.raises(ConfigError, match=r"router\.history: Expected `int`, got `str`"):
        cfg.load(cfg.SystemConfig, {"router": {"history": "many"}})
    with pytest.raises(ConfigError, match="not JSON"):
        cfg.load(cfg.SystemConfig, b'{"router": ')


# Every size, window, limit and rate: the path, the range, the meaning and the value given.
OUT_OF_RANGE = [
    ({"feeds": [{"speed": -1}]}, r"feeds\[0\]\.speed must be >= 0 \(1 real time.*got -1$"),
    ({"feeds": [{"batch": 0}]}, r"feeds\[0\]\.batch must be >= 1 and <= 1000000 .*got 0$"),
    ({"feeds": [{"seed": -3}]}, r"feeds\[0\]\.seed must be >= 0"),
    ({"feeds": [{"instruments": []}]}, r"feeds\[0\]\.instruments must have at least 1 item"),
    ({"feeds": [{"name": "a b"}]}, r"feeds\[0\]\.name must match .*got 'a b'$"),
    ({"feeds": [{"kind": ""}]}, r"feeds\[0\]\.kind must have at least 1 character"),
    ({"router": {"history": 0}}, r"router\.history must be >= 1 \(closed bars kept"),
    ({"router": {"granularities": []}}, r"router\.granularities must have at least 1 item"),
    ({"router": {"partial_hz": -4}}, r"router\.partial_hz must be >= 0"),
    ({"trader": {"risk": {"max_position": 0}}}, r"trader\.risk\.max_position must be >= 1"),
    ({"trader": {"risk": {"max_order": -5}}}, r"trader\.risk\.max_order must be >= 1 .*got -5$"),
    ({"trader": {"risk": {"max_orders_per_minute": 0}}}, r"max_orders_per_minute must be >= 1"),
    ({"trader": {"commission": -1e-5}}, r"trader\.commission must be >= 0 and < 0\.01"),
    ({"trader": {"commission": 0.5}}, r"trader\.commission must be >= 0 and < 0\.01"),
    ({"trader": {"balance": 0}}, r"trader\.balance must be > 0"),
    ({"trader": {"broker": ""}}, r"trader\.broker must have at least 1 character"),
    ({"brains": [{"name": "b", "size": 0}]}, r"brains\[0\]\.size must be >= 1 \(units at target"),
    ({"brains": [{"name": "b", "window": -1}]}, r"brains\[0\]\.window must be >= 1"),
    ({"brains": [{"name": "b", "strategy": "m.C"}]}, r"brains\[0\]\.strategy must match .*'m\.C'"),
    ({"brains": [{"name": ""}]}, r"brains\[0\]\.name must match"),
    ({"heartbeat_s": 0}, r"heartbeat_s must be > 0 and <= 60"),
    ({"restart_backoff_s": -1}, r"restart_backoff_s must be >= 0"),
    ({"max_restarts": -1}, r"max_restarts must be >= 0"),
    ({"host": ""}, r"host must have at least 1 character"),
]


@pytest.mark.parametrize(("data", "message"), OUT_OF_RANGE)
def test_every_range_is_checked_when_loading(data, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load(cfg.SystemConfig, data)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: cfg.RiskLimits(max_order=0), r"RiskLimits\.max_order must be >= 1 .*got 0$"),
        (lambda: cfg.FeedConfig(speed=float("inf")), r"speed must be finite and >= 0"),
        (lambda: cfg.FeedConfig(speed=float("nan")), r"speed must be finite and >= 0"),
        (lambda: cfg.RouterConfig(history=-1), r"RouterConfig\.history must be >= 1"),
        (lambda: cfg.BrainConfig(name="b", size=-10), r"BrainConfig\.size must be >= 1"),
        (lambda: cfg.SystemConfig(heartbeat_s=0.0), r"SystemConfig\.heartbeat_s must be > 0"),
    ],
)
def test_every_range_is_checked_when_building_in_code(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"feeds": [{"instruments": ["EURUSD"]}]}, "Did you mean 'EUR_USD'"),
        ({"feeds": [{"instruments": ["EUR_USD", "EUR_USD"]}]}, "lists an instrument twice"),
        ({"router": {"granularities": ["M3"]}}, "unknown granularity 'M3'"),
        ({"router": {"granularities": ["M1", "M1"]}}, "lists one twice"),
        ({"feeds": [{"kind": "replay"}]}, "needs file=PATH"),
        ({"feeds": [{"start": "yesterday"}]}, "start must be an ISO-8601 time"),
        ({"feeds": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"feeds": [{"name": "router"}]}, "'router' names a process every system has"),
        ({"brains": [{"name": "trader"}]}, "'trader' names a process every system has"),
    ],
)
def test_invalid_values_are_explained(data, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load(cfg.SystemConfig, data)


@pytest.mark.parametrize(
    ("brain", "message"),
    [
        (
            {"instrument": "GBP_USD"},
            r"brain 'b' trades GBP_USD but no feed quotes it \(the feeds quote EUR_USD\); add "
            r"GBP_USD to a feed's instruments",
        ),
        (
            {"granularity": "M5"},
            r"brain 'b' decides on M5 bars but the router builds only S5, M1; add M5 to "
            r"router\.granularities",
        ),
    ],
)
def test_a_brain_that_would_never_get_a_bar_is_refused(brain, message):
    config = cfg.SystemConfig(
        router=cfg.RouterConfig(granularities=["S5", "M1"]),
        brains=[cfg.BrainConfig(name="b", **brain)],
    )
    with pytest.raises(ConfigError, match=message):
        cfg.check_system(config)
    with pytest.raises(ConfigError, match=message):
        preflight.check(RunDir("/nonexistent-osm-home"), config)
    with pytest.raises(ConfigError, match="at least one feed"):
        cfg.check_system(cfg.SystemConfig(feeds=[]))
    cfg.check_system(cfg.SystemConfig(brains=[cfg.BrainConfig(name="b")]))  # M1 on EUR_USD: fine


class _Quiet(SyntheticSource):
    """A source a package would register: any class with the Source contract."""


def test_feed_kind_is_checked_against_the_source_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(feeds, "_SOURCES", dict(feeds._SOURCES))
    rundir = RunDir(tmp_path)
    custom = cfg.SystemConfig(feeds=[cfg.FeedConfig(name="q", kind="quiet")])
    assert cfg.load(cfg.SystemConfig, cfg.dump(custom)) == custom  # not a closed list
    with pytest.raises(ConfigError, match=r"feed 'q': unknown source 'quiet'. Known: .*replay"):
        preflight.check(rundir, custom)
    typo = cfg.SystemConfig(feeds=[cfg.FeedConfig(name="s", kind="synthetc")])
    with pytest.raises(ConfigError, match="Did you mean 'synthetic'"):
        preflight.check(rundir, typo)
    feeds.register_source("quiet", _Quiet)
    preflight.check(rundir, custom)
    assert not any(tmp_path.iterdir())  # checking creates nothing in the run directory


def test_the_broker_is_checked_against_the_broker_registry(tmp_path):
    config = cfg.SystemConfig(trader=cfg.TraderConfig(broker="papr"))
    with pytest.raises(UnknownNameError, match="Did you mean 'paper'"):
        preflight.check(RunDir(tmp_path), config)


def test_instrument_lookup():
    eur = instrument("EUR_USD")
    assert (eur.pip_size, eur.precision, eur.base, eur.quote) == (0.0001, 5, "EUR", "USD")
    assert instrument("USD_JPY").pip_size == 0.01
    assert eur.format(1.234567) == "1.23457"
    with pytest.raises(UnknownNameError, match="Did you mean 'USD_JPY'"):
        instrument("USDJPY")


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ({"acount": "101-1"}, "feeds[live].adapter (the oanda settings): Object contains unknown"),
        ({"instruments": ["USD_JPY"]}, "instruments is set outside it; remove it here"),
        ({"stream_silence_s": 0}, "stream_silence_s"),
        ({"environment": "demo"}, "a base URL"),
        ({"environment": "practice"}, "no OANDA account: set the OANDA_ACCOUNT variable"),
        ({"account": "101-004-1-001"}, "no OANDA token: set OANDA_ACCESS_TOKEN"),
    ],
)
def test_an_oanda_feeds_settings_are_checked_before_start(tmp_path, monkeypatch, adapter, message):
    for variable in ("OANDA_ACCOUNT", "OANDA_ENVIRONMENT", "OANDA_ACCESS_TOKEN", "OANDA_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    config = cfg.SystemConfig(feeds=[cfg.FeedConfig(name="live", kind="oanda", adapter=adapter)])
    with pytest.raises(ConfigError, match=re.escape(message)):
        preflight.check(RunDir(tmp_path / "osm"), config)


def test_an_oanda_feed_takes_its_settings_from_its_section(monkeypatch):
    from osm.live.adapters.oanda.data import OandaSource

    monkeypatch.setenv("OANDA_ENVIRONMENT", "live")
    feed = cfg.FeedConfig(
        name="live", kind="oanda", instruments=["EUR_USD", "USD_JPY"],
        adapter={"account": "101-004-1-001", "environment": "http://127.0.0.1:9", "backoff_s": 0.5},
    )  # fmt: skip
    settings = OandaSource.settings(feed)
    assert (settings.account, settings.environment) == ("101-004-1-001", "http://127.0.0.1:9")
    assert settings.instruments == ["EUR_USD", "USD_JPY"] and settings.backoff_s == 0.5
    without = OandaSource.settings(cfg.FeedConfig(name="live", kind="oanda"))
    assert without.environment == "live"  # $OANDA_ENVIRONMENT when the section has none
