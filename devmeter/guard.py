"""Guard rails for the proxy: budgets, runaway detection and the user's controls together.

`check` runs before a request is forwarded (cheap: dictionary look-ups); `observe`
runs when a call is recorded and returns the alerts it raised, which the caller
writes to the ledger and hands to the notifier. No mitmproxy here.
"""

from __future__ import annotations

import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from devmeter import control as control_state
from devmeter.budget import Alert, Block, Budgets, BudgetTracker
from devmeter.ledger import from_pusd
from devmeter.runaway import RunawayConfig, RunawayDetector, is_human_turn, request_fingerprint
from devmeter.usage import Attribution, Call

# Claude Code's side requests (titles, summaries, classifiers) are not human turns even
# when their last message is user text; only its main loop says whether a human spoke.
MAIN_REQUEST_CLASSES = ("main", None)


class Guard:
    def __init__(
        self,
        budgets: Budgets,
        runaway: RunawayConfig,
        config_path: str = "your devmeter config",
    ) -> None:
        self.budgets = BudgetTracker(budgets, config_path=config_path)
        self.runaway = RunawayDetector(runaway)
        self._lock = threading.Lock()

    def check(self, attribution: Attribution, now: float) -> Block | None:
        with self._lock:
            return self.budgets.check(attribution, now)

    def observe(self, call: Call, fingerprint: str | None, human_turn: bool | None) -> list[Alert]:
        with self._lock:
            alerts = self.budgets.observe(call)
            alerts += self.runaway.observe(call, fingerprint=fingerprint, human_turn=human_turn)
        return alerts

    def apply(self, control: control_state.Control) -> None:
        with self._lock:
            if control.paused:
                self.budgets.pause()
            else:
                self.budgets.resume()
            for scope, key, when in control.allowed:
                self.budgets.allow(scope, key, when)

    def seed_from_ledger(self, conn: sqlite3.Connection, now: float) -> None:
        """Start from what the ledger already holds, so a restart neither forgets a
        cap that was reached nor repeats a threshold already announced."""
        with self._lock:
            self.budgets.seed(spend_so_far(conn, self.budgets, now), now)


def spend_so_far(
    conn: sqlite3.Connection, tracker: BudgetTracker, now: float
) -> dict[tuple[str, str], Decimal]:
    day_start = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    repo_start = day_start if tracker.budgets.repo.period == "day" else month_start
    totals: dict[tuple[str, str], Decimal] = {}

    def add(scope: str, sql: str, params: tuple[Any, ...]) -> None:
        for key, pusd in conn.execute(sql, params):
            if key is not None and pusd:
                totals[(scope, str(key))] = from_pusd(pusd) or Decimal(0)

    add(
        "session",
        "SELECT session, sum(cost_pusd) FROM calls WHERE session IN "
        "(SELECT DISTINCT session FROM calls WHERE ts >= ?) GROUP BY session",
        (now - 7 * 86400,),
    )
    add("repo", "SELECT repo, sum(cost_pusd) FROM calls WHERE ts >= ? GROUP BY repo",
        (repo_start.timestamp(),))  # fmt: skip
    totals[("day", tracker.period("day", now))] = _total(conn, day_start.timestamp())
    totals[("month", tracker.period("month", now))] = _total(conn, month_start.timestamp())
    return totals


def _total(conn: sqlite3.Connection, since: float) -> Decimal:
    (pusd,) = conn.execute("SELECT sum(cost_pusd) FROM calls WHERE ts >= ?", (since,)).fetchone()
    return from_pusd(pusd or 0) or Decimal(0)


def request_signals(
    body: Mapping[str, Any] | None, request_class: str | None
) -> tuple[str | None, bool | None]:
    """The loop fingerprint and whether a human spoke, from a parsed request body."""
    if type(body) is not dict and not isinstance(body, Mapping):  # the ABC check is slow
        return None, None
    fingerprint = request_fingerprint(body)
    human = is_human_turn(body) if request_class in MAIN_REQUEST_CLASSES else None
    return fingerprint, human


class AlertDispatcher:
    """Delivers alerts off the request path: one thread, a queue, the notifier's rules."""

    def __init__(self, notify: Callable[[Alert], object], flush: Callable[[], object]) -> None:
        self._notify = notify
        self._flush = flush
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="devmeter-notify", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        self._queue.put(alert)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                alert = self._queue.get(timeout=5)
            except queue.Empty:
                self._safely(self._flush)  # held alerts go out as one summary
                continue
            if alert is None:
                return
            self._safely(lambda a=alert: self._notify(a))

    @staticmethod
    def _safely(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # a notification problem must not stop the next one
            print(f"devmeter: notification failed: {exc!r}", file=sys.stderr, flush=True)


def print_alert(alert: Alert) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(alert.ts))
    print(f"devmeter [{stamp}] {alert.kind}: {alert.message}", file=sys.stderr, flush=True)
