"""The notebook in a real browser: JupyterLab driven by Playwright in Debian's headless Chromium.

``notebooks/01_explore.ipynb`` (a copy) runs top to bottom against a running system; the candles
are drawn and their number grows; while a cell sleeps, a click on Halt reaches the trader within a
second (JupyterLab 4.4+ sends widget messages to a kernel subshell, ipykernel >= 7.1 runs it); a
new cell still answers afterwards.

Chromium comes from the distribution (``make browser`` installs it where it can), never a
downloaded build; without ``/usr/bin/chromium`` the test skips and says why. Set
``OSM_SCREENSHOT=docs/img/live_chart.png`` to refresh the README's picture (``make screenshot``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from osm.live.client import Client
from tests.live_helpers import wait_for
from tests.system_helpers import running_system

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# The same flags as the notebook's `%osm up`, so it attaches without a warning.
UP_ARGS = (
    "--speed", "60", "--start", "2024-03-05T08:00:00Z", "--granularities", "M1",
    "--brain", "osm.strategies.sma_cross:SmaCross", "--param", "fast=5", "--param", "slow=20",
)  # fmt: skip
JUPYTER_SETTINGS = {
    # No news or update check (no network), every cell in the DOM (no virtual scrolling).
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


COUNT_CANDLES = """
(selector) => {
  // The closed candles (osm.widgets.chart.candle_paths): one sub-path per candle in the rising
  // and the falling body paths of the candle mark, the only filled lines (fill-opacity 1).
  let n = 0;
  for (const path of document.querySelectorAll(`${selector} g.curve > path.line`)) {
    if (path.style.fillOpacity === '1') n += ((path.getAttribute('d') || '').match(/M/g) || []).length;
  }
  return n;
}
"""


def _needs_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} not found: `make browser` installs Debian's chromium (needs root and "
            "apt-get); the browser test never downloads one"
        )
    pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    pytest.importorskip("jupyterlab", reason="jupyterlab is a dev dependency")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_env(root: Path, home: Path) -> dict[str, str]:
    dirs = {
        "JUPYTER_CONFIG_DIR": root / "config",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": root / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": root / "workspaces",
        "IPYTHONDIR": root / "ipython",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    for name, values in JUPYTER_SETTINGS.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return {**os.environ, **{k: str(v) for k, v in dirs.items()}, "OSM_HOME": str(home)}


class Lab:
    """A JupyterLab server on 127.0.0.1 with a token, its own Jupyter dirs and OSM_HOME."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.notebooks = root / "notebooks"
        self.notebooks.mkdir()
        shutil.copy(NOTEBOOKS / "01_explore.ipynb", self.notebooks / "explore.ipynb")
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.notebooks}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log = (root / "lab.log").open("wb")
        self.process = subprocess.Popen(
            command, env=_jupyter_env(root, home), stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                return True
        except OSError:
            return False

    def tail(self) -> str:
        self.log.flush()
        return (self.root / "lab.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM lets the server shut its kernels down; whatever is left of the group is killed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)
        self.log.close()


@pytest.fixture
def lab(tmp_path, home) -> Iterator[Lab]:
    _needs_chromium()
    server = Lab(tmp_path, home)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def system(home):
    yield from running_system(home)


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        context.set_default_timeout(30_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True).click()


def _kernel(page, state: str, timeout_s: float) -> None:
    """Wait for the status bar's "Python 3 (ipykernel) | Idle" (or Busy): the kernel connected."""
    item = page.locator(".jp-StatusBar-TextItem", has_text=f"| {state.capitalize()}")
    item.first.wait_for(timeout=timeout_s * 1000)


def _run_new_cell(page, code: str) -> None:
    """Add a cell below the active one, type `code` and run it (Shift+Enter)."""
    page.locator(".jp-Notebook").first.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")


def _halted(home: Path) -> bool:
    with Client(home, timeout_s=2) as client:
        return bool(client.trader("status")["halted"])


def test_explore_notebook_in_jupyterlab(lab, system, home, page, tmp_path):
    system(*UP_ARGS)  # while the server starts
    wait_for(lab.ready, 60, "jupyter lab to answer", poll=0.2)
    page.goto(f"{lab.url}/lab/tree/explore.ipynb?token={lab.token}")
    _kernel(page, "idle", 60)
    _menu(page, "Run", "Run All Cells")
    try:
        page.get_by_text("halted: True").wait_for(timeout=90_000)
        _kernel(page, "idle", 30)
    except Exception:
        errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").all_inner_texts()
        raise AssertionError(f"the notebook did not run: {errors}\n{lab.tail()}") from None

    # The candles are drawn and their number grows as the market moves (an M1 bar a second).
    def candles() -> int:
        return page.evaluate(COUNT_CANDLES, ".bqplot")

    first = wait_for(candles, 10, "candles drawn")
    wait_for(lambda: candles() >= first + 2, 10, f"more than {first} candles")
    assert first >= 3
    # Only the forming bar is one of bqplot's per-candle groups (g.stick, two rows at most).
    assert page.locator(".bqplot g.stick").count() <= 2

    # The notebook halted from its controls; resume, then click Halt while a cell sleeps.
    with Client(home) as client:
        client.resume()
    assert not _halted(home)
    # Long enough to be still asleep at the interrupt below, however slow the steps between.
    _run_new_cell(page, "import time\ntime.sleep(600)")
    _kernel(page, "busy", 10)
    time.sleep(0.5)
    streaming = candles()
    clicked = time.monotonic()
    page.locator("button.widget-button", has_text="Halt").first.click()
    wait_for(lambda: _halted(home), 1.0, "the trader halted by the click")
    assert time.monotonic() - clicked < 1.0
    # The chart kept streaming while the main shell slept.
    wait_for(lambda: candles() > streaming, 10, "candles while the kernel is busy")

    shot = tmp_path / "live_chart.png"
    page.locator(".bqplot").first.scroll_into_view_if_needed()
    page.locator(".jp-OutputArea-output", has=page.locator(".bqplot")).first.screenshot(path=shot)
    target = os.environ.get("OSM_SCREENSHOT")
    if target:
        shutil.copy(shot, target)

    # Interrupt the sleep; a new cell answers, and the chart is still alive in the kernel.
    _menu(page, "Kernel", "Interrupt Kernel")  # the menu: no keyboard focus to depend on
    page.get_by_text("KeyboardInterrupt").first.wait_for(timeout=10_000)
    _kernel(page, "idle", 10)
    _run_new_cell(page, "print('answer', 6 * 7, chart.closed)")
    page.get_by_text("answer 42 False").wait_for(timeout=10_000)


def test_a_click_runs_on_the_subshell_while_a_cell_is_busy(tmp_path):
    """What JupyterLab does, without the browser: the Halt button's comm message goes to a
    subshell while the main shell sleeps; its handler runs there, not after the cell."""
    from jupyter_client.manager import start_new_kernel

    record = tmp_path / "clicked"
    setup = (
        "import threading, time\n"
        "from osm.session import Session\n"
        "from osm.widgets.controls import controls\n"
        f"buttons = controls(home={str(tmp_path / 'none')!r}, session=Session())\n"
        f"buttons.halt.on_click(lambda _b: open({str(record)!r}, 'w').write("
        "threading.current_thread().name))\n"
        "print(buttons.halt.comm.comm_id, end='')\n"
    )
    manager, kernel = start_new_kernel(kernel_name="python3")
    try:
        created = kernel.session.msg("create_subshell_request", {})
        kernel.control_channel.send(created)
        subshell = kernel.control_channel.get_msg(timeout=30)["content"]["subshell_id"]
        printed: list[str] = []
        kernel.execute_interactive(
            setup, timeout=60, output_hook=lambda m: printed.append(m["content"].get("text", ""))
        )
        comm_id = "".join(printed)
        assert len(comm_id) == 32, printed
        kernel.execute("time.sleep(20)")
        time.sleep(1.0)
        click = kernel.session.msg(
            "comm_msg",
            {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}},
        )
        click["header"]["subshell_id"] = subshell
        sent = time.monotonic()
        kernel.shell_channel.send(click)
        wait_for(record.exists, 10, "the click handled")
        assert time.monotonic() - sent < 2.0
        assert record.read_text() != "MainThread"
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
