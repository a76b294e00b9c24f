"""Settings and credentials of the OANDA adapter, and the one place that builds an oandapyV20 API.

The token never comes from a parameter or a config file: it is read from ``OANDA_ACCESS_TOKEN``
(or ``OANDA_TOKEN``) or from ``$OSM_HOME/keys/oanda.token``, a file only its owner may read (0600).
It lives in a :class:`Secret` whose repr and str are redacted, and :func:`redact` scrubs it from any
text that leaves the adapter (log lines, error messages).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from osm.core.errors import ConfigError
from osm.core.instruments import instrument

ENVIRONMENTS = ("practice", "live")
TOKEN_VARIABLES = ("OANDA_ACCESS_TOKEN", "OANDA_TOKEN")
ACCOUNT_VARIABLE = "OANDA_ACCOUNT"
ENVIRONMENT_VARIABLE = "OANDA_ENVIRONMENT"
TOKEN_FILE = "keys/oanda.token"


class AuthError(ConfigError, RuntimeError):
    """The venue refused the token (401/403): the adapter stops instead of retrying, and a
    process that cannot start without it exits as misconfigured (the supervisor does not restart
    it into a storm of refused requests)."""


class Secret:
    """A token that never shows itself: repr, str and format print ``Secret('***')``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into another process or a notebook
        raise TypeError("a Secret is not picklable")


class OandaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where and how the adapter talks to OANDA.

    Parameters
    ----------
    account
        The v20 account id (``101-004-1435156-001``); default: ``$OANDA_ACCOUNT``.
    environment
        ``practice``, ``live``, or a base URL (``http://127.0.0.1:PORT``) for the fake server.
    instruments
        What the pricing stream subscribes to.
    request_timeout_s
        Connect and read timeout of every REST call; an order that times out is looked up by
        client id before anything is resent.
    stream_silence_s
        No line (price or heartbeat) for this long means the stream is dead: reconnect.
    backoff_s, backoff_cap_s
        Reconnect wait: `backoff_s`, doubling on each failure up to `backoff_cap_s`.
    requests_per_s
        Client-side limit of REST requests (OANDA allows 120/s; stay well under).
    connections_per_s
        New stream connections per second at most (OANDA rejects more than 2/s).
    poll_s
        How often the transactions since the last seen one are polled for fills (stop-loss,
        take-profit, manual trades).
    """

    account: str = ""
    environment: str = "practice"
    instruments: list[str] = msgspec.field(default_factory=lambda: ["EUR_USD"])
    request_timeout_s: Annotated[float, Meta(gt=0, le=120)] = 10.0
    stream_silence_s: Annotated[float, Meta(gt=0, le=120)] = 10.0
    backoff_s: Annotated[float, Meta(ge=0, le=60)] = 1.0
    backoff_cap_s: Annotated[float, Meta(ge=0, le=600)] = 32.0
    requests_per_s: Annotated[float, Meta(gt=0, le=100)] = 50.0
    connections_per_s: Annotated[float, Meta(gt=0, le=2)] = 1.0
    poll_s: Annotated[float, Meta(gt=0, le=60)] = 2.0

    def __post_init__(self) -> None:
        for name in self.instruments:
            instrument(name)
        env = self.environment
        if env not in ENVIRONMENTS and not env.startswith(("http://", "https://")):
            raise ConfigError(
                f"oanda environment must be one of {ENVIRONMENTS} or a base URL "
                f"(http://127.0.0.1:PORT), got {env!r}"
            )
        if self.backoff_cap_s < self.backoff_s:
            raise ConfigError(
                f"oanda backoff_cap_s ({self.backoff_cap_s}) is below backoff_s ({self.backoff_s})"
            )

    def account_id(self) -> str:
        account = self.account or os.environ.get(ACCOUNT_VARIABLE, "")
        if not account:
            raise ConfigError(
                f"no OANDA account: set the {ACCOUNT_VARIABLE} variable (or trader.adapter's "
                "account in config.json), e.g. 101-004-1234567-001"
            )
        return account


def settings(section: str, given: dict[str, Any], **fixed: Any) -> OandaConfig:
    """A config section (``trader.adapter``, a feed's ``adapter``) as an :class:`OandaConfig`.

    `fixed` are fields the section may not set (a feed's instruments are the feed's own); the
    environment defaults to ``$OANDA_ENVIRONMENT``, then ``practice``.
    """
    clash = sorted(set(given) & set(fixed))
    if clash:
        raise ConfigError(f"{section}: {', '.join(clash)} is set outside it; remove it here")
    merged = {**given, **fixed}
    if "environment" not in merged and os.environ.get(ENVIRONMENT_VARIABLE):
        merged["environment"] = os.environ[ENVIRONMENT_VARIABLE]
    try:
        return msgspec.convert(merged, OandaConfig)
    except (msgspec.ValidationError, ConfigError) as exc:
        raise ConfigError(
            f"{section} (the oanda settings): {exc}; it takes "
            f"{', '.join(f for f in OandaConfig.__struct_fields__ if f not in fixed)}"
        ) from None


def load_token(home: Path | None = None) -> Secret:
    """The API token from the environment or ``$OSM_HOME/keys/oanda.token`` (must be 0600)."""
    for variable in TOKEN_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return Secret(value)
    home = home or Path(os.environ.get("OSM_HOME", "~/.osm")).expanduser()
    path = home / TOKEN_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"no OANDA token: set {TOKEN_VARIABLES[0]} or write it to {path} (chmod 600)"
        ) from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run chmod 600 {path}"
        )
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{path} is empty; write the OANDA token into it")
    return Secret(value)


def redact(text: str, token: Secret | None) -> str:
    """`text` with the token (if any) replaced by ``***``."""
    if token is None or not token.reveal():
        return text
    return text.replace(token.reveal(), "***")


def make_api(config: OandaConfig, token: Secret, timeout: tuple[float, float] | float):
    """An oandapyV20 API (one keep-alive session) for `config`'s environment.

    oandapyV20 has no base-URL argument: a URL environment is registered under its own key in
    ``oandapyV20.oandapyV20.TRADING_ENVIRONMENTS`` (global, idempotent).
    """
    import oandapyV20.oandapyV20 as v20core
    from oandapyV20 import API

    environment = config.environment
    if environment not in ENVIRONMENTS:
        base = environment.rstrip("/")
        environment = f"osm:{base}"
        v20core.TRADING_ENVIRONMENTS.setdefault(environment, {"api": base, "stream": base})
    return API(
        access_token=token.reveal(),
        environment=environment,
        request_params={"timeout": timeout},
    )
