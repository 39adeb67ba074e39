"""Start devmeter at login: the packaging/ files, written for this install's paths.

packaging/ holds one template per way of starting at login; `render` fills in the path of
this install's `devmeter` (and the home folder, which launchd cannot expand), and `plan`
picks the way for this machine. Installing and removing them is `steps`' job.

Linux: a systemd user unit where a systemd user manager runs (it restarts a crash),
else an XDG autostart entry (the desktop starts it at login), else nothing: a machine with
neither (a container, WSL without systemd, a bare server) has nothing that would read one.
macOS: a launchd agent. Windows: a shortcut in the Startup folder, made by
packaging/windows/install-startup.ps1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def packaging_dir() -> Path:
    """packaging/ in a checkout, or its copy inside the installed package (see pyproject)."""
    here = Path(__file__).resolve().parent.parent  # devmeter/
    for candidate in (here / "packaging", here.parent / "packaging"):
        if (candidate / "linux").is_dir():
            return candidate
    raise FileNotFoundError(f"devmeter's packaging files are missing (looked beside {here})")


def app_icon() -> Path | None:
    """devmeter's own icon (assets/devmeter.png), in a checkout or the installed package."""
    here = Path(__file__).resolve().parent.parent  # devmeter/
    for candidate in (here / "assets", here.parent / "assets"):
        if (candidate / "devmeter.png").is_file():
            return candidate / "devmeter.png"
    return None


@dataclass(frozen=True)
class Autostart:
    kind: str  # "systemd" | "xdg" | "launchd" | "windows-startup" | "none"
    template: str  # path under packaging/
    target: Path  # where the rendered file goes (Windows: the shortcut the script makes)
    unit: str | None = None  # the systemd unit or launchd label to enable / remove


def plan(
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    home: Path | None = None,
    systemd_user: bool | None = None,
    desktop: bool | None = None,
) -> Autostart:
    env = os.environ if environ is None else environ
    home = home or Path.home()
    if platform == "darwin":
        label = "dev.devmeter.tray"
        return Autostart(
            "launchd",
            "macos/dev.devmeter.tray.plist",
            home / "Library" / "LaunchAgents" / f"{label}.plist",
            label,
        )
    if platform.startswith("win"):
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        startup = appdata / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
        return Autostart("windows-startup", "windows/install-startup.ps1", startup / "devmeter.lnk")
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    if systemd_user is None:
        systemd_user = has_systemd_user()
    if systemd_user:
        desktop = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
        name = "devmeter.service" if desktop else "devmeter-headless.service"
        return Autostart("systemd", f"linux/{name}", config_home / "systemd" / "user" / name, name)
    if desktop is None:
        desktop = has_desktop(env)
    if not desktop:
        return Autostart("none", "", config_home / "autostart" / "devmeter.desktop")
    return Autostart(
        "xdg", "linux/devmeter.desktop", config_home / "autostart" / "devmeter.desktop"
    )


NO_AUTOSTART = (
    "this machine has no systemd user manager and no desktop session, so nothing here "
    "would start devmeter at login"
)
# Advice that works without either: the headless mode is the proxy plus a line of spend.
START_BY_HAND = "start it yourself: `devmeter --headless` in a terminal or tmux, or from your init"


def has_desktop(environ: Mapping[str, str], data_dirs: list[Path] | None = None) -> bool:
    """A desktop session that reads XDG autostart entries: this session is one, or the
    machine has a desktop to log in to (setup run over SSH on a desktop machine)."""
    if any(environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_CURRENT_DESKTOP")):
        return True
    if data_dirs is None:
        raw = environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
        data_dirs = [Path(d) for d in raw.split(":") if d]
    for base in data_dirs:
        for kind in ("xsessions", "wayland-sessions"):
            try:
                if any((base / kind).glob("*.desktop")):
                    return True
            except OSError:
                continue
    return False


def has_systemd_user() -> bool:
    """A systemd user manager this session can talk to (not in most containers)."""
    exe = shutil.which("systemctl")
    if exe is None:
        return False
    try:
        done = subprocess.run(
            [exe, "--user", "show-environment"], capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def render(template: str, text: str, devmeter: Path, home: Path, icon: Path | None = None) -> str:
    """The template with this install's `devmeter` (and home folder, and icon) written in."""
    exe = str(devmeter)
    if template.endswith(".desktop"):
        # The Exec key takes a quoted path: quote always, escaping what the spec says to.
        quoted = '"' + re.sub(r'(["`$\\])', r"\\\1", exe) + '"'
        text = re.sub(r"(?m)^Exec=devmeter\b", lambda _: f"Exec={quoted}", text)
        if icon is not None:  # an absolute path is a valid Icon value: no theme needed
            text = re.sub(r"(?m)^Icon=.*$", lambda _: f"Icon={icon}", text)
        return text
    if template.endswith(".service"):
        # systemd takes a path quoted with "" (and expands % specifiers: escape them).
        quoted = '"' + exe.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'
        return re.sub(
            r"(?m)^ExecStart=%h/\.local/bin/devmeter\b", lambda _: f"ExecStart={quoted}", text
        )
    if template.endswith(".plist"):
        return text.replace("@DEVMETER_BIN@", _xml(exe)).replace("@HOME_DIR@", _xml(str(home)))
    return text


def _xml(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
