"""What makes a session live: a metered call that ended in the last ten minutes. One
definition for `devmeter sessions --live`, the tray's menu and the exported gauge."""

from __future__ import annotations

# A session with a call this recent is live.
LIVE_SECONDS = 10 * 60.0
# Calls that ended in a window started at most this long before it: the bound keeps a
# live query on the ledger's `ts` index (the tray asks twice a second, scrapes every few).
LONGEST_CALL_SECONDS = 3600.0
# Calls that ended at or after a moment. Parameters: ended_since_bounds(moment).
ENDED_SINCE = "ts >= ? AND ts + duration_ms / 1000.0 >= ?"
# The calls that make a session live: metered ones that ended in the window. Imported
# history is no live traffic: devmeter cannot stop or allow what did not go through it.
# Parameters: live_call_bounds(now).
LIVE_CALLS = f"{ENDED_SINCE} AND endpoint NOT LIKE '%.import'"


def ended_since_bounds(moment: float) -> tuple[float, float]:
    """The two parameters of ENDED_SINCE for calls that ended at or after `moment`."""
    return moment - LONGEST_CALL_SECONDS, moment


def live_call_bounds(now: float) -> tuple[float, float]:
    """The two parameters of LIVE_CALLS at `now`."""
    return ended_since_bounds(now - LIVE_SECONDS)
