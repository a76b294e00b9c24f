"""The paper broker: fills at the next quote, as DESIGN section 3 says."""

from osm.core.config import TraderConfig
from osm.live.adapters.paper.config import PaperConfig
from osm.live.adapters.paper.execution import PaperBroker, QuoteRing


def create(config: TraderConfig) -> PaperBroker:
    """The broker registry's factory for ``broker = "paper"``."""
    return PaperBroker.from_trader(config)


__all__ = ["PaperBroker", "PaperConfig", "QuoteRing", "create"]
