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
A cap is checked before each request; the requests already in flight when it is reached
still finish and count.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from pathlib import PurePath
from typing import Any, Literal

from devmeter.config_error import ConfigError
from devmeter.usage import Attribution, Call

Scope = Literal["session", "repo", "day", "month"]
SCOPES: tuple[Scope, ...] = ("session", "repo", "day", "month")
AlertKind = Literal["threshold", "projection", "loop", "long_running", "blocked"]
RepoPeriod = Literal["day", "month"]

ZERO = Decimal(0)


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """Something a developer should hear about now. Also a ledger row.

    `figure_usd` is the level the alert is about (the threshold crossed, the cap hit,
    the hourly burn level passed; for loops and unattended sessions, what they cost),
    so `(kind, scope, key, figure_usd)` identifies one alert for de-duplication.
    """

    ts: float
    kind: AlertKind
    scope: str
    key: str
    figure_usd: Decimal
    message: str
    tool: str | None = None
    repo: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Block:
    """Why a request is refused before it reaches the provider."""

    scope: str  # a Scope, or "pause"
    key: str
    cap_usd: Decimal | None  # None for a pause
    spent_usd: Decimal | None
    message: str  # starts with "devmeter:", names the cap and how to lift it

    def error_response(self, endpoint: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body shaped like the provider's own errors for `endpoint`.

        403, not 429: clients retry a 429 (Claude Code does, for minutes), and a cap
        will not lift by itself; a 403 shows the message at once and is not retried.
        """
        status = 403
        if endpoint.startswith("anthropic"):
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "permission_error", "message": self.message},
            }
        elif endpoint.startswith("gemini") or endpoint.startswith("google"):
            body = {
                "error": {"code": status, "message": self.message, "status": "PERMISSION_DENIED"}
            }
        else:  # OpenAI chat / responses and every OpenAI-compatible API
            body = {
                "error": {
                    "message": self.message,
                    "type": "devmeter_budget_exceeded",
                    "param": None,
                    "code": "devmeter_blocked",
                }
            }
        return status, body


@dataclass(frozen=True)
class ScopeBudget:
    notify_usd: tuple[Decimal, ...] = ()
    block_usd: Decimal | None = None
    period: RepoPeriod = "day"  # only read for the repo scope


@dataclass(frozen=True)
class Budgets:
    # Defaults protect a new user without nagging: a session's first $5 is worth a
    # glance, $20 and $100 are worth stopping for; a day over $50 or $200 is unusual for
    # one developer. Repo and month figures say nothing the day's do not, so they stay
    # quiet until configured. Nothing blocks unless the user sets a block_usd: a proxy
    # that refuses work by surprise gets uninstalled.
    session: ScopeBudget = field(
        default_factory=lambda: ScopeBudget(notify_usd=_usd_tuple(5, 20, 100))
    )
    repo: ScopeBudget = field(default_factory=ScopeBudget)
    day: ScopeBudget = field(default_factory=lambda: ScopeBudget(notify_usd=_usd_tuple(50, 200)))
    month: ScopeBudget = field(default_factory=ScopeBudget)

    def scope(self, scope: str) -> ScopeBudget:
        return getattr(self, scope)  # type: ignore[no-any-return]


def _crosses(budget: ScopeBudget, before: Decimal, after: Decimal) -> bool:
    """Whether spend going from `before` to `after` reaches the cap or a threshold."""
    cap = budget.block_usd
    if cap is not None and before < cap <= after:
        return True
    return any(before < threshold <= after for threshold in budget.notify_usd)


def _usd_tuple(*values: int) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


# --- formatting ----------------------------------------------------------------------------


def format_usd(amount: Decimal) -> str:
    """`$1,234.57`: cents, rounded half up, thousands separated."""
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def short_session(session: str) -> str:
    """The first 8 characters of an id: enough to tell sessions apart in a message."""
    return session if len(session) <= 12 else session[:8]


def repo_name(repo: str) -> str:
    return PurePath(repo).name or repo


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
    if scope == "session":
        return f"devmeter allow {key}"
    if scope == "repo":
        return f"devmeter allow --repo {key}"
    return f"devmeter allow --{scope}"


# --- config --------------------------------------------------------------------------------


def config_usd(key: str, value: object) -> Decimal:
    """A positive, finite dollar amount from TOML (int or float; never bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number of US dollars, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number of US dollars, got {value!r}")
    # str() first: 0.1 is Decimal("0.1"), not 0.1000000000000000055511151231257827...
    amount = Decimal(str(value))
    if amount <= 0:
        raise ConfigError(key, f"must be above 0, got {value!r}")
    return amount


def reject_unknown(prefix: str, table: Mapping[str, object], valid: Iterable[str]) -> None:
    valid = list(valid)
    for name in table:
        if name not in valid:
            raise ConfigError(
                f"{prefix}.{name}",
                f"unknown key {name!r}; valid keys in [{prefix}]: {', '.join(valid)}",
            )


def _table(key: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table ([{key}]), got {value!r}")
    return value


_SCOPE_KEYS = {
    "session": ("notify_usd", "block_usd"),
    "repo": ("notify_usd", "block_usd", "period"),
    "day": ("notify_usd", "block_usd"),
    "month": ("notify_usd", "block_usd"),
}


def parse_budgets(table: Mapping[str, object] | None) -> Budgets:
    """The `[budgets]` table (already parsed from TOML) -> Budgets.

    A scope or key left out keeps its default; `notify_usd = []` silences a scope.
    Raises ConfigError naming the dotted key for anything devmeter cannot use.
    """
    defaults = Budgets()
    table = _table("budgets", table if table is not None else {})
    reject_unknown("budgets", table, SCOPES)
    parsed = {
        scope: _parse_scope(scope, table.get(scope), defaults.scope(scope)) for scope in SCOPES
    }
    return Budgets(**parsed)


def _parse_scope(scope: str, value: object, default: ScopeBudget) -> ScopeBudget:
    prefix = f"budgets.{scope}"
    if value is None:
        return default
    table = _table(prefix, value)
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
        # Default thresholds above a configured cap would never fire: drop them quietly.
        notify = tuple(t for t in default.notify_usd if block is None or t < block)

    period = default.period
    if "period" in table:
        if table["period"] not in ("day", "month"):
            raise ConfigError(
                f"{prefix}.period", f'expected "day" or "month", got {table["period"]!r}'
            )
        period = table["period"]  # type: ignore[assignment]
    return ScopeBudget(notify_usd=notify, block_usd=block, period=period)


# --- tracking ------------------------------------------------------------------------------


@dataclass
class _Spend:
    period: str
    spent: Decimal = ZERO


class BudgetTracker:
    """Spend per scope key, the alerts its growth raises, and the blocks it imposes."""

    def __init__(
        self,
        budgets: Budgets | None = None,
        *,
        config_path: str = "your devmeter config",
        tz: tzinfo | None = None,  # None: the machine's local time
        max_keys: int = 4096,
    ) -> None:
        self.budgets = budgets or Budgets()
        self.config_path = config_path
        self.tz = tz
        self.max_keys = max_keys
        self.paused = False
        # (scope, key) -> spend in the key's current period; least recently used first.
        self._spend: OrderedDict[tuple[str, str], _Spend] = OrderedDict()
        # (scope, key) -> the period a cap was lifted for.
        self._allowed: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._calendar_cache: tuple[int | None, str, str] = (None, "", "")
        self._watched_cache: tuple[Budgets, tuple[tuple[str, ScopeBudget], ...]] | None = None

    # keys and periods

    def key(self, scope: str, attribution: Attribution, ts: float) -> str | None:
        """The key a call at `ts` counts under in `scope`, or None if it has none."""
        if scope == "session":
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
        entry = self._spend.get((scope, key))
        if entry is None or entry.period != self.period(scope, ts):
            return ZERO
        return entry.spent

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
            self._remember((scope, key), _Spend(self.period(scope, now), amount))

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
        for scope, budget in self._watched_scopes():
            key = self.key(scope, call.attribution, ts)
            if key is None:
                continue
            # What `spent` and `_remember` do, with the period worked out once per scope
            # (a day or month key is its period) and the entry updated in place.
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
                self._remember(slot, _Spend(period, after))
            if _crosses(budget, before, after):  # rarely: build no Alert to throw away
                alert = self._crossing(scope, key, before, after, call)
                if alert:
                    alerts.append(alert)
        return alerts

    def _watched_scopes(self) -> tuple[tuple[str, ScopeBudget], ...]:
        # Cached per Budgets object, since `budgets` is a public attribute.
        cached = self._watched_cache
        if cached is None or cached[0] is not self.budgets:
            watched = tuple(
                (scope, budget)
                for scope in SCOPES
                for budget in (self.budgets.scope(scope),)
                if budget.block_usd is not None or budget.notify_usd
            )
            cached = self._watched_cache = (self.budgets, watched)
        return cached[1]

    def allow(self, scope: str, key: str, now: float | None = None) -> None:
        """Lift the cap on `(scope, key)` until its period ends (a session: for good)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown budget scope {scope!r}; valid: {', '.join(SCOPES)}")
        now = time.time() if now is None else now
        self._allowed[(scope, key)] = self.period(scope, now)
        self._allowed.move_to_end((scope, key))
        while len(self._allowed) > self.max_keys:
            self._allowed.popitem(last=False)

    def pause(self) -> None:
        """Refuse every metered request until `resume()`."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    # the question the proxy asks before forwarding

    def check(self, attribution: Attribution, now: float) -> Block | None:
        """A Block if the request must not be forwarded, else None."""
        if self.paused:
            return Block(
                "pause",
                "all",
                None,
                None,
                "devmeter: metered traffic is paused. Choose Resume in the devmeter tray "
                f"menu or run `{lift_command('pause', 'all')}` to let requests through.",
            )
        for scope in SCOPES:
            cap = self.budgets.scope(scope).block_usd
            if cap is None:  # the common case: no cap, so no key or period to work out
                continue
            key = self.key(scope, attribution, now)
            if key is None:
                continue
            spent = self.spent(scope, key, now)
            if spent >= cap and not self._is_allowed(scope, key, now):
                # Refused requests add no spend; keep a blocking key from looking idle.
                self._spend.move_to_end((scope, key))
                request = "" if scope == "session" else f" from {describe(attribution)}"
                return Block(
                    scope,
                    key,
                    cap,
                    spent,
                    (
                        f"devmeter: {_subject(scope, key, attribution)} reached its "
                        f"{format_usd(cap)} cap (budgets.{scope}.block_usd; {format_usd(spent)} "
                        f"spent), so this request{request} was not sent. "
                        + self._how_to_lift(scope, key)
                    ),
                )
        return None

    # internals

    def _remember(self, slot: tuple[str, str], entry: _Spend) -> None:
        self._spend[slot] = entry
        self._spend.move_to_end(slot)
        while len(self._spend) > self.max_keys:
            self._spend.popitem(last=False)

    def _is_allowed(self, scope: str, key: str, now: float) -> bool:
        return self._allowed.get((scope, key)) == self.period(scope, now)

    def _crossing(
        self, scope: str, key: str, before: Decimal, after: Decimal, call: Call
    ) -> Alert | None:
        budget = self.budgets.scope(scope)
        cap = budget.block_usd
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
        if blocked and not self._is_allowed(scope, key, call.ts):
            text = (
                f"{_subject(scope, key, attribution)} reached its {format_usd(cap)} cap: "
                f"{format_usd(after)} spent{_last_call(scope, attribution)}. Further requests "
                f"are refused. {self._how_to_lift(scope, key)}"
            )
            return replace(alert, kind="blocked", figure_usd=cap, message=text)
        crossed = [t for t in budget.notify_usd if before < t <= after]
        if not crossed:
            return None
        threshold = crossed[-1]
        text = (
            f"{_subject(scope, key, attribution)} passed {format_usd(threshold)}: "
            f"{format_usd(after)} spent{_last_call(scope, attribution)}. Check on it; to cap "
            f"it, set budgets.{scope}.block_usd in {self.config_path}."
        )
        return replace(alert, figure_usd=threshold, message=text)

    def _how_to_lift(self, scope: str, key: str) -> str:
        return (
            f"Run `{lift_command(scope, key)}` to lift it, or raise "
            f"budgets.{scope}.block_usd in {self.config_path}."
        )


def _subject(scope: str, key: str, attribution: Attribution) -> str:
    if scope == "session":
        text = describe(attribution)
        return text[0].upper() + text[1:]
    if scope == "repo":
        return f"Repo {repo_name(key)}"
    return f"Spend for {key}"


def _last_call(scope: str, attribution: Attribution) -> str:
    """For scopes wider than a session: who made the call that crossed the line."""
    return "" if scope == "session" else f", last call from {describe(attribution)}"
