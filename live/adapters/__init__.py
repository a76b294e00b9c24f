"""Broker adapters, one folder each, registered by name.

``paper`` and ``oanda`` are built in. Another package adds a broker by declaring an entry point in the group
``osm.brokers`` whose value is a factory ``(TraderConfig) -> Broker``; ``TraderConfig.broker`` then
names it. Factories are imported when first used, so a broker's dependencies load only if chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from osm.core.config import TraderConfig
from osm.core.errors import UnknownNameError
from osm.live.adapters.base import Book, Broker

BrokerFactory = Callable[[TraderConfig], Broker]
ENTRY_POINT_GROUP = "osm.brokers"


class BrokerRegistry:
    """Names to broker factories, given as objects or as lazy ``"module:attribute"`` paths."""

    def __init__(self) -> None:
        self._factories: dict[str, BrokerFactory | str] = {}

    def register(self, name: str, factory: BrokerFactory | str) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        found = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return sorted(found | set(self._factories))

    def factory(self, name: str) -> BrokerFactory:
        if name not in self._factories:
            for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
                self._factories[name] = ep.load()
                break
            else:
                raise UnknownNameError(
                    "broker (set trader.broker in config.json)", name, self.names()
                )
        factory = self._factories[name]
        if isinstance(factory, str):
            module, _, attribute = factory.partition(":")
            factory = getattr(importlib.import_module(module), attribute)
            self._factories[name] = factory
        return factory

    def create(self, config: TraderConfig) -> Broker:
        """Build the broker that `config.broker` names."""
        return self.factory(config.broker)(config)


brokers = BrokerRegistry()
brokers.register("paper", "osm.live.adapters.paper:create")
brokers.register("oanda", "osm.live.adapters.oanda.broker:create")

__all__ = ["Book", "Broker", "BrokerFactory", "BrokerRegistry", "brokers"]
