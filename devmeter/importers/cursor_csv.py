"""`devmeter import cursor-csv FILE`: Cursor's own usage export, as exact ledger rows.

Cursor's dashboard exports usage as CSV (cursor.com → Dashboard → Usage → Export CSV):
one row per request with its date, kind ("Included", "Usage-based", "Errored, Not
Charged", ...), model, token counts and cost. These are Cursor's figures, so they are
imported as exact (`estimated` False), unlike what the proxy can see on the wire.

Columns are found by name, case-insensitively, in any order; exports differ by age:

    Date, [User], [Cloud Agent ID], [Automation ID], Kind, Model, Max Mode,
    Input (w/ Cache Write), Input (w/o Cache Write), Cache Read, Output [Tokens],
    Total Tokens, Cost            (older: Requests, Cost ($))

Meanings: "Input (w/o Cache Write)" is input billed at the base rate, "Input (w/ Cache
Write)" the input written to the prompt cache; "Total Tokens" is their sum with cache
reads and output, which tells the two readings of those columns apart per row.

Cost: a number in the Cost column ("$0.12", "0.12") is what Cursor billed and is kept
as is. A row Cursor did not charge ("Errored, Not Charged") costs $0. Otherwise
("Included", "Free") the row is priced at genai-prices list prices, and `price_source`
says so. A date without a zone is read as UTC (Cursor exports ISO dates in UTC).

Idempotent: each row has an `import_key` (its cells and its rank among identical rows),
so a row already in the ledger is counted as a duplicate, not imported again; identical
rows within one file are all kept. Rows imported before the ledger had import keys are
recognised by their time, model and token counts.

Proxied days: a Cursor call the proxy already metered live is not imported again (the
live row stays, so a day is never counted twice). The wire has no request id to match,
so a row's live twin is the nearest unmatched live Cursor call within `LIVE_WINDOW`
seconds, the same model first.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from devmeter import ledger
from devmeter.money import format_usd_fine
from devmeter.pricing import PriceOverride, price
from devmeter.providers.cursor import resolve_model
from devmeter.usage import Attribution, Call, Usage

TOOL = "cursor"
ENDPOINT = "cursor.import"
HOST = "cursor.com"
SOURCE = "cursor csv"
SHOW_BAD_LINES = 20
LIVE_WINDOW = 120.0  # seconds between a live Cursor call and its row in the export

# Column -> header names (normalised: lower case, punctuation to single spaces, "w/"
# and "w/o" kept apart).
COLUMNS: dict[str, tuple[str, ...]] = {
    "date": ("date", "timestamp", "time", "created at", "date utc"),
    "kind": ("kind", "type", "charge type"),
    "model": ("model", "model name"),
    "max_mode": ("max mode", "max"),
    "cache_write": (
        "input w/ cache write",
        "input with cache write",
        "input w cache write",
        "cache write",
        "cache write tokens",
    ),
    "input": (
        "input w/o cache write",
        "input without cache write",
        "input wo cache write",
        "input",
        "input tokens",
    ),
    "cache_read": ("cache read", "cache read tokens", "cache reads"),
    "output": ("output", "output tokens"),
    "total": ("total tokens", "total", "tokens"),
    "cost": ("cost", "cost usd", "cost $", "charged"),
    "requests": ("requests", "request count", "requests used"),
    "user": ("user", "email", "user email"),
}
REQUIRED = ("date", "model")
# At least one of these: a row with neither tokens nor cost says nothing to meter.
FIGURES = ("input", "cache_write", "cache_read", "output", "total", "cost", "requests")
_TOKEN_COLUMNS = ("input", "cache_write", "cache_read", "output", "total")
_LABELS = {
    "date": "Date",
    "model": "Model",
    "input": "Input (w/o Cache Write)",
    "cache_write": "Input (w/ Cache Write)",
    "cache_read": "Cache Read",
    "output": "Output Tokens",
    "total": "Total Tokens",
    "cost": "Cost",
    "requests": "Requests",
}

_NOT_CHARGED = re.compile(r"not charged|no charge", re.I)
_FAILED = re.compile(r"error|abort|fail", re.I)
_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%b %d, %Y, %I:%M:%S %p",
    "%b %d, %Y, %I:%M %p",
    "%b %d, %Y %I:%M:%S %p",
    "%b %d, %Y %I:%M %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y",
)


class CursorCSVError(ValueError):
    """The file cannot be imported at all (not found, empty, not a Cursor export)."""


@dataclass(frozen=True)
class BadLine:
    line: int  # 1-based line in the file where the row starts
    reason: str


@dataclass(frozen=True)
class ImportedRow:
    """One CSV row as a ledger row, with the key that identifies it across imports."""

    line: int
    call: Call
    # Deterministic: same file row -> same key (the ledger's `import_key`).
    import_key: str


@dataclass(frozen=True)
class ImportSummary:
    path: str
    rows: int  # data rows read (bad ones included)
    imported: int
    duplicates: int  # already in the ledger from an earlier import
    bad: tuple[BadLine, ...] = ()
    live: int = 0  # metered live by the proxy already: not imported again
    unpriced: int = 0  # imported rows with no cost (unknown model, no Cost figure)
    cost_usd: Decimal = Decimal(0)  # of the imported rows
    first_ts: float | None = None
    last_ts: float | None = None
    users: int = 0  # distinct users in a team export
    dry_run: bool = False
    unpriced_models: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """What happened, for a person: counts first, then every problem by line."""
        verb = "would import" if self.dry_run else "imported"
        lines = [f"{verb} {self.imported} Cursor calls from {self.path}"]
        if self.imported and self.first_ts is not None and self.last_ts is not None:
            cost = format_usd_fine(self.cost_usd)
            lines[0] += f" ({_day(self.first_ts)} to {_day(self.last_ts)}, {cost})"
        if self.duplicates:
            lines.append(f"{self.duplicates} rows were already in the ledger: skipped")
        if self.live:
            lines.append(
                f"{self.live} rows were already metered live by devmeter's proxy: skipped "
                "(the live rows are kept)"
            )
        if self.unpriced:
            models = ", ".join(self.unpriced_models) or "unknown"
            lines.append(
                f"! {self.unpriced} rows have no cost: no Cost figure and no known price for "
                f"{models}; add a [[prices]] entry to price them"
            )
        if self.users > 1:
            lines.append(
                f"! this is a team export with {self.users} users: all their rows were "
                "imported as yours"
            )
        if self.bad:
            lines.append(f"! {len(self.bad)} bad lines skipped:")
            lines += [f"  line {b.line}: {b.reason}" for b in self.bad[:SHOW_BAD_LINES]]
            if len(self.bad) > SHOW_BAD_LINES:
                lines.append(f"  ... and {len(self.bad) - SHOW_BAD_LINES} more")
        if not self.rows:
            lines.append("the file has a header but no usage rows")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "live": self.live,
            "bad_lines": [{"line": b.line, "reason": b.reason} for b in self.bad],
            "unpriced": self.unpriced,
            "cost_usd": float(self.cost_usd),
            "dry_run": self.dry_run,
        }


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


# --- reading -----------------------------------------------------------------------------


def _normal(header: str) -> str:
    text = header.strip().lstrip("\ufeff").lower()
    text = re.sub(r"w/o\b", " w/o ", text)
    text = re.sub(r"[^a-z0-9/$]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _columns(header: Sequence[str]) -> dict[str, int]:
    """Column name -> index, first alias found wins. "w/" and "w/o" stay apart."""
    found: dict[str, int] = {}
    names = [_normal(h) for h in header]
    for column, aliases in COLUMNS.items():
        for alias in aliases:
            for i, name in enumerate(names):
                if name == alias or name.replace(" $", "") == alias:
                    found.setdefault(column, i)
    return found


def _int(value: str, label: str) -> int:
    text = value.strip().replace(",", "").replace("_", "")
    if text in ("", "-", "—"):
        return 0
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{label} is {value.strip()!r}, not a number") from None
    if number < 0 or number != number.to_integral_value():
        raise ValueError(f"{label} is {value.strip()!r}, not a whole number of tokens")
    return int(number)


def _cost(value: str) -> Decimal | None:
    """A cost in USD, or None for words ("Included", "Free") and blanks."""
    text = value.strip().replace(",", "").replace("$", "").replace("USD", "").strip()
    if not text or not re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", text):
        return None
    return Decimal(text)


def _date(value: str) -> float:
    text = value.strip()
    if not text:
        raise ValueError("Date is empty")
    if re.fullmatch(r"\d{10}(?:\d{3})?(?:\.\d+)?", text):  # unix seconds or milliseconds
        number = float(text)
        return number / 1000 if number > 1e11 else number
    when: datetime | None = None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                when = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if when is None:
        raise ValueError(f"Date {text!r} is not a date")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _usage(cells: dict[str, str]) -> tuple[Usage, bool]:
    """The row's usage, and whether it reported any token counts at all."""
    n = {c: _int(cells[c], _LABELS[c]) for c in _TOKEN_COLUMNS if c in cells}
    has_tokens = any(c in cells for c in ("input", "cache_write", "cache_read", "output"))
    written, plain = n.get("cache_write", 0), n.get("input", 0)
    cache_read, output, total = n.get("cache_read", 0), n.get("output", 0), n.get("total")
    if (
        "cache_write" in n
        and "input" in n
        and total is not None
        and written + plain + cache_read + output != total
        and written + cache_read + output == total
        and written >= plain
    ):
        # This export's "w/ Cache Write" column is all input, writes included.
        written -= plain
    usage = Usage(
        input_tokens=plain,
        cache_write_tokens=written,
        cache_read_tokens=cache_read,
        output_tokens=output,
    )
    return usage, has_tokens


def _row_call(cells: dict[str, str], overrides: tuple[PriceOverride, ...]) -> tuple[Call, bool]:
    """(the ledger row, whether it is unpriced) for one CSV row; ValueError says why not."""
    ts = _date(cells["date"])
    name = cells["model"].strip() or None
    kind = cells.get("kind", "").strip()
    usage, has_tokens = _usage(cells)
    provider, ref = resolve_model(name) if name else ("cursor", None)
    model = ref or (name.lower() if name else None)
    cost_text = cells.get("cost", "").strip()
    billed = _cost(cost_text)
    requests = cells.get("requests", "").strip()
    note = f" ({kind})" if kind else ""
    if billed is not None:
        cost, source = billed, SOURCE + (f" ({requests} requests)" if requests else note)
    elif _NOT_CHARGED.search(kind) or _NOT_CHARGED.search(cost_text):
        cost, source = Decimal(0), SOURCE + note
    elif has_tokens and model is not None:
        when = datetime.fromtimestamp(ts, UTC)
        priced = price(provider, model, usage, overrides, when)
        cost = priced.cost_usd
        label = cost_text or kind or "no cost given"
        source = f"{priced.source} list price (Cursor: {label})" if priced.source else None
    else:
        cost, source = None, None
    error = f"Cursor: {kind}" if _FAILED.search(kind) else None
    call = Call(
        ts=ts,
        provider=provider,
        endpoint=ENDPOINT,
        host=HOST,
        requested_model=name,
        model=model,
        attribution=Attribution(tool=TOOL),
        usage=usage,
        cost_usd=cost,
        price_source=source,
        status=None,
        complete=True,
        error=error,
    )
    return call, cost is None


def _decode(data: bytes, path: str) -> str:
    if b"\x00" in data[:4096]:
        raise CursorCSVError(f"{path} is not a CSV file (it holds binary data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return data.decode("cp1252")  # re-saved by a spreadsheet on Windows
        except UnicodeDecodeError:
            raise CursorCSVError(f"{path} is not UTF-8 text; is it a CSV file?") from None


def read_cursor_csv(
    text: str, path: str = "FILE", overrides: tuple[PriceOverride, ...] = ()
) -> tuple[list[ImportedRow], list[BadLine], int, int]:
    """(rows, bad lines, data rows read, distinct users) from a Cursor usage export.

    Raises CursorCSVError when the text is not an export at all; a bad row is a BadLine.
    """
    if not text.strip():
        raise CursorCSVError(f"{path} is empty: a Cursor usage export starts with a header row")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise CursorCSVError(f"{path} is not a readable CSV file: {exc}") from None
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)  # blank lines before the header
    if header is None:
        raise CursorCSVError(f"{path} is empty: a Cursor usage export starts with a header row")
    columns = _columns(header)
    missing = [c for c in REQUIRED if c not in columns]
    if missing or not any(c in columns for c in FIGURES):
        wanted = [_LABELS[c] for c in missing]
        if not any(c in columns for c in FIGURES):
            wanted.append("one of Input/Output/Cache Read/Total Tokens/Cost")
        found = ", ".join(repr(h.strip()) for h in header if h.strip()) or "none"
        raise CursorCSVError(
            f"{path} is not a Cursor usage export: missing column(s) {', '.join(wanted)}; "
            f"found {found}. Export it from cursor.com → Dashboard → Usage → Export CSV."
        )

    rows: list[ImportedRow] = []
    bad: list[BadLine] = []
    seen_keys: Counter[str] = Counter()
    users: set[str] = set()
    count = 0
    line = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            count += 1
            bad.append(BadLine(line, f"not valid CSV: {exc}"))
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue  # a blank line is not a row
        count += 1
        if len(record) != len(header):
            bad.append(BadLine(start, f"has {len(record)} fields, the header has {len(header)}"))
            continue
        cells = {column: record[i] for column, i in columns.items()}
        try:
            call, _ = _row_call(cells, overrides)
        except ValueError as exc:
            bad.append(BadLine(start, str(exc)))
            continue
        if cells.get("user", "").strip():
            users.add(cells["user"].strip().lower())
        identity = "|".join(
            [SOURCE, *(record[columns[c]].strip() for c in _KEY_COLUMNS if c in columns)]
        )
        seen_keys[identity] += 1
        key = hashlib.sha256(f"{identity}#{seen_keys[identity]}".encode()).hexdigest()[:32]
        rows.append(ImportedRow(start, call, f"cursor-csv:{key}"))
    return rows, bad, count, len(users)


# The cells that identify a row across exports (never the user: it is not stored).
_KEY_COLUMNS = ("date", "kind", "model", "max_mode", "cache_write", "input", "cache_read",
                "output", "total", "cost", "requests")  # fmt: skip


# --- writing -----------------------------------------------------------------------------


def _identity(call: Call) -> tuple[Any, ...]:
    u = call.usage
    return (
        call.ts, call.requested_model, u.input_tokens, u.cache_write_tokens,
        u.cache_read_tokens, u.output_tokens,
    )  # fmt: skip


def _existing(conn: sqlite3.Connection, calls: Iterable[Call]) -> Counter[tuple[Any, ...]]:
    times = [c.ts for c in calls]
    if not times:
        return Counter()
    rows = conn.execute(
        "SELECT ts, requested_model, input_tokens, cache_write_tokens, cache_read_tokens, "
        "output_tokens FROM calls WHERE tool = ? AND endpoint = ? AND ts BETWEEN ? AND ? "
        "AND import_key IS NULL",  # imported before import keys: matched by their figures
        (TOOL, ENDPOINT, min(times), max(times)),
    ).fetchall()
    return Counter(tuple(row) for row in rows)


def _known_keys(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        found.update(
            key
            for (key,) in conn.execute(
                f"SELECT import_key FROM calls WHERE import_key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        )
    return found


def _live_twin(conn: sqlite3.Connection, call: Call, claimed: set[int]) -> int | None:
    """The live Cursor call this row reports, if the proxy metered it (see the docstring)."""
    for (row_id,) in conn.execute(
        "SELECT id FROM calls WHERE tool = ? AND source IS NULL AND endpoint != ? "
        "AND ts BETWEEN ? AND ? ORDER BY coalesce(model, '') != ?, abs(ts - ?)",
        (TOOL, ENDPOINT, call.ts - LIVE_WINDOW, call.ts + LIVE_WINDOW, call.model or "",
         call.ts),
    ):  # fmt: skip
        if row_id not in claimed:
            return int(row_id)
    return None


def import_cursor_csv(
    ledger_path: Path,
    csv_path: Path,
    overrides: tuple[PriceOverride, ...] = (),
    dry_run: bool = False,
) -> ImportSummary:
    """Import a Cursor usage export into the ledger; the same file twice adds nothing.

    A row counts as already imported when its `import_key` is in the ledger, or (rows
    imported before import keys) an imported Cursor row has the same time, model and
    token counts, as many times as it is there. A row the proxy metered live is skipped.
    """
    shown = str(csv_path)
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise CursorCSVError(f"cannot read {shown}: {exc.strerror or exc}") from None
    rows, bad, count, users = read_cursor_csv(_decode(data, shown), shown, overrides)

    if dry_run and not ledger_path.exists():
        conn = sqlite3.connect(":memory:", isolation_level=None)  # nothing to match yet
        ledger.migrate(conn)
    else:
        conn = ledger.connect(ledger_path)
    try:
        conn.execute("BEGIN IMMEDIATE")  # the check and the insert see the same ledger
        try:
            existing = _existing(conn, (r.call for r in rows))
            known = _known_keys(conn, [r.import_key for r in rows])
            claimed: set[int] = set()
            new: list[Call] = []
            duplicates = live = 0
            for row in rows:
                identity = _identity(row.call)
                if row.import_key in known:
                    duplicates += 1
                elif existing[identity] > 0:
                    existing[identity] -= 1
                    duplicates += 1
                elif (twin := _live_twin(conn, row.call, claimed)) is not None:
                    claimed.add(twin)
                    live += 1
                else:
                    new.append(replace(row.call, source="import", import_key=row.import_key))
            if not dry_run:
                ledger.insert_calls(conn, [ledger.call_row(c) for c in new])
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()

    unpriced = [c for c in new if c.cost_usd is None]
    return ImportSummary(
        path=shown,
        rows=count,
        imported=len(new),
        duplicates=duplicates,
        live=live,
        bad=tuple(bad),
        unpriced=len(unpriced),
        unpriced_models=tuple(sorted({c.requested_model or "(no model)" for c in unpriced})),
        cost_usd=sum((c.cost_usd or Decimal(0) for c in new), Decimal(0)),
        first_ts=min((c.ts for c in new), default=None),
        last_ts=max((c.ts for c in new), default=None),
        users=users,
        dry_run=dry_run,
    )
