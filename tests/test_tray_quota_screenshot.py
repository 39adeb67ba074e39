"""The real tray app in a real tray host (Xvfb, tint2) turns amber, then red, as the
tightest quota window fills past the `[quota]` alert levels: the icon's pixels are read
from screenshots. Skips like tests/test_tray_screenshot.py without Xvfb, tint2 or import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devmeter.ledger import UPSERT_QUOTA, connect, quota_row, write_calls
from devmeter.paths import paths
from devmeter.quota import Snapshot
from devmeter.tray.icon import PALETTES, RGB, WHITE
from tests.test_tray_screenshot import (  # noqa: F401 (x_display is a fixture)
    PANEL_HEIGHT,
    near,
    pytestmark,
    screenshot,
    seed,
    x_display,
)

GREEN, AMBER, RED = (PALETTES[s].background for s in ("normal", "warning", "critical"))


def set_window(utilization: float) -> None:
    """The proxy's way: a subscription answer's 5h window, then its call's row (the tray
    redraws when a call lands)."""
    from scripts.seed_tray_ledger import call

    where = paths()
    now = time.time()
    conn = connect(where.ledger)
    conn.execute(UPSERT_QUOTA, quota_row(
        Snapshot(now, "anthropic", "acct-1", "5h", utilization, now + 7200, "allowed")
    ))  # fmt: skip
    conn.commit()
    conn.close()
    write_calls(where.ledger, [call(now, "0.01", "c94186ab-2b3f-417d", None, "claude-code")])


def icon_box(image: Any, colour: RGB) -> tuple[int, int, int, int] | None:
    """The bounding box of `colour` in the panel, if it covers a tray icon's worth."""
    strip = image.crop((0, 0, image.width, PANEL_HEIGHT))
    pixels = strip.load()
    hits = [(x, y) for y in range(strip.height) for x in range(strip.width)
            if near(pixels[x, y], colour)]  # fmt: skip
    if len(hits) < 150:
        return None
    xs, ys = [x for x, _ in hits], [y for _, y in hits]
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


def wait_for_icon(display: str, tmp: Path, colour: RGB, app: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and app.poll() is None:
        image = screenshot(display, tmp / "root.png")
        box = icon_box(image, colour)
        if box is not None:
            return image, box
        time.sleep(0.3)
    raise AssertionError(f"no icon in {colour} (the app {'exited' if app.poll() else 'runs'})")


def foot_bar(image: Any, box: tuple[int, int, int, int]) -> int:
    """The longest run of white pixels on one row of the icon's lowest four."""
    pixels = image.load()
    left, top, right, bottom = box
    longest = 0
    for y in range(max(top, bottom - 4), bottom):
        run = 0
        for x in range(left, right):
            run = run + 1 if near(pixels[x, y], WHITE, 40) else 0
            longest = max(longest, run)
    return longest


def test_the_icon_turns_amber_then_red_as_the_quota_window_fills(
    x_display: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    where = paths()
    where.data_dir.mkdir(parents=True, exist_ok=True)
    # Levels of its own: 70% amber, 90% red (the defaults are 80% and 95%).
    where.config_file.write_text(
        '[proxy]\nlisten = "127.0.0.1:0"\n[quota]\nthresholds = [0.7, 0.9]\n'
    )
    seed("normal")  # $42.17 today, no alert: a green "$42"
    set_window(0.62)
    env = {**os.environ, "DISPLAY": x_display, "PYSTRAY_BACKEND": "xorg"}
    env.pop("WAYLAND_DISPLAY", None)
    log = tmp_path / "tray.log"
    with log.open("w") as out:
        app = subprocess.Popen(
            [sys.executable, "-m", "devmeter"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        image, green = wait_for_icon(x_display, tmp_path, GREEN, app)
        assert foot_bar(image, green) < (green[2] - green[0]) // 2  # 62%: no bar
        set_window(0.75)
        image, amber = wait_for_icon(x_display, tmp_path, AMBER, app)
        assert icon_box(image, GREEN) is None
        set_window(0.93)
        image, red = wait_for_icon(x_display, tmp_path, RED, app)
        assert icon_box(image, AMBER) is None
        width = red[2] - red[0]
        assert 16 <= width <= 32, red
        # Not by colour alone: the red icon has a bar along its foot.
        assert foot_bar(image, red) >= width // 2, f"no bar at the foot of {red}"
        image.crop((red[0] - 2, 0, red[2] + 2, PANEL_HEIGHT)).save(tmp_path / "tray.png")
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.kill()
            raise
    assert app.returncode == 0, log.read_text()
