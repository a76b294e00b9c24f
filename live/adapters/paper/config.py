"""Settings of the paper broker, derived from the trader's config so one file configures a run."""

from __future__ import annotations

import msgspec

from osm.core.config import TraderConfig
from osm.core.errors import ConfigError


class PaperConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the paper broker fills and accounts.

    Parameters
    ----------
    commission
        Fraction of traded notional charged per fill (2e-5 is 0.2 bp).
    balance
        Opening cash, in the account currency.
    currency
        The account currency. A fill's PnL is booked in it as OANDA books it: converted from the
        instrument's quote currency at the fill price when the pair holds the account currency
        (USD_JPY for USD), else at the mid of the last quote of the pair of the two currencies.
    margin_rate
        Margin required per unit of notional (0.02 is 50:1 leverage), as OANDA reports it.
    quotes
        Quotes kept per instrument to fill orders that arrive after their quote (a late order
        fills at the first quote at or after its `after_ns`, as long as that quote is still held).
    """

    commission: float = 0.0
    balance: float = 100_000.0
    currency: str = "USD"
    margin_rate: float = 0.02
    quotes: int = 100_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.commission < 0.01:
            raise ConfigError(
                f"commission is a fraction of notional in [0, 0.01), got {self.commission}"
            )
        if not 0.0 < self.margin_rate <= 1.0:
            raise ConfigError(f"margin_rate must be in (0, 1], got {self.margin_rate}")
        if self.quotes < 2:
            raise ConfigError(f"quotes (kept per instrument) must be at least 2, got {self.quotes}")

    @classmethod
    def from_trader(cls, config: TraderConfig) -> PaperConfig:
        return cls(commission=config.commission, balance=config.balance, currency=config.currency)
