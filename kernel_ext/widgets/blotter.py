"""The blotter: the trader's positions (with PnL), orders and fills as live tables.

One named thread refreshes the tables once a `period_s` with ordinary requests (each on a socket
of its own, see :class:`osm.live.client.Client`) and stops when the blotter closes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import ipywidgets as w

from osm.commands import records_frame
from osm.core.errors import OsmError
from osm.live.cli import COLUMNS
from osm.session import Session

log = logging.getLogger(__name__)


def _html(rows: list[dict[str, Any]], columns: list[str], limit: int) -> str:
    if not rows:
        return "<i>none</i>"
    frame = records_frame(rows[:limit], columns)
    return frame.to_html(index=False, float_format=lambda v: f"{v:.5f}", border=0)


class Blotter:
    """Positions, orders and fills of the system in `home`, refreshed every `period_s`."""

    def __init__(self, session: Session, home: str | Path | None, period_s: float, rows: int):
        self.session, self.home, self.period_s, self.rows = session, home, period_s, rows
        self.positions = w.HTML()
        self.orders = w.HTML()
        self.fills = w.HTML()
        self.status = w.HTML()
        self.widget = w.VBox(
            [
                w.HTML("<b>Positions</b>"), self.positions,
                w.HTML("<b>Orders</b> (newest first)"), self.orders,
                w.HTML("<b>Fills</b>"), self.fills, self.status,
            ]
        )  # fmt: skip
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osm-blotter", daemon=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self.refresh()  # the first tables before the widget shows
        self._thread.start()

    def refresh(self) -> None:
        """Fetch the three tables once and show them."""
        try:
            with self.session.client(self.home, 2.0) as client:
                positions, orders, fills = client.positions(), client.orders(), client.fills()
        except OsmError as exc:
            self.status.value = f"<span style='color:#d62728'>{exc}</span>"
            return
        self.positions.value = _html(positions, COLUMNS["positions"], self.rows)
        self.orders.value = _html(orders, COLUMNS["orders"], self.rows)
        self.fills.value = _html(fills[::-1], COLUMNS["fills"], self.rows)
        self.status.value = ""
        self.refreshes += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.refresh()
            except Exception:
                log.exception("the blotter could not refresh")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        self.session.forget(self)
        for child in self.widget.children:
            child.close()
        self.widget.close()


def blotter(
    home: str | Path | None = None,
    period_s: float = 1.0,
    rows: int = 20,
    session: Session | None = None,
) -> Blotter:
    """Open the live positions, orders and fills tables of the running system."""
    from osm.widgets import current_session

    session = session or current_session()
    view = Blotter(session, home, period_s, rows)
    view.start()
    session.track(view)
    return view
