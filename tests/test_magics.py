"""``%osm`` through a shell that re-raises (jupysql's pattern): every subcommand against a real
system, every user mistake as a one-line UsageError with the fix."""

from __future__ import annotations

import pandas as pd
import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import osm
from osm.magics import OsmMagics, OsmUsageError
from osm.widgets.blotter import Blotter
from osm.widgets.chart import LiveChart
from osm.widgets.controls import Controls
from tests.live_helpers import wait_for
from tests.system_helpers import stop


class TestingShell(InteractiveShell):
    __test__ = False
    """Raises what a cell raised, so a test sees the error instead of a printed traceback."""

    def run_cell(self, *args, **kwargs):
        result = super().run_cell(*args, **kwargs)
        result.raise_error()
        return result


@pytest.fixture(scope="module")
def ip():
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = TestingShell.instance(config=config)
    shell.run_cell("%load_ext osm")
    yield shell
    shell.run_cell("%unload_ext osm")
    TestingShell.clear_instance()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("osm", numbered=True)
    yield path
    stop(path)


def magic(ip, line: str):
    return ip.run_line_magic("osm", line)


def test_loading_twice_keeps_one_magic_and_session(ip):
    first = ip.magics_manager.registry["OsmMagics"]
    osm.load_ipython_extension(ip)
    ip.run_cell("%reload_ext osm")
    assert isinstance(ip.magics_manager.registry["OsmMagics"], OsmMagics)
    assert "osm" in ip.magics_manager.magics["line"]
    osm.load_ipython_extension(ip)
    assert ip.magics_manager.registry["OsmMagics"] is not first  # reload: a fresh session


def test_public_names_complete(ip):
    assert {"chart", "blotter", "controls", "Client", "backtest", "sweep"} <= set(dir(osm))
    ip.run_cell("import osm")
    with provisionalcompleter():  # what the kernel's complete_request calls
        matches = {c.text for c in ip.Completer.completions("osm.ch", 6)}
    assert matches == {"chart", "check_lookahead"}


def test_help_lists_every_subcommand(ip, capsys):
    assert magic(ip, "help") is None
    out = capsys.readouterr().out
    for name in ("up", "down", "status", "bars", "orders", "fills", "positions", "halt",
                 "resume", "flatten", "cancel", "chart", "blotter", "controls"):  # fmt: skip
        assert name in out
    magic(ip, "help bars")
    assert "--count" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("bars EUR_USD", "%osm bars: the following arguments are required: granularity"),
        ("bars EUR_USX M1", "Did you mean 'EUR_USD'"),
        ("bars EUR_USD M7", "Did you mean 'M5' or 'M10'"),
        ("bars EUR_USD M1 --count 0", "--count must be at least 1"),
        ("bras EUR_USD M1", "invalid choice: 'bras'"),
        ("bars EUR_USD M1 --count many", "invalid int value: 'many'"),
        ('bars "EUR_USD M1', "cannot split"),
        ("up --foreground", "in a terminal (osm up --foreground)"),
        ("up --brain osm.strategies.sma_cross:SmaCros", "SmaCross"),
        ("keys", "runs in a terminal"),
        ("chart EUR_USD M1 --window 3", "window must be 10 to 20000"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip, line, says, tmp_path, capsys):
    with pytest.raises(OsmUsageError) as caught:
        ip.run_cell(f"%osm {line} --home {tmp_path}")
    assert isinstance(caught.value, UsageError)
    assert says in str(caught.value)
    shown = capsys.readouterr()
    assert "Traceback" not in shown.out + shown.err
    assert f"UsageError: {caught.value}" in shown.out + shown.err


def test_no_system_running_says_how_to_start_one(ip, tmp_path):
    for line in ("status", "bars EUR_USD M1", "orders", "halt", "chart EUR_USD M1"):
        with pytest.raises(OsmUsageError, match=r"start one with `%osm up --home"):
            magic(ip, f"{line} --home {tmp_path}")
    assert magic(ip, f"down --home {tmp_path}") == f"osm was not running in {tmp_path}"


def test_every_subcommand_on_a_running_system(ip, home, capsys):
    up = f"up --speed 60 --start 2024-03-05T08:00:00Z --granularities M1 --home {home}"
    status = magic(ip, up)
    assert not status.data["attached"] and "PROCESS" in repr(status)
    assert set(status.frame.index) == {"router", "trader", "synthetic"}
    again = magic(ip, up.replace("--speed 60", "--speed 30"))  # attaches, says what it ignored
    assert again.data["attached"] and "ignored --speed 30" in capsys.readouterr().out
    assert "running" in repr(magic(ip, f"status --home {home}"))

    wait_for(lambda: len(magic(ip, f"bars EUR_USD M1 --count 3 --home {home}")) == 3, 60, "bars")
    frame = magic(ip, f"bars EUR_USD M1 --count 3 --home {home}")
    assert isinstance(frame, pd.DataFrame) and str(frame.index.tz) == "UTC"
    assert list(frame.columns[:6]) == ["open", "high", "low", "close", "spread", "ticks"]
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert frame.index.is_monotonic_increasing

    sent = magic(ip, f"order EUR_USD 1000 --home {home}")
    assert sent["accepted"]
    wait_for(lambda: len(magic(ip, f"fills --home {home}")), 30, "the fill")
    fills = magic(ip, f"fills --home {home}")
    assert fills.loc[0, "client_id"] == sent["client_id"] and fills.loc[0, "units"] == 1000
    assert str(fills["time"].dt.tz) == "UTC"
    orders = magic(ip, f"orders --home {home}")
    assert sent["client_id"] in set(orders["client_id"])
    positions = magic(ip, f"positions --home {home}")
    assert positions.set_index("instrument").loc["EUR_USD", "units"] == 1000
    late = magic(ip, f"cancel {sent['client_id']} --home {home}")
    assert not late["cancelled"] and "is filled, not open" in late["reason"]

    assert magic(ip, f"halt --home {home}")["halted"] is True
    assert "TRADING HALTED" in repr(magic(ip, f"status --home {home}"))
    with pytest.raises(OsmUsageError, match="refused"):
        magic(ip, f"order EUR_USD 1000 --home {home}")
    flat = magic(ip, f"flatten --home {home}")
    assert list(flat["units"]) == [-1000] and flat["accepted"].all()
    assert magic(ip, f"resume --home {home}")["halted"] is False
    with pytest.raises(OsmUsageError, match="max_order"):
        magic(ip, f"order EUR_USD 100000000 --home {home}")

    session = ip.magics_manager.registry["OsmMagics"].session
    view = magic(
        ip, f"chart EUR_USD M1 --strategy osm.strategies.sma_cross:SmaCross --param fast=3 "
        f"--param slow=8 --window 50 --home {home}",
    )  # fmt: skip
    assert isinstance(view, LiveChart) and view.strategy.values == {"fast": 3, "slow": 8}
    wait_for(lambda: view.seen > 0, 30, "bars on the chart")
    blotter = magic(ip, f"blotter --home {home}")
    assert isinstance(blotter, Blotter) and "EUR_USD" in blotter.fills.value
    buttons = magic(ip, f"controls --home {home}")
    assert isinstance(buttons, Controls)
    assert set(session.open) == {view, blotter, buttons}
    ip.run_cell("%unload_ext osm")  # closes what the session opened
    assert view.closed and not view.follower.is_alive() and not blotter.thread.is_alive()
    ip.run_cell("%load_ext osm")

    assert magic(ip, f"down --home {home}") == f"osm stopped in {home}"
