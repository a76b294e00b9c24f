"""osm: research-to-live FX trading from a notebook.

What a notebook user types is here; everything else lives in ``osm.core``, ``osm.live``,
``osm.research`` and ``osm.strategies``. Names are imported on first use so that live processes,
which import ``osm`` too, do not pay for the research stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Strategy": "osm.strategies.base",
    "Param": "osm.strategies.base",
    "load_bars": "osm.research.data",
    "backtest": "osm.research.backtest",
    "sweep": "osm.research.sweep",
    "walk_forward": "osm.research.walkforward",
    "check_lookahead": "osm.research.lookahead",
    "Client": "osm.live.client",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'osm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
