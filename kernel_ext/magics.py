"""The ``%osm`` line magic: the `osm` command line's parser, routed to plain functions.

``%osm SUBCOMMAND ARGS`` parses ARGS with the very parser of the `osm` command line
(:func:`osm.live.cli.build_parser`), plus the notebook-only subcommands ``chart``, ``blotter`` and
``controls``, and calls one function of :mod:`osm.commands`. A mistake (a misspelled instrument, no
system running, a missing argument) raises :class:`OsmUsageError`, which IPython shows as one line
with the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from osm import commands
from osm.core.errors import OsmError
from osm.live.cli import build_parser
from osm.session import Session


class OsmUsageError(UsageError):
    """A ``%osm`` mistake the user can fix; the message says how."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows only an exact UsageError as one line; a subclass says so itself.
        return [f"UsageError: {self}"]


def _notebook_commands(parser: argparse.ArgumentParser) -> None:
    """Add chart, blotter and controls to the command line's subcommands."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="run directory (default $OSM_HOME, else ~/.osm)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")

    chart = sub.add_parser("chart", parents=[common], help="a live candle chart (notebook)")
    chart.add_argument("instrument")
    chart.add_argument("granularity")
    chart.add_argument("--strategy", metavar="MODULE:CLASS", help="overlay its indicators")
    chart.add_argument("--param", action="append", metavar="NAME=VALUE", help="strategy parameter")
    chart.add_argument("--window", type=int, default=500, help="bars shown")
    sub.add_parser("blotter", parents=[common], help="live positions, orders, fills (notebook)")
    sub.add_parser("controls", parents=[common], help="halt, resume, flatten buttons (notebook)")


def parser() -> argparse.ArgumentParser:
    """The command line's parser with the notebook's subcommands, named ``%osm``."""
    built = build_parser()
    built.prog = "%osm"
    _notebook_commands(built)
    return built


def _as_magic(text: str) -> str:
    """A command line message as the notebook user types: `osm up` becomes `%osm up`."""
    text = text.replace("`osm ", "`%osm ")
    return "%" + text if text.startswith("osm") else text


def parse(line: str) -> argparse.Namespace | None:
    """Parse a ``%osm`` line; None when it asked for help (printed); OsmUsageError if wrong."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise OsmUsageError(f"%osm: cannot split {line!r}: {exc}") from None
    if not words or words[0] in ("help", "-h", "--help"):
        words = [*words[1:], "--help"]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser().parse_args(words)
    except SystemExit as exc:
        if exc.code == 0:
            return None  # --help printed
        message = errors.getvalue().strip() or f"cannot parse {line!r}"
        raise OsmUsageError(_as_magic(message)) from None


@magics_class
class OsmMagics(Magics):
    """``%osm``: start, watch and steer the live system from a notebook."""

    def __init__(self, shell: Any, session: Session) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    def osm(self, line: str) -> Any:
        """Run an `osm` subcommand in the notebook: ``%osm help`` lists them."""
        args = parse(line)
        if args is None:
            return None
        try:
            return commands.ROUTES[args.command](self.session, args)
        except OsmError as exc:
            raise OsmUsageError(_as_magic(str(exc))) from None
