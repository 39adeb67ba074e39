"""The dashboard's pages: HTML, and the JSON the today view polls.

Every figure comes from the query layer `devmeter report` uses (`reports.query`,
`reports.grouped_series`, `reports.savings`, `sessions.query_sessions`), so the page and
`report --json` agree to the pico-dollar; each money cell carries its exact figure in
`data-usd`. Everything from the ledger is escaped: names come from the network.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from devmeter import reports, sessions
from devmeter.clock import local_midnight
from devmeter.control import ROUTING_MODES
from devmeter.dashboard import charts
from devmeter.dashboard.charts import sparkline, stacked_bars

PERIODS = {"today": 1, "7d": 7, "30d": 30}
CUSTOM = "custom"
PERIOD_BYS = ("repo", "model", "tool")
POLL_SECONDS = 2
MAX_CUSTOM_DAYS = 366
# A live session's sparkline: its spend per 5 minutes over the last hour.
SPARK_STEP_SECONDS = 300
SPARK_STEPS = 12
# Tokens by kind, in the order they stack on a session page (cache writes: 5 min and 1 h).
TOKEN_KINDS = ("input", "cache read", "cache write 5m", "cache write 1h", "output", "reasoning")


class PageError(ValueError):
    """A page asked for with parameters it cannot show: the message says what to send."""


def _money(usd: Decimal | None, figure: str = "", exact: Decimal | None = None) -> str:
    """A dollar figure as people read it, with the exact one in `data-usd` for tools
    (`exact` when it differs from what is shown: an unpriced group's priced part, $0)."""
    attr = f' data-figure="{escape(figure)}"' if figure else ""
    exact = usd if exact is None else exact
    data = "" if exact is None else f' data-usd="{exact}"'
    return f'<span class="usd"{attr}{data}>{escape(reports.format_usd(usd))}</span>'


def _name(value: object, limit: int = 60) -> str:
    return escape(reports.cell(value, limit, "tail"))


def _day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day).timestamp()


def cache_hit_rate(row: dict[str, Any]) -> str:
    """Cache reads as a share of all input tokens (fresh, cache reads, cache writes)."""
    read = row["cache_read_tokens"] or 0
    total = (row["input_tokens"] or 0) + read + (row["cache_write_tokens"] or 0)
    return f"{read / total:.1%}" if total else "-"


def _group_table(rows: list[dict[str, Any]], by: str) -> str:
    split = reports.who_paid(rows) is not None  # the ledger knows who paid (billing.py)
    body = "".join(
        f'<tr data-key="{escape(str(r["key"]))}"><td>{_name(r["key"])}</td>'
        f'<td class="n">{r["requests"]:,}</td><td class="n cache">{cache_hit_rate(r)}</td>'
        '<td class="n">'
        f"{_money(r['cost_usd'] if r['unpriced'] < r['requests'] else None, exact=r['cost_usd'])}"
        "</td>"
        + (
            f'<td class="n billed">{_money(r["billed_usd"])}</td>'
            f'<td class="n covered">{_money(r["covered_usd"])}</td>'
            if split
            else ""
        )
        + "</tr>"
        for r in rows
    )
    extra = "<th>billed</th><th>covered</th>" if split else ""
    empty = f"<tr><td colspan={6 if split else 4}>No calls.</td></tr>"
    return (
        f'<table class="by-{by}"><tr><th>{by}</th><th>calls</th><th>cache hit</th>'
        f"<th>cost</th>{extra}</tr>{body or empty}</table>"
    )


def _sessions_table(
    found: list[sessions.Session], sparks: dict[str, list[Decimal]] | None = None
) -> str:
    if not found:
        return "<p>No live sessions (none with a call in the last 10 minutes).</p>"
    labels = reports.session_labels(s.session for s in found)
    rows = []
    for s in found:
        link = escape(labels.get(s.session or "", "")) or _name(s.key, 40)
        spend = s.cost_usd if s.unpriced < s.calls else None  # "unpriced", as reports say
        if s.session:
            link = f'<a href="/session?id={quote(s.session)}">{link}</a>'
        points = (sparks or {}).get(s.key, [])
        spark = sparkline(points, f"{s.key}: spend per 5 minutes, last hour") if points else ""
        rows.append(
            f'<tr data-key="{escape(s.key)}"><td>{link}</td><td>{_name(s.tool, 24)}</td>'
            f"<td>{_name(s.repo or reports.NO_REPO)}</td><td>{_name(s.branch or '-', 24)}</td>"
            f"<td>{_name(', '.join(s.models), 60)}</td><td class=n>{s.calls:,}</td>"
            f'<td class="n">{_money(spend, exact=s.cost_usd)}</td>'
            f'<td class="n">{escape(reports.format_usd(s.burn_usd_per_hour))}/h</td>'
            f"<td class=spark>{spark}</td></tr>"
        )
    return (
        "<table class=sessions><tr><th>session</th><th>tool</th><th>repo</th><th>branch</th>"
        "<th>models</th><th>calls</th><th>spend</th><th>burn</th><th>last hour</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _alerts_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No alerts.</p>"
    items = "".join(
        f"<li><time>{escape(r['ts'][:19].replace('T', ' '))}</time> "
        f"<b>{_name(r['kind'], 20)}</b> {_name(r['message'], 300)}</li>"
        for r in reversed(rows[-20:])
    )
    return f"<ul class=alerts>{items}</ul>"


def today_data(conn: sqlite3.Connection | None, now: float) -> dict[str, Any]:
    """What the today view shows, and what its poll returns: figures plus the HTML."""
    since = local_midnight(now)
    sparks: dict[str, list[Decimal]] = {}
    if conn is None:
        by_repo: list[dict[str, Any]] = []
        series: list[tuple[str, str, Decimal]] = []
        live: list[sessions.Session] = []
        alerts: list[dict[str, Any]] = []
    else:
        by_repo, series = reports.grouped_series(conn, since, "hour", "repo")
        live = sessions.query_sessions(conn, now=now, live_only=True)
        alerts = reports.alerts(conn, since)
        spark_start = now - SPARK_STEP_SECONDS * SPARK_STEPS
        sparks = sessions.spend_by_interval(
            conn, [s.key for s in live], spark_start, SPARK_STEP_SECONDS, SPARK_STEPS
        )
    total = sum((r["cost_usd"] for r in by_repo), Decimal(0))
    hour0 = datetime.fromtimestamp(since)
    steps = [(hour0 + timedelta(hours=h)).strftime("%Y-%m-%d %H:00") for h in range(24)]
    html = (
        f"<p class=total>Today: {_money(total, 'today-total')} in "
        f"<span data-figure=today-calls>{sum(r['requests'] for r in by_repo):,}</span> calls"
        f"{_billed_line(by_repo)}</p>"
        "<h2>Spend by hour, by repo</h2>"
        + stacked_bars(steps, series, "Today's spend by hour, stacked by repo", label_every=3)
        + "<h2>Today by repo</h2>"
        + _group_table(by_repo, "repo")
        + "<h2>Live sessions</h2>"
        + _sessions_table(live, sparks)
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


def _billed_line(rows: list[dict[str, Any]]) -> str:
    """Billed (real money) beside covered (list-price equivalent), once the ledger knows."""
    paid = reports.who_paid(rows)  # the split `devmeter report` shows
    if paid is None:
        return ""
    rest = f" · payer not known {_money(paid.unknown, 'unknown')}" if paid.unknown > 0 else ""
    return (
        f" · billed {_money(paid.billed, 'billed')} (API keys, extra usage) · covered "
        f"{_money(paid.covered, 'covered')} (list-price equivalent of subscription calls){rest}"
    )


@dataclass(frozen=True)
class Period:
    """The days a period page shows: `first` to `last`, both included (local dates)."""

    name: str  # today, 7d, 30d or custom
    first: date
    last: date
    open_ended: bool  # up to now (no end bound): the last day is today

    @property
    def since(self) -> float:
        return _day_start(self.first)

    @property
    def until(self) -> float | None:
        return None if self.open_ended else _day_start(self.last + timedelta(days=1))

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def query(self, by: str | None = None) -> str:
        """This period's URL query (with a grouping)."""
        params = {"p": self.name}
        if self.name == CUSTOM:
            params |= {"from": self.first.isoformat(), "to": self.last.isoformat()}
        if by:
            params["by"] = by
        return urlencode(params)


def period(name: str, now: float, first: str = "", last: str = "") -> Period:
    """The period a page asks for: today, 7d, 30d, or custom from/to dates (YYYY-MM-DD)."""
    today = datetime.fromtimestamp(now).date()
    if name in PERIODS:
        return Period(name, today - timedelta(days=PERIODS[name] - 1), today, True)
    if name != CUSTOM:
        raise PageError(f"no period {name[:20]!r}: use p=today, 7d, 30d or custom")
    try:
        start, end = date.fromisoformat(first), date.fromisoformat(last)
    except ValueError:
        raise PageError(
            "a custom period needs from= and to= dates such as 2026-11-01 (YYYY-MM-DD)"
        ) from None
    if end < start:
        raise PageError("the custom period ends before it starts: swap from= and to=")
    if (end - start).days + 1 > MAX_CUSTOM_DAYS:
        raise PageError(f"a custom period shows {MAX_CUSTOM_DAYS} days at most: narrow it")
    return Period(CUSTOM, start, end, False)


def period_html(conn: sqlite3.Connection | None, chosen: Period, by: str) -> str:
    since, until = chosen.since, chosen.until
    if conn is None:
        rows: list[dict[str, Any]] = []
        series: list[tuple[str, str, Decimal]] = []
        top: list[dict[str, Any]] = []
        saved: list[dict[str, Any]] = []
    else:
        rows, series = reports.grouped_series(conn, since, "day", by, until)
        top = reports.query(conn, "session", since, limit=11, until=until)
        saved = reports.savings(conn, since, until)
    steps = [day.isoformat() for day in chosen.days]
    total = sum((r["cost_usd"] for r in rows), Decimal(0))
    pickers = " ".join(
        f'<a href="/period?{escape(chosen.query(b))}"{" class=on" if b == by else ""}>{b}</a>'
        for b in PERIOD_BYS
    )
    span = (
        chosen.first.isoformat()
        if chosen.first == chosen.last
        else f"{chosen.first.isoformat()} to {chosen.last.isoformat()}"
    )
    labels = reports.session_labels(str(r["key"]) for r in top)
    top_rows = "".join(
        f'<tr data-key="{escape(str(r["key"]))}"><td><a href="/session?id={quote(str(r["key"]))}">'
        f"{escape(labels.get(str(r['key']), '')) or _name(r['key'], 40)}</a></td>"
        f"<td class=n>{r['requests']:,}</td><td class=n>{_money(r['cost_usd'])}</td></tr>"
        for r in top
        if r["key"] != reports.UNATTRIBUTED
    )
    return (
        f"<p class=total><span data-figure=period-span>{escape(span)}</span>: "
        f"{_money(total, 'period-total')} in "
        f"<span data-figure=period-calls>{sum(r['requests'] for r in rows):,}</span> calls"
        f"{_billed_line(rows)} · by {pickers}</p>"
        f"<h2>Spend by day, by {by}</h2>"
        + stacked_bars(
            steps,
            series,
            f"Spend by day, stacked by {by}",
            label_every=max(len(steps) // 10, 1),
        )  # fmt: skip
        + f"<h2>By {by}</h2>"
        + _group_table(rows, by)
        + "<h2>Top sessions</h2><table class=top><tr><th>session</th><th>calls</th>"
        f"<th>cost</th></tr>{top_rows or '<tr><td colspan=3>No sessions.</td></tr>'}</table>"
        + "<h2>Model routing</h2>"
        + _savings_html(saved)
    )


def _savings_html(rows: list[dict[str, Any]]) -> str:
    """What routing saved (routed calls) and would have saved (shadow mode), per rule: the
    rows of `devmeter report --savings`."""
    if not rows:
        return (
            "<p>No routed or shadowed calls in this period. Routing runs in shadow mode once "
            "a rule in the config's [routing] section matches.</p>"
        )
    saved, would = reports.savings_totals(rows)
    body = "".join(
        f'<tr data-mode="{escape(r["routing"])}" data-rule="{escape(r["rule"] or "")}">'
        f"<td>{escape(r['routing'])}</td><td>{_name(r['rule'] or '-', 40)}</td>"
        f"<td>{_name(r['requested_model'] or '?', 40)}</td><td>{_name(r['target'] or '?', 40)}"
        f"</td><td class=n>{r['requests']:,}</td><td class=n>{_money(r['cost_usd'])}</td>"
        f"<td class=n>{_money(r['alt_cost_usd'])}</td><td class=n>"
        + (_money(r["saving_usd"]) if r["routing"] != "fallback" else "-")
        + "</td></tr>"
        for r in rows
    )
    return (
        f"<p>Saved {_money(saved, 'routing-saved')} by routing; shadow mode would have saved "
        f"{_money(would, 'routing-would-save')} more.</p>"
        "<table class=savings><tr><th>mode</th><th>rule</th><th>requested</th><th>target</th>"
        "<th>calls</th><th>cost</th><th>other model</th><th>saved / would save</th></tr>"
        f"{body}</table>"
    )


def _token_points(calls: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str, Decimal]]]:
    """Each call's tokens by kind, a step per call (its number and time)."""
    steps, points = [], []
    for n, c in enumerate(calls, start=1):
        step = f"#{n} {c['ts'][11:19]}"
        steps.append(step)
        one_hour = c["cache_write_1h_tokens"] or 0
        kinds = (
            c["input_tokens"], c["cache_read_tokens"],
            max((c["cache_write_tokens"] or 0) - one_hour, 0), one_hour,
            c["output_tokens"], c["reasoning_tokens"],
        )  # fmt: skip
        points += [
            (step, kind, Decimal(v or 0)) for kind, v in zip(TOKEN_KINDS, kinds, strict=True)
        ]
    return steps, points


def _routed(call: dict[str, Any]) -> str:
    """Whether a call was routed (and where), as `devmeter report --by request` records it."""
    mode, target = call["routing"], call["route_target"] or "?"
    if not mode:
        return "-"
    said = {
        "routed": f"routed → {target}",
        "shadow": f"shadow → {target}",  # would have been routed
        "fallback": f"fallback ({target} refused)",
    }.get(mode, mode)
    rule = f" · {call['route_rule']}" if call["route_rule"] else ""
    return _name(f"{said}{rule}", 90)


def session_html(conn: sqlite3.Connection | None, session: str, token_form: str) -> str:
    calls = reports.session_calls(conn, session) if conn else []
    alerts = reports.session_alerts(conn, session) if conn else []
    total = sum((c["cost_usd"] or Decimal(0) for c in calls), Decimal(0))
    steps, token_points = _token_points(calls)
    cost_points = [
        (step, c["model"] or c["requested_model"] or "?", c["cost_usd"] or Decimal(0))
        for step, c in zip(steps, calls, strict=True)
    ]
    every = max(len(steps) // 12, 1)
    rows = "".join(
        f'<tr data-n="{n}"><td title="{escape(c["ts"])}">'
        f"{escape(c['ts'][5:19].replace('T', ' '))}</td><td>{_name(c['tool'], 16)}</td>"
        f"<td>{_name(c['model'] or c['requested_model'] or '?', 40)}</td>"
        + "".join(
            f'<td class="n {k}">{c[k] or 0:,}</td>'
            for k in (
                "input_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "cache_write_1h_tokens",
                "output_tokens",
                "reasoning_tokens",
            )
        )  # fmt: skip
        + f"<td class=n>{_money(c['cost_usd'])}</td><td class=routing>{_routed(c)}</td></tr>"
        for n, c in enumerate(calls, start=1)
    )
    lift = (
        '<form method=post action="/api/allow">'
        f'<input type=hidden name=session value="{escape(session)}">{token_form}'
        "<button>Lift this session's cap</button></form> (as `devmeter allow` does)"
    )
    tokens = sum(int(v) for _, _, v in token_points)
    return (
        f"<h2>Session {_name(session, 60)}</h2>"
        f"<p class=total><span data-figure=session-calls>{len(calls):,}</span> calls · "
        f"{_money(total, 'session-total')} · <span data-figure=session-tokens>{tokens:,}"
        f"</span> tokens</p><p>{lift}</p>"
        "<h3>Tokens by kind, per call</h3>"
        + stacked_bars(
            steps,
            token_points,
            "Tokens by kind, per call",
            label_every=every,
            label_chars=8,
            keys=TOKEN_KINDS,
            figure=charts.tokens,
            axis=charts.tokens_axis,
        )  # fmt: skip
        + "<h3>Cost per call, by model</h3>"
        + stacked_bars(
            steps, cost_points, "Cost per call, by model", label_every=every, label_chars=8
        )  # fmt: skip
        + "<table class=calls><tr><th>time</th><th>tool</th><th>model</th><th>in</th>"
        "<th>cache r</th><th>cache w</th><th>(1h)</th><th>out</th><th>reas.</th>"
        "<th>cost</th><th>routing</th></tr>"
        + (rows or "<tr><td colspan=11>No calls.</td></tr>")
        + "</table><h2>Alerts</h2>"
        + _alerts_list(alerts)
    )


STYLE = """
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
nav{display:flex;flex-wrap:wrap;gap:.4em 1.5em;align-items:center;padding-bottom:.4em;
border-bottom:1px solid #ddd} nav a{margin-right:.8em} nav a.on,p a.on{font-weight:bold}
form.routing button{margin:0} form.routing button.on{font-weight:bold;color:#222}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:2px 8px;border-bottom:1px solid #ddd}
td,th{white-space:nowrap} td.n{text-align:right;font-variant-numeric:tabular-nums}
td.spark{padding:0 8px} .total{font-size:1.3em}
.legend .key{margin-right:1em} .legend i{display:inline-block;width:10px;height:10px;
margin-right:4px} form{display:inline}
"""


def _routing_switch(mode: str, pinned: bool, token_form: str) -> str:
    """Off / shadow / on, as `devmeter routing MODE` sets it (control.json); the mode in
    use is bold, and "config" hands it back to the config file once one is pinned."""

    choices = [*ROUTING_MODES, *(("config",) if pinned else ())]
    buttons = "".join(
        f'<button name=mode value="{m}"{" class=on disabled" if m == mode else ""}>{m}</button>'
        for m in choices
    )
    return (
        f'routing <b data-figure="routing-mode">{escape(mode)}</b> '
        f'<form method=post action="/api/routing" class=routing>{token_form}{buttons}</form>'
    )


def layout(title: str, nav: str, body: str, token_form: str, paused: bool, poll: str,
           routing: tuple[str, bool] = ("off", False)) -> str:  # fmt: skip
    """A whole page; `poll` is the URL its script polls to redraw `main` in place."""
    action = "resume" if paused else "pause"
    state = "<b>paused</b>: metered traffic is refused" if paused else "metering"
    control = (
        f'<form method=post action="/api/{action}">{token_form}'
        f"<button>{action.title()} all metered traffic</button></form>"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<nav><span>{nav}</span><span>{state} {control}</span>"
        f"<span>{_routing_switch(*routing, token_form)}</span></nav>"
        f'<main id=live data-poll="{POLL_SECONDS}" data-src="{escape(poll)}">{body}</main>'
        '<script src="/dashboard.js"></script></body></html>'
    )


def nav(current: str, chosen: Period | None = None) -> str:
    links = [("today", "/", "Today"), ("7d", "/period?p=7d", "7 days"),
             ("30d", "/period?p=30d", "30 days"), ("findings", "/findings", "Secrets")]  # fmt: skip
    first = chosen.first.isoformat() if chosen else ""
    last = chosen.last.isoformat() if chosen else ""
    custom = (
        "<form method=get action=/period class=custom><input type=hidden name=p value=custom>"
        f'<input type=date name=from value="{first}" required> to '
        f'<input type=date name=to value="{last}" required> <button>Show</button></form>'
    )
    return (
        " ".join(
            f'<a href="{href}"{" class=on" if key == current else ""}>{label}</a>'
            for key, href, label in links
        )
        + " "
        + custom
    )


# Polls its page's fragment and swaps it in: no reload, no library. The server answers
# 304 while the ledger has not changed (the ETag it sent), so an idle page costs little.
SCRIPT = """
(function () {
  var main = document.getElementById('live');
  var every = 1000 * Number(main.dataset.poll || 2);
  var etag = null;
  function poll() {
    var headers = etag ? {'If-None-Match': etag} : {};
    fetch(main.dataset.src, {credentials: 'same-origin', cache: 'no-store', headers: headers})
      .then(function (r) {
        if (r.status !== 200) { return null; }
        etag = r.headers.get('ETag');
        return r.text();
      })
      .then(function (html) { if (html !== null) { main.innerHTML = html; } })
      .catch(function () {})
      .then(function () { setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
"""


def now() -> float:
    return time.time()
