"""Quota windows over time: the latest snapshot, pace and share (pure).

A `Snapshot` is one window of one account as an answer reported it. The ledger keeps the
latest per (provider, account, window) and, whenever a window's utilization moves, a
reading (devmeter/ledger.py), from which:

- **pace** projects when the window fills at the rate it rose since it last reset;
- **share** splits each rise of a window among the sessions and repos whose calls came
  between the two readings, by their list-price cost. It is an estimate: a provider
  counts usage its own way, and calls made elsewhere with the same account (another
  machine, the web app) rise the window too without a call here to pin it on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

# Two readings whose reset times differ by more than this are in different windows (a
# rolling window's reset time drifts by a second or so between answers).
SAME_WINDOW_SECONDS = 120.0


@dataclass(frozen=True)
class Snapshot:
    ts: float
    provider: str
    account: str
    window: str
    utilization: float | None
    resets_at: float | None
    status: str | None
    session: str | None = None
    repo: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.account, self.window)

    def as_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "account": self.account,
            "window": self.window,
            "utilization": self.utilization,
            "resets_at": iso(self.resets_at),
            "status": self.status,
            "seen_at": iso(self.ts),
        }


@dataclass(frozen=True)
class Pace:
    rate_per_hour: float  # utilization (0..1) gained per hour
    full_at: float | None  # when it reaches 1 at that rate; None when not rising
    before_reset: bool  # it fills before the window resets


@dataclass(frozen=True)
class SpentCall:
    """A call's part in a share: when, whose, what it cost at list price."""

    ts: float
    account: str
    session: str | None
    repo: str | None
    cost_usd: Decimal


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def same_window(a: Snapshot, b: Snapshot) -> bool:
    if a.resets_at is None or b.resets_at is None:
        return True
    return abs(a.resets_at - b.resets_at) <= SAME_WINDOW_SECONDS


def pace(readings: Sequence[Snapshot]) -> Pace | None:
    """The pace of the current window, from its readings oldest first (one key)."""
    current = _current_window(readings)
    if len(current) < 2:
        return None
    first, last = current[0], current[-1]
    if first.utilization is None or last.utilization is None or last.ts <= first.ts:
        return None
    rate = (last.utilization - first.utilization) / (last.ts - first.ts)
    if rate <= 0:
        return Pace(0.0, None, False)
    full_at = last.ts + max(1.0 - last.utilization, 0.0) / rate
    before = last.resets_at is not None and full_at < last.resets_at
    return Pace(rate * 3600, full_at, before)


def _current_window(readings: Sequence[Snapshot]) -> list[Snapshot]:
    usable = [r for r in readings if r.utilization is not None]
    current: list[Snapshot] = []
    for reading in usable:
        if current and (
            not same_window(current[-1], reading) or reading.utilization < current[-1].utilization  # type: ignore[operator]
        ):
            current = []  # the window reset
        current.append(reading)
    return current


def share(
    readings: Sequence[Snapshot], calls: Iterable[SpentCall], by: str = "session"
) -> dict[str | None, float]:
    """How much of one window's rise (utilization points, 0..1) each session or repo
    (`by`) caused, estimated: each rise between two consecutive readings is split among
    the calls with that account in between (after the first, up to the second), by cost,
    or evenly when none was priced. A rise with no call to pin it on goes to None."""
    ordered = sorted(calls, key=lambda c: c.ts)
    totals: dict[str | None, float] = defaultdict(float)
    for before, after in zip(readings, readings[1:], strict=False):
        if after.utilization is None:
            continue
        reset = not same_window(before, after) or (
            before.utilization is not None and after.utilization < before.utilization
        )
        start = 0.0 if reset or before.utilization is None else before.utilization
        rise = after.utilization - start
        if rise <= 0:
            continue
        between = [
            c for c in ordered if c.account == after.account and before.ts < c.ts <= after.ts
        ]
        if not between:
            totals[None] += rise
            continue
        weights = [float(c.cost_usd) for c in between]
        if sum(weights) <= 0:
            weights = [1.0] * len(between)
        whole = sum(weights)
        for call, weight in zip(between, weights, strict=True):
            totals[call.session if by == "session" else call.repo] += rise * weight / whole
    return dict(totals)


def tightest(snapshots: Iterable[Snapshot], now: float) -> Snapshot | None:
    """The window closest to full among those not yet reset."""
    live = [
        s
        for s in snapshots
        if s.utilization is not None and (s.resets_at is None or s.resets_at > now)
    ]
    return max(live, key=lambda s: s.utilization or 0.0, default=None)


# `[quota] thresholds` when the config says none: the alert levels, and the tray's amber
# and red.
DEFAULT_THRESHOLDS = (0.8, 0.95)
# What the tray's colour says about the tightest window.
QuotaLevel = Literal["ok", "warning", "critical"]


def quota_level(utilization: float | None, thresholds: Sequence[float]) -> QuotaLevel:
    """`warning` (amber) from the lowest alert level, `critical` (red) from the highest;
    with a single level, amber from it and red once the window is full."""
    if utilization is None or not thresholds:
        return "ok"
    levels = sorted(thresholds)
    top = levels[-1] if len(levels) > 1 else 1.0
    if utilization >= top:
        return "critical"
    return "warning" if utilization >= levels[0] else "ok"


def tray_line(snapshot: Snapshot, local: bool = True) -> str:
    """ "5h 62% · resets 14:10" (local time)."""
    util = round((snapshot.utilization or 0.0) * 100)
    if snapshot.resets_at is None:
        return f"{snapshot.window} {util}%"
    when = datetime.fromtimestamp(snapshot.resets_at, None if local else UTC)
    return f"{snapshot.window} {util}% · resets {when:%H:%M}"
