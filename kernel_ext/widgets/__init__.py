"""Notebook widgets on the live system: the chart, the blotter and the controls.

Each is opened on the ``%osm`` session (:class:`osm.session.Session`) when the extension is loaded,
else on a session of its own, and closes with it.
"""

from __future__ import annotations

from osm.session import Session


def current_session() -> Session:
    """The ``%osm`` magics' session in this IPython, else a new one (default run directory)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return Session()
    shell = get_ipython()
    magics = shell.magics_manager.registry.get("OsmMagics") if shell is not None else None
    return magics.session if magics is not None else Session()
