"""The real tray app in a real tray host: Xvfb, tint2's system tray, pystray's X backend.

Seeds a ledger with a day of spend and an alert (the warning state), runs `python -m
devmeter` (which starts its own proxy), takes a screenshot with ImageMagick's `import`,
and looks for the icon: an amber square with dark ink on it. Skips, naming what is
missing, without Xvfb, tint2 or import (scripts/test.sh installs them on Debian).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmeter.paths import paths
from devmeter.tray.icon import INK, PALETTES

ROOT = Path(__file__).resolve().parent.parent
TINT2RC = ROOT / "scripts" / "tray_screenshot.tint2rc"
PANEL_HEIGHT = 32  # tint2rc: panel_size = 100% 32, at the top
AMBER = PALETTES["warning"].background

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Xvfb and tint2 are Linux tools"
)


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian: xvfb tint2 imagemagick)")
    return path


@pytest.fixture
def x_display(tmp_path: Path) -> Iterator[str]:
    """A fresh Xvfb with tint2's panel; Xvfb picks a free display number itself."""
    xvfb, tint2 = need("Xvfb"), need("tint2")
    need("import")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(
        [
            xvfb,
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            "640x200x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    panel = None
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        assert number, "Xvfb did not start"
        display = f":{number}"
        env = {**os.environ, "DISPLAY": display}
        pretend_a_window_manager(display)
        panel = subprocess.Popen(
            [tint2, "-c", str(TINT2RC)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_tray(display)
        yield display
    finally:
        for proc in (panel, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


def pretend_a_window_manager(display: str) -> None:
    """tint2 waits 15 s for a window manager to say how many desktops there are: say it."""
    from Xlib import display as xdisplay

    conn = xdisplay.Display(display)
    try:
        root, cardinal = conn.screen().root, conn.intern_atom("CARDINAL")
        root.change_property(conn.intern_atom("_NET_NUMBER_OF_DESKTOPS"), cardinal, 32, [1])
        root.change_property(conn.intern_atom("_NET_CURRENT_DESKTOP"), cardinal, 32, [0])
    finally:
        conn.close()


def wait_for_tray(display: str, timeout: float = 20) -> None:
    """Until a system tray owns its selection: pystray's X backend docks only then."""
    from Xlib import display as xdisplay

    conn = xdisplay.Display(display)
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        deadline = time.monotonic() + timeout
        while conn.get_selection_owner(atom) == 0:
            assert time.monotonic() < deadline, "tint2's system tray never appeared"
            time.sleep(0.05)
    finally:
        conn.close()
    time.sleep(0.3)


def screenshot(display: str, path: Path):
    from PIL import Image

    subprocess.run(
        ["import", "-window", "root", str(path)],
        env={**os.environ, "DISPLAY": display},
        check=True,
        capture_output=True,
        timeout=20,
    )
    with Image.open(path) as image:
        return image.convert("RGB")


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def find_icon(image) -> tuple[tuple[int, int, int, int], int, int] | None:
    """The bounding box of state-coloured pixels in the panel, their count and the dark
    ink pixels inside the box; None when there are none."""
    strip = image.crop((0, 0, image.width, PANEL_HEIGHT))
    pixels = strip.load()
    hits = [
        (x, y) for y in range(strip.height) for x in range(strip.width) if near(pixels[x, y], AMBER)
    ]
    if not hits:
        return None
    xs, ys = [x for x, _ in hits], [y for _, y in hits]
    box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
    ink = sum(
        1
        for y in range(box[1], box[3])
        for x in range(box[0], box[2])
        if near(pixels[x, y], INK, 60)
    )
    return box, len(hits), ink


def seed(state: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "seed_tray_ledger", ROOT / "scripts" / "seed_tray_ledger.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.seed(state)


def test_the_tray_icon_shows_in_a_real_tray_in_its_state_colour(x_display, tmp_path):
    where = paths()
    where.data_dir.mkdir(parents=True, exist_ok=True)
    where.config_file.write_text('[proxy]\nlisten = "127.0.0.1:0"\n')
    seed("warning")  # $42.17 today and an alert: an amber "$42"
    env = {**os.environ, "DISPLAY": x_display, "PYSTRAY_BACKEND": "xorg"}
    env.pop("WAYLAND_DISPLAY", None)
    log = tmp_path / "tray.log"
    with log.open("w") as out:
        app = subprocess.Popen(
            [sys.executable, "-m", "devmeter"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        found = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and app.poll() is None:
            image = screenshot(x_display, tmp_path / "root.png")
            found = find_icon(image)
            if found is not None and found[1] >= 200 and where.proxy_state.exists():
                break
            time.sleep(0.3)
        assert app.poll() is None, f"the tray app exited:\n{log.read_text()}"
        assert found is not None, f"no amber icon in the tray:\n{log.read_text()}"
        box, amber, ink = found
        width, height = box[2] - box[0], box[3] - box[1]
        # One tray slot (24 px in tray_screenshot.tint2rc), filled with the state colour...
        assert 16 <= width <= 32 and 16 <= height <= 32, box
        assert amber >= 0.4 * width * height
        # ... and a figure drawn on it in dark ink.
        assert ink >= 20, f"no figure on the icon (ink pixels: {ink})"
        image.crop((0, 0, 160, PANEL_HEIGHT)).save(tmp_path / "tray.png")
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.kill()
            raise
    assert app.returncode == 0, log.read_text()
    assert not where.proxy_state.exists(), "the proxy outlived the tray"
