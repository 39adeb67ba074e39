"""Budgets: spend thresholds that warn, caps that block, and the alerts both raise.

Four scopes, each with its own `[budgets.<scope>]` table:

| scope     | key                  | spend counted over                              |
| --------- | -------------------- | ----------------------------------------------- |
| `session` | the session id       | the whole session                               |
| `repo`    | the repo's top level | the calendar `period` ("day", the default, or "month") |
| `day`     | `YYYY-MM-DD`         | the local calendar day                          |
| `month`   | `YYYY-MM`            | the local calendar month                        |

`notify_usd` thresholds raise one alert each, once per key (a call that jumps two
thresholds raises one alert naming the higher); `block_usd` refuses further requests in
that scope until it is lifted with `BudgetTracker.allow` or the period rolls over.

`BudgetTracker` is pure state over `Call` records: no I/O, and no clock except where
`seed` and `allow` are not given `now`. Call it from one thread (the proxy's event loop).
A cap is checked before each request, counting what the calls still in flight are
estimated to cost (`check(..., reserve_usd=...)`, then `settle`), so a burst of
concurrent calls cannot run past it: only the calls already running when it is reached
still finish and count. `devmeter allow` raises a cap by a step (`next_limit`) rather
than removing it; `devmeter stop` refuses one session's requests until it is allowed.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any, Literal

from devmeter.alerts import Alert, Block, fit
from devmeter.config_error import ConfigError
from devmeter.config_values import config_bool, config_table, config_usd, reject_unknown
from devmeter.labels import SESSION_PREFIX, SESSION_WHOLE, repo_name, short_session
from devmeter.money import ZERO, format_usd
from devmeter.session_table import BUDGET_PART, SessionTable
from devmeter.usage import Attribution, Call

Scope = Literal["session", "repo", "day", "month"]
SCOPES: tuple[Scope, ...] = ("session", "repo", "day", "month")
RepoPeriod = Literal["day", "month"]


@dataclass(frozen=True)
class ScopeBudget:
    notify_usd: tuple[Decimal, ...] = ()
    block_usd: Decimal | None = None
    period: RepoPeriod = "day"  # only read for the repo scope
    # Levels at which the next request is held until the user answers (devmeter/ask.py).
    ask_usd: tuple[Decimal, ...] = ()
    # Subscription calls cost list-price dollars nobody is billed (devmeter/billing.py):
    # counted against this scope only when asked.
    count_covered: bool = False


@dataclass(frozen=True)
class Budgets:
    # Defaults protect a new user without nagging: a session's first $5 is worth a
    # glance, $20 and $100 are worth stopping for; a day over $50 or $200 is unusual for
    # one developer. Repo and month figures say nothing the day's do not, so they stay
    # quiet until configured. Nothing blocks unless the user sets a block_usd: a proxy
    # that refuses work by surprise gets uninstalled.
    #
    # Asks (ask_usd) are the exception that does stop work, by default: they hold a
    # request until the user says Continue, and refuse it if nobody answers, so an
    # unattended runaway stops by itself. A session past $25 is several times a heavy
    # session's spend (the README's guard-rails section says why), and a day past $100
    # is twice the day's first threshold.
    session: ScopeBudget = field(
        default_factory=lambda: ScopeBudget(
            notify_usd=_usd_tuple(5, 20, 100), ask_usd=_usd_tuple(25, 50)
        )
    )
    repo: ScopeBudget = field(default_factory=ScopeBudget)
    day: ScopeBudget = field(
        default_factory=lambda: ScopeBudget(notify_usd=_usd_tuple(50, 200), ask_usd=_usd_tuple(100))
    )
    month: ScopeBudget = field(default_factory=ScopeBudget)
    # How long a held request waits for an answer: within every supported client's own
    # request timeout (Claude Code, Codex and the SDKs wait 5 to 10 minutes).
    ask_timeout_seconds: float = 60.0

    def scope(self, scope: str) -> ScopeBudget:
        return getattr(self, scope)  # type: ignore[no-any-return]


def _crosses(budget: ScopeBudget, cap: Decimal | None, before: Decimal, after: Decimal) -> bool:
    """Whether spend going from `before` to `after` reaches the cap or a threshold."""
    if cap is not None and before < cap <= after:
        return True
    # A loop, not any() over a generator: this runs per watched scope on every call.
    for threshold in budget.notify_usd:  # noqa: SIM110
        if before < threshold <= after:
            return True
    return False


def _usd_tuple(*values: int) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


# --- messages ------------------------------------------------------------------------------


# How far `devmeter allow` raises a cap when the scope has no higher level configured.
DEFAULT_STEP_USD = Decimal(20)
# Environment variable the tray sets for the proxy it starts: "1" when its icon has a menu.
MENU_ENV = "DEVMETER_MENU"


class Advice:
    """What a message tells the user to do, so that it works where they are: the tray
    menu only when the proxy runs under a tray that has one, else the command; and
    session ids cut to the shortest prefix (at least 8 characters) that no other known
    session shares, so the command resolves."""

    def __init__(self, menu: bool = False, max_ids: int = 4096) -> None:
        self.menu = menu
        self.max_ids = max_ids
        self._ids: OrderedDict[str, None] = OrderedDict()

    def know(self, session: str | None) -> None:
        if not session or session in self._ids:
            return
        self._ids[session] = None
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def short_id(self, session: str) -> str:
        length = SESSION_PREFIX
        if len(session) <= SESSION_WHOLE:  # as `short_session`: a short id is shown whole
            return session
        for other in self._ids:
            if other != session and other[:length] == session[:length]:
                common = len(os.path.commonprefix((other, session)))
                length = max(length, common + 1)
        return session if length >= len(session) else session[:length]

    def who(self, attribution: Attribution) -> str:
        """`Session c94186ab (claude-code in acme-api)`, capitalised for a sentence start."""
        where = f" in {repo_name(attribution.repo)}" if attribution.repo else ""
        if attribution.session:
            text = f"session {self.short_id(attribution.session)} ({attribution.tool}{where})"
        else:
            text = f"{attribution.tool}{where} (no session id)"
        return text[0].upper() + text[1:]

    def stop_action(self, attribution: Attribution) -> str:
        """How to stop a session (or, without a session id, all metered traffic)."""
        if attribution.session:
            command = f"`devmeter stop {self.short_id(attribution.session)}`"
            menu = " or Pause in the devmeter menu" if self.menu else ""
            return f"To stop it: {command}{menu}."
        if self.menu:
            return "To stop it: Pause in the devmeter menu."
        return "To stop it: `devmeter pause`."

    def lift_action(self, scope: str, key: str) -> str:
        short = self.short_id(key) if scope in ("session", "stop") else key
        menu = " or the devmeter menu" if self.menu and scope != "pause" else ""
        if scope == "pause":
            where = "Resume in the devmeter menu or " if self.menu else ""
            return f"To let requests through: {where}`devmeter resume`."
        if scope == "stop":
            return f"To let it continue: `devmeter allow {short}`."
        return f"To raise the cap a step: `{lift_command(scope, short)}`{menu}."


def describe(attribution: Attribution) -> str:
    """`session c94186ab (claude-code in acme-api)`: who a message is about."""
    where = f" in {repo_name(attribution.repo)}" if attribution.repo else ""
    if attribution.session:
        return f"session {short_session(attribution.session)} ({attribution.tool}{where})"
    return f"{attribution.tool}{where} (no session id)"


def lift_command(scope: str, key: str) -> str:
    """The CLI command that lifts a cap (the CLI implements these spellings)."""
    if scope == "pause":
        return "devmeter resume"
    if scope in ("session", "stop"):
        return f"devmeter allow {key}"
    if scope == "repo":
        return f"devmeter allow --repo {key}"
    return f"devmeter allow --{scope}"


def next_limit(budget: ScopeBudget, current: Decimal, by: Decimal | None = None) -> Decimal:
    """The cap after one `devmeter allow`: `current` plus `by`, else the scope's next
    configured level above it (a `notify_usd` threshold), else `current` plus $20."""
    if by is not None:
        return current + by
    higher = [level for level in budget.notify_usd if level > current]
    return higher[0] if higher else current + DEFAULT_STEP_USD


# --- config --------------------------------------------------------------------------------


_SCOPE_KEYS = {
    "session": ("notify_usd", "block_usd", "ask_usd", "count_covered"),
    "repo": ("notify_usd", "block_usd", "period", "ask_usd", "count_covered"),
    "day": ("notify_usd", "block_usd", "ask_usd", "count_covered"),
    "month": ("notify_usd", "block_usd", "ask_usd", "count_covered"),
}
# Keys of [budgets] itself, beside the scope tables.
_BUDGETS_KEYS = ("ask_timeout_seconds",)
# The held request must be answered before the client gives up on it: Claude Code, the
# SDKs and Codex wait 5 to 10 minutes, so asks wait at most 5.
ASK_TIMEOUT_MAX = 300


def parse_budgets(table: Mapping[str, object] | None) -> Budgets:
    """The `[budgets]` table (already parsed from TOML) -> Budgets.

    A scope or key left out keeps its default; `notify_usd = []` silences a scope.
    Raises ConfigError naming the dotted key for anything devmeter cannot use.
    """
    defaults = Budgets()
    table = config_table("budgets", table if table is not None else {})
    reject_unknown("budgets", table, (*SCOPES, *_BUDGETS_KEYS))
    parsed: dict[str, Any] = {
        scope: _parse_scope(scope, table.get(scope), defaults.scope(scope)) for scope in SCOPES
    }
    if "ask_timeout_seconds" in table:
        parsed["ask_timeout_seconds"] = _ask_timeout(table["ask_timeout_seconds"])
    return Budgets(**parsed)


def _ask_timeout(value: object) -> float:
    key = "budgets.ask_timeout_seconds"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    seconds = float(value) if number else math.nan  # type: ignore[arg-type]
    if not 0 < seconds <= ASK_TIMEOUT_MAX:
        raise ConfigError(
            key,
            f"expected a number of seconds above 0 and at most {ASK_TIMEOUT_MAX} (clients "
            f"give up on a request after 5 to 10 minutes), got {value!r}",
        )
    return seconds


def _parse_scope(scope: str, value: object, default: ScopeBudget) -> ScopeBudget:
    prefix = f"budgets.{scope}"
    if value is None:
        return default
    table = config_table(prefix, value)
    reject_unknown(prefix, table, _SCOPE_KEYS[scope])

    block = None
    if "block_usd" in table:
        block = config_usd(f"{prefix}.block_usd", table["block_usd"])

    if "notify_usd" in table:
        key = f"{prefix}.notify_usd"
        raw = table["notify_usd"]
        if not isinstance(raw, list):
            raise ConfigError(key, f"expected a list of dollar amounts like [5, 20], got {raw!r}")
        notify = tuple(config_usd(key, v) for v in raw)
        for lower, higher in zip(notify, notify[1:], strict=False):
            if higher <= lower:
                raise ConfigError(
                    key, f"thresholds must be in ascending order: {higher} follows {lower}"
                )
        if block is not None and notify and notify[-1] >= block:
            raise ConfigError(
                key,
                f"threshold {notify[-1]} is at or above block_usd {block}, so it can never "
                "warn before the block: lower it or raise block_usd",
            )
    else:
        # Default thresholds above a configured cap are kept: they fire once the cap is
        # raised with `devmeter allow`, and never before (spend stops at the cap).
        notify = default.notify_usd

    # Default asks are kept with a cap too, like thresholds: those above it work once
    # `devmeter allow` raises the cap.
    ask = default.ask_usd
    if "ask_usd" in table:
        ask = _ascending_usd(f"{prefix}.ask_usd", table["ask_usd"], "ask levels")

    period = default.period
    if "period" in table:
        if table["period"] not in ("day", "month"):
            raise ConfigError(
                f"{prefix}.period", f'expected "day" or "month", got {table["period"]!r}'
            )
        period = table["period"]  # type: ignore[assignment]
    covered = config_bool(
        f"{prefix}.count_covered",
        table.get("count_covered", False),
        "count subscription calls' list-price dollars",
    )
    return ScopeBudget(
        notify_usd=notify, block_usd=block, period=period, ask_usd=ask, count_covered=covered
    )


def _ascending_usd(key: str, raw: object, what: str) -> tuple[Decimal, ...]:
    """A TOML list of dollar amounts in ascending order (empty: turned off)."""
    if not isinstance(raw, list):
        raise ConfigError(key, f"expected a list of dollar amounts like [25, 50], got {raw!r}")
    levels = tuple(config_usd(key, v) for v in raw)
    for lower, higher in zip(levels, levels[1:], strict=False):
        if higher <= lower:
            raise ConfigError(key, f"{what} must be in ascending order: {higher} follows {lower}")
    return levels


# --- tracking ------------------------------------------------------------------------------


@dataclass
class _Spend:
    period: str
    spent: Decimal = ZERO


@dataclass(frozen=True)
class _Plan:
    """What every call would otherwise work out again from one `Budgets`: the scopes that
    count spend, those with a configured cap, whether any counts subscription calls."""

    budgets: Budgets
    watched: tuple[tuple[str, ScopeBudget], ...]  # a cap, a threshold or an ask
    capped: tuple[str, ...]  # a configured block_usd, in SCOPES order
    counts_covered: bool

    @classmethod
    def of(cls, budgets: Budgets) -> _Plan:
        scopes = [(scope, budgets.scope(scope)) for scope in SCOPES]
        return cls(
            budgets,
            tuple(
                (scope, budget)
                for scope, budget in scopes
                if budget.block_usd is not None or budget.notify_usd or budget.ask_usd
            ),
            tuple(scope for scope, budget in scopes if budget.block_usd is not None),
            any(budget.count_covered for _, budget in scopes),
        )


class BudgetTracker:
    """Spend per scope key, the alerts its growth raises, and the blocks it imposes."""

    def __init__(
        self,
        budgets: Budgets | None = None,
        *,
        config_path: str = "your devmeter config",
        tz: tzinfo | None = None,  # None: the machine's local time
        max_keys: int = 4096,
        advice: Advice | None = None,
        sessions: SessionTable | None = None,
    ) -> None:
        """`sessions`: the session table shared with runaway detection and routing (one of
        its own if None); the session scope's spend is its entries' BUDGET_PART, so a
        session is kept and forgotten once for all three."""
        self.budgets = budgets or Budgets()
        self.config_path = config_path
        self.tz = tz
        self.max_keys = max_keys
        self.advice = advice or Advice()
        self.paused = False
        # (scope, key) -> spend in the key's current period; least recently used first.
        # Not the session scope's: that is in the session table.
        self._spend: OrderedDict[tuple[str, str], _Spend] = OrderedDict()
        self._sessions = sessions if sessions is not None else SessionTable(max_sessions=max_keys)
        # (scope, key) -> (the period a cap was raised for, the raised cap).
        self._limits: OrderedDict[tuple[str, str], tuple[str, Decimal]] = OrderedDict()
        # Sessions stopped with `devmeter stop` or an ask's Stop button; those the button
        # stopped, so the refusal names what the user did.
        self.stopped: set[str] = set()
        self._stopped_asked: set[str] = set()
        # Burst caps: what the calls in flight are estimated to cost, per (scope, key),
        # and each reservation's parts, so settling one gives back exactly what it took.
        self._in_flight: dict[tuple[str, str], Decimal] = {}
        self._reservations: dict[int, tuple[float, tuple[tuple[tuple[str, str], Decimal], ...]]]
        self._reservations = {}
        self._reservation_ids = itertools.count(1)
        # Blocked alerts raised: (scope, key, period, cap), so a refusal after a restart
        # still announces a cap once, and a crossing already announced is not repeated.
        self._announced: OrderedDict[tuple[str, str, str, Decimal], None] = OrderedDict()
        self._calendar_cache: tuple[int | None, str, str] = (None, "", "")
        self._plan_cache: _Plan | None = None

    # keys and periods

    def key(self, scope: str, attribution: Attribution, ts: float) -> str | None:
        """The key a call at `ts` counts under in `scope`, or None if it has none."""
        if scope == "session":
            # session_table.session_key for a call with an id; one without has none to cap.
            return attribution.session
        if scope == "repo":
            return attribution.repo
        return self.period(scope, ts)

    def period(self, scope: str, ts: float) -> str:
        """Which stretch of time spend in `scope` is counted over ("" = for ever)."""
        if scope == "session":
            return ""
        if scope == "repo":
            scope = self.budgets.repo.period
        day, month = self._calendar(int(ts))
        return day if scope == "day" else month

    def _calendar(self, second: int) -> tuple[str, str]:
        """(day, month) of a second; every call asks several times a call, mostly the same."""
        cached = self._calendar_cache
        if cached[0] != second:
            day = datetime.fromtimestamp(second, self.tz).strftime("%Y-%m-%d")
            cached = self._calendar_cache = (second, day, day[:7])
        return cached[1], cached[2]

    def spent(self, scope: str, key: str, ts: float) -> Decimal:
        entry = self._counted((scope, key))
        if entry is None or entry.period != self.period(scope, ts):
            return ZERO
        return entry.spent

    def spend_in(
        self, scope: str, attribution: Attribution, ts: float
    ) -> tuple[str | None, Decimal]:
        """`key` and `spent` at once, for the asks every request checks: the key a call at
        `ts` counts under in `scope` (None: none) and that key's spend in its period."""
        if scope == "session":
            key = attribution.session
            if key is None:
                return None, ZERO
            entry: _Spend | None = self._sessions.part(key, BUDGET_PART)
            period = ""
        else:
            if scope == "repo":
                key = attribution.repo
                if key is None:
                    return None, ZERO
                period = self.period(scope, ts)
            else:
                key = period = self.period(scope, ts)  # a day or month key is its period
            entry = self._spend.get((scope, key))
        if entry is None or entry.period != period:
            return key, ZERO
        return key, entry.spent

    def cap(self, scope: str, key: str, ts: float) -> Decimal | None:
        """The cap on `(scope, key)` at `ts`: the configured `block_usd`, or what
        `devmeter allow` raised it to in this period."""
        raised = self._limits.get((scope, key))
        if raised is not None and raised[0] == self.period(scope, ts):
            return raised[1]
        return self.budgets.scope(scope).block_usd

    def in_flight(self, scope: str, key: str) -> Decimal:
        """What the calls under way in `(scope, key)` are estimated to cost."""
        return self._in_flight.get((scope, key), ZERO)

    @property
    def has_caps(self) -> bool:
        """Whether a cap could refuse anything: a configured one or a raised one."""
        return bool(self._limits) or bool(self._plan().capped)

    @property
    def counts_covered(self) -> bool:
        """Whether any scope counts subscription calls' list-price dollars."""
        return self._plan().counts_covered

    # state changes

    def seed(
        self,
        spent_by_scope: Mapping[tuple[str, str], Decimal | int | float],
        now: float | None = None,
    ) -> None:
        """Start from the ledger's totals for the current periods, `{(scope, key): usd}`.

        Thresholds at or below a seeded figure count as already crossed, so a restart
        does not repeat them; caps already reached block at once.
        """
        now = time.time() if now is None else now
        for (scope, key), usd in spent_by_scope.items():
            if scope not in SCOPES:
                raise ValueError(f"unknown budget scope {scope!r}")
            amount = usd if isinstance(usd, Decimal) else Decimal(str(usd))
            self._remember((scope, key), _Spend(self.period(scope, now), amount), now)

    def seed_announced(self, blocked: Iterable[tuple[str, str, Decimal, float]]) -> None:
        """Blocked alerts the ledger already holds, `(scope, key, cap, ts)`: not repeated."""
        for scope, key, cap, ts in blocked:
            if scope in SCOPES:
                self._announce((scope, key, self.period(scope, ts), cap))

    def observe(self, call: Call) -> list[Alert]:
        """Add a finished call's cost; return the alerts it raises (each exactly once).

        Spend is counted only in the scopes with a cap or a threshold: nothing reads the
        others' (by default repo and month), and this runs for every call on the event loop.
        """
        cost = call.cost_usd
        if cost is None or cost <= 0:
            return []
        alerts = []
        ts = call.ts
        covered = call.billing == "subscription"
        for scope, budget in self._watched_scopes():
            if covered and not budget.count_covered:
                continue
            key = self.key(scope, call.attribution, ts)
            if key is None:
                continue
            # What `spent` and `_remember` do, with the period worked out once per scope
            # (a day or month key is its period) and the entry updated in place.
            if scope == "session":
                # The session's entry, seen now either way: touched once, then its part.
                period = ""  # a session counts for ever
                parts = self._sessions.touch(key, ts).parts
                entry = parts.get(BUDGET_PART)
                if entry is not None and entry.period == period:
                    before = entry.spent
                    entry.spent = after = before + cost
                else:
                    before = ZERO
                    after = before + cost
                    parts[BUDGET_PART] = _Spend(period, after)
            else:
                period = key if scope in ("day", "month") else self.period(scope, ts)
                slot = (scope, key)
                entry = self._spend.get(slot)
                if entry is not None and entry.period == period:
                    before = entry.spent
                    entry.spent = after = before + cost
                    self._spend.move_to_end(slot)
                else:
                    before = ZERO
                    after = before + cost
                    self._remember(slot, _Spend(period, after), ts)
            cap = self.cap(scope, key, ts) if self._limits else budget.block_usd
            if _crosses(budget, cap, before, after):  # rarely: build no Alert to throw away
                alert = self._crossing(scope, key, period, cap, before, after, call)
                if alert:
                    alerts.append(alert)
        return alerts

    def _watched_scopes(self) -> tuple[tuple[str, ScopeBudget], ...]:
        return self._plan().watched

    def _plan(self) -> _Plan:
        # Worked out once per Budgets object: `budgets` is a public attribute, and a config
        # reload (Guard.reconfigure) puts a new one there.
        plan = self._plan_cache
        if plan is None or plan.budgets is not self.budgets:
            plan = self._plan_cache = _Plan.of(self.budgets)
        return plan

    def allow(
        self, scope: str, key: str, now: float | None = None, limit: Decimal | None = None
    ) -> Decimal | None:
        """Raise the cap on `(scope, key)` for its current period (a session: for good) to
        `limit`, or by one step (`next_limit`); return the new cap (None: no cap there).
        Allowing a session also lets a stopped one continue."""
        if scope not in SCOPES:
            raise ValueError(f"unknown budget scope {scope!r}; valid: {', '.join(SCOPES)}")
        now = time.time() if now is None else now
        if scope == "session":
            self.stopped.discard(key)
            self._stopped_asked.discard(key)
        current = self.cap(scope, key, now)
        if current is None:
            return None
        new = limit if limit is not None else next_limit(self.budgets.scope(scope), current)
        self._limits[(scope, key)] = (self.period(scope, now), new)
        self._limits.move_to_end((scope, key))
        while len(self._limits) > self.max_keys:
            self._limits.popitem(last=False)
        return new

    def reset_allowed(self) -> None:
        """Forget every raised cap and stop (before applying the control file afresh)."""
        self._limits.clear()
        self.stopped.clear()
        self._stopped_asked.clear()

    def stop(self, session: str, asked: bool = False) -> None:
        """Refuse the session's requests until it is allowed again. `asked`: stopped by
        Stop when devmeter asked (a notification's button or the tray menu), not the CLI."""
        self.stopped.add(session)
        if asked:
            self._stopped_asked.add(session)
        else:  # stopped again, from the CLI: the latest stop is the one to name
            self._stopped_asked.discard(session)

    def pause(self) -> None:
        """Refuse every metered request until `resume()`."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    # the question the proxy asks before forwarding

    def check(self, attribution: Attribution, now: float) -> Block | None:
        """A Block if the request must not be forwarded, else None (reserving nothing)."""
        return self.admit(attribution, now)[0]

    def admit(
        self, attribution: Attribution, now: float, reserve_usd: Decimal = ZERO
    ) -> tuple[Block | None, int | None]:
        """`(block, None)` if the request must not be forwarded, else `(None, reservation)`.

        A cap counts the spend so far plus what the calls in flight are estimated to cost,
        so a burst of concurrent calls stops at the cap. A request let through reserves
        `reserve_usd` (its own estimate) in each capped scope until `settle(reservation)`
        (None: nothing reserved).
        """
        advice = self.advice
        if self.paused:
            return Block(
                "pause",
                "all",
                None,
                None,
                fit("devmeter: metered traffic is paused.", advice.lift_action("pause", "all")),
                reason="other",
            ), None
        session = attribution.session
        if session is not None and session in self.stopped:
            how = (
                "when devmeter asked before spending more (you chose Stop)"
                if session in self._stopped_asked
                else "with `devmeter stop`"
            )
            text = (
                f"devmeter: {advice.who(attribution)} was stopped {how}, so this request "
                "was not sent."
            )
            action = advice.lift_action("stop", session)
            return Block("stop", session, None, None, fit(text, action), "other"), None
        capped: list[tuple[str, str]] = []
        # The common case: no cap, so no key or period to work out. A raised cap
        # (`devmeter allow`) may stand in any scope, so then all are looked at.
        for scope in SCOPES if self._limits else self._plan().capped:
            key = self.key(scope, attribution, now)
            if key is None:
                continue
            cap = self.cap(scope, key, now)
            if cap is None:
                continue
            spent = self.spent(scope, key, now)
            if spent + self.in_flight(scope, key) >= cap:
                # Refused requests add no spend; keep a blocking key from looking idle.
                self._seen((scope, key), now)
                return self._block(scope, key, cap, spent, attribution), None
            capped.append((scope, key))
        if not capped or reserve_usd <= 0:
            return None, None
        token = next(self._reservation_ids)
        parts = tuple(((scope, key), reserve_usd) for scope, key in capped)
        for slot, amount in parts:
            self._in_flight[slot] = self._in_flight.get(slot, ZERO) + amount
        self._reservations[token] = (now, parts)
        return None, token

    def settle(self, token: int | None) -> None:
        """Hand back a reservation: its call ended (its real cost is observed) or failed."""
        if token is None:
            return
        entry = self._reservations.pop(token, None)
        if entry is None:
            return
        for slot, amount in entry[1]:
            left = self._in_flight.get(slot, ZERO) - amount
            if left > 0:
                self._in_flight[slot] = left
            else:
                self._in_flight.pop(slot, None)

    def expire_reservations(self, now: float, older_than: float = 3600.0) -> None:
        """Reservations of calls never settled (a bug, a lost flow) stop counting at last."""
        if not self._reservations:
            return  # the common case (no caps, or no call in flight): every call asks
        stale = [t for t, (ts, _) in self._reservations.items() if ts < now - older_than]
        for token in stale:
            self.settle(token)

    def refusal_alert(self, block: Block, attribution: Attribution, now: float) -> Alert | None:
        """The "blocked" alert for a refusal, the first time this cap refuses in its period
        (after a restart, or when a cap lowered in the config is already passed)."""
        if block.scope not in SCOPES or block.cap_usd is None:
            return None
        marker = (block.scope, block.key, self.period(block.scope, now), block.cap_usd)
        if marker in self._announced:
            return None
        self._announce(marker)
        spent = block.spent_usd or ZERO
        on_its_way = self.in_flight(block.scope, block.key)
        flight = f", {format_usd(on_its_way)} more in calls under way" if on_its_way else ""
        text = (
            f"{_subject(block.scope, block.key, attribution, self.advice)} reached its "
            f"{format_usd(block.cap_usd)} cap: {format_usd(spent)} spent{flight}"
            f"{_last_call(block.scope, attribution, self.advice)}. Requests are refused."
        )
        return Alert(
            now,
            "blocked",
            block.scope,
            block.key,
            block.cap_usd,
            fit(text, self.advice.lift_action(block.scope, block.key)),
            attribution.tool,
            attribution.repo,
            attribution.session,
        )

    # internals

    def _block(
        self, scope: str, key: str, cap: Decimal, spent: Decimal, attribution: Attribution
    ) -> Block:
        request = "" if scope == "session" else f" from {describe(attribution)}"
        in_flight = self.in_flight(scope, key)
        flight = (
            f", {format_usd(in_flight)} more on its way in calls under way" if in_flight else ""
        )
        return Block(
            scope,
            key,
            cap,
            spent,
            (
                f"devmeter: {_subject(scope, key, attribution, self.advice)} reached its "
                f"{format_usd(cap)} cap (budgets.{scope}.block_usd; {format_usd(spent)} "
                f"spent{flight}), so this request{request} was not sent. "
                f"{self.advice.lift_action(scope, key)} Or raise budgets.{scope}.block_usd "
                f"in {self.config_path}."
            ),
        )

    def _announce(self, marker: tuple[str, str, str, Decimal]) -> None:
        self._announced[marker] = None
        while len(self._announced) > self.max_keys:
            self._announced.popitem(last=False)

    def _counted(self, slot: tuple[str, str]) -> _Spend | None:
        if slot[0] == "session":
            part: _Spend | None = self._sessions.part(slot[1], BUDGET_PART)
            return part
        return self._spend.get(slot)

    def _seen(self, slot: tuple[str, str], ts: float) -> None:
        """Mark a counted key as recently used, so it is not the one forgotten."""
        if slot[0] == "session":
            if slot[1] in self._sessions:
                self._sessions.touch(slot[1], ts)
        elif slot in self._spend:
            self._spend.move_to_end(slot)

    def _remember(self, slot: tuple[str, str], entry: _Spend, ts: float) -> None:
        if slot[0] == "session":
            self._sessions.touch(slot[1], ts).parts[BUDGET_PART] = entry
            return
        self._spend[slot] = entry
        self._spend.move_to_end(slot)
        while len(self._spend) > self.max_keys:
            self._spend.popitem(last=False)

    def _crossing(
        self,
        scope: str,
        key: str,
        period: str,
        cap: Decimal | None,
        before: Decimal,
        after: Decimal,
        call: Call,
    ) -> Alert | None:
        budget = self.budgets.scope(scope)
        advice = self.advice
        blocked = cap is not None and before < cap <= after
        attribution = call.attribution
        alert = Alert(
            call.ts,
            "threshold",
            scope,
            key,
            ZERO,
            "",
            attribution.tool,
            attribution.repo,
            attribution.session,
        )
        subject = _subject(scope, key, attribution, advice)
        last = _last_call(scope, attribution, advice)
        if blocked:
            assert cap is not None
            marker = (scope, key, period, cap)
            if marker in self._announced:
                return None
            self._announce(marker)
            text = (
                f"{subject} reached its {format_usd(cap)} cap: {format_usd(after)} spent{last}. "
                "Further requests are refused."
            )
            return replace(
                alert,
                kind="blocked",
                figure_usd=cap,
                message=fit(text, advice.lift_action(scope, key)),
            )
        crossed = [t for t in budget.notify_usd if before < t <= after]
        if not crossed:
            return None
        threshold = crossed[-1]
        text = f"{subject} passed {format_usd(threshold)}: {format_usd(after)} spent{last}."
        if cap is not None and cap > after:
            text += f" Its {format_usd(cap)} cap stops it there."
        if scope == "session":
            action = advice.stop_action(attribution)
        elif cap is None:
            action = f"To cap it: set budgets.{scope}.block_usd in {self.config_path}."
        else:
            action = ""
        return replace(alert, figure_usd=threshold, message=fit(text, action))


def _subject(scope: str, key: str, attribution: Attribution, advice: Advice) -> str:
    if scope == "session":
        return advice.who(attribution)
    if scope == "repo":
        return f"Repo {repo_name(key)}"
    return f"Spend for {key}"


def _last_call(scope: str, attribution: Attribution, advice: Advice) -> str:
    """For scopes wider than a session: who made the call that crossed the line."""
    if scope == "session":
        return ""
    who = advice.who(attribution)
    return f", last call from {who[0].lower()}{who[1:]}"
