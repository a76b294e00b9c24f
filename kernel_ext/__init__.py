"""osm: research-to-live FX trading from a notebook.

What a notebook user types is here; everything else lives in ``osm.core``, ``osm.live``,
``osm.research`` and ``osm.strategies``. Names are imported on first use so that live processes,
which import ``osm`` too, do not pay for the research stack or the widgets.

``%load_ext osm`` registers the ``%osm`` magic (see :mod:`osm.magics`).
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
    "chart": "osm.widgets.chart",
    "blotter": "osm.widgets.blotter",
    "controls": "osm.widgets.controls",
    "sweep_heatmap": "osm.widgets.research",
    "equity_chart": "osm.widgets.research",
    "walk_forward_chart": "osm.widgets.research",
}
__all__ = sorted(_EXPORTS)
_SUBPACKAGES = ["core", "live", "research", "strategies", "widgets"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'osm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBPACKAGES, "__version__"})


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext osm``: register ``%osm`` with a fresh session (again: nothing changes)."""
    from osm.magics import OsmMagics
    from osm.session import Session

    if "OsmMagics" not in ipython.magics_manager.registry:
        ipython.register_magics(OsmMagics(ipython, Session()))


def unload_ipython_extension(ipython: Any) -> None:
    """Close the session's widgets; ``%reload_ext osm`` then starts a fresh one."""
    magics = ipython.magics_manager.registry.pop("OsmMagics", None)
    if magics is not None:
        magics.session.close()
        ipython.magics_manager.magics["line"].pop("osm", None)
