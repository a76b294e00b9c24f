"""Replay a backtest in vectorbt, for its analytics, with our exact fills and valuation.

:func:`to_vectorbt` rebuilds the run from the result's target units alone, independently of our
kernel's loop: the position held through bar ``t`` is the target of bar ``t - 1``; a change of
position is a ``targetamount`` order at bar ``t`` priced at ``ask_open[t]`` for a buy and
``bid_open[t]`` for a sell, with ``fees = commission``. vectorbt values a position at one ``close``
price per bar, while our equity values a long at the bid close and a short at the ask close; the
bridge passes that very price as ``close`` (the mid close while flat), so vectorbt's ``value()``
equals our equity bar for bar and its orders equal our fills.

vectorbt has no financing (carry) and does not lend: a run with ``financing != 0`` is replayed
without it (with a warning), and a run whose buys cost more than the cash on hand is refused.
vectorbt is an optional dependency (``pip install 'osm-markets[vectorbt]'``), imported on first use.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from osm.core.errors import ConfigError
from osm.research.backtest import BacktestResult


def to_vectorbt(result: BacktestResult, **kwargs: Any) -> Any:
    """Return a ``vectorbt.Portfolio`` that replays `result` with the same fills.

    Parameters
    ----------
    result
        A backtest from :func:`osm.research.backtest.backtest`.
    **kwargs
        Passed on to ``vectorbt.Portfolio.from_orders`` (e.g. ``freq``), overriding the bridge's
        own arguments; overriding ``price``, ``size`` or ``close`` breaks the parity.
    """
    vbt = _vectorbt()
    if result.financing != 0.0:
        warnings.warn(
            "vectorbt has no financing: the portfolio replays the fills without it, so its value "
            "differs from the backtest's equity by the financing paid",
            UserWarning,
            stacklevel=2,
        )
    orders = vectorbt_orders(result)
    index = result.index
    options: dict[str, Any] = {
        "close": pd.Series(orders["close"], index=index, name="close"),
        "size": pd.Series(orders["size"], index=index, name="size"),
        "size_type": "targetamount",
        "direction": "both",
        "price": pd.Series(orders["price"], index=index, name="price"),
        "fees": result.commission,
        "init_cash": result.cash,
        "allow_partial": False,
        "raise_reject": True,
        "freq": _frequency(result.bars["time"]),
    }
    options.update(kwargs)
    try:
        return vbt.Portfolio.from_orders(**options)
    except vbt.portfolio.enums.RejectedOrderError as exc:
        raise ConfigError(
            f"vectorbt rejected an order ({exc}): it does not lend, so buys must fit in the cash; "
            "backtest with more cash or a smaller size to replay it"
        ) from None


def vectorbt_orders(result: BacktestResult) -> dict[str, np.ndarray]:
    """Return the arrays the bridge hands to vectorbt, one element per bar.

    ``size``: the position to hold from this bar's open (NaN where it does not change);
    ``price``: the fill price of that change (ask open for a buy, bid open for a sell, NaN where
    none); ``close``: the price the held position is valued at (bid close when long, ask close
    when short, mid close when flat).
    """
    bars = result.bars
    held = np.zeros(len(bars))
    held[1:] = result.target_units[:-1]
    change = np.diff(held, prepend=0.0)
    price = np.where(change > 0, bars["ask_open"], np.where(change < 0, bars["bid_open"], np.nan))
    mid = (bars["bid_close"] + bars["ask_close"]) * 0.5
    close = np.where(held > 0, bars["bid_close"], np.where(held < 0, bars["ask_close"], mid))
    return {"size": np.where(change != 0, held, np.nan), "price": price, "close": close}


def _vectorbt() -> ModuleType:
    try:
        return importlib.import_module("vectorbt")
    except ImportError:
        raise ImportError(
            "the vectorbt bridge needs vectorbt: pip install 'osm-markets[vectorbt]' "
            "(or pip install 'vectorbt>=1.2,<1.3')"
        ) from None


def _frequency(times: np.ndarray) -> pd.Timedelta | None:
    if len(times) < 2:
        return None
    return pd.Timedelta(int(np.median(np.diff(times))), unit="ns")
