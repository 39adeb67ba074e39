"""Asks: before a scope spends past an ask level, hold its next request until the user answers.

`[budgets.<scope>] ask_usd = [25, 50]` sets the levels. When a scope's spend reaches the
level it may spend up to, the next request of that scope is held and an `ask` alert goes
out (a notification with Continue / Stop buttons, the tray menu, a push). The answer
arrives through `control.json` (`control.answer`, or an `allowed` entry written by
`devmeter allow`):

- **continue**: the scope may spend up to its next level; the held requests go on.
- **stop**: the held requests, and every later one of that scope, are refused until
  `devmeter allow` lifts the stop.
- **switch** (offered for a session when a routing rule could send its request to a
  cheaper model): continue, with that session's requests routed from now on, whatever
  the routing mode (devmeter/router.py).
- **no answer** within `ask_timeout_seconds`: the held requests are refused with a
  `devmeter:` message saying how to go on, and so is every later request of that scope
  until someone answers, so an unattended runaway stops by itself.

Past the last listed level the asks go on, one step apart (the gap between the last two
levels, or the last level itself when there is one): `[25, 50]` asks at 25, 50, 75, 100...

`AskBook` is pure state: no I/O, no clock, no asyncio. The proxy's Meter checks it
before forwarding a request and waits for the answer off the request path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from devmeter.alerts import Alert, Block
from devmeter.budget import SCOPES, Advice, Budgets, describe, lift_command
from devmeter.control import Control
from devmeter.labels import repo_name
from devmeter.money import format_usd
from devmeter.paths import write_private
from devmeter.usage import Attribution

Choice = Literal["continue", "stop", "switch"]
CHOICES: tuple[Choice, ...] = ("continue", "stop", "switch")
# (scope, attribution, now) -> the scope's key for this request and what it spent so far.
Spend = Callable[[str, Attribution, float], tuple[str | None, Decimal]]

ZERO = Decimal(0)


@dataclass(frozen=True)
class Ask:
    """One open question: may `(scope, key)` spend past `level`?"""

    scope: str
    key: str
    level: Decimal  # the ask level crossed
    until: Decimal  # what Continue allows: the next level above the spend
    spent: Decimal
    created: float
    deadline: float
    attribution: Attribution
    switch_to: str | None = None  # the cheaper model a routing rule would send it to

    @property
    def id(self) -> str:
        return ask_id(self.scope, self.key, self.level)

    @property
    def stop_label(self) -> str:
        return STOP_LABELS.get(self.scope, "Stop")

    def alert(self, advice: Advice | None = None) -> AskAlert:
        return AskAlert(
            self.created,
            "ask",
            self.scope,
            self.key,
            self.level,
            ask_message(self, advice),
            self.attribution.tool,
            self.attribution.repo,
            self.attribution.session,
            switch_to=self.switch_to,
        )


@dataclass(frozen=True)
class AskAlert(Alert):
    """An ask's alert (a ledger row like any other), with what its buttons may offer."""

    switch_to: str | None = None


STOP_LABELS = {
    "session": "Stop this session",
    "repo": "Stop this repo",
    "day": "Stop for today",
    "month": "Stop for this month",
}


def ask_id(scope: str, key: str, level: Decimal) -> str:
    """`session:<key>:25`: names one level of one key, so an old answer never answers a
    later ask. The key may hold colons (a Windows repo path); scope and level cannot."""
    return f"{scope}:{key}:{level.normalize():f}"


def parse_ask_id(value: str) -> tuple[str, str, Decimal] | None:
    scope, _, rest = value.partition(":")
    key, _, level = rest.rpartition(":")
    if scope not in SCOPES or not key:
        return None
    try:
        return scope, key, Decimal(level)
    except ArithmeticError:
        return None


def levels_after(levels: tuple[Decimal, ...], spent: Decimal) -> Decimal:
    """The first ask level above `spent`, extending the list by its last step."""
    for level in levels:
        if level > spent:
            return level
    step = levels[-1] - levels[-2] if len(levels) > 1 else levels[-1]
    last = levels[-1]
    steps = int((spent - last) // step) + 1
    return last + step * steps


def level_reached(levels: tuple[Decimal, ...], spent: Decimal) -> Decimal:
    """The highest ask level at or below `spent` (levels extended by their last step)."""
    above = levels_after(levels, spent)
    below = [level for level in levels if level <= spent]
    if above in levels:
        return below[-1] if below else levels[0]
    step = levels[-1] - levels[-2] if len(levels) > 1 else levels[-1]
    return above - step


def _subject(ask: Ask, advice: Advice) -> str:
    if ask.scope == "session":
        return advice.who(ask.attribution)
    if ask.scope == "repo":
        return f"Repo {repo_name(ask.key)}"
    return f"Spend for {ask.key}"


def _command(scope: str, key: str, advice: Advice) -> str:
    """The command that continues, with the shortest session id that resolves."""
    return lift_command(scope, advice.short_id(key) if scope == "session" else key)


def ask_message(ask: Ask, advice: Advice | None = None) -> str:
    """The notification's text: what crossed, what is held, what each answer does. The
    command comes early: desktops cut long texts (Windows at 256 characters)."""
    advice = advice or Advice()
    switch = f"; Switch moves it to {ask.switch_to}" if ask.switch_to else ""
    return (
        f"{_subject(ask, advice)} passed {format_usd(ask.level)}: its next request waits for "
        f"you. Continue, or `{_command(ask.scope, ask.key, advice)}`, lets it spend up to "
        f"{format_usd(ask.until)}{switch}; no answer in {_seconds(ask)} stops it."
    )


def _seconds(ask: Ask) -> str:
    return f"{round(ask.deadline - ask.created)} s"


class AskBook:
    """Open asks, what each scope may spend before the next one, and stopped scopes."""

    def __init__(self, budgets: Budgets, spend: Spend, advice: Advice | None = None) -> None:
        self.budgets = budgets
        # How messages name sessions and actions (the guard's: shortest ids, menu or not).
        self.advice = advice or Advice()
        self._spend = spend
        self._limits: dict[tuple[str, str], Decimal] = {}  # spend allowed before asking
        self._open: dict[tuple[str, str], Ask] = {}
        self._expired: set[str] = set()  # ids of open asks nobody answered in time
        # -> (when it was stopped, what `devmeter allow` then lets it spend up to)
        self._stopped: dict[tuple[str, str], tuple[float, Decimal]] = {}
        self._switched: list[str] = []  # sessions switched to a cheaper model, not yet taken
        self._asking_cache: tuple[Budgets, tuple[tuple[str, tuple[Decimal, ...]], ...]] | None = (
            None
        )
        self.version = 0  # bumped whenever the open asks change (for whoever shows them)

    @property
    def open_asks(self) -> list[Ask]:
        return list(self._open.values())

    def pending(self) -> list[dict[str, Any]]:
        """The open asks for `asks.json`, each saying whether it already timed out."""
        return pending_json(self._open.values(), self._expired)

    def check(self, attribution: Attribution, now: float) -> tuple[Ask, bool] | Block | None:
        """None: send the request. A Block: refuse it. (ask, new): hold it for `ask`;
        `new` the first time, when the caller raises the ask's alert."""
        for scope, levels in self._asking():
            key, spent = self._spend(scope, attribution, now)
            if key is None:
                continue
            slot = (scope, key)
            if slot in self._stopped:
                return stopped_block(scope, key, attribution, self.advice)
            if self._open:
                self._drop_past_periods(scope, key, spent)
            ask = self._open.get(slot)
            if ask is not None:
                if ask.id in self._expired:
                    return unanswered_block(ask, attribution, self.advice)
                return ask, False
            limit = self._limits.get(slot, levels[0])
            if spent < limit:
                continue
            level = max(level_reached(levels, spent), limit)
            ask = Ask(
                scope,
                key,
                level,
                levels_after(levels, spent),
                spent,
                now,
                now + self.budgets.ask_timeout_seconds,
                attribution,
            )
            self._open[slot] = ask
            self.version += 1
            return ask, True
        return None

    def _drop_past_periods(self, scope: str, key: str, spent: Decimal) -> None:
        """Close asks a new period made moot: yesterday's day ask, or a repo's whose
        spend started again from $0 (spend only ever falls when its period ends)."""
        for slot, ask in list(self._open.items()):
            if slot[0] != scope:
                continue
            moot = (
                slot[1] != key
                if scope in ("day", "month")
                else (slot[1] == key and spent < ask.level)
            )
            if moot:
                self._close(ask)
                self._limits.pop(slot, None)

    def _asking(self) -> tuple[tuple[str, tuple[Decimal, ...]], ...]:
        """The scopes with ask levels: worked out once per Budgets (this runs per request)."""
        cached = self._asking_cache
        if cached is None or cached[0] is not self.budgets:
            scopes = tuple(
                (scope, self.budgets.scope(scope).ask_usd)
                for scope in SCOPES
                if self.budgets.scope(scope).ask_usd
            )
            cached = self._asking_cache = (self.budgets, scopes)
        return cached[1]

    def offer_switch(self, ask: Ask, model: str | None) -> Ask:
        """A session's open ask may offer Switch, to `model`; returns the ask as it is now."""
        if model is None or ask.scope != "session" or self._open.get(("session", ask.key)) != ask:
            return ask
        offered = replace(ask, switch_to=model)
        self._open[("session", ask.key)] = offered
        return offered

    def take_switched(self) -> list[str]:
        """Sessions the user switched to a cheaper model since the last call."""
        taken, self._switched = self._switched, []
        return taken

    def expire(self, ask: Ask) -> None:
        """Nobody answered in time: refuse this scope's requests until someone does."""
        if self._open.get((ask.scope, ask.key)) == ask and ask.id not in self._expired:
            self._expired.add(ask.id)
            self.version += 1

    def answered(self, ask: Ask) -> bool:
        return self._open.get((ask.scope, ask.key)) != ask

    def apply(self, control: Control) -> None:
        """The answers in control.json: to asks (by id), `devmeter allow` and `devmeter
        stop` entries."""
        for ask_id_text, choice, when in control.answers:
            self._answer(ask_id_text, choice, when)
        for scope, key, when in control.allowed:
            slot = (scope, key)
            stopped = self._stopped.get(slot)
            if stopped is not None and when >= stopped[0]:
                del self._stopped[slot]
                self._limits[slot] = max(self._limits.get(slot, ZERO), stopped[1])
                self.version += 1
            ask = self._open.get(slot)
            if ask is not None and when >= ask.created:
                self._continue(ask.scope, ask.key, ask.level)
        for session, when in control.stopped:
            # `devmeter stop` (or a popup's advice followed in a terminal) answers the
            # session's open ask as its Stop button does; left open, the tray menu and the
            # popup would go on asking about a session already stopped.
            slot = ("session", session)
            ask = self._open.get(slot)
            if ask is not None and when >= ask.created:
                self._close(ask)
                self._stopped[slot] = (when, ask.until)

    def answer(self, ask: Ask, choice: Choice, when: float) -> None:
        self._answer(ask.id, choice, when)

    def _answer(self, ask_id_text: str, choice: str, when: float) -> None:
        parsed = parse_ask_id(ask_id_text)
        if parsed is None:
            return
        scope, key, level = parsed
        ask = self._open.get((scope, key))
        if choice == "stop":
            # Only the open ask can be stopped: an old "stop" in control.json, answered
            # before a restart and lifted with `allow` since, must not stop it again.
            if ask is not None and ask.level == level:
                self._close(ask)
                self._stopped[(scope, key)] = (when, ask.until)
        elif choice == "continue":
            self._continue(scope, key, level)
        elif choice.startswith("continue:"):  # `devmeter allow --by`: up to this much
            try:
                until = Decimal(choice.partition(":")[2])
            except ArithmeticError:
                return
            self._continue(scope, key, level, until)
        elif choice == "switch" and scope == "session":
            if key not in self._switched:
                self._switched.append(key)
            self._continue(scope, key, level)

    def _continue(
        self, scope: str, key: str, level: Decimal, chosen: Decimal | None = None
    ) -> None:
        levels = self.budgets.scope(scope).ask_usd
        if not levels:
            return
        slot = (scope, key)
        ask = self._open.get(slot)
        until = ask.until if ask is not None and ask.level == level else levels_after(levels, level)
        if chosen is not None:
            until = chosen
        if until > self._limits.get(slot, ZERO):
            self._limits[slot] = until
        if ask is not None and ask.level <= level:
            self._close(ask)

    def _close(self, ask: Ask) -> None:
        self._open.pop((ask.scope, ask.key), None)
        self._expired.discard(ask.id)
        self.version += 1


def stopped_block(
    scope: str, key: str, attribution: Attribution, advice: Advice | None = None
) -> Block:
    advice = advice or Advice()
    where = "" if scope == "session" else f" (this request: {describe(attribution)})"
    return Block(
        scope,
        key,
        None,
        None,
        f"devmeter: you chose {STOP_LABELS.get(scope, 'Stop')} when devmeter asked before "
        f"spending more{where}, so this request was not sent. Run "
        f"`{_command(scope, key, advice)}` to let it go on.",
        reason="ask",
    )


def unanswered_block(ask: Ask, attribution: Attribution, advice: Advice | None = None) -> Block:
    advice = advice or Advice()
    where = "" if ask.scope == "session" else f" (this request: {describe(attribution)})"
    menu = "tray menu or notification" if advice.menu else "notification"
    return Block(
        ask.scope,
        ask.key,
        ask.level,
        ask.spent,
        f"devmeter: {_subject(ask, advice)} passed {format_usd(ask.level)} "
        f"({format_usd(ask.spent)} "
        f"spent) and nobody answered devmeter's ask within {_seconds(ask)}, so this "
        f"request{where} was not sent. To go on up to {format_usd(ask.until)}, run "
        f"`{_command(ask.scope, ask.key, advice)}` or choose Continue in the devmeter "
        f"{menu}.",
        reason="ask",
    )


def pending_json(asks: Iterable[Ask], expired: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The open asks as the tray reads them from `asks.json`."""
    expired = set(expired)
    return [
        {
            "id": ask.id,
            "scope": ask.scope,
            "key": ask.key,
            "level_usd": float(ask.level),
            "until_usd": float(ask.until),
            "spent_usd": float(ask.spent),
            "created": ask.created,
            "deadline": ask.deadline,
            "tool": ask.attribution.tool,
            "repo": ask.attribution.repo,
            "session": ask.attribution.session,
            "expired": ask.id in expired,
            "switch_to": ask.switch_to,
        }
        for ask in asks
    ]


def asks_path(data_dir: Path) -> Path:
    """Where the proxy lists its open asks for the tray menu."""
    return data_dir / "asks.json"


def write_pending(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    write_private(tmp, json.dumps(rows, indent=1))  # 0600, as all state
    tmp.replace(path)


def read_pending(path: Path) -> list[dict[str, Any]]:
    """The open asks the proxy listed; nothing if it listed none or the file is unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [a for a in raw if isinstance(a, dict) and "id" in a] if isinstance(raw, list) else []
