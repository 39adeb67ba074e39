"""`devmeter sessions`: live and recent sessions from the ledger, with their burn rate.

A session is what the guard rails call one (`session_table.session_key`): the tool's own
session id, else `tool@repo` for calls that came with none. Shown: sessions with a
call in the last 24 hours (by default), `live` when one ended in the last
`LIVE_SECONDS` (10 minutes: the one live window, the tray's too).

Burn rate, in $/hour:
- **10 min**: spend in the last 10 minutes, scaled to an hour: over the whole window, or
  over the session's age when it is younger (never under a minute), by the same function
  the burn-rate alerts use (`runaway.burn_rate`), so both print the same figure;
- **life**: the session's spend over its span from first call to last; none for a
  session shorter than a minute.

A session with an id is shown whole, even if it began before the window; one without
an id (`tool@repo`) only for its calls in the window. Imported rows (Cursor's CSV) are
not sessions and are left out. Pure functions over a sqlite3 connection, plus output.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from devmeter.live_window import LIVE_SECONDS
from devmeter.money import PICO
from devmeter.money import format_usd as format_cents
from devmeter.reports import NO_REPO, cell, format_count, format_usd, plural, session_labels
from devmeter.runaway import burn_rate
from devmeter.text_table import TextTable, render

DEFAULT_SINCE = 24 * 3600.0
WINDOW_SECONDS = 10 * 60.0
MIN_SPAN_SECONDS = 60.0

FIELDS = (
    "key", "session", "tool", "repo", "branch", "model", "live", "first_seen", "last_seen",
    "calls", "cost_usd", "window_usd", "burn_usd_per_hour", "life_burn_usd_per_hour",
    "unpriced", "estimated", "tools", "models", "billed_usd", "covered_usd",
)  # fmt: skip


@dataclass(frozen=True)
class Session:
    key: str  # session id, or tool@repo without one
    session: str | None
    tool: str
    repo: str | None  # the latest repo the session worked in
    branch: str | None
    model: str | None  # the model of its latest call
    live: bool
    first_seen: float  # unix seconds: first call's start
    last_seen: float  # last call's end
    calls: int
    cost_usd: Decimal  # priced calls only; `unpriced` counts the others
    window_usd: Decimal  # spent in the last WINDOW_SECONDS
    burn_usd_per_hour: Decimal  # over the last WINDOW_SECONDS, or the session's age if shorter
    life_burn_usd_per_hour: Decimal | None  # over the session's span; None under a minute
    unpriced: int
    estimated: int
    tools: tuple[str, ...] = ()  # every tool the session's calls came from, sorted
    models: tuple[str, ...] = ()  # every model it used, sorted
    # Who paid (devmeter/billing.py): API keys and extra usage; subscriptions' list price.
    billed_usd: Decimal = Decimal(0)
    covered_usd: Decimal = Decimal(0)


_SQL = """
WITH c AS (
    SELECT id, ts, ts + duration_ms / 1000.0 AS end_ts, tool, repo, branch, session,
           coalesce(model, requested_model) AS model, cost_pusd, estimated, billing,
           coalesce(session, tool || '@' || coalesce(repo, '?')) AS skey
    FROM calls
    WHERE endpoint NOT LIKE '%.import' {live_filter}
      AND (ts >= :since
           -- `+session`: read the window by its time index, not the whole session index
           OR session IN (SELECT +session FROM calls
                          WHERE ts >= :since AND +session IS NOT NULL))
),
latest AS (
    SELECT skey, tool, repo, branch, model FROM (
        SELECT skey, tool, repo, branch, model,
               row_number() OVER (PARTITION BY skey ORDER BY repo IS NULL, ts DESC, id DESC) AS n
        FROM c
    ) WHERE n = 1
)
SELECT c.skey, max(c.session), latest.tool, latest.repo, latest.branch, latest.model,
       min(c.ts), max(c.end_ts), count(*), coalesce(sum(c.cost_pusd), 0),
       coalesce(sum(CASE WHEN c.end_ts > :window_start THEN c.cost_pusd END), 0),
       sum(c.cost_pusd IS NULL), sum(c.estimated),
       json_group_array(DISTINCT c.tool), json_group_array(DISTINCT c.model),
       coalesce(sum(CASE WHEN c.billing IN ('api', 'overage') THEN c.cost_pusd END), 0),
       coalesce(sum(CASE WHEN c.billing = 'subscription' THEN c.cost_pusd END), 0)
FROM c JOIN latest ON latest.skey = c.skey
GROUP BY c.skey
"""
# Live only: the sessions of a call that ended in the live window, picked before the
# rest of the query reads their calls (a day of calls is ~10 000 rows on a busy ledger).
_LIVE_FILTER = """
      AND coalesce(session, tool || '@' || coalesce(repo, '?')) IN (
          SELECT coalesce(session, tool || '@' || coalesce(repo, '?')) FROM calls
          WHERE ts >= :since AND ts + duration_ms / 1000.0 >= :live_start)"""


def query_sessions(
    conn: sqlite3.Connection,
    now: float | None = None,
    since: float | None = None,
    live_only: bool = False,
) -> list[Session]:
    """Sessions with a call since `since` (default: the last 24 hours), live ones first,
    then the most recently active."""
    now = time.time() if now is None else now
    since = now - DEFAULT_SINCE if since is None else since
    params = {"since": since, "window_start": now - WINDOW_SECONDS,
              "live_start": now - LIVE_SECONDS}  # fmt: skip
    sql = _SQL.format(live_filter=_LIVE_FILTER if live_only else "")
    sessions = []
    for row in conn.execute(sql, params).fetchall():
        (key, session, tool, repo, branch, model, first, last, calls, pusd, window_pusd,
         unpriced, estimated, tools, models, billed_pusd, covered_pusd) = row  # fmt: skip
        cost, window = Decimal(pusd) / PICO, Decimal(window_pusd) / PICO
        span = last - first
        sessions.append(
            Session(
                key=key,
                session=session,
                tool=tool,
                repo=repo,
                branch=branch,
                model=model,
                live=last >= now - LIVE_SECONDS,
                first_seen=first,
                last_seen=last,
                calls=calls,
                cost_usd=cost,
                window_usd=window,
                burn_usd_per_hour=burn_rate(window, first, now, WINDOW_SECONDS),
                life_burn_usd_per_hour=(
                    cost * 3600 / Decimal(str(span)) if span >= MIN_SPAN_SECONDS else None
                ),
                unpriced=unpriced or 0,
                estimated=estimated or 0,
                tools=_names(tools),
                models=_names(models),
                billed_usd=Decimal(billed_pusd) / PICO,
                covered_usd=Decimal(covered_pusd) / PICO,
            )
        )
    if live_only:
        sessions = [s for s in sessions if s.live]
    sessions.sort(key=lambda s: (not s.live, -s.last_seen))
    return sessions


def spend_by_interval(
    conn: sqlite3.Connection, keys: Sequence[str], start: float, step: float, count: int
) -> dict[str, list[Decimal]]:
    """The spend of each session in `keys` (`Session.key`) per `step` seconds, `count`
    steps from `start`, oldest first: a sparkline's points. Unpriced calls add nothing."""
    sql = """
        SELECT coalesce(session, tool || '@' || coalesce(repo, '?')),
               CAST((ts - :start) / :step AS INTEGER), sum(cost_pusd)
        FROM calls WHERE ts >= :start AND endpoint NOT LIKE '%.import'
        GROUP BY 1, 2
    """
    wanted = set(keys)
    series = {key: [Decimal(0)] * count for key in keys}
    params = {"start": start, "step": step}
    for key, n, pusd in conn.execute(sql, params).fetchall():
        if key in wanted and 0 <= n < count and pusd:
            series[key][n] = Decimal(pusd) / PICO
    return series


def _names(json_array: str | None) -> tuple[str, ...]:
    return tuple(sorted(n for n in json.loads(json_array or "[]") if isinstance(n, str) and n))


# --- output --------------------------------------------------------------------------------


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return float(round(value, 12))
    return value


def to_json(sessions: Sequence[Session]) -> str:
    """One object per session: times as local ISO 8601, money as USD numbers."""
    out = []
    for s in sessions:
        item: dict[str, Any] = {k: _json_value(v) for k, v in asdict(s).items()}
        for name in ("first_seen", "last_seen"):
            item[name] = (
                datetime.fromtimestamp(item[name]).astimezone().isoformat(timespec="seconds")
            )
        out.append({k: item[k] for k in FIELDS})
    return json.dumps(out, indent=1) + "\n"


def _when(ts: float, now: float) -> str:
    moment, today = datetime.fromtimestamp(ts), datetime.fromtimestamp(now)
    if moment.date() == today.date():
        return moment.strftime("%H:%M")
    if (today.date() - moment.date()).days < 7:
        return moment.strftime("%a %H:%M")
    return moment.strftime("%Y-%m-%d")


def _rate(value: Decimal | None) -> str:
    return "-" if value is None else f"{format_cents(value)}/h"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return "just now"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    return f"{seconds / 3600:.0f} h ago"


def _listed(names: Sequence[str], latest: str | None, limit: int) -> str:
    """The latest name first, then the others: `claude-code, codex`."""
    ordered = [latest] if latest else []
    ordered += [n for n in names if n != latest]
    return cell(", ".join(ordered), limit) if ordered else "?"


def to_table(
    sessions: Sequence[Session], now: float | None = None, width: int | None = None
) -> str:
    """Sessions as a table: plain, or fitted to a terminal `width` columns wide."""
    now = time.time() if now is None else now
    if not sessions:
        return "No sessions in this period.\n"
    headers = ["", "session", "tools", "repo", "branch", "models", "first", "last", "calls",
               "spend", "10 min", "life"]  # fmt: skip
    labels = session_labels(s.session for s in sessions)
    body = [
        [
            "\u25cf" if s.live else " ",
            labels.get(s.session, "?") if s.session else f"({cell(s.tool, 24)}, no id)",
            _listed(s.tools, s.tool, 40),
            cell(s.repo or NO_REPO, 40, "tail"),
            cell(s.branch, 32),
            _listed(s.models, s.model, 60),
            _when(s.first_seen, now),
            _ago(now - s.last_seen) if s.live else _when(s.last_seen, now),
            format_count(s.calls),
            format_usd(s.cost_usd if s.unpriced < s.calls else None)
            + ("+" if s.unpriced and s.unpriced < s.calls else ""),
            _rate(s.burn_usd_per_hour) if s.window_usd else "-",
            _rate(s.life_burn_usd_per_hour),
        ]
        for s in sessions
    ]
    live = sum(s.live for s in sessions)
    total = sum((s.cost_usd for s in sessions), Decimal(0))
    billed = sum((s.billed_usd for s in sessions), Decimal(0))
    covered = sum((s.covered_usd for s in sessions), Decimal(0))
    lines = [
        f"{live} live (\u25cf a call in the last {int(LIVE_SECONDS // 60)} min) of "
        f"{plural(len(sessions), 'session')}, {format_usd(total)} spent: billed "
        f"{format_usd(billed)} (API keys, extra usage), covered {format_usd(covered)} "
        "(subscriptions, at list price)",
        "burn rate: $/hour over the last 10 minutes (a younger session: its age), and over "
        "each session's life",
    ]
    unpriced = sum(s.unpriced for s in sessions)
    if unpriced:
        verb = "is" if unpriced == 1 else "are"
        lines.append(
            f"+ {plural(unpriced, 'call')} used a model with no known price and {verb} not in "
            "the spend."
        )
    estimated = sum(s.estimated for s in sessions)
    if estimated:
        verb = "is" if estimated == 1 else "are"
        lines.append(f"~ {plural(estimated, 'call')} {verb} estimated: the wire reported no usage.")
    table = TextTable(
        headers,
        body,
        right=frozenset({8, 9, 10, 11}),
        footer=lines,
        keep=frozenset({0, 1, 6, 7}),  # live marker, session label, first and last seen
        tail=frozenset({3}),  # the repo path's end
    )
    return render(table, width)
