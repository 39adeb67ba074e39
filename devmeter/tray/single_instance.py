"""One `devmeter` (tray or headless) per data directory.

A second one (started by hand while the login entry's runs, or by both an XDG autostart
entry and a systemd unit) would put a second icon in the panel, overwrite the first's
`supervisor.json` and remove it on quitting, so `devmeter doctor` would lose the first.
So the first holds an OS lock on `tray.lock` in the data directory for its whole life
(released by the OS when it exits, however it exits: no stale lock after a crash), and a
second one says which process runs and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any


def lock_path(data_dir: Path) -> Path:
    return data_dir / "tray.lock"


def hold(data_dir: Path) -> tuple[bool, IO[bytes] | None]:
    """Take the lock for this process's life: (True, the open lock file: keep a reference
    to it), or (False, None) when another devmeter holds it. A lock file that cannot be
    made (a read-only data directory) gives (True, None): running twice is a lesser harm
    than not metering at all."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = lock_path(data_dir).open("a+b")
    except OSError:
        return True, None
    try:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False, None
    return True, handle


def already_running_message(status: dict[str, Any] | None) -> str:
    """What a second `devmeter` says, from the first one's supervisor.json (if readable)."""
    if status is None:  # the first is still starting: it has not written its status yet
        return (
            "devmeter: already running (it is starting up); nothing to do. "
            "`devmeter doctor` shows its state."
        )
    pid = status.get("pid")
    mode = status.get("mode")
    what = "the tray icon" if mode == "tray" else "a headless status line"
    detail = status.get("detail")
    state = f", {detail}" if isinstance(detail, str) and detail else ""
    quit_how = "Quit in its menu, or " if mode == "tray" else ""
    kill = f"`kill {pid}`" if sys.platform != "win32" else f"`taskkill /PID {pid}`"
    return (
        f"devmeter: already running (pid {pid}, {what}{state}); nothing to do. "
        f"To restart it: {quit_how}{kill}, then run `devmeter` again."
    )
