"""Pre-trade risk in the trader, where no brain can bypass it.

Every order passes :meth:`Risk.check` before it is journaled as sent: the kill switch, the largest
order, the largest position per instrument and the order rate. A refusal says which limit, the
numbers, and the setting that changes it. Flatten orders (the one way to trade while halted) skip
the halt and the rate limit, since both exist to stop trading, not to keep a position open.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from osm.core.config import RiskLimits

WINDOW_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why an order was refused: `code` for counters, `text` for people."""

    code: str
    text: str


class Risk:
    """Limits, the halt switch and the recent order times of one trader."""

    def __init__(self, limits: RiskLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._sent: collections.deque[float] = collections.deque()
        self.halted = False
        self.halt_reason = ""

    def halt(self, reason: str) -> None:
        self.halted, self.halt_reason = True, reason

    def resume(self) -> None:
        self.halted, self.halt_reason = False, ""

    def orders_last_minute(self) -> int:
        cutoff = self._clock() - WINDOW_S
        while self._sent and self._sent[0] <= cutoff:
            self._sent.popleft()
        return len(self._sent)

    def check(
        self, instrument: str, units: int, position: int, *, flatten: bool = False
    ) -> Refusal | None:
        """Refuse `units` of `instrument` when the position would become `position + units`.

        `position` counts fills and orders still pending, so two quick orders cannot together
        pass a limit that each passes alone.
        """
        limits = self.limits
        if self.halted and not flatten:
            return Refusal(
                "halted",
                f"trading is halted ({self.halt_reason or 'no reason given'}); "
                "resume it with `osm resume` or the Command 'resume'",
            )
        if abs(units) > limits.max_order:
            return Refusal(
                "max_order",
                f"order of {units} units of {instrument} exceeds max_order {limits.max_order}; "
                "send smaller orders or raise trader.risk.max_order in config.json",
            )
        after = position + units
        if abs(after) > limits.max_position and abs(after) > abs(position):
            return Refusal(
                "max_position",
                f"position in {instrument} would be {after} units, beyond max_position "
                f"{limits.max_position}; raise trader.risk.max_position in config.json",
            )
        if not flatten and self.orders_last_minute() >= limits.max_orders_per_minute:
            return Refusal(
                "rate",
                f"{limits.max_orders_per_minute} orders already sent in the last minute "
                f"(max_orders_per_minute); wait, or raise trader.risk.max_orders_per_minute",
            )
        return None

    def record(self) -> None:
        """Count one order sent, for the rate limit."""
        self._sent.append(self._clock())
