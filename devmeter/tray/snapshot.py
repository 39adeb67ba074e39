"""What the tray shows, read from the ledger: a pure function of (ledger, now, control).

`snapshot(conn, now, control)` returns the `TraySnapshot` that `build_menu` and the icon
are drawn from: today's and this month's spend (local calendar), the live sessions
(a call in the last `LIVE_SECONDS`), today's spend by repo, whether an alert fired
today (warning), which caps are refusing requests now (blocked), and today's secret
findings (a count and the latest one, masked).

A cap is "refusing now" when a call in the last `LIVE_SECONDS` was refused by that cap (the
row's `refused_scope`, `refused_key` and `refused_cap_pusd`), unless the user lifted that
cap since (`control.allowed`) or a later call in the same scope went through.

`headline(conn, now)` adds what the headless status line shows: today's call count, the
live session the last call came from, and the last alert. Both only read; the caller
owns the connection (read-only, see `ledger.connect_readonly`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from devmeter.clock import local_midnight, local_month_start
from devmeter.control import Control
from devmeter.labels import repo_name
from devmeter.ledger import read_quota
from devmeter.live_window import LIVE_CALLS, LIVE_SECONDS, live_call_bounds
from devmeter.money import usd
from devmeter.quota import DEFAULT_THRESHOLDS, quota_level, tightest, tray_line
from devmeter.reports import NO_REPO
from devmeter.tray.menu import ROUTING_MODES, CapRow, RoutingMode, SessionRow, TraySnapshot

# LIVE_SECONDS: a session with a call this recent is live, and a refusal this recent means
# "blocked now". One window for `devmeter sessions` and the tray alike (sessions.py).

# budget.BudgetTracker.check words every cap refusal like this:
# "devmeter: <who> reached its $5.00 cap (budgets.session.block_usd; $5.12 spent), ..."
# The statuses refusals are answered with, per client (alerts.Block.refusal).
REFUSED = "status IN (400, 402, 403) AND error LIKE 'devmeter:%'"


def snapshot(
    conn: sqlite3.Connection | None,
    now: float,
    control: Control,
    *,
    configured_routing: str = "shadow",
    quota_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> TraySnapshot:
    """The tray's view of the ledger at `now`; an empty one when there is no ledger yet.

    `sessions` come most recently active first (the tooltip's "session" is the first);
    the menu sorts them by spend itself. `configured_routing` is the config file's mode,
    used when control.json does not override it; `quota_thresholds` its `[quota]` alert
    levels, which colour the icon as the tightest window fills.
    """
    routing = _routing(control.routing_mode or configured_routing)
    if conn is None:
        return TraySnapshot(routing=routing, paused=control.paused)
    today = local_midnight(now)
    return TraySnapshot(
        today_usd=_sum(conn, "ts >= ?", (today,)),
        month_usd=_sum(conn, "ts >= ?", (local_month_start(now),)),
        sessions=live_sessions(conn, now),
        today_by_repo=tuple(
            (repo, usd(pusd))
            for repo, pusd in conn.execute(
                "SELECT repo, sum(coalesce(cost_pusd, 0)) FROM calls WHERE ts >= ? "
                "GROUP BY repo ORDER BY 2 DESC",
                (today,),
            )
        ),
        routing=routing,
        paused=control.paused,
        blocked=blocked_caps(conn, now, control),
        stopped=stopped_sessions(conn, now, control),
        warning=conn.execute("SELECT 1 FROM alerts WHERE ts >= ? LIMIT 1", (today,)).fetchone()
        is not None,
        **_billing(conn, today, now, quota_thresholds),
        **_secrets(conn, today),
    )


def _secrets(conn: sqlite3.Connection, today: float) -> dict[str, Any]:
    """Today's findings (devmeter/secrets): their count and the latest, masked as stored;
    nothing from a ledger from before findings existed."""
    try:
        (count,) = conn.execute("SELECT count(*) FROM findings WHERE ts >= ?", (today,)).fetchone()
        latest = conn.execute(
            "SELECT kind, preview, repo, action FROM findings WHERE ts >= ? "
            "ORDER BY ts DESC, id DESC LIMIT 1",
            (today,),
        ).fetchone()
    except sqlite3.OperationalError:
        return {}
    if not count:
        return {}
    kind, preview, repo, action = latest
    where = repo_name(repo) if repo else NO_REPO
    return {
        "secrets_today": int(count),
        "latest_secret": f"{kind} {preview} \u00b7 {where} \u00b7 {action}",
    }


def _billing(
    conn: sqlite3.Connection, today: float, now: float, thresholds: Sequence[float]
) -> dict[str, Any]:
    """Today's billed and covered dollars and the tightest quota window; nothing from a
    ledger the proxy has not yet migrated to hold them."""
    try:
        billed = _sum(conn, "ts >= ? AND billing IN ('api', 'overage')", (today,))
        covered = _sum(conn, "ts >= ? AND billing = 'subscription'", (today,))
        found = tightest(read_quota(conn), now)
    except sqlite3.OperationalError:
        return {}
    return {
        "today_billed_usd": billed,
        "today_covered_usd": covered,
        "quota": None if found is None else tray_line(found),
        "quota_level": quota_level(None if found is None else found.utilization, thresholds),
    }


def live_sessions(conn: sqlite3.Connection, now: float) -> tuple[SessionRow, ...]:
    """Sessions with a metered call that ended in the last `LIVE_SECONDS` (as `devmeter
    sessions --live` lists them), most recent first, with their whole spend (a session's
    budget counts all of it), tool and latest known repo."""
    rows = conn.execute(
        f"""
        SELECT s.session, max(c.ts) AS last,
               sum(coalesce(c.cost_pusd, 0)),
               (SELECT tool FROM calls t WHERE t.session = s.session ORDER BY ts DESC LIMIT 1),
               (SELECT repo FROM calls r WHERE r.session = s.session AND r.repo IS NOT NULL
                ORDER BY ts DESC LIMIT 1)
        FROM (SELECT DISTINCT session FROM calls WHERE {LIVE_CALLS} AND session IS NOT NULL) s
        JOIN calls c ON c.session = s.session
        GROUP BY s.session ORDER BY last DESC
        """,
        live_call_bounds(now),
    ).fetchall()
    return tuple(
        SessionRow(session=session, tool=tool or "unknown", repo=repo, spend_usd=usd(pusd))
        for session, _last, pusd, tool, repo in rows
    )


def blocked_caps(conn: sqlite3.Connection, now: float, control: Control) -> tuple[CapRow, ...]:
    """Caps that refused a request in the last `LIVE_SECONDS` and still stand, from the
    scope, key and cap each refused row keeps (ledger v8)."""
    refusals = conn.execute(
        "SELECT ts, refused_scope, refused_key, refused_cap_pusd FROM calls "
        "WHERE ts >= ? AND refused_cap_pusd IS NOT NULL ORDER BY ts",
        (now - LIVE_SECONDS,),
    ).fetchall()
    latest: dict[tuple[str, str], tuple[float, Decimal]] = {}
    for ts, scope, key, cap_pusd in refusals:
        if scope and key:
            latest[(scope, key)] = (ts, usd(cap_pusd))
    caps = []
    for (scope, key), (ts, cap_usd) in latest.items():
        if scope in ("day", "month") and key != _period(scope, now):
            continue  # the period rolled over: a fresh budget
        if _still_refusing(conn, control, scope, key, ts):
            caps.append(CapRow(scope, key, cap_usd))
    return tuple(caps)


def stopped_sessions(conn: sqlite3.Connection, now: float, control: Control) -> tuple[str, ...]:
    """Sessions a stop (Stop in an ask, `devmeter stop`) refused in the last `LIVE_SECONDS`
    and still refuses: the menu's only other way back was a command in the refusal text.
    A later `allow` (the menu's or the CLI's) or a call that went through ends it."""
    latest = dict(
        conn.execute(
            "SELECT refused_key, max(ts) FROM calls WHERE ts >= ? AND refused_scope = 'stop' "
            "AND refused_key IS NOT NULL GROUP BY refused_key ORDER BY 2",
            (now - LIVE_SECONDS,),
        ).fetchall()
    )
    return tuple(
        session
        for session, ts in latest.items()
        if _still_refusing(conn, control, "session", session, ts)
    )


def _still_refusing(
    conn: sqlite3.Connection, control: Control, scope: str, key: str, refused_at: float
) -> bool:
    """Whether what refused `scope`/`key` at `refused_at` still stands: no `allow` since
    (the menu's or the CLI's), and no call of it went through since (a cap raised in the
    config, a proxy restarted without it)."""
    if any(s == scope and k == key and when >= refused_at for s, k, when in control.allowed):
        return False
    return not _went_through_since(conn, scope, key, refused_at)


def _went_through_since(conn: sqlite3.Connection, scope: str, key: str, ts: float) -> bool:
    where = {"session": " AND session = ?", "repo": " AND repo = ?"}.get(scope, "")
    params: tuple[Any, ...] = (ts, key) if where else (ts,)
    sql = f"SELECT 1 FROM calls WHERE ts > ? AND NOT ({REFUSED}){where} LIMIT 1"
    return conn.execute(sql, params).fetchone() is not None


def _period(scope: str, ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d" if scope == "day" else "%Y-%m")


def _routing(mode: str) -> RoutingMode:
    for known in ROUTING_MODES:
        if mode == known:
            return known
    return "off"


def _sum(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> Decimal:
    (pusd,) = conn.execute(f"SELECT sum(cost_pusd) FROM calls WHERE {where}", params).fetchone()
    return usd(pusd)


# --- the headless line ---------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    calls_today: int = 0
    session: SessionRow | None = None  # the live session the last call came from
    last_alert: str | None = None  # today's last alert, "HH:MM kind: message"


def headline(conn: sqlite3.Connection | None, now: float, snap: TraySnapshot) -> Headline:
    if conn is None:
        return Headline()
    today = local_midnight(now)
    (count,) = conn.execute("SELECT count(*) FROM calls WHERE ts >= ?", (today,)).fetchone()
    alert = conn.execute(
        "SELECT ts, kind, message FROM alerts WHERE ts >= ? ORDER BY ts DESC, id DESC LIMIT 1",
        (today,),
    ).fetchone()
    last_alert = None
    if alert is not None:
        ts, kind, message = alert
        last_alert = f"{datetime.fromtimestamp(ts):%H:%M} {kind}: {message}"
    return Headline(
        calls_today=int(count),
        session=snap.sessions[0] if snap.sessions else None,
        last_alert=last_alert,
    )


def change_marker(conn: sqlite3.Connection | None) -> tuple[int, int]:
    """Cheap: the newest call and alert ids. The tray rebuilds only when they move."""
    if conn is None:
        return (0, 0)
    (calls,) = conn.execute("SELECT max(id) FROM calls").fetchone()
    (alerts,) = conn.execute("SELECT max(id) FROM alerts").fetchone()
    return (calls or 0, alerts or 0)
