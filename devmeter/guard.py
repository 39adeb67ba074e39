"""Guard rails for the proxy: budgets, runaway detection and the user's controls together.

`check` runs before a request is forwarded (cheap: dictionary look-ups) and returns a
`Verdict`; `settle` hands back what an admitted call reserved once it ends; `observe`
runs when a call is recorded and returns the alerts it raised, which the caller
writes to the ledger and hands to the notifier. No mitmproxy here.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from devmeter import control as control_state
from devmeter import diagnostics, pricing
from devmeter.alerts import Alert, Block
from devmeter.budget import MENU_ENV, SCOPES, Advice, Budgets, BudgetTracker, ScopeBudget
from devmeter.clock import local_midnight, local_month_start
from devmeter.money import ZERO, from_pusd
from devmeter.pricing import PriceOverride
from devmeter.runaway import (
    PROCESS_KEY,
    RunawayConfig,
    RunawayDetector,
    conversation,
    fingerprint_of,
    human_turn_of,
)
from devmeter.session_table import SessionTable, session_key
from devmeter.usage import Attribution, Call, RequestInfo, Usage

# What `Guard.check` decides for a request. "ask" (hold the request and ask the user
# whether to spend more) is the seam for the ask thresholds: a new outcome beside these.
Outcome = Literal["allow", "refuse"]


@dataclass(frozen=True)
class Verdict:
    """The guard's answer before a request is forwarded."""

    outcome: Outcome
    # Why it is refused (its message is the client's error), for "refuse".
    block: Block | None = None
    # For "allow": what the call reserved against its caps; `Guard.settle` hands it back.
    reservation: int | None = None
    # Alerts the decision raised (a cap's first refusal after a restart): the caller
    # records and shows them like those `observe` returns.
    alerts: tuple[Alert, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


ALLOW = Verdict("allow")

# Claude Code's side requests (titles, summaries, classifiers) are not human turns even
# when their last message is user text; only its main loop says whether a human spoke.
MAIN_REQUEST_CLASSES = ("main", None)


class Guard:
    def __init__(
        self,
        budgets: Budgets,
        runaway: RunawayConfig,
        config_path: str = "your devmeter config",
        advice: Advice | None = None,
        fingerprint_key: bytes | None = None,
        sessions: SessionTable | None = None,
    ) -> None:
        """`sessions`: the session table to share with the router (one of its own if None).
        The guard counts each session's spend in it, once per call, for the router to read."""
        self.advice = advice or Advice(menu=os.environ.get(MENU_ENV) == "1")
        # The data folder's loop key (paths.read_loop_key), so fingerprints in the ledger
        # match the ones a restarted proxy computes; a per-process one without it.
        self.fingerprint_key = fingerprint_key or PROCESS_KEY
        self.sessions = sessions if sessions is not None else SessionTable()
        self.budgets = BudgetTracker(
            budgets, config_path=config_path, advice=self.advice, sessions=self.sessions
        )
        self.runaway = RunawayDetector(runaway, advice=self.advice, sessions=self.sessions)
        self._lock = threading.Lock()

    @property
    def has_caps(self) -> bool:
        """Whether any cap could refuse a request (then requests reserve an estimate)."""
        return self.budgets.has_caps

    @property
    def counts_covered(self) -> bool:
        """Whether any scope counts subscription calls' list-price dollars."""
        return self.budgets.counts_covered

    def check(self, attribution: Attribution, now: float, reserve_usd: Decimal = ZERO) -> Verdict:
        """Allow or refuse a request; an allowed one reserves `reserve_usd` (its estimated
        cost) against its caps until `settle`, so concurrent calls cannot overshoot them."""
        with self._lock:
            block, reservation = self.budgets.admit(attribution, now, reserve_usd)
            if block is None:
                return Verdict("allow", reservation=reservation) if reservation else ALLOW
            alert = self.budgets.refusal_alert(block, attribution, now)
            return Verdict("refuse", block, alerts=(alert,) if alert else ())

    def settle(self, reservation: int | None) -> None:
        """The call an allowed verdict reserved for has ended (or failed): free it."""
        if reservation is None:
            return
        with self._lock:
            self.budgets.settle(reservation)

    def spend_in(
        self, scope: str, attribution: Attribution, now: float
    ) -> tuple[str | None, Decimal]:
        """The key a request counts under in `scope` and that key's spend (for asks)."""
        with self._lock:
            return self.budgets.spend_in(scope, attribution, now)

    def observe(self, call: Call, fingerprint: str | None, human_turn: bool | None) -> list[Alert]:
        key = session_key(call.attribution)  # once, for the table and runaway detection
        with self._lock:
            self.advice.know(call.attribution.session)
            if call.cost_usd is not None:
                self.sessions.add_spend(key, call.cost_usd, call.ts)
            alerts = self.budgets.observe(call)
            alerts += self.runaway.observe(
                call, fingerprint=fingerprint, human_turn=human_turn, key=key
            )
            self.budgets.expire_reservations(call.ts)
        return alerts

    def apply(self, control: control_state.Control, now: float | None = None) -> None:
        with self._lock:
            apply_control(self.budgets, control, time.time() if now is None else now)

    def reconfigure(
        self,
        budgets: Budgets,
        runaway: RunawayConfig,
        seed: Mapping[tuple[str, str], Decimal] | None = None,
        now: float | None = None,
    ) -> None:
        """A reloaded config: new caps, thresholds and runaway settings, all at once.
        Spend counted so far is kept; `seed` fills in scopes only now watched."""
        with self._lock:
            self.budgets.budgets = budgets
            self.runaway.config = runaway
            if seed:
                self.budgets.seed(seed, now)

    def seed_from_ledger(self, conn: sqlite3.Connection, now: float) -> None:
        """Start from what the ledger already holds, so a restart neither forgets a
        cap that was reached nor repeats a threshold or an alert already announced, and
        burn rates and loops go on from the calls just before it."""
        with self._lock:
            self.budgets.seed(spend_so_far(conn, self.budgets, now), now)
            self.budgets.seed_announced(_blocked_alerts(conn, now))
            # Each session's spend so far, which routing's spend rules read.
            self.sessions.seed_spend(spend_by_session_key(conn, now), now)
            for session in _recent_sessions(conn, now):
                self.advice.know(session)
            config = self.runaway.config
            self.runaway.seed(
                recent_calls(conn, now, config),
                recent_alerts(conn, now),
                now,
                recent_prints(conn, now, config),
            )


def apply_control(tracker: BudgetTracker, control: control_state.Control, now: float) -> None:
    """Put the control file's wishes into `tracker`, from scratch: pause, each `allow` in
    the order given (a raise to the limit the CLI chose and wrote, or one step for the
    tray's), and each session stopped and not allowed since."""
    if control.paused:
        tracker.pause()
    else:
        tracker.resume()
    tracker.reset_allowed()
    chosen = {(s, k, when): limit for s, k, limit, when in control.limits}
    for scope, key, when in sorted(control.allowed, key=lambda entry: entry[2]):
        if scope not in SCOPES:
            continue
        if tracker.period(scope, when) != tracker.period(scope, now):
            continue  # lifted for a day or month that is over
        limit = chosen.get((scope, key, when))
        tracker.allow(scope, key, when, None if limit is None else Decimal(str(limit)))
    asked = control_state.stopped_by_ask(control)
    for session, when in control.stopped:
        later = any(s == "session" and k == session and w >= when for s, k, w in control.allowed)
        if not later:
            tracker.stop(session, asked=(session, when) in asked)


def spend_so_far(
    conn: sqlite3.Connection, tracker: BudgetTracker, now: float
) -> dict[tuple[str, str], Decimal]:
    day_start, month_start = local_midnight(now), local_month_start(now)
    repo_start = day_start if tracker.budgets.repo.period == "day" else month_start
    totals: dict[tuple[str, str], Decimal] = {}

    def add(scope: str, sql: str, params: tuple[Any, ...]) -> None:
        for key, pusd in conn.execute(sql, params):
            if key is not None and pusd:
                totals[(scope, str(key))] = from_pusd(pusd) or Decimal(0)

    budgets = tracker.budgets
    add(
        "session",
        f"SELECT session, sum({_counted(budgets.session)}) FROM calls WHERE session IN "
        "(SELECT DISTINCT session FROM calls WHERE ts >= ?) GROUP BY session",
        (now - 7 * 86400,),
    )
    add("repo", f"SELECT repo, sum({_counted(budgets.repo)}) FROM calls WHERE ts >= ? "
        "GROUP BY repo", (repo_start,))  # fmt: skip
    totals[("day", tracker.period("day", now))] = _total(conn, day_start, _counted(budgets.day))
    totals[("month", tracker.period("month", now))] = _total(
        conn, month_start, _counted(budgets.month)
    )
    return totals


def spend_by_session_key(conn: sqlite3.Connection, now: float) -> dict[str, Decimal]:
    """Spend per session key (`session_table.session_key`) for the router to start from: a
    session with an id active in the last 7 days, its whole spend; calls without an id,
    their tool@repo's spend of the last 7 days. What the running proxy counted
    (`Guard.observe`): every call it metered at list price, subscription-covered ones too,
    and never one imported from a tool's history, which it never saw, so a restart
    neither raises nor lowers a session's spend."""
    week = now - 7 * 86400
    counted = "CASE WHEN source = 'import' THEN 0 ELSE cost_pusd END"
    rows = conn.execute(
        f"SELECT session, NULL, NULL, sum({counted}) FROM calls WHERE session IN "
        "(SELECT DISTINCT session FROM calls WHERE ts >= ?) GROUP BY session "
        f"UNION ALL SELECT NULL, tool, repo, sum({counted}) FROM calls "
        "WHERE session IS NULL AND ts >= ? GROUP BY tool, repo",
        (week, week),
    )
    totals: dict[str, Decimal] = {}
    for session, tool, repo, pusd in rows:
        if pusd:
            key = session_key(Attribution(tool=tool, repo=repo, session=session))
            totals[key] = from_pusd(pusd) or ZERO
    return totals


def _counted(budget: ScopeBudget) -> str:
    """The spend a scope counts: subscription calls' only with `count_covered`; never a
    call imported from a tool's history, which the running proxy never saw (one it
    metered is not imported), so a restart counts what the proxy counted before it."""
    if budget.count_covered:
        return "CASE WHEN source = 'import' THEN 0 ELSE cost_pusd END"
    return "CASE WHEN billing = 'subscription' OR source = 'import' THEN 0 ELSE cost_pusd END"


def _blocked_alerts(conn: sqlite3.Connection, now: float) -> list[tuple[str, str, Decimal, float]]:
    """Blocked alerts of the last 31 days: (scope, key, cap, ts)."""
    rows = conn.execute(
        "SELECT scope, key, figure_pusd, ts FROM alerts WHERE kind = 'blocked' AND ts >= ?",
        (now - 31 * 86400,),
    )
    return [(s, k, from_pusd(f) or ZERO, ts) for s, k, f, ts in rows if f is not None]


def _recent_sessions(conn: sqlite3.Connection, now: float) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT session FROM calls WHERE ts >= ? AND session IS NOT NULL",
        (now - 7 * 86400,),
    )
    return [session for (session,) in rows]


def recent_calls(
    conn: sqlite3.Connection, now: float, config: RunawayConfig
) -> list[tuple[str, float, float, Decimal]]:
    """Calls of sessions active within the burn window: (session key, start, end, cost),
    oldest first, with each session's first call (its age), for `RunawayDetector.seed`."""
    since = now - config.window_minutes * 60
    rows = conn.execute(
        "SELECT session, tool, repo, ts, ts + duration_ms / 1000.0, cost_pusd FROM calls "
        "WHERE ts >= ? AND endpoint NOT LIKE '%.import' ORDER BY ts, id",
        (since - 3600,),  # calls that ended inside the window may have started earlier
    )
    calls = []
    for session, tool, repo, start, end, pusd in rows:
        key = session_key(Attribution(tool=tool, repo=repo, session=session))
        calls.append((key, start, end, from_pusd(pusd or 0) or ZERO))
    return calls


def recent_prints(
    conn: sqlite3.Connection, now: float, config: RunawayConfig
) -> list[tuple[str, float, str, Decimal]]:
    """Loop fingerprints of the calls within the loop window: (session key, end,
    fingerprint, cost), oldest first, for `RunawayDetector.seed`."""
    since = now - config.loop_window_minutes * 60
    rows = conn.execute(
        "SELECT session, tool, repo, ts + duration_ms / 1000.0, loop_fingerprint, cost_pusd "
        "FROM calls WHERE ts >= ? AND loop_fingerprint IS NOT NULL ORDER BY ts, id",
        (since - 3600,),  # calls that ended inside the window may have started earlier
    )
    prints = []
    for session, tool, repo, end, fingerprint, pusd in rows:
        if end > since:
            key = session_key(Attribution(tool=tool, repo=repo, session=session))
            prints.append((key, end, str(fingerprint), from_pusd(pusd or 0) or ZERO))
    return prints


def recent_alerts(conn: sqlite3.Connection, now: float) -> list[tuple[str, str, Decimal, float]]:
    """Burn-rate and loop alerts of the last hour: (kind, session key, figure, ts)."""
    rows = conn.execute(
        "SELECT kind, key, figure_pusd, ts FROM alerts "
        "WHERE kind IN ('projection', 'loop') AND scope = 'session' AND ts >= ?",
        (now - 3600,),
    )
    return [(kind, key, from_pusd(f or 0) or ZERO, ts) for kind, key, f, ts in rows]


def _total(conn: sqlite3.Connection, since: float, counted: str = "cost_pusd") -> Decimal:
    (pusd,) = conn.execute(f"SELECT sum({counted}) FROM calls WHERE ts >= ?", (since,)).fetchone()
    return from_pusd(pusd or 0) or Decimal(0)


# Output tokens a request is assumed to produce when it does not say (no max_tokens), and
# at most: a reservation is a guess at the call's cost, not its worst case, or a session
# near its cap would be refused for calls that would have fitted.
DEFAULT_OUTPUT_TOKENS = 4096
MAX_OUTPUT_TOKENS = 16384


# Bytes of a request body per prompt token, for the reservation only: JSON and English
# run ~4 characters a token, so this errs high, as a reservation should. Counting tokens
# properly (tiktoken over a 100k-token prompt) would take milliseconds on the event loop.
BYTES_PER_TOKEN = 4


def estimate_cost(
    provider: str,
    request: RequestInfo,
    body_bytes: int,
    overrides: tuple[PriceOverride, ...] = (),
    now: float | None = None,
) -> Decimal:
    """What a request will likely cost, before it is sent: its body's size as prompt tokens
    and its `max_tokens` (capped) at the model's list price; $0 when the model has no
    price. Reserved against the caps while the call runs (burst caps)."""
    requested = request.facts.get("max_tokens")
    output = int(requested) if requested and requested.isdigit() else DEFAULT_OUTPUT_TOKENS
    usage = Usage(
        input_tokens=body_bytes // BYTES_PER_TOKEN,
        output_tokens=min(output, MAX_OUTPUT_TOKENS),
    )
    when = datetime.fromtimestamp(now, UTC) if now is not None else None
    cost = pricing.price(provider, request.model, usage, overrides, when).cost_usd
    return cost if cost is not None and cost > 0 else ZERO


def request_signals(
    body: Mapping[str, Any] | None, request_class: str | None, key: bytes = PROCESS_KEY
) -> tuple[str | None, bool | None]:
    """The loop fingerprint (hashed with `key`) and whether a human spoke, from a parsed
    request body."""
    if type(body) is not dict and not isinstance(body, Mapping):  # the ABC check is slow
        return None, None
    items = conversation(body)  # looked up once, for both
    fingerprint = fingerprint_of(body, items, None, key)
    human = human_turn_of(items) if request_class in MAIN_REQUEST_CLASSES else None
    return fingerprint, human


class AlertDispatcher:
    """Delivers alerts off the request path: one thread, a queue, the notifier's rules."""

    def __init__(self, notify: Callable[[Alert], object], flush: Callable[[], object]) -> None:
        self._notify = notify
        self._flush = flush
        # An alert to show, other notification work (`call`), or None: stop.
        self._queue: queue.Queue[Alert | Callable[[], object] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="devmeter-notify", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        self._queue.put(alert)

    def call(self, work: Callable[[], object]) -> None:
        """Run `work` on the notification thread, in turn with the alerts (it may wait
        on D-Bus, so never on the request path)."""
        self._queue.put(work)

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
            if isinstance(alert, Alert):
                self._safely(lambda a=alert: self._notify(a))
            else:
                self._safely(alert)

    @staticmethod
    def _safely(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # a notification problem must not stop the next one
            diagnostics.say(f"devmeter: notification failed: {exc!r}")


def print_alert(alert: Alert) -> None:
    # Through diagnostics.say: stderr on a full disk must not raise on the event loop.
    stamp = time.strftime("%H:%M:%S", time.localtime(alert.ts))
    diagnostics.say(f"devmeter [{stamp}] {alert.kind}: {alert.message}")
