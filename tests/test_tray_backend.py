"""Which tray backend devmeter picks, and that library warnings stay out of the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devmeter.tray.app import choose_backend
from tests.test_tray_stays import bare_display, gtk_python, x_server  # noqa: F401  (fixtures)


@pytest.mark.parametrize(
    ("environ", "platform", "gtk", "chosen"),
    [
        ({}, "linux", True, "gtk"),
        ({}, "linux", False, "xorg"),
        ({}, "freebsd14", False, "xorg"),
        ({"PYSTRAY_BACKEND": "appindicator"}, "linux", True, None),  # the user's choice
        ({}, "darwin", True, None),
        ({}, "win32", False, None),
    ],
)
def test_gtk_when_pygobject_imports_else_xorg(environ, platform, gtk, chosen):
    assert choose_backend(environ, platform, lambda: gtk) == chosen


LOAD = """
from devmeter.tray.app import load_backend
problem = load_backend()
import pystray
print(problem, pystray.Icon.__module__)
"""


def load_with(python: str, display: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPLAY": display, "PYSTRAY_BACKEND": backend, "NO_AT_BRIDGE": "1"}
    return subprocess.run(
        [python, "-c", LOAD], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X backends")
def test_a_backend_that_fails_to_load_falls_back_instead_of_going_headless(bare_display):  # noqa: F811
    result = load_with(sys.executable, bare_display, "appindicator")  # no PyGObject here
    assert result.stdout.strip() == "None pystray._xorg", result.stderr
    assert "devmeter: PYSTRAY_BACKEND=appindicator did not load" in result.stderr
    # What it lost (the menu) and what brings it back, not only the library's error.
    assert "; using xorg: the icon without a menu" in result.stderr, result.stderr
    assert "PyGObject with GTK 3" in result.stderr and "python3-gi" in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X backends")
def test_the_readme_recipe_without_ayatana_gets_gtk(bare_display, gtk_python):  # noqa: F811
    """PyGObject and GTK 3 but no AyatanaAppIndicator3 typelib: pystray's own order failed
    the import ("Namespace AyatanaAppIndicator3 not available") and the tray ran headless."""
    result = load_with(gtk_python, bare_display, "")
    assert result.stdout.strip() == "None pystray._gtk", result.stderr
    asked = load_with(gtk_python, bare_display, "appindicator")
    if "_appindicator" not in asked.stdout:  # the typelib is not installed here
        assert asked.stdout.strip() == "None pystray._gtk", asked.stderr
        assert "using gtk" in asked.stderr


WARN = """
import sys, warnings
from pathlib import Path
from devmeter.warnlog import route_warnings
route_warnings(Path(sys.argv[1]))
warnings.warn("The Python dbus package is not installed.", UserWarning)
print("live line")
"""


def test_library_warnings_go_to_the_log_not_the_terminal(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", WARN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == "live line\n"
    assert result.stderr == ""
    log = tmp_path / "devmeter.log"
    assert "UserWarning: The Python dbus package is not installed." in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600
