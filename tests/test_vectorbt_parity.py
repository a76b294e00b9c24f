"""Our backtests equal vectorbt's on the same bars: orders, value, trades and total return."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from osm.core.errors import ConfigError
from osm.research.backtest import backtest
from osm.research.data import load_bars
from osm.research.vectorbt_bridge import to_vectorbt
from osm.strategies.bollinger import Bollinger
from osm.strategies.sma_cross import SmaCross

pytest.importorskip("vectorbt")
# vectorbt 1.2 still calls DataFrame.rename(inplace=True), which pandas 3.1 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


@pytest.fixture
def h1(h1_file) -> np.ndarray:
    return load_bars(h1_file)[-8000:]


def assert_same(result, portfolio) -> None:
    orders = portfolio.orders.records_readable
    fills = result.fills
    assert len(orders) == len(fills) > 0
    assert (orders["Timestamp"].to_numpy() == fills["time"].to_numpy()).all()
    assert orders["Side"].str.lower().tolist() == fills["side"].tolist()
    np.testing.assert_allclose(orders["Size"], fills["units"].abs(), rtol=1e-12)
    np.testing.assert_array_equal(orders["Price"], fills["price"])
    np.testing.assert_allclose(orders["Fees"], fills["commission"], rtol=1e-12)
    np.testing.assert_allclose(portfolio.value().to_numpy(), result.equity_values, rtol=1e-12)
    assert portfolio.total_return() == pytest.approx(result.metrics["total_return"], abs=1e-9)
    positions = portfolio.positions.records_readable
    trades = result.trades
    assert len(positions) == len(trades)
    assert (positions["Entry Timestamp"].to_numpy() == trades["entry_time"].to_numpy()).all()
    assert (positions["Status"] == "Closed").tolist() == trades["closed"].tolist()
    np.testing.assert_allclose(positions["PnL"], trades["pnl"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fast", [5, 10, 20])
@pytest.mark.parametrize("slow", [30, 50, 100])
def test_sma_cross_grid_matches_vectorbt(h1: np.ndarray, fast: int, slow: int) -> None:
    result = backtest(SmaCross, h1, commission=2e-5, fast=fast, slow=slow)
    assert_same(result, to_vectorbt(result))


def test_partial_and_flat_positions_match_vectorbt(h1: np.ndarray) -> None:
    result = backtest(Bollinger, h1, size=30_000, commission=1e-4, k=1.5)
    assert (result.fills["position"] == 0).sum() > 10  # exits to flat, not only flips
    assert_same(result, to_vectorbt(result))


def test_what_vectorbt_cannot_replay_is_said(h1: np.ndarray, monkeypatch) -> None:
    with pytest.warns(UserWarning, match="vectorbt has no financing"):
        to_vectorbt(backtest(SmaCross, h1[:500], financing=1e-6))
    with pytest.raises(ConfigError, match="does not lend.*more cash or a smaller size"):
        to_vectorbt(backtest(SmaCross, h1[:500], size=1_000_000, cash=10_000))
    monkeypatch.setitem(sys.modules, "vectorbt", None)  # what an absent package looks like
    with pytest.raises(ImportError, match=r"pip install 'osm-markets\[vectorbt\]'"):
        to_vectorbt(backtest(SmaCross, h1[:500]))
