"""Halt, resume and flatten buttons that go through the trader's risk path.

A click only sends a request: a :class:`~osm.live.client.Client` request opens its own socket on
the thread that runs the callback (JupyterLab may run it on a subshell thread while a cell is
busy), so no socket of another thread is touched. Flatten asks for a confirmation first.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as w

from osm.core.errors import OsmError
from osm.session import Session


class Controls:
    """The three buttons and a line saying what the last click did."""

    def __init__(self, session: Session, home: str | Path | None) -> None:
        self.session, self.home = session, home
        self.halt = w.Button(description="Halt", button_style="danger", icon="stop")
        self.resume = w.Button(description="Resume", button_style="success", icon="play")
        self.flatten = w.Button(description="Flatten…", button_style="warning")
        self.confirm = w.Button(description="Confirm flatten", button_style="danger")
        self.cancel = w.Button(description="Cancel")
        self.confirmation = w.HBox([self.confirm, self.cancel], layout=w.Layout(display="none"))
        self.message = w.HTML()
        self.halt.on_click(lambda _b: self._send("halt", lambda c: c.halt()))
        self.resume.on_click(lambda _b: self._send("resume", lambda c: c.resume()))
        self.flatten.on_click(lambda _b: self._ask_confirmation(True))
        self.cancel.on_click(lambda _b: self._ask_confirmation(False))
        self.confirm.on_click(self._flatten)
        self.widget = w.VBox(
            [w.HBox([self.halt, self.resume, self.flatten]), self.confirmation, self.message]
        )
        for button in (self.halt, self.resume, self.flatten, self.confirm, self.cancel):
            clicks_on_any_shell(button)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ask_confirmation(self, show: bool) -> None:
        self.confirmation.layout.display = "flex" if show else "none"
        if show:
            self.message.value = "Close every position with market orders?"

    def _flatten(self, _button: Any) -> None:
        self._ask_confirmation(False)
        self._send("flatten", lambda c: c.flatten())

    def _send(self, what: str, request: Callable[[Any], Any]) -> Any:
        try:
            with self.session.client(self.home) as client:
                answer = request(client)
        except OsmError as exc:
            self.message.value = (
                f"<span style='color:#d62728'>{what}: {html.escape(str(exc))}</span>"
            )
            return None
        self.message.value = f"{what}: {html.escape(_summary(answer))}"
        return answer

    def close(self) -> None:
        self.session.forget(self)
        for widget in (self.halt, self.resume, self.flatten, self.confirm, self.cancel):
            widget.close()
        for widget in (self.confirmation, self.message, self.widget):
            widget.close()


def clicks_on_any_shell(widget: w.Widget) -> None:
    """Handle the front end's messages to `widget` on the shell it sends them to.

    JupyterLab 4.4+ sends widget messages to a kernel subshell, so a click runs while a cell is
    busy; but ipykernel 7.4 routes a comm message to the shell that last published on that comm
    (the main shell, for a widget a cell created) to deliver replies where they are awaited. A
    button awaits no reply: its clicks take the front end's choice of shell.
    """
    comm = widget.comm
    if comm is not None and hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = lambda _data, default: default


def _summary(answer: Any) -> str:
    if isinstance(answer, dict):
        return ", ".join(f"{k}={v}" for k, v in answer.items())
    if isinstance(answer, list):
        return f"{len(answer)} orders sent" if answer else "no position to close"
    return str(answer)


def controls(home: str | Path | None = None, session: Session | None = None) -> Controls:
    """Open the halt / resume / flatten buttons of the running system."""
    from osm.widgets import current_session

    session = session or current_session()
    view = Controls(session, home)
    session.track(view)
    return view
