"""`devmeter quota`: every quota window's latest snapshot, its pace and who used it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from devmeter.ledger import read_quota, read_quota_readings
from devmeter.money import from_pusd
from devmeter.quota import SpentCall, iso, pace, share
from devmeter.safe_text import safe_text
from devmeter.text_table import TextTable, render

SHARE_NOTE = (
    "share is an estimate: each rise of a window is split among the calls between two "
    "readings by their list-price cost; use on other machines or the web app is not seen"
)
_HISTORY_SECONDS = 8 * 86400.0  # the longest common window (7 days) and a day to spare


def quota_rows(
    conn: sqlite3.Connection, labels: Mapping[str, str], now: float
) -> list[dict[str, Any]]:
    """One row per (provider, account, window): `provider, account, window, utilization,
    resets_at, status` (the names tools read), and `label, seen_at, full_at,
    runs_out_before_reset, rate_per_hour, share_by_session, share_by_repo`."""
    readings = read_quota_readings(conn, now - _HISTORY_SECONDS)
    calls = _spent_calls(conn, now - _HISTORY_SECONDS)
    rows = []
    for snap in read_quota(conn):
        mine = [r for r in readings if r.key == snap.key]
        found = pace(mine)
        row = {
            "provider": snap.provider,
            "account": snap.account,
            "window": snap.window,
            "utilization": snap.utilization,
            "resets_at": iso(snap.resets_at),
            "status": snap.status,
            "label": labels.get(snap.account),
            "seen_at": iso(snap.ts),
            "rate_per_hour": None if found is None else round(found.rate_per_hour, 6),
            "full_at": None if found is None else iso(found.full_at),
            "runs_out_before_reset": None if found is None else found.before_reset,
            "share_by_session": _rounded(share(mine, calls, "session")),
            "share_by_repo": _rounded(share(mine, calls, "repo")),
        }
        rows.append(row)
    return rows


def _spent_calls(conn: sqlite3.Connection, since: float) -> list[SpentCall]:
    rows = conn.execute(
        "SELECT ts, account, session, repo, cost_pusd FROM calls "
        "WHERE ts >= ? AND account IS NOT NULL ORDER BY ts",
        (since,),
    ).fetchall()
    return [
        SpentCall(ts, account, session, repo, from_pusd(pusd) or Decimal(0))
        for ts, account, session, repo, pusd in rows
    ]


def _rounded(totals: Mapping[str | None, float]) -> dict[str, float]:
    return {
        (key if key is not None else "(not seen)"): round(value, 4)
        for key, value in sorted(totals.items(), key=lambda kv: -kv[1])
    }


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=1) + "\n"


def to_table(rows: Sequence[dict[str, Any]], width: int | None = None) -> str:
    """The windows as a table (text_table.py, fitted to `width`), then each window's
    top sessions by share, one line each."""
    if not rows:
        return (
            "No quota windows seen yet: they come with subscription calls (Claude Code with a "
            "Claude login, Codex with a ChatGPT login) and API rate-limit headers.\n"
        )
    headers = ["provider", "account", "window", "used", "status", "resets", "at this pace"]
    body, shares = [], []
    for r in rows:
        who = _cell(r["label"] or r["account"])
        window = _cell(r["window"])
        full_at = r["full_at"] if r["runs_out_before_reset"] else None
        body.append([
            _cell(r["provider"]), who, window,
            "?" if r["utilization"] is None else f"{r['utilization']:.0%}",
            _cell(r["status"]), _local(r["resets_at"]) or "-",
            f"full at {_local(full_at)}" if full_at else "-",
        ])  # fmt: skip
        top = list(r["share_by_session"].items())[:3]
        if top:
            parts = ", ".join(f"{_cell(k)[:16]} {v:.0%}" for k, v in top)
            shares.append(f"{who} {window}: share (estimate) by session: {parts}")
    table = TextTable(headers, body, right=frozenset({3}), footer=shares, keep=frozenset({5}))
    return render(table, width)


def _cell(value: object) -> str:
    """A cell from the network or the config: printable, bounded; "-" when empty."""
    return safe_text(value, 40) if value not in (None, "") else "-"


def _local(value: str | None) -> str:
    if value is None:
        return ""
    when = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone()
    return f"{when:%a %H:%M}"
