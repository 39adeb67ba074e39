"""`devmeter allow` and `devmeter stop`: which session is meant, and what to write.

A session is named by its id or any prefix of it that only it has, among the sessions in
the ledger and in the control file; an unknown or ambiguous one is refused with the
candidates. `allow` raises a cap by a step (`budget.next_limit`, or `--by USD`) from the
cap in force, which it works out as the proxy does (`guard.apply_control` over the
ledger's spend and the control file), then writes the new limit beside its `allowed`
entry, so both agree on it. Only the control file is written; the proxy reads it.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from devmeter import control
from devmeter.budget import Advice, BudgetTracker, next_limit
from devmeter.config import Config
from devmeter.guard import apply_control, spend_so_far
from devmeter.labels import repo_name
from devmeter.ledger import connect_readonly
from devmeter.money import format_usd
from devmeter.paths import Paths

# How many candidates an error lists.
SHOWN = 8


class TargetError(Exception):
    """The session named cannot be resolved; the message says why and what to type."""


@dataclass(frozen=True)
class KnownSession:
    session: str
    tool: str | None
    repo: str | None
    last_ts: float | None


def parse_usd_arg(text: str) -> Decimal:
    try:
        amount = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise TargetError(f"--by {text!r} is not an amount of dollars; use e.g. --by 20") from None
    if not amount.is_finite() or amount <= 0:
        raise TargetError(f"--by must be a positive amount of dollars, got {text!r}")
    return amount


def known_sessions(where: Paths) -> list[KnownSession]:
    """Sessions in the ledger (most recent first), then those only the control file names."""
    found: dict[str, KnownSession] = {}
    conn = _ledger(where)
    if conn is not None:
        try:
            rows = conn.execute(
                "SELECT session, tool, repo, max(ts) FROM calls WHERE session IS NOT NULL "
                "GROUP BY session ORDER BY max(ts) DESC"
            ).fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            conn.close()
        for session, tool, repo, last in rows:
            found[session] = KnownSession(session, tool, repo, last)
    state = _control(where)
    named = [k for s, k, _ in state.allowed if s == "session"] + [k for k, _ in state.stopped]
    for session in named:
        found.setdefault(session, KnownSession(session, None, None, None))
    return list(found.values())


def resolve_session(where: Paths, text: str) -> str:
    """The one known session `text` names (its id, or a prefix only it has)."""
    text = text.strip()
    sessions = known_sessions(where)
    if not text:
        raise TargetError("name a session: its id or the first characters of it")
    exact = [s for s in sessions if s.session == text]
    if exact:
        return exact[0].session
    matches = [s for s in sessions if s.session.startswith(text)]
    if len(matches) == 1:
        return matches[0].session
    advice = _advice(sessions)
    if not matches:
        recent = _listing(sessions[:SHOWN], advice)
        hint = f" Recent sessions:\n{recent}" if recent else " No sessions are recorded yet."
        raise TargetError(
            f"no session id starts with {text!r}.{hint}\n(`devmeter sessions` lists them.)"
        )
    raise TargetError(
        f"{text!r} matches {len(matches)} sessions; give more of the id:\n"
        f"{_listing(matches[:SHOWN], advice, full=True)}"
    )


def allow(
    where: Paths, config: Config, scope: str, key: str, by: Decimal | None, now: float
) -> tuple[int, str]:
    """Raise the cap on `(scope, key)` a step (or by `by`), or let a stopped session
    continue. Returns the exit status and what to tell the user."""
    path = control.control_path(where.data_dir)
    current = _control(where)
    tracker = BudgetTracker(config.section("budgets"), config_path=str(where.config_file))
    _seed(tracker, where, now)
    apply_control(tracker, current, now)
    label = _label(scope, key, where)
    was_stopped = scope == "session" and key in tracker.stopped
    cap = tracker.cap(scope, key, now)
    asked = _answer_ask(where, scope, key, by, now)
    if asked is not None and cap is None and not was_stopped:
        return 0, f"devmeter: {label} {asked}"
    if cap is None:
        if not was_stopped:
            other = (
                " If its requests are refused, the refusal names the cap doing it: "
                "`devmeter allow --day`, `--month` or `--repo PATH` raises that one."
                if scope == "session"
                else ""
            )
            return 1, (
                f"devmeter: {label} has no cap to raise (budgets.{scope}.block_usd is not set "
                f"in {where.config_file}) and is not stopped: nothing to do.{other}"
            )
        control.update(path, allowed=(*current.allowed, (scope, key, now)))
        return 0, (
            f"devmeter: {label} may continue (it was stopped); the proxy lets its requests "
            "through within a second."
        )
    new = next_limit(config.section("budgets").scope(scope), cap, by)
    control.update(
        path,
        allowed=(*current.allowed, (scope, key, now)),
        limits=(*current.limits, (scope, key, float(new), now)),
    )
    spent = tracker.spent(scope, key, now)
    lines = [
        f"devmeter: raised the {scope} cap for {label} from {format_usd(cap)} to "
        f"{format_usd(new)} ({format_usd(spent)} spent so far); the proxy applies it within "
        "a second."
    ]
    if was_stopped:
        lines.append("It was stopped; it may continue now.")
    if new <= spent:
        lines.append(
            f"That is still not above what it spent, so its requests stay refused: "
            f"raise it more with `{_allow_command(scope, key, where)} --by USD`."
        )
    else:
        lines.append(
            f"Its thresholds still warn; `{_allow_command(scope, key, where)}` raises it again."
        )
    return 0, " ".join(lines)


def _answer_ask(where: Paths, scope: str, key: str, by: Decimal | None, now: float) -> str | None:
    """Continue the request an ask holds for `(scope, key)`, if there is one (the proxy
    lists its open asks in asks.json): up to the scope's next ask level, or `by` more
    than it has spent. What to tell the user, or None when nothing waits."""
    from devmeter.ask import asks_path, read_pending

    for ask in read_pending(asks_path(where.data_dir)):
        if ask.get("scope") != scope or ask.get("key") != key:
            continue
        until = Decimal(str(ask.get("until_usd", 0)))
        choice = "continue"
        if by is not None:
            until = Decimal(str(ask.get("spent_usd", 0))) + by
            choice = f"continue:{until}"
        control.answer(control.control_path(where.data_dir), str(ask["id"]), choice, now)
        asked = f"may spend up to {format_usd(until)} (devmeter asked at " + format_usd(
            Decimal(str(ask.get("level_usd", 0)))
        )
        if ask.get("expired"):
            # Nobody answered in time: the held request was refused then, so nothing
            # waits to go on; saying it does sends the user looking for it.
            return (
                f"{asked}; nobody answered in time, so the request it held was refused): "
                "its next request goes through."
            )
        return f"{asked}); the held request goes on within a second."
    return None


def stop(where: Paths, session: str, now: float) -> str:
    path = control.control_path(where.data_dir)
    current = _control(where)
    control.update(path, stopped=(*current.stopped, (session, now)))
    short = _advice(known_sessions(where)).short_id(session)
    return (
        f"devmeter: stopped session {short}: from within a second its requests are refused "
        f"with a devmeter message. `devmeter allow {short}` lets it continue."
    )


# --- helpers -------------------------------------------------------------------------------


def _ledger(where: Paths) -> sqlite3.Connection | None:
    try:
        return connect_readonly(where.ledger)
    except sqlite3.Error:
        return None


def _control(where: Paths) -> control.Control:
    try:
        return control.load(control.control_path(where.data_dir))
    except ValueError as exc:
        raise TargetError(str(exc)) from None


def _seed(tracker: BudgetTracker, where: Paths, now: float) -> None:
    conn = _ledger(where)
    if conn is None:
        return
    try:
        tracker.seed(spend_so_far(conn, tracker, now), now)
    except sqlite3.Error:
        pass  # no spend to show: the raise itself does not need it
    finally:
        conn.close()


def _advice(sessions: list[KnownSession]) -> Advice:
    advice = Advice()
    for s in sessions:
        advice.know(s.session)
    return advice


def _label(scope: str, key: str, where: Paths) -> str:
    if scope == "session":
        return f"session {_advice(known_sessions(where)).short_id(key)}"
    if scope == "repo":
        return f"repo {repo_name(key)}"
    return f"{scope} {key}"


def _allow_command(scope: str, key: str, where: Paths) -> str:
    if scope == "session":
        return f"devmeter allow {_advice(known_sessions(where)).short_id(key)}"
    if scope == "repo":
        return f"devmeter allow --repo {key}"
    return f"devmeter allow --{scope}"


def _listing(sessions: list[KnownSession], advice: Advice, full: bool = False) -> str:
    lines = []
    for s in sessions:
        where = f" in {repo_name(s.repo)}" if s.repo else ""
        what = f" ({s.tool}{where}" if s.tool else " (in the control file"
        when = f", {_ago(s.last_ts)})" if s.last_ts is not None else ")"
        shown = s.session if full else advice.short_id(s.session)
        lines.append(f"  {shown}{what}{when}")
    return "\n".join(lines)


def _ago(ts: float) -> str:
    seconds = max(time.time() - ts, 0)
    if seconds < 90:
        return "just now"
    if seconds < 5400:
        return f"{math.floor(seconds / 60)} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
