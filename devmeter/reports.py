"""Ledger queries for `devmeter report`, and their output as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from devmeter.clock import local_midnight
from devmeter.labels import SESSION_WHOLE  # an id this short is shown whole
from devmeter.ledger import BUCKET_SECONDS, SAVING_PUSD
from devmeter.money import format_usd_fine, from_pusd, usd
from devmeter.safe_text import safe_text
from devmeter.text_table import TextTable, render

UNATTRIBUTED = "(unattributed)"

# The SQL expression each grouping is keyed on.
# The key each grouping is computed on, over rollup-shaped rows (see `_grouped_rows`):
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
# Who pays (devmeter/billing.py): billed is real money (an API key, or a subscription's
# extra usage); covered is the list-price equivalent of subscription calls.
_BILLED_SQL = "CASE WHEN billing IN ('api', 'overage') THEN coalesce(cost_pusd, 0) ELSE 0 END"
_COVERED_SQL = "CASE WHEN billing = 'subscription' THEN coalesce(cost_pusd, 0) ELSE 0 END"
# Whole quarter hours come from a rollup the ledger keeps; the part of a --since window
# that starts inside a quarter hour comes from the calls themselves. Each grouping reads
# the narrowest rollup that has its key: a quarter hour of many sessions is one
# `rollup_group` row per repo, tool and model.
_ROLLUPS: dict[str, tuple[str, ...]] = {
    "rollup": ("session", "repo", "branch", "tool", "provider", "model"),
    "rollup_group": ("repo", "tool", "provider", "model"),
    "rollup_session": ("session",),
}
ROLLUP_OF: dict[str, str] = {
    "session": "rollup_session", "branch": "rollup", "repo": "rollup_group",
    "model": "rollup_group", "tool": "rollup_group", "provider": "rollup_group",
    "day": "rollup_group",
}  # fmt: skip
_CALL_KEYS = {
    "session": "coalesce(session, '')", "repo": "coalesce(repo, '')",
    "branch": "coalesce(branch, '')", "tool": "tool", "provider": "provider",
    "model": "coalesce(model, requested_model, '')",
}  # fmt: skip
_SUMS = (
    "requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, "
    "reasoning_tokens, cost_pusd, unpriced, estimated, billed_pusd, covered_pusd"
)
_CALL_SUMS = (
    "1, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, "
    f"coalesce(cost_pusd, 0), cost_pusd IS NULL, estimated, {_BILLED_SQL}, {_COVERED_SQL}"
)


def _grouped_rows(table: str) -> str:
    """Rollup-shaped rows of `table` from :since to :until: the whole quarter hours
    between (:first_bucket to :end_bucket) from the rollup, the ends from the calls."""
    keys = _ROLLUPS[table]
    calls = (
        f"SELECT ts, {', '.join(f'{_CALL_KEYS[k]} AS {k}' for k in keys)}, {_CALL_SUMS} "
        "FROM calls WHERE ts >= {start} AND ts < {end}"
    )
    head = calls.format(start=":since", end=f"min(:until, :first_bucket * {BUCKET_SECONDS})")
    tail = calls.format(start=f"max(:since, :end_bucket * {BUCKET_SECONDS})", end=":until")
    return f"""
    SELECT bucket * {BUCKET_SECONDS} AS ts, {", ".join(keys)}, {_SUMS}
    FROM {table} WHERE bucket >= :first_bucket AND bucket < :end_bucket
    UNION ALL {head}
    UNION ALL {tail}
"""


# Far beyond any call: the end of an open window.
_NO_END = 1e13


def _window(since: float | None, until: float | None) -> dict[str, float | int]:
    """`_grouped_rows`' parameters for calls from `since` (None: the first) to `until`
    (None: the last), `until` excluded."""
    start = 0.0 if since is None else since
    end = _NO_END if until is None else max(until, start)
    first = math.ceil(start / BUCKET_SECONDS)
    return {
        "since": start,
        "until": end,
        "first_bucket": first,
        "end_bucket": max(math.floor(end / BUCKET_SECONDS), first),
    }


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
    "billing", "account", "billed_usd", "covered_usd",
)  # fmt: skip
# Columns read from the ledger for a request row (its saving worked out by the ledger's
# own rule, SAVING_PUSD); the rest are derived.
_LEDGER_COLUMNS = tuple(
    f
    for f in REQUEST_FIELDS
    if f not in ("cost_usd", "alt_cost_usd", "saving_usd", "billed_usd", "covered_usd")
) + ("cost_pusd", "alt_cost_pusd")
_REQUEST_COLUMNS = (*_LEDGER_COLUMNS, "saving_pusd")
_REQUEST_SELECT = ", ".join((*_LEDGER_COLUMNS, f"{SAVING_PUSD} AS saving_pusd"))
SAVINGS_FIELDS = (
    "routing", "rule", "requested_model", "target", "requests", "cost_usd", "alt_cost_usd",
    "saving_usd",
)  # fmt: skip
GROUP_FIELDS = (
    "key", "requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
    "output_tokens", "reasoning_tokens", "cost_usd", "unpriced", "estimated", "billed_usd",
    "covered_usd",
)  # fmt: skip


class ReportError(ValueError):
    pass


def parse_since(text: str, now: float | None = None, flag: str = "--since") -> float:
    """`7d`, `2h`, `30m`, `1w`, `today`, `yesterday`, or an ISO date/time, as a unix timestamp.

    `today` and `yesterday` start at local midnight; a bare date is local midnight too."""
    now = time.time() if now is None else now
    spelled = text.strip().lower()
    if spelled == "today":
        return local_midnight(now)
    if spelled == "yesterday":
        return local_midnight(local_midnight(now) - 1)  # the midnight before today's
    match = re.fullmatch(r"(\d{1,6})\s*([wdhm])", spelled)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {
            "w": timedelta(weeks=amount),
            "d": timedelta(days=amount),
            "h": timedelta(hours=amount),
            "m": timedelta(minutes=amount),
        }[unit]
        return now - delta.total_seconds()
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ReportError(
            f"{flag} '{safe_text(text, 60)}' is not a time — use today, yesterday, 1w, 7d, "
            "2h, 30m or a date such as 2026-11-01"
        ) from None


def query(
    conn: sqlite3.Connection,
    by: str,
    since: float | None = None,
    limit: int | None = None,
    until: float | None = None,
) -> list[dict[str, Any]]:
    """Rows of a report: calls from `since` to `until` (excluded; None: no bound). With
    `limit`: the last N calls (`request`), else the N groups that cost the most."""
    if by not in GROUPINGS:
        raise ReportError(
            f"--by {safe_text(by, 40)!r} is not a grouping — choose one of {', '.join(GROUPINGS)}"
        )
    if limit is not None and limit < 1:
        raise ReportError(f"--limit {limit} shows nothing — give a number of rows, 1 or more")
    where, params = _where_ts(since, until)
    if by == "request":
        columns = list(_REQUEST_COLUMNS)
        sql = f"SELECT {_REQUEST_SELECT} FROM calls {where} ORDER BY ts, id"
        if limit:
            # The last N calls, shown oldest first; `id` rides along to order ties.
            sql = (
                f"SELECT {', '.join(columns)} FROM (SELECT id, {_REQUEST_SELECT} FROM calls "
                f"{where} ORDER BY ts DESC, id DESC LIMIT {int(limit)}) ORDER BY ts, id"
            )
        rows = conn.execute(sql, params).fetchall()
        return [_request_row(dict(zip(columns, row, strict=True))) for row in rows]
    if by == "day":
        daily = _daily_rows(conn, since, until, limit)
        if daily is not None:
            return daily
    key = GROUP_KEYS[by]
    # All of history is the rollup alone: grouping its rows directly, by the bare column
    # where the key is one, lets SQLite skip materializing a union (a third of the time
    # of a report over a million calls).
    direct = since is None and until is None and by in _ROLLUP_COLUMNS
    source = ROLLUP_OF[by] if direct else f"({_grouped_rows(ROLLUP_OF[by])})"
    group = by if direct else "key"
    sql = f"""
        SELECT {key} AS key, sum(requests), sum(input_tokens), sum(cache_read_tokens),
               sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens),
               sum(cost_pusd), sum(unpriced), sum(estimated), sum(billed_pusd),
               sum(covered_pusd)
        FROM {source} GROUP BY {group} ORDER BY sum(cost_pusd) DESC, key
    """
    if limit:
        sql += f" LIMIT {int(limit)}"
    bounds = _window(since, until)
    result = []
    for row in conn.execute(sql, bounds).fetchall():
        item = dict(zip(GROUP_FIELDS, row, strict=True))
        item["cost_usd"] = usd(item["cost_usd"] or 0)
        item["billed_usd"] = usd(item["billed_usd"] or 0)
        item["covered_usd"] = usd(item["covered_usd"] or 0)
        result.append(item)
    return result


def _where_ts(since: float | None, until: float | None) -> tuple[str, list[float]]:
    """A WHERE clause on `ts` for calls from `since` to `until` (excluded)."""
    terms = [(t, v) for t, v in (("ts >= ?", since), ("ts < ?", until)) if v is not None]
    if not terms:
        return "", []
    return "WHERE " + " AND ".join(t for t, _ in terms), [v for _, v in terms]


def has_calls(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM calls)").fetchone()[0] == 1


def savings(
    conn: sqlite3.Connection, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    """Routed calls (what was saved) and shadowed ones (what would have been), by rule.

    Routed: the requested model's cost minus what the call cost. Shadow: what the call
    cost minus the target's cost. Calls missing either price are counted, not summed.
    """
    where = "WHERE routing IN ('routed', 'shadow', 'fallback')"
    params: list[Any] = []
    if since is not None:
        where += " AND ts >= ?"
        params.append(since)
    if until is not None:
        where += " AND ts < ?"
        params.append(until)
    sql = f"""
        SELECT routing, route_rule, requested_model, route_target, count(*),
               sum(cost_pusd), sum(alt_cost_pusd), sum({SAVING_PUSD})
        FROM calls {where}
        GROUP BY routing, route_rule, requested_model, route_target
        ORDER BY routing, route_rule, requested_model
    """
    rows = []
    for row in conn.execute(sql, params).fetchall():
        item = dict(zip(SAVINGS_FIELDS, row, strict=True))
        for money in ("cost_usd", "alt_cost_usd", "saving_usd"):
            item[money] = from_pusd(item[money])
        rows.append(item)
    return rows


def savings_totals(rows: Sequence[dict[str, Any]]) -> tuple[Decimal, Decimal]:
    """(what routing saved, what shadow mode would have saved) over `savings` rows."""
    saved = sum((r["saving_usd"] or 0 for r in rows if r["routing"] == "routed"), Decimal(0))
    would = sum((r["saving_usd"] or 0 for r in rows if r["routing"] == "shadow"), Decimal(0))
    return saved, would


def savings_table(rows: Sequence[dict[str, Any]], width: int | None = None) -> str:
    if not rows:
        return (
            "No routed or shadowed calls yet. Routing runs in shadow mode by default once a "
            "rule matches: enable one in the config's [routing] section.\n"
        )
    headers = ["mode", "rule", "requested", "target", "calls", "cost", "other", "saved"]
    body = [
        [
            r["routing"], cell(r["rule"] or "-", 40), cell(r["requested_model"] or "?", 40),
            cell(r["target"] or "?", 40), format_count(r["requests"]),
            format_usd(r["cost_usd"]), format_usd(r["alt_cost_usd"]),
            format_usd(r["saving_usd"]) if r["routing"] != "fallback" else "-",
        ]
        for r in rows
    ]  # fmt: skip
    saved, would = savings_totals(rows)
    summary = (
        f"saved {format_usd(saved)} by routing; shadow mode would have saved "
        f"{format_usd(would)} more"
    )
    return render(TextTable(headers, body, frozenset(range(4, 8)), footer=[summary]), width)


ALERT_FIELDS = ("ts", "kind", "scope", "key", "figure_usd", "message", "session", "repo", "tool")


def alerts(
    conn: sqlite3.Connection, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    where, params = _where_ts(since, until)
    sql = (
        "SELECT ts, kind, scope, key, figure_pusd, message, session, repo, tool "
        f"FROM alerts {where} ORDER BY ts, id"
    )
    return [_alert_row(row) for row in conn.execute(sql, params).fetchall()]


def _alert_row(row: Sequence[Any]) -> dict[str, Any]:
    item = dict(zip(ALERT_FIELDS, row, strict=True))
    item["ts"] = datetime.fromtimestamp(item["ts"]).astimezone().isoformat(timespec="seconds")
    item["figure_usd"] = from_pusd(item["figure_usd"])
    return item


def alerts_table(rows: Sequence[dict[str, Any]], width: int | None = None) -> str:
    headers = ["time", "kind", "scope", "about", "figure", "message"]
    body = [
        [
            r["ts"][:19].replace("T", " "), cell(r["kind"], 20), cell(r["scope"], 10),
            cell(r["key"] or "-", 40, "tail"), format_usd(r["figure_usd"], none="-"),
            cell(r["message"], 400),
        ]
        for r in rows
    ]  # fmt: skip
    footer = [plural(len(rows), "alert")]
    table = TextTable(headers, body, frozenset({4}), footer=footer, keep=frozenset({0}))
    return render(table, width)


def _request_row(row: dict[str, Any]) -> dict[str, Any]:
    pusd = row.pop("cost_pusd")
    row["cost_usd"] = from_pusd(pusd)
    alt = row.pop("alt_cost_pusd")
    row["alt_cost_usd"] = from_pusd(alt)
    row["saving_usd"] = from_pusd(row.pop("saving_pusd"))
    cost = row["cost_usd"] or Decimal(0)
    row["billed_usd"] = cost if row["billing"] in ("api", "overage") else Decimal(0)
    row["covered_usd"] = cost if row["billing"] == "subscription" else Decimal(0)
    row["estimated"] = bool(row["estimated"])
    row["complete"] = bool(row["complete"])
    row["ts"] = datetime.fromtimestamp(row["ts"]).astimezone().isoformat(timespec="milliseconds")
    return {name: row[name] for name in REQUEST_FIELDS}


# -- output ----------------------------------------------------------------------------------
# JSON and CSV are for tools: exact values, field names that never change. Tables are for
# people: every cell that came from the network goes through `cell` (safe_text), dollars
# have two decimals (six under a cent), tokens have thousands separators, and the last row
# adds the column up.

NO_REPO = UNATTRIBUTED  # the one word for a call with no repo (or no session), everywhere
SESSION_LABEL_MIN = 8  # a session label's shortest prefix
SESSION_LABEL_MAX = 40  # longer ids are cut anyway (a UUID is 36)


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    # ensure_ascii (the default): control characters and escapes come out as \u001b, so
    # the output is exact, valid JSON and harmless on a terminal.
    return json.dumps(list(rows), default=_json_default, indent=1) + "\n"


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # Costs are numbers in USD; pico-dollar precision survives a float to 12 places.
        return float(round(value, 12))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    """CSV with a header row (even with no rows), booleans as true/false, and control
    characters escaped (`\\x1b`) so a spreadsheet or a terminal shows them, not obeys them."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in fields})
    return out.getvalue()


def _csv_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(round(value, 12).normalize(), "f")
    if isinstance(value, str):
        return safe_text(value, limit=None)
    return "" if value is None else value


def format_usd(value: Decimal | None, none: str = "unpriced") -> str:
    """`$1,234.57`: two decimals, or six (`$0.003376`) for a figure under a cent that two
    would show as `$0.00`; `none` (default "unpriced") when there is no price."""
    if value is None:
        return none
    return format_usd_fine(value)


def format_tokens(n: int | None) -> str:
    """Whole tokens with thousands separators: exact, and the same in every column."""
    return f"{n or 0:,}"


def format_count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def cell(value: object, limit: int, keep: Literal["head", "tail"] = "head") -> str:
    """A table cell from the ledger: printable, at most `limit` characters."""
    if value is None or value == "":
        return "-"
    return safe_text(value, limit, keep)


def session_labels(ids: Iterable[str | None]) -> dict[str, str]:
    """Labels that tell sessions apart: each id's shortest prefix, at least 8 characters,
    that no other id in `ids` shares; an id of 12 characters or fewer whole. A label is a
    prefix `devmeter allow` and `stop` take as it is, so it has no ellipsis; `--json`
    has the whole id."""
    unique = sorted({i for i in ids if i and i != UNATTRIBUTED})
    # Sorted, an id shares its longest prefix with a neighbour: one comparison a pair.
    shared = [_common_prefix(a, b) for a, b in zip(unique, unique[1:], strict=False)]
    labels: dict[str, str] = {}
    for n, session in enumerate(unique):
        before = shared[n - 1] if n else 0
        after = shared[n] if n < len(shared) else 0
        length = max(SESSION_LABEL_MIN, before + 1, after + 1)
        label = session if len(session) <= max(length, SESSION_WHOLE) else session[:length]
        labels[session] = safe_text(label, SESSION_LABEL_MAX)
    return labels


def _common_prefix(a: str, b: str) -> int:
    """The length of the prefix `a` and `b` share (a binary search of slice compares)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class WhoPaid:
    """Who paid for a report's rows (devmeter/billing.py): `billed` (API keys, extra
    usage), `covered` (subscriptions, at list price) and `unknown`, the priced rest with
    no billing mode (imported history, a credential devmeter could not read), said so
    that the three add up to the total. `devmeter report` and the dashboard show these."""

    billed: Decimal
    covered: Decimal
    unknown: Decimal  # never below 0


def who_paid(rows: Iterable[dict[str, Any]]) -> WhoPaid | None:
    """The split of `rows` (report rows: `cost_usd`, `billed_usd`, `covered_usd`); None
    when the ledger knows the payer of none of them (nothing to split)."""
    cost = billed = covered = Decimal(0)
    for r in rows:
        cost += r["cost_usd"] or Decimal(0)
        billed += r["billed_usd"]
        covered += r["covered_usd"]
    if not (billed or covered):
        return None
    return WhoPaid(billed, covered, max(cost - billed - covered, Decimal(0)))


def to_table(
    rows: Sequence[dict[str, Any]], by: str, limit: int | None = None, width: int | None = None
) -> str:
    """A report as a table: plain, or fitted to a terminal `width` columns wide."""
    labels = session_labels(
        r["session"] if by == "request" else r["key"] for r in rows if by in ("request", "session")
    )
    paid = who_paid(rows)
    if by == "request":
        headers = ["time", "tool", "model", "session", "repo", "in", "cache r", "cache w",
                   "out", "cost", "flags"]  # fmt: skip
        # Today's calls by time alone; any other day's with their date.
        today = datetime.now().astimezone().date().isoformat()
        only_today = all(str(r["ts"]).startswith(today) for r in rows)
        when = (lambda ts: ts[11:19]) if only_today else (lambda ts: f"{ts[:10]} {ts[11:19]}")
        body = [
            [
                when(str(r["ts"])), cell(r["tool"], 24),
                cell(r["model"] or r["requested_model"] or "?", 40),
                labels.get(r["session"] or "", NO_REPO if not r["session"] else "?"),
                cell(r["repo"] or NO_REPO, 32, "tail"), format_tokens(r["input_tokens"]),
                format_tokens(r["cache_read_tokens"]), format_tokens(r["cache_write_tokens"]),
                format_tokens(r["output_tokens"]), format_usd(r["cost_usd"]), _flags(r),
            ]
            for r in rows
        ]  # fmt: skip
        unpriced = sum(1 for r in rows if r["cost_usd"] is None)
        estimated = sum(1 for r in rows if r["estimated"])
        calls = len(rows)
        totals = ["total", plural(calls, "call"), "", "", ""]
        first_number = 5
    else:
        # Who paid: shown once the ledger knows (devmeter/billing.py), else nothing to split.
        split = paid is not None
        headers = [by, "calls", "in", "cache r", "cache w", "out", "cost",
                   *(("billed", "covered") if split else ()), "flags"]  # fmt: skip
        body = [
            [
                _group_key(r["key"], by, labels), format_count(r["requests"]),
                format_tokens(r["input_tokens"]), format_tokens(r["cache_read_tokens"]),
                format_tokens(r["cache_write_tokens"]), format_tokens(r["output_tokens"]),
                format_usd(r["cost_usd"] if r["unpriced"] < r["requests"] else None),
                *((format_usd(r["billed_usd"]), format_usd(r["covered_usd"])) if split else ()),
                _group_flags(r),
            ]
            for r in rows
        ]  # fmt: skip
        unpriced = sum(r["unpriced"] or 0 for r in rows)
        estimated = sum(r["estimated"] or 0 for r in rows)
        calls = sum(r["requests"] for r in rows)
        totals = ["total", format_count(calls)]
        first_number = 1
    cost = sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0))
    totals += [
        format_tokens(sum(r[name] or 0 for r in rows))
        for name in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
    ]
    totals.append(format_usd(cost if unpriced < calls else None))
    if by != "request" and paid is not None:
        totals += [format_usd(paid.billed), format_usd(paid.covered)]
    totals.append(_count_flags(unpriced, estimated))
    numeric = frozenset(range(first_number, len(headers) - 1))
    notes = _notes(unpriced, estimated)
    if paid is not None:
        rest = (
            f" · payer not known {format_usd(paid.unknown)} (imported history, or a "
            "credential devmeter could not read)"
            if paid.unknown > 0
            else ""
        )
        notes.append(
            f"billed {format_usd(paid.billed)} (API keys and extra usage) · covered "
            f"{format_usd(paid.covered)} (list-price equivalent of subscription calls){rest}"
        )
    if limit is not None and len(rows) >= limit:
        shown = "the last" if by == "request" else "the most expensive"
        notes.append(f"Showing {shown} {plural(len(rows), 'row')} (--limit {limit}).")
    if by == "request":
        keep, tail = frozenset({0}), frozenset({4})  # the time; the repo path's end
    else:
        keep = frozenset({0} if by == "session" else ())  # a session label stays whole
        tail = frozenset({0} if by in ("repo", "branch") else ())
    table = TextTable(headers, body, numeric, totals, notes, keep=keep, tail=tail)
    return render(table, width)


def _group_key(key: object, by: str, labels: dict[str, str]) -> str:
    if by == "session":
        return labels.get(str(key)) or cell(key, SESSION_LABEL_MAX)
    if by in ("repo", "branch"):
        return cell(key, 60, "tail")
    return cell(key, 48)


def _notes(unpriced: int, estimated: int) -> list[str]:
    notes = []
    if unpriced:
        verb = "is" if unpriced == 1 else "are"
        notes.append(
            f"! {plural(unpriced, 'call')} used a model with no known price and {verb} not in "
            "the total — add a [[prices]] entry for it in the config."
        )
    if estimated:
        verb = "is" if estimated == 1 else "are"
        notes.append(
            f"~ {plural(estimated, 'call')} {verb} estimated: the wire reported no usage for "
            f"{'it' if estimated == 1 else 'them'}."
        )
    return notes


_BILLING_FLAGS = {"subscription": "sub", "api": "api", "overage": "overage"}


def _flags(row: dict[str, Any]) -> str:
    flags = [_BILLING_FLAGS[row["billing"]]] if row.get("billing") in _BILLING_FLAGS else []
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
    return _count_flags(row["unpriced"] or 0, row["estimated"] or 0)


def _count_flags(unpriced: int, estimated: int) -> str:
    flags = []
    if unpriced:
        flags.append(f"!{unpriced:,} unpriced")
    if estimated:
        flags.append(f"~{estimated:,} est")
    return " ".join(flags)


# -- series for charts (the dashboard) --------------------------------------------------------
# The same rows as `query` (rollup plus the calls of a partial quarter hour), summed per
# time step and key, so a chart adds up to `devmeter report` to the pico-dollar.

SERIES_STEPS: dict[str, str] = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}


def spend_series(
    conn: sqlite3.Connection, since: float, step: str, by: str
) -> list[tuple[str, str, Decimal]]:
    """(time step, key, cost in USD) for every step and key with calls since `since`,
    in time order; `step` is `hour` or `day` (local time), `by` any grouping but `request`."""
    return grouped_series(conn, since, step, by)[1]


def grouped_series(
    conn: sqlite3.Connection, since: float, step: str, by: str, until: float | None = None
) -> tuple[list[dict[str, Any]], list[tuple[str, str, Decimal]]]:
    """`query(conn, by, since, until=until)`'s rows and `spend_series`' points from one
    pass over the ledger (a dashboard page needs both: a table and its chart).

    SQLite sums per local hour or day and key: a quarter hour's local step is its number
    plus the zone's offset in quarter hours (every zone's offset is a whole number of
    them, so no quarter hour straddles a local hour or day), the offset taken from the
    stretches between the zone's changes (`local_offsets`) rather than `localtime` per
    row, the slow part. Python names the steps and adds up the groups. Whole local days
    by repo, model, tool or provider come from the day rollup instead (`_daily_series`)."""
    if step not in SERIES_STEPS or by not in GROUP_KEYS or by == "day":
        raise ReportError(f"no series by {safe_text(step, 20)} and {safe_text(by, 20)}")
    if step == "day" and by != "session" and by != "branch":
        daily = _daily_series(conn, since, until, by)
        if daily is not None:
            return daily
    per_step = _QUARTERS_PER_STEP[step]
    # A call from a clock running ahead: looked up to a day beyond now.
    offsets = local_offsets(since, time.time() + 86400 if until is None else until)
    shift = " ".join(
        f"WHEN quarter < {first} THEN {offset}"
        for (_, offset), (first, _) in zip(offsets, offsets[1:], strict=False)
    )
    shift_sql = f"CASE {shift} ELSE {offsets[-1][1]} END" if shift else str(offsets[-1][1])
    sql = f"""
        SELECT (quarter + {shift_sql}) / {per_step} AS local_step, key,
               sum(requests), sum(input_tokens), sum(cache_read_tokens),
               sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens),
               sum(cost_pusd), sum(unpriced), sum(estimated), sum(billed_pusd),
               sum(covered_pusd)
        FROM (SELECT CAST(ts / {BUCKET_SECONDS} AS INTEGER) AS quarter, {GROUP_KEYS[by]} AS key,
                     {_SUMS} FROM ({_grouped_rows(ROLLUP_OF[by])}))
        GROUP BY local_step, key
    """
    bounds = _window(since, until)
    epoch = datetime(1970, 1, 1)
    points: dict[tuple[str, str], int] = {}
    groups: dict[str, list[int]] = {}
    for local_step, key, *sums in conn.execute(sql, bounds).fetchall():
        local = epoch + timedelta(seconds=local_step * per_step * BUCKET_SECONDS)
        name = local.strftime(SERIES_STEPS[step])
        sums = [n or 0 for n in sums]
        points[(name, key)] = points.get((name, key), 0) + sums[6]
        group = groups.setdefault(key, [0] * len(sums))
        for n, value in enumerate(sums):
            group[n] += value
    return _grouped_result(points, groups)


def _grouped_result(
    points: dict[tuple[str, str], int], groups: dict[str, list[int]]
) -> tuple[list[dict[str, Any]], list[tuple[str, str, Decimal]]]:
    rows = []
    for key, sums in sorted(groups.items(), key=lambda item: (-item[1][6], item[0])):
        item = dict(zip(GROUP_FIELDS, [key, *sums], strict=True))
        for money in ("cost_usd", "billed_usd", "covered_usd"):
            item[money] = usd(item[money])
        rows.append(item)
    series = [(name, key, usd(pusd)) for (name, key), pusd in sorted(points.items())]
    return rows, series


_EPOCH_DAY = date(1970, 1, 1)


def _local_day(ts: float) -> date | None:
    """The local date `ts` starts, or None when it is not a local midnight."""
    moment = datetime.fromtimestamp(ts)
    if (moment.hour, moment.minute, moment.second, moment.microsecond) != (0, 0, 0, 0):
        return None
    return moment.date()


def _whole_days(
    conn: sqlite3.Connection, since: float | None, until: float | None
) -> tuple[int, int] | None:
    """The day rollup's days (first, end excluded) for a window of whole local days, when
    the rollup counted them in this process's time zone; else None."""
    first = _EPOCH_DAY if since is None else _local_day(since)
    end = None if until is None else _local_day(until)
    if first is None or (until is not None and end is None):
        return None
    first_day = (first - _EPOCH_DAY).days
    end_day = 1 << 40 if end is None else (end - _EPOCH_DAY).days
    written = conn.execute(
        "SELECT DISTINCT day, utc_offset FROM rollup_day WHERE day >= ? AND day < ?",
        (first_day, end_day),
    ).fetchall()
    for day, offset in written:
        start = datetime.combine(_EPOCH_DAY + timedelta(days=day), datetime.min.time())
        ours = {_offset_quarters(start.timestamp()),
                _offset_quarters((start + timedelta(days=1)).timestamp() - 1)}  # fmt: skip
        if offset not in ours:
            return None
    return first_day, end_day


def _daily_rows(
    conn: sqlite3.Connection, since: float | None, until: float | None, limit: int | None
) -> list[dict[str, Any]] | None:
    """`query(..., "day", ...)` from the day rollup, or None when it cannot answer (see
    `_whole_days`): `devmeter report`'s default, all history by day, reads a few rows a
    day instead of converting every quarter hour's time to a local date."""
    days = _whole_days(conn, since, until)
    if days is None:
        return None
    sql = """
        SELECT day, sum(requests), sum(input_tokens), sum(cache_read_tokens),
               sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens),
               sum(cost_pusd), sum(unpriced), sum(estimated), sum(billed_pusd),
               sum(covered_pusd)
        FROM rollup_day WHERE day >= ? AND day < ? GROUP BY day
    """
    rows = []
    for day, *sums in conn.execute(sql, days).fetchall():
        item = dict(zip(GROUP_FIELDS, [(_EPOCH_DAY + timedelta(days=day)).isoformat(), *sums],
                        strict=True))  # fmt: skip
        for money in ("cost_usd", "billed_usd", "covered_usd"):
            item[money] = usd(item[money])
        rows.append(item)
    rows.sort(key=lambda r: (-r["cost_usd"], r["key"]))
    return rows[:limit] if limit else rows


def _daily_series(
    conn: sqlite3.Connection, since: float, until: float | None, by: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str, Decimal]]] | None:
    """`grouped_series` by local day from the ledger's day rollup (a few rows a day, not a
    few a quarter hour), for whole local days; None when it cannot answer: a window that
    does not start and end at midnight, or days the writer counted in another time zone
    than this process's (each day row carries the writer's offset from UTC)."""
    days = _whole_days(conn, since, until)
    if days is None:
        return None
    first_day, end_day = days
    sql = f"""
        SELECT day, {GROUP_KEYS[by]} AS key, sum(requests), sum(input_tokens),
               sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
               sum(reasoning_tokens), sum(cost_pusd), sum(unpriced), sum(estimated),
               sum(billed_pusd), sum(covered_pusd)
        FROM rollup_day WHERE day >= ? AND day < ? GROUP BY day, key
    """
    points: dict[tuple[str, str], int] = {}
    groups: dict[str, list[int]] = {}
    for day, key, *sums in conn.execute(sql, (first_day, end_day)).fetchall():
        name = (_EPOCH_DAY + timedelta(days=day)).isoformat()
        points[(name, key)] = points.get((name, key), 0) + sums[6]
        group = groups.setdefault(key, [0] * len(sums))
        for n, value in enumerate(sums):
            group[n] += value
    return _grouped_result(points, groups)


_QUARTERS_PER_STEP = {"hour": 3600 // BUCKET_SECONDS, "day": 86400 // BUCKET_SECONDS}


def _offset_quarters(ts: float) -> int:
    offset = datetime.fromtimestamp(ts).astimezone().utcoffset() or timedelta(0)
    return round(offset.total_seconds()) // BUCKET_SECONDS


def local_offsets(since: float, until: float) -> list[tuple[int, int]]:
    """The local zone's offset from UTC, in quarter hours, over [since, until]: a list of
    (first quarter, offset), one entry per stretch between changes (daylight saving).

    Looked at every hour, and at each quarter of an hour where it changed: a zone changes
    its clocks on a quarter hour."""
    first = math.floor(since / BUCKET_SECONDS)
    last = math.ceil(until / BUCKET_SECONDS)
    stretches = [(first, _offset_quarters(first * BUCKET_SECONDS))]
    per_hour = _QUARTERS_PER_STEP["hour"]
    for hour in range(first + per_hour, last + per_hour, per_hour):
        offset = _offset_quarters(hour * BUCKET_SECONDS)
        if offset == stretches[-1][1]:
            continue
        changed = next(
            q for q in range(hour - per_hour + 1, hour + 1)
            if _offset_quarters(q * BUCKET_SECONDS) == offset
        )  # fmt: skip
        stretches.append((changed, offset))
    return stretches


def session_calls(conn: sqlite3.Connection, session: str, limit: int = 500) -> list[dict[str, Any]]:
    """A session's last `limit` calls as `report --by request` rows, oldest first."""
    columns = list(_REQUEST_COLUMNS)
    sql = (
        f"SELECT {', '.join(columns)} FROM (SELECT id, {_REQUEST_SELECT} FROM calls "
        "WHERE session = ? ORDER BY ts DESC, id DESC LIMIT ?) ORDER BY ts, id"
    )
    rows = conn.execute(sql, (session, int(limit))).fetchall()
    return [_request_row(dict(zip(columns, row, strict=True))) for row in rows]


def session_alerts(conn: sqlite3.Connection, session: str) -> list[dict[str, Any]]:
    """The alerts raised about one session, as `alerts` rows."""
    sql = (
        "SELECT ts, kind, scope, key, figure_pusd, message, session, repo, tool "
        "FROM alerts WHERE session = ? OR key = ? ORDER BY ts, id"
    )
    return [_alert_row(row) for row in conn.execute(sql, (session, session)).fetchall()]
