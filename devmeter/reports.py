"""Ledger queries for `devmeter report`, and their output as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from devmeter.ledger import BUCKET_SECONDS, PICO

UNATTRIBUTED = "(unattributed)"

# The SQL expression each grouping is keyed on.
# The key each grouping is computed on, over rollup-shaped rows (see `_GROUPED_ROWS`):
# a missing session, repo or branch is '' there.
GROUP_KEYS: dict[str, str] = {
    "session": f"coalesce(nullif(session, ''), '{UNATTRIBUTED}')",
    "repo": f"coalesce(nullif(repo, ''), '{UNATTRIBUTED}')",
    "branch": f"coalesce(nullif(repo, ''), '{UNATTRIBUTED}') || ' @ ' || "
    "coalesce(nullif(branch, ''), '?')",
    "model": "coalesce(nullif(model, ''), '(unknown)')",
    "tool": "tool",
    "provider": "provider",
    "day": "date(ts, 'unixepoch', 'localtime')",
}
# Whole quarter hours come from the rollup the ledger keeps; the part of a --since window
# that starts inside a quarter hour comes from the calls themselves.
_GROUPED_ROWS = f"""
    SELECT bucket * {BUCKET_SECONDS} AS ts, session, repo, branch, tool, provider, model,
           requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens,
           reasoning_tokens, cost_pusd, unpriced, estimated
    FROM rollup WHERE bucket >= :first_bucket
    UNION ALL
    SELECT ts, coalesce(session, ''), coalesce(repo, ''), coalesce(branch, ''), tool, provider,
           coalesce(model, requested_model, ''), 1, input_tokens, cache_read_tokens,
           cache_write_tokens, output_tokens, reasoning_tokens, coalesce(cost_pusd, 0),
           cost_pusd IS NULL, estimated
    FROM calls WHERE ts >= :since AND ts < :first_bucket * {BUCKET_SECONDS}
"""
GROUPINGS = ("request", *GROUP_KEYS)
# Keys that are one rollup column, where grouping by the column equals grouping by the key
# (the rollup keeps '' for a missing session or repo, which the key names).
_ROLLUP_COLUMNS = ("session", "repo", "tool", "provider")

REQUEST_FIELDS = (
    "ts", "tool", "provider", "endpoint", "requested_model", "model", "session", "repo",
    "branch", "input_tokens", "cache_read_tokens", "cache_write_tokens",
    "cache_write_1h_tokens", "output_tokens", "reasoning_tokens", "web_search_requests",
    "cost_usd", "estimated", "status", "complete", "error", "price_source", "routing",
    "route_rule", "route_target", "alt_cost_usd", "saving_usd", "route_note", "source",
)  # fmt: skip
# Columns read from the ledger for a request row; the rest are derived.
_REQUEST_COLUMNS = tuple(
    f for f in REQUEST_FIELDS if f not in ("cost_usd", "alt_cost_usd", "saving_usd")
) + ("cost_pusd", "alt_cost_pusd")
SAVINGS_FIELDS = (
    "routing", "rule", "requested_model", "target", "requests", "cost_usd", "alt_cost_usd",
    "saving_usd",
)  # fmt: skip
GROUP_FIELDS = (
    "key", "requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
    "output_tokens", "reasoning_tokens", "cost_usd", "unpriced", "estimated",
)  # fmt: skip


class ReportError(ValueError):
    pass


def parse_since(text: str, now: float | None = None) -> float:
    """`7d`, `12h`, `30m`, `today`, or an ISO date/time, as a unix timestamp."""
    now = time.time() if now is None else now
    text = text.strip().lower()
    if text == "today":
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight.timestamp()
    match = re.fullmatch(r"(\d+)\s*([dhm])", text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"d": timedelta(days=amount), "h": timedelta(hours=amount)}.get(
            unit, timedelta(minutes=amount)
        )
        return now - delta.total_seconds()
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ReportError(
            f"--since {text!r} is not a time; use 7d, 12h, 30m, today or 2026-11-01"
        ) from None


def query(
    conn: sqlite3.Connection, by: str, since: float | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    if by not in GROUPINGS:
        raise ReportError(f"--by {by!r} is not a grouping; choose one of {', '.join(GROUPINGS)}")
    where, params = ("WHERE ts >= ?", [since]) if since is not None else ("", [])
    if by == "request":
        columns = list(_REQUEST_COLUMNS)
        sql = f"SELECT {', '.join(columns)} FROM calls {where} ORDER BY ts, id"
        if limit:
            sql = f"SELECT * FROM ({sql.replace('ORDER BY ts, id', 'ORDER BY ts DESC, id DESC')}"
            sql += f" LIMIT {int(limit)}) ORDER BY ts, id"
        rows = conn.execute(sql, params).fetchall()
        return [_request_row(dict(zip(columns, row, strict=True))) for row in rows]
    key = GROUP_KEYS[by]
    start = since if since is not None else 0.0
    # All of history is the rollup alone: grouping its rows directly, by the bare column
    # where the key is one, lets SQLite skip materializing a union (a third of the time
    # of a report over a million calls).
    direct = since is None and by in _ROLLUP_COLUMNS
    source = "rollup" if direct else f"({_GROUPED_ROWS})"
    group = by if direct else "key"
    sql = f"""
        SELECT {key} AS key, sum(requests), sum(input_tokens), sum(cache_read_tokens),
               sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens),
               sum(cost_pusd), sum(unpriced), sum(estimated)
        FROM {source} GROUP BY {group} ORDER BY sum(cost_pusd) DESC, key
    """
    bounds = {"since": start, "first_bucket": math.ceil(start / BUCKET_SECONDS)}
    result = []
    for row in conn.execute(sql, bounds).fetchall():
        item = dict(zip(GROUP_FIELDS, row, strict=True))
        item["cost_usd"] = _usd(item["cost_usd"] or 0)
        result.append(item)
    return result


def has_calls(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM calls)").fetchone()[0] == 1


def savings(conn: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    """Routed calls (what was saved) and shadowed ones (what would have been), by rule.

    Routed: the requested model's cost minus what the call cost. Shadow: what the call
    cost minus the target's cost. Calls missing either price are counted, not summed.
    """
    where = "WHERE routing IN ('routed', 'shadow', 'fallback')"
    params: list[Any] = []
    if since is not None:
        where += " AND ts >= ?"
        params.append(since)
    sql = f"""
        SELECT routing, route_rule, requested_model, route_target, count(*),
               sum(cost_pusd), sum(alt_cost_pusd),
               sum(CASE routing WHEN 'routed' THEN alt_cost_pusd - cost_pusd
                                WHEN 'shadow' THEN cost_pusd - alt_cost_pusd END)
        FROM calls {where}
        GROUP BY routing, route_rule, requested_model, route_target
        ORDER BY routing, route_rule, requested_model
    """
    rows = []
    for row in conn.execute(sql, params).fetchall():
        item = dict(zip(SAVINGS_FIELDS, row, strict=True))
        for money in ("cost_usd", "alt_cost_usd", "saving_usd"):
            item[money] = None if item[money] is None else _usd(item[money])
        rows.append(item)
    return rows


def savings_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return (
            "No routed or shadowed calls yet. Routing runs in shadow mode by default once a "
            "rule matches: enable one in the config's [routing] section.\n"
        )
    headers = ["mode", "rule", "requested", "target", "calls", "cost", "other", "saved"]
    body = [
        [
            r["routing"], r["rule"] or "-", r["requested_model"] or "?", r["target"] or "?",
            str(r["requests"]), format_usd(r["cost_usd"]), format_usd(r["alt_cost_usd"]),
            format_usd(r["saving_usd"]) if r["routing"] != "fallback" else "-",
        ]
        for r in rows
    ]  # fmt: skip
    lines = _align([headers, *body])
    saved = sum((r["saving_usd"] or 0 for r in rows if r["routing"] == "routed"), Decimal(0))
    would = sum((r["saving_usd"] or 0 for r in rows if r["routing"] == "shadow"), Decimal(0))
    lines += ["", f"saved {format_usd(saved)} by routing; shadow mode would have saved "
              f"{format_usd(would)} more"]  # fmt: skip
    return "\n".join(lines) + "\n"


ALERT_FIELDS = ("ts", "kind", "scope", "key", "figure_usd", "message", "session", "repo", "tool")


def alerts(conn: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE ts >= ?", [since]) if since is not None else ("", [])
    sql = (
        "SELECT ts, kind, scope, key, figure_pusd, message, session, repo, tool "
        f"FROM alerts {where} ORDER BY ts, id"
    )
    rows = []
    for row in conn.execute(sql, params).fetchall():
        item = dict(zip(ALERT_FIELDS, row, strict=True))
        item["ts"] = datetime.fromtimestamp(item["ts"]).astimezone().isoformat(timespec="seconds")
        item["figure_usd"] = None if item["figure_usd"] is None else _usd(item["figure_usd"])
        rows.append(item)
    return rows


def alerts_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{r['ts'][:19].replace('T', ' ')}  {r['kind']:<12} {r['scope']:<8} "
        f"{format_usd(r['figure_usd']):>10}  {r['message']}"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _request_row(row: dict[str, Any]) -> dict[str, Any]:
    pusd = row.pop("cost_pusd")
    row["cost_usd"] = None if pusd is None else _usd(pusd)
    alt = row.pop("alt_cost_pusd")
    row["alt_cost_usd"] = None if alt is None else _usd(alt)
    row["saving_usd"] = _saving(row["routing"], row["cost_usd"], row["alt_cost_usd"])
    row["estimated"] = bool(row["estimated"])
    row["complete"] = bool(row["complete"])
    row["ts"] = datetime.fromtimestamp(row["ts"]).astimezone().isoformat(timespec="milliseconds")
    return {name: row[name] for name in REQUEST_FIELDS}


def _saving(routing: str | None, cost: Decimal | None, alt: Decimal | None) -> Decimal | None:
    if cost is None or alt is None:
        return None
    if routing == "routed":
        return alt - cost
    if routing == "shadow":
        return cost - alt
    return None


def _usd(pusd: int) -> Decimal:
    return Decimal(pusd) / PICO


# -- output ----------------------------------------------------------------------------------


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), default=_json_default, indent=1) + "\n"


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # Costs are numbers in USD; pico-dollar precision survives a float to 12 places.
        return float(round(value, 12))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in fields})
    return out.getvalue()


def _csv_value(value: object) -> object:
    if isinstance(value, Decimal):
        return format(round(value, 12).normalize(), "f")
    return "" if value is None else value


def format_usd(value: Decimal | None) -> str:
    if value is None:
        return "unpriced"
    if value and abs(value) < Decimal("0.01"):
        return f"${value:.6f}"
    return f"${value:,.2f}" if abs(value) >= 100 else f"${value:.4f}"


def format_tokens(n: int | None) -> str:
    n = n or 0
    if n >= 10_000_000:
        return f"{n / 1_000_000:.0f}M"
    if n >= 100_000:
        return f"{n / 1000:.0f}k"
    return str(n)


def to_table(rows: Sequence[dict[str, Any]], by: str) -> str:
    if by == "request":
        headers = ["time", "tool", "model", "session", "repo", "in", "cache r", "cache w", "out",
                   "cost", ""]  # fmt: skip
        body = [
            [
                str(r["ts"])[11:19], r["tool"], r["model"] or r["requested_model"] or "?",
                _short(r["session"], 12), _short(r["repo"], 28), format_tokens(r["input_tokens"]),
                format_tokens(r["cache_read_tokens"]), format_tokens(r["cache_write_tokens"]),
                format_tokens(r["output_tokens"]), format_usd(r["cost_usd"]), _flags(r),
            ]
            for r in rows
        ]  # fmt: skip
    else:
        headers = [by, "calls", "in", "cache r", "cache w", "out", "cost", ""]
        body = [
            [
                _short(str(r["key"]), 40), str(r["requests"]), format_tokens(r["input_tokens"]),
                format_tokens(r["cache_read_tokens"]), format_tokens(r["cache_write_tokens"]),
                format_tokens(r["output_tokens"]), format_usd(r["cost_usd"]),
                _group_flags(r),
            ]
            for r in rows
        ]  # fmt: skip
    total = sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0))
    lines = _align([headers, *body])
    lines.append("")
    lines.append(f"total {format_usd(total)} over {_count(rows, by)} calls")
    notes = _notes(rows, by)
    return "\n".join(lines + notes) + "\n"


def _count(rows: Sequence[dict[str, Any]], by: str) -> int:
    return len(rows) if by == "request" else sum(r["requests"] for r in rows)


def _notes(rows: Sequence[dict[str, Any]], by: str) -> list[str]:
    if by == "request":
        unpriced = sum(1 for r in rows if r["cost_usd"] is None)
        estimated = sum(1 for r in rows if r["estimated"])
    else:
        unpriced = sum(r["unpriced"] for r in rows)
        estimated = sum(r["estimated"] for r in rows)
    notes = []
    if unpriced:
        notes.append(
            f"! {unpriced} calls used a model with no known price and are not in the total; "
            "add a [[prices]] entry for it in the config."
        )
    if estimated:
        notes.append(f"~ {estimated} calls are estimated: the wire reported no usage for them.")
    return notes


def _flags(row: dict[str, Any]) -> str:
    flags = []
    if row["estimated"]:
        flags.append("~est")
    if row["cost_usd"] is None:
        flags.append("!unpriced")
    if row["status"] and row["status"] >= 400:
        flags.append(f"http {row['status']}")
    elif not row["complete"]:
        flags.append("cut")
    return " ".join(flags)


def _group_flags(row: dict[str, Any]) -> str:
    flags = []
    if row["unpriced"]:
        flags.append(f"!{row['unpriced']} unpriced")
    if row["estimated"]:
        flags.append(f"~{row['estimated']} est")
    return " ".join(flags)


def _short(text: str | None, width: int) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    numeric = {
        i
        for i, h in enumerate(table[0])
        if h in ("calls", "in", "cache r", "cache w", "out", "cost")
    }
    # One format per line, built once: a report by session can have tens of thousands.
    line = "  ".join(
        f"{{:{'>' if i in numeric else '<'}{width}}}" for i, width in enumerate(widths)
    )
    return [line.format(*row).rstrip() for row in table]
