"""Library warnings go to a log file, not the terminal.

plyer, for one, warns with a UserWarning when python-dbus is missing, every time it is
first asked to notify; printed, that lands in the headless live line and the journal as
noise a user can do nothing about. The tray, the headless line and the proxy send them to
`devmeter.log` in the data directory instead (created 0600, appended to).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TextIO

LOG_NAME = "devmeter.log"


def route_warnings(data_dir: Path) -> Path:
    """From now on, warnings in this process are appended to data_dir/devmeter.log."""
    path = data_dir / LOG_NAME

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as log:
                log.write(f"{stamp} pid {os.getpid()} {text}")
        except OSError:
            pass  # a warning is never worth failing for

    warnings.showwarning = show
    return path
