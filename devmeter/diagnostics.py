"""Telling the user something went wrong, in a way that can never itself go wrong.

The ledger's writer reports a full disk on stderr, and stderr is often a file on that
same disk (`nohup`, `2>>log`, a LaunchAgent's log): the report then fails with ENOSPC.
A report that raises would stop the code that was reporting, so nothing here raises.
"""

from __future__ import annotations

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
