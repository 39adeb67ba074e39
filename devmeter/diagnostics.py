"""Telling the user something went wrong, in a way that can never itself go wrong.

The ledger's writer reports a full disk on stderr, and stderr is often a file on that
same disk (`nohup`, `2>>log`, a LaunchAgent's log): the report then fails with ENOSPC.
A report that raises would stop the code that was reporting, so nothing here raises.

Modules log (`logging.getLogger(__name__)`); the entry points call `log_to_stderr`
once, which writes each record through `say`.
"""

from __future__ import annotations

import logging
import sys


def say(message: str) -> bool:
    """Write one line to stderr; False (and nothing raised) if stderr cannot take it."""
    try:
        stream = sys.stderr
        if stream is None:  # pythonw, a detached process
            return False
        stream.write(message + "\n")
        stream.flush()
    except Exception:  # a full or closed stderr must never stop the caller
        return False
    return True


class StderrLineHandler(logging.Handler):
    """devmeter's log records as the one-line messages users have always seen on stderr
    (the message alone, which starts "devmeter: "), written through `say`, so a full or
    closed stderr never raises into the code that logged."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad format string must not break the caller either
            return
        say(line)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send the `devmeter` loggers' records to stderr. Called once by each entry point
    (the CLI, the proxy, the tray); calling it again changes nothing."""
    logger = logging.getLogger("devmeter")
    if not any(isinstance(h, StderrLineHandler) for h in logger.handlers):
        handler = StderrLineHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
