"""A left click on the X backend's icon activates its menu's default item, which devmeter
makes "Open dashboard" (the X backend has no menu to open). pystray 0.19.5 handles the
click but never asked the X server for it, so a real click did nothing.

A real Xvfb with tint2 as the tray host, the icon docked in it, and xdotool's click: a
real pointer event, which X delivers only to a window that selected it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tray_screenshot import need
from tests.test_tray_stays import bare_display, start_tint2, stop, x_server  # noqa: F401

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Xvfb and tint2 are Linux tools"
)

ICON = """
import sys
from pathlib import Path
import pystray
from PIL import Image
from devmeter.tray.xorg import DockingIcon

clicked = Path(sys.argv[1])
icon = DockingIcon("devmeter", Image.new("RGB", (22, 22), "green"), "devmeter-click-test")
icon.menu = pystray.Menu(
    pystray.MenuItem("Open dashboard", lambda: clicked.write_text("opened"), default=True)
)

def setup(icon):
    icon.visible = True

icon.run(setup=setup)
"""


def docked_window(display: str, deadline: float) -> tuple[int, int]:
    """The centre of the docked icon's window, once tint2 has given it its size."""
    env = {**os.environ, "DISPLAY": display}
    while time.monotonic() < deadline:
        found = subprocess.run(
            [need("xdotool"), "search", "--onlyvisible", "--name", "^devmeter-click-test$"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        for window in found.stdout.split():
            shape = subprocess.run(
                [need("xdotool"), "getwindowgeometry", "--shell", window],
                env=env, capture_output=True, text=True,
            ).stdout  # fmt: skip
            values = dict(line.split("=", 1) for line in shape.split())
            if int(values["WIDTH"]) > 1:
                x, y = int(values["X"]), int(values["Y"])
                return x + int(values["WIDTH"]) // 2, y + int(values["HEIGHT"]) // 2
        time.sleep(0.2)
    raise AssertionError("the icon never docked")


def test_a_left_click_on_the_x_icon_opens_the_dashboard(bare_display, tmp_path: Path):  # noqa: F811
    clicked = tmp_path / "clicked"
    env = {**os.environ, "DISPLAY": bare_display, "PYSTRAY_BACKEND": "xorg"}
    panel = start_tint2(bare_display)
    icon = subprocess.Popen(
        [sys.executable, "-c", ICON, str(clicked)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        x, y = docked_window(bare_display, time.monotonic() + 60)
        deadline = time.monotonic() + 10
        while not clicked.exists() and time.monotonic() < deadline:
            subprocess.run(
                [need("xdotool"), "mousemove", str(x), str(y), "click", "1"], env=env, check=True
            )
            time.sleep(0.5)
        assert clicked.exists(), "a left click on the icon did nothing"
    finally:
        icon.send_signal(signal.SIGTERM)
        try:
            icon.wait(5)
        except subprocess.TimeoutExpired:
            icon.kill()
        stop(panel, signal.SIGTERM)
