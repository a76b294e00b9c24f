"""FX instruments by their OANDA names, with pip size and display precision."""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from osm.core.errors import UnknownNameError


class Instrument(msgspec.Struct, frozen=True):
    """One tradeable pair: `EUR_USD` has base EUR, quote USD, pip 0.0001, 5 decimals shown."""

    name: str
    pip_size: float
    precision: int

    @property
    def base(self) -> str:
        return self.name.split("_")[0]

    @property
    def quote(self) -> str:
        return self.name.split("_")[1]

    def pips(self, price_difference: float) -> float:
        """Express a price difference in pips."""
        return price_difference / self.pip_size

    def format(self, price: float) -> str:
        return f"{price:.{self.precision}f}"


def _pair(name: str) -> Instrument:
    jpy = name.endswith("_JPY") or name.endswith("_HUF")
    return Instrument(name, 0.01 if jpy else 0.0001, 3 if jpy else 5)


INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in map(
        _pair,
        [
            "EUR_USD", "GBP_USD", "USD_JPY", "USD_CHF", "AUD_USD", "USD_CAD", "NZD_USD",
            "EUR_GBP", "EUR_JPY", "GBP_JPY", "EUR_CHF", "AUD_JPY", "EUR_AUD", "EUR_CAD",
            "GBP_CHF", "CHF_JPY", "AUD_NZD", "CAD_JPY", "NZD_JPY", "USD_SEK", "USD_NOK",
            "USD_MXN", "USD_ZAR", "USD_SGD", "USD_HKD", "USD_TRY", "USD_PLN", "USD_HUF",
        ],
    )
}  # fmt: skip


def instrument(name: str | Instrument) -> Instrument:
    """Look an instrument up by its OANDA name (`EUR_USD`)."""
    if isinstance(name, Instrument):
        return name
    try:
        return INSTRUMENTS[name]
    except KeyError:
        raise UnknownNameError("instrument", name, INSTRUMENTS) from None


CURRENCIES = frozenset(c for name in INSTRUMENTS for c in name.split("_"))


def conversion(currency: str, account: str, mids: Mapping[str, float]) -> float:
    """The rate that turns an amount in `currency` into the `account` currency, as OANDA books
    PnL: 1 for the same currency, else from the mid of the pair of the two (``USD_JPY`` turns JPY
    into USD at ``1 / mid``); NaN when `mids` quotes no such pair.

    `mids` maps instrument names to a current mid price; a fill's own pair can be passed at its
    fill price (OANDA converts a USD_JPY trade's PnL at the price it closed at).
    """
    if currency == account:
        return 1.0
    direct, inverse = mids.get(f"{currency}_{account}"), mids.get(f"{account}_{currency}")
    if direct is not None and math.isfinite(direct) and direct > 0:
        return float(direct)
    if inverse is not None and math.isfinite(inverse) and inverse > 0:
        return 1.0 / float(inverse)
    return math.nan
