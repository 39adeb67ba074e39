"""The dashboard's findings page: secrets found in what agents sent (devmeter/secrets).

The rows are `devmeter findings --json`'s (`secrets.report.findings`), so the page and
the CLI agree; like them it shows the masked preview and keyed fingerprint only, never
the secret (the ledger does not hold it). Everything from the ledger is escaped.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from devmeter.reports import NO_REPO, cell
from devmeter.secrets.report import findings

# ?days= choices: today's findings by default, as the tray's count.
DAYS = (1, 7, 30)


def findings_html(
    conn: sqlite3.Connection | None, now: float, days: int, config_path: str = "config.toml"
) -> str:
    days = days if days in DAYS else 1
    since = _midnight(now) - (days - 1) * 86400
    rows = findings(conn, since) if conn is not None else []
    choices = " ".join(
        f'<a href="/findings?days={d}"{" class=on" if d == days else ""}>'
        f"{'today' if d == 1 else f'{d} days'}</a>"
        for d in DAYS
    )
    return (
        f"<h2>Secrets in requests</h2><p>{choices} \u00b7 "
        f"<span data-figure=findings>{len(rows):,}</span> found</p>"
        + _table(rows)
        + "<p>Allow one exactly with its fingerprint under <code>allow_fingerprints</code> "
        f"in <code>[secrets]</code> of <code>{escape(config_path)}</code>; "
        "<code>devmeter findings</code> lists "
        "the same rows.</p>"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No secrets found.</p>"
    body = "".join(
        f'<tr data-fingerprint="{escape(r["fingerprint"])}">'
        f"<td><time>{escape(r['ts'][:19].replace('T', ' '))}</time></td>"
        f"<td>{_text(r['kind'], 32)}</td><td><code>{_text(r['preview'], 48)}</code></td>"
        f"<td>{_text(r['location'], 60)}</td><td>{_text(r['action'], 10)}</td>"
        f"<td>{_text(r['tool'] or '-', 24)}</td><td>{_text(r['repo'] or NO_REPO, 60)}</td>"
        f"<td>{_session(r['session'])}</td><td><code>{escape(r['fingerprint'])}</code></td></tr>"
        for r in reversed(rows[-500:])  # newest first; the CLI has them all
    )
    return (
        "<table class=findings><tr><th>time</th><th>kind</th><th>preview</th><th>where</th>"
        "<th>action</th><th>tool</th><th>repo</th><th>session</th><th>fingerprint</th></tr>"
        f"{body}</table>"
    )


def _session(session: str | None) -> str:
    if not session:
        return "-"
    return f'<a href="/session?id={quote(session)}">{_text(session, 40)}</a>'


def _text(value: object, limit: int) -> str:
    return escape(cell(value, limit, "tail"))


def _midnight(now: float) -> float:
    day = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()
