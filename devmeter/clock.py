"""Calendar boundaries in the machine's local time: where a day and a month start, as
budgets, reports, the tray and the dashboard all count them.

Base layer: imports nothing of the project.
"""

from __future__ import annotations

from datetime import datetime


def local_midnight(now: float) -> float:
    """Local midnight before `now` (a Unix time): the start of today."""
    return _midnight(now).timestamp()


def local_month_start(now: float) -> float:
    """Local midnight on the first of `now`'s month."""
    return _midnight(now).replace(day=1).timestamp()


def _midnight(now: float) -> datetime:
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
