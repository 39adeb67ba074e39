"""The dashboard's pages: HTML and the JSON the today view polls.

Every figure comes from the query layer `devmeter report` uses (`reports.query`,
`reports.spend_series`, `sessions.query_sessions`), so the page and `report --json`
agree to the pico-dollar; each money cell carries its exact figure in `data-usd`.
Everything from the ledger is escaped: names come from the network.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any
from urllib.parse import quote

from devmeter import reports, sessions
from devmeter.clock import local_midnight
from devmeter.dashboard.charts import stacked_bars

PERIODS = {"today": 1, "7d": 7, "30d": 30}
PERIOD_BYS = ("repo", "model", "tool")
POLL_SECONDS = 2


def _money(usd: Decimal | None, figure: str = "", exact: Decimal | None = None) -> str:
    """A dollar figure as people read it, with the exact one in `data-usd` for tools
    (`exact` when it differs from what is shown: an unpriced group's priced part, $0)."""
    attr = f' data-figure="{escape(figure)}"' if figure else ""
    exact = usd if exact is None else exact
    data = "" if exact is None else f' data-usd="{exact}"'
    return f'<span class="usd"{attr}{data}>{escape(reports.format_usd(usd))}</span>'


def _name(value: object, limit: int = 60) -> str:
    return escape(reports.cell(value, limit, "tail"))


def cache_hit_rate(row: dict[str, Any]) -> str:
    """Cache reads as a share of all input tokens (fresh, cache reads, cache writes)."""
    read = row["cache_read_tokens"] or 0
    total = (row["input_tokens"] or 0) + read + (row["cache_write_tokens"] or 0)
    return f"{read / total:.1%}" if total else "-"


def _group_table(rows: list[dict[str, Any]], by: str) -> str:
    body = "".join(
        f'<tr data-key="{escape(str(r["key"]))}"><td>{_name(r["key"])}</td>'
        f'<td class="n">{r["requests"]:,}</td><td class="n cache">{cache_hit_rate(r)}</td>'
        '<td class="n">'
        f"{_money(r['cost_usd'] if r['unpriced'] < r['requests'] else None, exact=r['cost_usd'])}"
        "</td></tr>"
        for r in rows
    )
    return (
        f'<table class="by-{by}"><tr><th>{by}</th><th>calls</th><th>cache hit</th>'
        f"<th>cost</th></tr>{body or '<tr><td colspan=4>No calls.</td></tr>'}</table>"
    )


def _sessions_table(found: list[sessions.Session], token_form: str) -> str:
    if not found:
        return "<p>No live sessions (none with a call in the last 10 minutes).</p>"
    labels = reports.session_labels(s.session for s in found)
    rows = []
    for s in found:
        link = escape(labels.get(s.session or "", "")) or _name(s.key, 40)
        spend = s.cost_usd if s.unpriced < s.calls else None  # "unpriced", as reports say
        if s.session:
            link = f'<a href="/session?id={quote(s.session)}">{link}</a>'
        rows.append(
            f'<tr data-key="{escape(s.key)}"><td>{link}</td><td>{_name(s.tool, 24)}</td>'
            f"<td>{_name(s.repo or reports.NO_REPO)}</td><td>{_name(s.branch or '-', 24)}</td>"
            f"<td>{_name(', '.join(s.models), 60)}</td><td class=n>{s.calls:,}</td>"
            f'<td class="n">{_money(spend, exact=s.cost_usd)}</td>'
            f'<td class="n">{escape(reports.format_usd(s.burn_usd_per_hour))}/h</td></tr>'
        )
    return (
        "<table class=sessions><tr><th>session</th><th>tool</th><th>repo</th><th>branch</th>"
        "<th>models</th><th>calls</th><th>spend</th><th>burn</th></tr>" + "".join(rows) + "</table>"
    )


def _alerts_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No alerts.</p>"
    items = "".join(
        f"<li><time>{escape(r['ts'][11:19])}</time> <b>{_name(r['kind'], 20)}</b> "
        f"{_name(r['message'], 300)}</li>"
        for r in reversed(rows[-20:])
    )
    return f"<ul class=alerts>{items}</ul>"


def today_data(conn: sqlite3.Connection | None, now: float, token_form: str) -> dict[str, Any]:
    """What the today view shows, and what its poll returns: figures plus the HTML."""
    since = local_midnight(now)
    if conn is None:
        by_repo: list[dict[str, Any]] = []
        series: list[tuple[str, str, Decimal]] = []
        live: list[sessions.Session] = []
        alerts: list[dict[str, Any]] = []
    else:
        by_repo, series = reports.grouped_series(conn, since, "hour", "repo")
        live = sessions.query_sessions(conn, now=now, live_only=True)
        alerts = reports.alerts(conn, since)
    total = sum((r["cost_usd"] for r in by_repo), Decimal(0))
    hour0 = datetime.fromtimestamp(since)
    steps = [(hour0 + timedelta(hours=h)).strftime("%Y-%m-%d %H:00") for h in range(24)]
    html = (
        f"<p class=total>Today: {_money(total, 'today-total')} in "
        f"<span data-figure=today-calls>{sum(r['requests'] for r in by_repo):,}</span> calls"
        f" · updated {datetime.fromtimestamp(now).strftime('%H:%M:%S')}</p>"
        "<h2>Spend by hour, by repo</h2>"
        + stacked_bars(steps, series, "Today's spend by hour, stacked by repo", label_every=3)
        + "<h2>Today by repo</h2>"
        + _group_table(by_repo, "repo")
        + "<h2>Live sessions</h2>"
        + _sessions_table(live, token_form)
        + "<h2>Alerts today</h2>"
        + _alerts_list(alerts)
    )
    return {
        "total_usd": total,
        "calls": sum(r["requests"] for r in by_repo),
        "by_repo": by_repo,
        "live_sessions": [s.key for s in live],
        "alerts": len(alerts),
        "html": html,
    }


def period_html(conn: sqlite3.Connection | None, now: float, period: str, by: str) -> str:
    days = PERIODS[period]
    since = local_midnight(now) - (days - 1) * 86400
    rows, series = reports.grouped_series(conn, since, "day", by) if conn else ([], [])
    top = reports.query(conn, "session", since, limit=10) if conn else []
    start = datetime.fromtimestamp(since)
    steps = [(start + timedelta(days=d)).strftime("%Y-%m-%d") for d in range(days)]
    total = sum((r["cost_usd"] for r in rows), Decimal(0))
    pickers = " ".join(
        f'<a href="/period?p={period}&amp;by={b}"{" class=on" if b == by else ""}>{b}</a>'
        for b in PERIOD_BYS
    )
    top_rows = "".join(
        f'<tr><td><a href="/session?id={quote(str(r["key"]))}">{_name(r["key"], 40)}</a></td>'
        f"<td class=n>{r['requests']:,}</td><td class=n>{_money(r['cost_usd'])}</td></tr>"
        for r in top
        if r["key"] != reports.UNATTRIBUTED
    )
    return (
        f"<p class=total>{escape(period)}: {_money(total, 'period-total')} · by {pickers}</p>"
        f"<h2>Spend by day, by {by}</h2>"
        + stacked_bars(
            steps, series, f"Spend by day, stacked by {by}", label_every=1 if days < 10 else 3
        )
        + f"<h2>By {by}</h2>"
        + _group_table(rows, by)
        + "<h2>Top sessions</h2><table class=top><tr><th>session</th><th>calls</th>"
        f"<th>cost</th></tr>{top_rows}</table>"
    )


def session_html(conn: sqlite3.Connection | None, session: str, token_form: str) -> str:
    calls = reports.session_calls(conn, session) if conn else []
    alerts = reports.session_alerts(conn, session) if conn else []
    total = sum((c["cost_usd"] or Decimal(0) for c in calls), Decimal(0))
    points = [(c["ts"][11:19], c["model"] or "?", c["cost_usd"] or Decimal(0)) for c in calls]
    steps = [p[0] for p in points]
    rows = "".join(
        f"<tr><td>{escape(c['ts'][:19].replace('T', ' '))}</td><td>{_name(c['tool'], 24)}</td>"
        f"<td>{_name(c['model'] or c['requested_model'] or '?', 40)}</td>"
        + "".join(
            f"<td class=n>{c[k] or 0:,}</td>"
            for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
        )
        + f"<td class=n>{_money(c['cost_usd'])}</td><td>{_name(c['routing'] or '-', 12)}</td></tr>"
        for c in calls
    )
    lift = (
        '<form method=post action="/api/allow">'
        f'<input type=hidden name=session value="{escape(session)}">{token_form}'
        "<button>Lift this session's cap</button></form> (as `devmeter allow` does)"
    )
    return (
        f"<h2>Session {_name(session, 60)}</h2>"
        f"<p class=total>{len(calls):,} calls · {_money(total, 'session-total')}</p><p>{lift}</p>"
        + stacked_bars(
            steps,
            points,
            "Cost per call, by model",
            label_every=max(len(steps) // 12, 1),
            label_chars=8,
        )
        + "<table class=calls><tr><th>time</th><th>tool</th><th>model</th><th>in</th>"
        "<th>cache r</th><th>cache w</th><th>out</th><th>cost</th><th>routing</th></tr>"
        + (rows or "<tr><td colspan=9>No calls.</td></tr>")
        + "</table><h2>Alerts</h2>"
        + _alerts_list(alerts)
    )


STYLE = """
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
nav a{margin-right:1em} nav a.on,p a.on{font-weight:bold}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:2px 8px;border-bottom:1px solid #ddd}
td{white-space:nowrap} td.n{text-align:right;font-variant-numeric:tabular-nums}
.total{font-size:1.3em}
.legend .key{margin-right:1em} .legend i{display:inline-block;width:10px;height:10px;
margin-right:4px} form{display:inline}
"""


def layout(title: str, nav: str, body: str, token_form: str, paused: bool, poll: bool) -> str:
    action = "resume" if paused else "pause"
    state = "<b>paused</b>: metered traffic is refused" if paused else "metering"
    control = (
        f'<form method=post action="/api/{action}">{token_form}'
        f"<button>{action.title()} all metered traffic</button></form>"
    )
    script = '<script src="/dashboard.js"></script>' if poll else ""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<nav>{nav} · {state} {control}</nav>"
        f'<main id=live data-poll="{POLL_SECONDS}">{body}</main>{script}</body></html>'
    )


def nav(current: str) -> str:
    links = [("today", "/", "Today"), ("7d", "/period?p=7d", "7 days"),
             ("30d", "/period?p=30d", "30 days")]  # fmt: skip
    return " ".join(
        f'<a href="{href}"{" class=on" if key == current else ""}>{label}</a>'
        for key, href, label in links
    )


# Polls the JSON endpoint and swaps in the fresh HTML: no reload, no library.
SCRIPT = """
(function () {
  var main = document.getElementById('live');
  var every = 1000 * Number(main.dataset.poll || 2);
  function poll() {
    fetch('/api/today', {credentials: 'same-origin', cache: 'no-store'})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { main.innerHTML = data.html; } })
      .catch(function () {})
      .then(function () { setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
"""


def now() -> float:
    return time.time()
