"""The tray stays: started before the tray host, and through the host dying and coming back.

A real `python -m devmeter` on a fresh Xvfb, with tint2 as the tray host started, stopped,
killed and started again; the icon is found in screenshots by its colour (see
test_tray_screenshot.py). The app must never exit in between (exiting 0 would read as "the
user quit" to the packaging units), and SIGTERM still quits it with 0.

Twice: in this venv, which has no PyGObject, devmeter picks pystray's X backend by itself;
in a venv on the system's python3 that sees Debian's python3-gi and GTK 3 (as the README's
recipe makes), it picks GTK by itself. The GTK run skips, naming what is missing, without
them (scripts/test.sh installs them on Debian).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devmeter.paths import paths
from devmeter.tray.supervisor import read_status
from tests.test_tray_screenshot import (
    TINT2RC,
    find_icon,
    need,
    pretend_a_window_manager,
    screenshot,
    seed,
    wait_for_tray,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Xvfb and tint2 are Linux tools"
)


@dataclass
class XServer:
    display: str
    proc: subprocess.Popen[bytes]


@pytest.fixture
def x_server() -> Iterator[XServer]:
    """A fresh Xvfb with no tray host yet; Xvfb picks a free display number itself."""
    xvfb = need("Xvfb")
    need("tint2")
    need("import")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "640x200x24"]
        + ["-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        assert number, "Xvfb did not start"
        display = f":{number}"
        pretend_a_window_manager(display)
        yield XServer(display, server)
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def bare_display(x_server: XServer) -> str:
    return x_server.display


def start_tint2(display: str) -> subprocess.Popen[bytes]:
    panel = subprocess.Popen(
        [need("tint2"), "-c", str(TINT2RC)],
        env={**os.environ, "DISPLAY": display},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_tray(display)
    return panel


# Generous: `eventually` returns as soon as the check holds. On a loaded 2-core machine
# (load 10) `devmeter proxy` took 33 s to write proxy.json, and 20 s here made the tests
# fail for slowness, not for anything wrong.
WITHIN_SECONDS = 90


def eventually(what: str, check: Callable[[], bool], app: subprocess.Popen[bytes], log: Path):
    deadline = time.monotonic() + WITHIN_SECONDS
    while time.monotonic() < deadline:
        assert app.poll() is None, f"the tray app exited ({app.returncode}):\n{log.read_text()}"
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out: {what}\n{log.read_text()}")


def start_app(
    display: str,
    log: Path,
    *args: str,
    python: str = sys.executable,
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DISPLAY": display, "NO_AT_BRIDGE": "1", **(env_extra or {})}
    for name in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND"):
        env.pop(name, None)  # devmeter picks the backend itself
    with log.open("w") as out:
        return subprocess.Popen(
            [python, "-m", "devmeter", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


SYSTEM_PYTHON = "/usr/bin/python3"
H11_OVERRIDE = "h11>=0.16\n"  # as pyproject.toml's [tool.uv] override-dependencies


@pytest.fixture(scope="module")
def gtk_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The system python3 with PyGObject and GTK 3, in a venv that sees them and has
    devmeter installed from this checkout."""
    has_gtk = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('Gtk', '3.0')"],
        capture_output=True,
        check=False,
    )
    if has_gtk.returncode != 0:
        pytest.skip(
            f"{SYSTEM_PYTHON} has no PyGObject with GTK 3 (Debian: python3-gi gir1.2-gtk-3.0)"
        )
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (scripts/test.sh puts it there)")
    need("dbus-daemon")
    venv = tmp_path_factory.mktemp("gtk") / "venv"
    overrides = venv.parent / "overrides.txt"
    overrides.write_text(H11_OVERRIDE)
    quiet = {"check": True, "capture_output": True, "timeout": 300}
    subprocess.run(
        [uv, "venv", "--quiet", "--python", SYSTEM_PYTHON, "--system-site-packages", str(venv)],
        **quiet,
    )
    python = str(venv / "bin" / "python")
    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", python, "--override", str(overrides), root],
        **quiet,
    )
    return python


@contextlib.contextmanager
def session_bus(display: str) -> Iterator[dict[str, str]]:
    """A private D-Bus session on this display (services it starts see DISPLAY)."""
    bus = subprocess.Popen(
        [need("dbus-daemon"), "--session", "--nofork", "--print-address=1"],
        env={**os.environ, "DISPLAY": display},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        assert address, "dbus-daemon did not start"
        yield {"DBUS_SESSION_BUS_ADDRESS": address}
    finally:
        bus.terminate()
        bus.wait(5)


def stop_app(app: subprocess.Popen[bytes], log: Path) -> int:
    app.send_signal(signal.SIGTERM)
    try:
        return app.wait(20)
    except subprocess.TimeoutExpired:
        app.kill()
        raise AssertionError(f"SIGTERM did not stop the tray:\n{log.read_text()}") from None


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(10)


@pytest.mark.parametrize("backend", ["xorg", "gtk"])
def test_the_icon_appears_once_a_tray_starts_and_comes_back_after_the_tray_dies(
    backend, bare_display, tmp_path, request
):
    python = request.getfixturevalue("gtk_python") if backend == "gtk" else sys.executable
    bus = session_bus(bare_display) if backend == "gtk" else contextlib.nullcontext({})
    where = paths()
    where.data_dir.mkdir(parents=True, exist_ok=True)
    where.config_file.write_text('[proxy]\nlisten = "127.0.0.1:0"\n')
    seed("warning")  # an amber icon, easy to find
    log = tmp_path / "tray.log"
    shot = tmp_path / "root.png"

    def icon_shown() -> bool:
        found = find_icon(screenshot(bare_display, shot))
        return found is not None and found[1] >= 200

    def icon_gone() -> bool:
        return find_icon(screenshot(bare_display, shot)) is None

    def status_tray() -> object:
        status = read_status(where)
        return status and status.get("tray")

    def waiting() -> bool:
        return status_tray() == "waiting for a system tray"

    def one_icon() -> None:
        # One icon, not one more per panel restart: GTK re-docks a status icon that a
        # cleanly stopped tray gave back (late when the new panel is slow to start),
        # beside the one devmeter made to replace it. Give a late one time to dock.
        time.sleep(3)
        assert icons_named(bare_display, "^devmeter ") == 1, log.read_text()

    panels: list[subprocess.Popen[bytes]] = []
    with bus as bus_env:
        app = start_app(bare_display, log, python=python, env_extra=bus_env)
        try:
            # Started before any tray host: it runs the proxy and waits, quietly.
            eventually("the proxy to start", where.proxy_state.exists, app, log)
            eventually("waiting said", waiting, app, log)
            assert (read_status(where) or {}).get("tray_backend") == backend
            assert icon_gone(), "an icon showed with no tray host"

            for kill_with in (signal.SIGTERM, signal.SIGKILL):  # stopped, then crashed
                panels.append(start_tint2(bare_display))
                eventually("the icon to appear in the tray", icon_shown, app, log)
                assert status_tray() == "docked"
                one_icon()
                stop(panels[-1], kill_with)
                eventually("the icon to leave with the tray", icon_gone, app, log)
                eventually("waiting said", waiting, app, log)
            panels.append(start_tint2(bare_display))
            eventually("the icon to come back", icon_shown, app, log)
            assert where.proxy_state.exists(), "the proxy stopped on the way"
            one_icon()
        finally:
            code = stop_app(app, log)
            for panel in panels:
                if panel.poll() is None:
                    stop(panel, signal.SIGTERM)
    text = log.read_text()
    assert code == 0, text
    assert not where.proxy_state.exists(), "the proxy outlived the tray"
    assert read_status(where) is None
    # GTK's own Gdk-WARNING / Gdk-CRITICAL lines about a killed tray's windows are its
    # business; devmeter's are not allowed.
    for noise in ("Traceback", "Failed to dock", "X protocol error", "AssertionError"):
        assert noise not in text, text
    assert text.count("no system tray to show the icon in yet") == 1, text
    # Started before any tray: the first dock is not "back"; the two after a panel left are.
    assert text.count("the icon is in the system tray now") == 1, text
    assert text.count("the icon is back in the system tray") == 2, text
    assert text.count("the system tray went away") == 2, text


def icons_named(display: str, pattern: str) -> int:
    """How many mapped windows (a docked icon is one) have a title matching `pattern`."""
    found = subprocess.run(
        [need("xdotool"), "search", "--onlyvisible", "--name", pattern],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
    )
    return len(found.stdout.split())


def window_titled(display: str, pattern: str) -> bool:
    found = subprocess.run(
        [need("xdotool"), "search", "--name", pattern],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
    )
    return found.returncode == 0 and bool(found.stdout.strip())


def test_a_taken_port_is_shown_in_the_tooltip_and_waited_for(bare_display, tmp_path):
    where = paths()
    where.data_dir.mkdir(parents=True, exist_ok=True)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    log = tmp_path / "tray.log"
    app = start_app(bare_display, log, "--listen", f"127.0.0.1:{port}")
    try:
        # The icon's title (its tooltip) names the port and who holds it.
        eventually(
            "the tooltip to name the port",
            lambda: window_titled(bare_display, f"port {port} taken by .*pid {os.getpid()}"),
            app,
            log,
        )
        status = read_status(where)
        assert status is not None and status["state"] == "port_taken", status
        assert status["port_holder"]["pid"] == os.getpid()
        assert status["listen"] == f"127.0.0.1:{port}"
        assert not where.proxy_state.exists()
        # The port comes free: the proxy starts on it, by itself.
        holder.close()
        eventually("the proxy to start", where.proxy_state.exists, app, log)
        eventually(
            "the tooltip to stop saying so",
            lambda: not window_titled(bare_display, "taken by"),
            app,
            log,
        )
    finally:
        holder.close()
        code = stop_app(app, log)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert text.count(f"port {port} on 127.0.0.1 is taken by") == 1, text
    assert "`devmeter --listen 127.0.0.1:PORT`" in text


def test_when_the_display_goes_away_the_proxy_stays_up_headless(x_server, tmp_path):
    where = paths()
    where.data_dir.mkdir(parents=True, exist_ok=True)
    where.config_file.write_text('[proxy]\nlisten = "127.0.0.1:0"\n')
    log = tmp_path / "tray.log"
    app = start_app(x_server.display, log)
    try:
        eventually("the proxy to start", where.proxy_state.exists, app, log)
        x_server.proc.kill()  # the X server dies: a session ending, a crash
        eventually(
            "headless, with a proxy",
            lambda: (
                (read_status(where) or {}).get("mode") == "headless"
                and (read_status(where) or {}).get("state") == "running"
            ),
            app,
            log,
        )
        time.sleep(1)
        assert app.poll() is None, log.read_text()
    finally:
        code = stop_app(app, log)
    text = log.read_text()
    assert code == 0, text
    assert "running headless" in text
    assert "Traceback" not in text, text
