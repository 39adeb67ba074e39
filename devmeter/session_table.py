"""One session model: which session a call belongs to, and one bounded table of sessions
that budgets, runaway detection and routing share.

Each of the three keeps its own per-session state, but as a part of one entry here, so a
session is created, kept and forgotten once, for all three: no session is capped by the
budgets but unknown to routing, and a proxy that runs for months holds at most
`max_sessions` entries however many sessions it meets.

An entry also holds the session's spend (`spent_usd`), counted once per call by the guard
and seeded from the ledger after a restart; routing's spend rules read it.

Forgetting:
- past `max_sessions`, the least recently seen entry goes, with all its parts: this is
  what bounds the memory, whatever the traffic;
- an entry silent for `idle_seconds` loses the parts that describe a stretch of activity
  (runaway's windows, routing's cache state): that stretch has ended. The entry itself
  goes too unless it holds what a session keeps for good: its spend, or a `durable` part
  (the budgets' session spend). A session cap must not lift, nor a spend rule forget,
  because the session paused overnight.

Pure and small: no I/O. One lock guards the entries' creation and eviction; the owners
mutate their own parts under their own locks, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from devmeter.usage import Attribution

T = TypeVar("T")

# Parts that keep an idle entry: the budgets' session spend (the session scope counts for
# ever, see budget.BudgetTracker.period).
BUDGET_PART = "budget"
RUNAWAY_PART = "runaway"
ROUTING_PART = "routing"
DEFAULT_MAX_SESSIONS = 4096
DEFAULT_IDLE_SECONDS = 120 * 60.0  # runaway's idle_evict_minutes default
# An idle sweep walks the entries that are silent: at most once a minute, not every call.
_SWEEP_EVERY = 60.0
_NO_SPEND = Decimal(0)


def session_key(attribution: Attribution) -> str:
    """The session a call belongs to; without an id, its tool and repo stand in."""
    if attribution.session:
        return attribution.session
    return f"{attribution.tool}@{attribution.repo or '?'}"


@dataclass
class SessionEntry:
    key: str
    last_ts: float
    # What the session's priced calls cost; None until one was priced (or seeded).
    spent_usd: Decimal | None = None
    parts: dict[str, Any] = field(default_factory=dict)  # owner name -> its state


class SessionTable:
    """Sessions by `session_key`, least recently seen first, bounded and idle-evicted."""

    def __init__(
        self,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        durable: frozenset[str] = frozenset({BUDGET_PART}),
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.durable = durable
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.RLock()
        self._swept_at = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> SessionEntry | None:
        """The entry, if the table holds it; does not count as seeing the session."""
        return self._entries.get(key)

    def part(self, key: str, owner: str) -> Any:
        """An owner's part of a session, or None (without touching the entry)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.parts.get(owner)

    def touch(self, key: str, now: float) -> SessionEntry:
        """The session's entry, made most recent (created if new): a call of it was seen
        at `now`. Evicts idle entries (at most once a minute) and any beyond the bound."""
        with self._lock:
            return self._touch(key, now)

    def _touch(self, key: str, now: float) -> SessionEntry:
        # `touch` under the lock held: budgets, runaway and routing each touch a call's
        # session, so this runs several times a call.
        if now - self._swept_at >= _SWEEP_EVERY:
            self._sweep(now)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = SessionEntry(key, now)
            while len(entries) > self.max_sessions:
                entries.popitem(last=False)
        else:
            last = entry.last_ts
            if now - last > self.idle_seconds:
                self._expire_windows(entry)  # a held entry back from a long silence
            if now > last:
                entry.last_ts = now
            entries.move_to_end(key)
        return entry

    def own(self, key: str, owner: str, make: Callable[[], T], now: float) -> T:
        """The owner's part of the session seen at `now`, made with `make()` if absent."""
        with self._lock:
            parts = self._touch(key, now).parts
            state = parts.get(owner)
            if state is None:
                state = parts[owner] = make()
            return state  # type: ignore[no-any-return]

    def add_spend(self, key: str, cost: Decimal, now: float) -> SessionEntry:
        """Count a priced call's cost in its session (the guard, once per call)."""
        with self._lock:
            entry = self._touch(key, now)
            spent = entry.spent_usd
            entry.spent_usd = (_NO_SPEND if spent is None else spent) + cost
            return entry

    def seed_spend(self, spend_by_key: Mapping[str, Decimal], now: float) -> None:
        """Each session's spend from the ledger, after a restart: what it spent so far
        replaces what the table counted (nothing, in a fresh proxy)."""
        with self._lock:
            for key, spend in spend_by_key.items():
                self.touch(key, now).spent_usd = spend

    def spent(self, key: str) -> Decimal | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.spent_usd

    def evict_idle(self, now: float) -> None:
        """Forget the sessions silent for `idle_seconds` now, not at the next minute."""
        with self._lock:
            self._swept_at = float("-inf")
            self._sweep(now)

    def by_recency(self) -> list[str]:
        """Least recently seen first."""
        return list(self._entries)

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < _SWEEP_EVERY:
            return
        self._swept_at = now
        cutoff = now - self.idle_seconds
        idle = []
        for entry in self._entries.values():  # least recent first: stop at the first live
            if entry.last_ts >= cutoff:
                break
            idle.append(entry)
        for entry in idle:
            if entry.spent_usd is None and self.durable.isdisjoint(entry.parts):
                del self._entries[entry.key]
            else:
                self._expire_windows(entry)

    def _expire_windows(self, entry: SessionEntry) -> None:
        for owner in [name for name in entry.parts if name not in self.durable]:
            del entry.parts[owner]
