"""A brain's stop-loss and take-profit from its config: the paper broker closes the trade each of its
targets opens at the distance the brain's config sets, and the closing fill is the brain's.

Real processes (`osm up --config`), the synthetic market, the paper broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from osm.live.client import Client
from tests.live_helpers import wait_for
from tests.system_helpers import running_system, write_config


@pytest.fixture
def system(home: Path):
    yield from running_system(home)


def test_a_brains_exits_come_from_its_config_and_its_position_stays_right(home, system):
    path = write_config(
        home,
        feeds=[{"name": "synthetic", "speed": 30, "start": "2024-01-08T00:00:00Z"}],
        router={"granularities": ["S5"]},
        trader={"risk": {"max_orders_per_minute": 1_000_000, "max_decision_age_s": 86_400}},
        brains=[
            {
                "name": "sma",
                "strategy": "osm.strategies.sma_cross:SmaCross",
                "params": {"fast": 2, "slow": 5},
                "granularity": "S5",
                "size": 1000,
                "stop_loss": 0.0002,
                "take_profit": 0.0002,
            }
        ],
    )
    system("--config", str(path))
    with Client(home, timeout_s=10) as client:

        def exits() -> list[dict]:
            return [
                f for f in client.fills() if f["client_id"].endswith(("/stop_loss", "/take_profit"))
            ]

        closed = wait_for(exits, 120, "a trade closed at its stop or its target")
        assert all(f["brain"] == "sma" for f in closed)
        opened = {f["client_id"]: f for f in client.fills() if f["client_id"].startswith("sma-")}
        for exit_fill in closed:
            opening = opened[exit_fill["client_id"].rsplit("/", 1)[0]]
            assert exit_fill["units"] * opening["units"] < 0  # it closes what its order opened
            moved = (exit_fill["price"] - opening["price"]) * (1 if opening["units"] > 0 else -1)
            # Closed at the quote that first reached the distance: at least that far, either way.
            assert abs(moved) >= 0.0002 - 1e-9, (opening, exit_fill)
        client.halt()  # no new order: what is held settles

        def settled() -> tuple[list[dict], list[dict]] | None:
            fills, positions = client.fills(), client.positions()
            return (fills, positions) if client.fills() == fills else None

        fills, positions = wait_for(settled, 30, "no fill between two reads")
    for row in positions:
        assert sum(row["brains"].values()) == row["units"], row  # the brain holds what is held
    held = sum(f["units"] for f in fills if f["brain"] == "sma")
    assert held == sum(r["brains"].get("sma", 0) for r in positions)
