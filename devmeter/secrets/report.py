"""`devmeter findings`: the secrets the proxy found, from the ledger's findings table."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from devmeter.reports import cell, plural
from devmeter.text_table import TextTable, render

FINDING_FIELDS = (
    "ts", "kind", "rule", "preview", "location", "tool", "repo", "session", "action",
    "fingerprint",
)  # fmt: skip


def findings(conn: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE ts >= ?", [since]) if since is not None else ("", [])
    sql = f"SELECT {', '.join(FINDING_FIELDS)} FROM findings {where} ORDER BY ts, id"
    try:
        fetched = conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # a ledger from before findings existed
        return []
    rows = []
    for row in fetched:
        item = dict(zip(FINDING_FIELDS, row, strict=True))
        item["ts"] = datetime.fromtimestamp(item["ts"]).astimezone().isoformat(timespec="seconds")
        rows.append(item)
    return rows


def findings_table(rows: Sequence[dict[str, Any]], width: int | None = None) -> str:
    headers = [
        "time",
        "kind",
        "preview",
        "where",
        "action",
        "tool",
        "repo",
        "session",
        "fingerprint",
    ]
    body = [
        [
            r["ts"][:19].replace("T", " "), cell(r["kind"], 24), cell(r["preview"], 40),
            cell(r["location"], 60, "tail"), cell(r["action"], 10), cell(r["tool"] or "-", 16),
            cell(r["repo"] or "(unattributed)", 40, "tail"), cell(r["session"] or "-", 40),
            r["fingerprint"],
        ]
        for r in rows
    ]  # fmt: skip
    footer = [plural(len(rows), "finding")]
    return render(
        TextTable(headers, body, frozenset(), footer=footer, keep=frozenset({0, 8})), width
    )
