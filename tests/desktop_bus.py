"""A private D-Bus session bus for desktop tests, with nothing activatable on it.

The system's session config lets a call to org.freedesktop.Notifications start the
daemon named in /usr/share/dbus-1/services (Debian's dunst, with its default config).
A test that polls for its own dunst before that dunst owns the name would start a
second one, which can win the name: its popups then have no test chooser, and
Continue is never clicked (CI failed so). With no service directories, a call before
the test's daemon is up fails instead, and the poll simply waits.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir={tmp}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def launch_session_bus(dbus_launch: str, env: dict[str, str], tmp: Path) -> tuple[str, int]:
    """Start a session bus with no activatable services: (its address, its pid)."""
    config = tmp / "session-bus.conf"
    config.write_text(SESSION_CONFIG.format(tmp="/tmp"))
    launched = subprocess.run(
        [dbus_launch, "--sh-syntax", f"--config-file={config}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    address = re.search(r"DBUS_SESSION_BUS_ADDRESS='([^']+)'", launched)
    pid = re.search(r"DBUS_SESSION_BUS_PID=(\d+)", launched)
    assert address and pid, launched
    return address.group(1), int(pid.group(1))
