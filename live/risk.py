"""Pre-trade risk in the trader, where no brain can bypass it.

Every order passes :meth:`Risk.check` before it is journaled as sent: the kill switch, the largest
order, the largest position per instrument and the order rate. A refusal says which limit, the
numbers, and the setting that changes it. Flatten orders (the one way to trade while halted) skip
the halt and the rate limit, since both exist to stop trading, not to keep a position open.

The order rate is counted in market time, the clock of the quotes, not the wall clock: in live
trading the two run together, and a replay at any speed then sees the limit a live run of the same
market would (a replay at ``speed 0`` sends a day's decisions in a second, each about its own bar).
An order counts at the instant of the decision it carries (its ``after_ns``), clamped by
:meth:`Risk.market_time` so that a client cannot spread its orders to escape the limit: never later
than the newest quote (a claim about the future is not believed) and never earlier than the same
brain's previous order (a brain does not go back in time). An order without a decision time counts
at the newest quote. While no quote arrives the clock stands still, which only makes the limit
stricter.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from osm.core.config import RiskLimits

MINUTE_NS = 60_000_000_000
KEPT_NS = 24 * 60 * MINUTE_NS  # order times older than this behind the newest are forgotten


@dataclass(frozen=True)
class Refusal:
    """Why an order was refused: `code` for counters, `text` for people."""

    code: str
    text: str


class Risk:
    """Limits, the halt switch and the market times of recent orders of one trader."""

    def __init__(self, limits: RiskLimits):
        self.limits = limits
        self._sent: list[int] = []  # market times of the orders sent, sorted
        self._brain_time: dict[str, int] = {}  # market time of each brain's last order sent
        self.halted = False
        self.halt_reason = ""

    def halt(self, reason: str) -> None:
        self.halted, self.halt_reason = True, reason

    def resume(self) -> None:
        self.halted, self.halt_reason = False, ""

    def market_time(self, brain: str, after_ns: int, now_ns: int) -> int:
        """The instant an order of `brain` counts at, given its `after_ns` and the newest quote
        time `now_ns` (see the module docstring)."""
        at = min(after_ns, now_ns) if after_ns > 0 else now_ns
        return max(at, self._brain_time.get(brain, at))

    def orders_last_minute(self, at_ns: int) -> int:
        """Orders sent in the minute of market time up to and including `at_ns`."""
        return bisect.bisect_right(self._sent, at_ns) - bisect.bisect_right(
            self._sent, at_ns - MINUTE_NS
        )

    def check(
        self, instrument: str, units: int, position: int, *, at_ns: int, flatten: bool = False
    ) -> Refusal | None:
        """Refuse `units` of `instrument` when the position would become `position + units`.

        `position` counts fills and orders still pending, so two quick orders cannot together
        pass a limit that each passes alone. `at_ns` is the order's market time.
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
        if not flatten and self.orders_last_minute(at_ns) >= limits.max_orders_per_minute:
            return Refusal(
                "rate",
                f"{limits.max_orders_per_minute} orders already sent in the minute of market "
                "time before this one (max_orders_per_minute); wait, or raise "
                "trader.risk.max_orders_per_minute",
            )
        return None

    def record(self, brain: str, at_ns: int) -> None:
        """Count one order of `brain` sent at market time `at_ns`, for the rate limit."""
        bisect.insort(self._sent, at_ns)
        self._brain_time[brain] = max(at_ns, self._brain_time.get(brain, at_ns))
        horizon = self._sent[-1] - KEPT_NS
        if self._sent[0] < horizon:
            del self._sent[: bisect.bisect_left(self._sent, horizon)]
