"""Config structs are strict, explain mistakes, and survive JSON."""

from __future__ import annotations

import pytest

from osm.core import config as cfg
from osm.core.errors import ConfigError, UnknownNameError
from osm.core.instruments import instrument


def test_system_config_round_trips_through_json():
    original = cfg.SystemConfig(
        feeds=[cfg.FeedConfig(name="r", kind="replay", file="x.csv.gz", speed=0)],
        brains=[cfg.BrainConfig(name="b", params={"fast": 5, "slow": 20})],
    )
    assert cfg.load(cfg.SystemConfig, cfg.dump(original)) == original


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown field `feedz`.*Did you mean 'feeds'"):
        cfg.load(cfg.SystemConfig, {"feedz": []})


def test_wrong_type_names_the_path():
    with pytest.raises(ConfigError, match=r"\$\.router\.history"):
        cfg.load(cfg.SystemConfig, {"router": {"history": "many"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"feeds": [{"instruments": ["EURUSD"]}]}, "Did you mean 'EUR_USD'"),
        ({"router": {"granularities": ["M3"]}}, "unknown granularity 'M3'"),
        ({"feeds": [{"kind": "replay"}]}, "needs file=PATH"),
        ({"feeds": [{"speed": -1}]}, "speed must be >= 0"),
        ({"feeds": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ],
)
def test_invalid_values_are_explained(data, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load(cfg.SystemConfig, data)


def test_instrument_lookup():
    eur = instrument("EUR_USD")
    assert (eur.pip_size, eur.precision, eur.base, eur.quote) == (0.0001, 5, "EUR", "USD")
    assert instrument("USD_JPY").pip_size == 0.01
    assert eur.format(1.234567) == "1.23457"
    with pytest.raises(UnknownNameError, match="Did you mean 'USD_JPY'"):
        instrument("USDJPY")
