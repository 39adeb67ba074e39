"""Importing a tool's own history files (JSONL transcripts) into the ledger, exactly once.

Shared by the Claude Code and Codex importers: each supplies the files to read and a
pure function from new lines (and the state it kept for that file) to ledger rows. This
module does the rest:

- **Incremental.** `import_files` in the ledger remembers per file its inode, size,
  mtime and how far it was read; a file unchanged since is not opened, a grown one is
  read from there, a replaced or shrunk one from the start. Only whole lines are read:
  a last line still being written is read next time.
- **Exactly once.** Every row has an `import_key`; a key already in the ledger adds
  nothing (a later line for the same response with more output replaces it: streaming
  writes several). A row whose `response_id` a live row (metered by the proxy) already
  has is skipped, and a live row arriving later replaces the imported one (a trigger in
  the ledger, migration v4). Rows without a response id (Codex, Gemini CLI), and rows
  whose live twin was written before live rows had response ids, are matched to a live
  row of the same tool with the same token counts within `TWIN_WINDOW` seconds, the same
  session first, then the nearest in time; and such an imported row is replaced by the
  first live row that matches it the same way when that one arrives later (migration v9).
- **Fast for a whole history.** Parsers hand over ledger tuples, not Calls; a writer
  thread stores each batch (up to CHUNK_LINES lines, with the marks of the files they
  came from, in one transaction) while the next is parsed, through
  `ledger.insert_calls_in_bulk` (the rollups summed set-wise, not row by row). In
  `devmeter import`'s own process on Linux the reading and parsing run in a forked child
  instead (`forked`), so that they and the storing use two cores, not one GIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from devmeter import ledger
from devmeter.importers import forked, price_memory
from devmeter.money import format_usd_fine, from_pusd
from devmeter.pricing import PriceOverride
from devmeter.usage import Call, Usage

SOURCE = "import"
CHUNK_LINES = 20_000  # lines per transaction, at most (of one file or of several)
PROGRESS_EVERY = 0.2  # seconds between redraws of the progress bar
TWIN_WINDOW = 15 * 60.0  # seconds between a live row and its transcript line, at most
# Live rows near a batch held to tell which rows can have a twin; with more, every row is
# asked about (a ledger of years of live calls under a batch spanning them).
NEAR_AT_MOST = 50_000

# (new whole lines, the file's saved state, its path) -> ledger rows (ledger.CALL_COLUMNS'
# order, marked imported: `imported_row`, `call_rows`); the state is updated in place.
LineParser = Callable[[list[bytes], dict[str, Any], Path], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class FileMark:
    """How far a file was read, and how to tell it is still the same file."""

    inode: int
    size: int
    mtime_ns: int
    offset: int
    state: dict[str, Any] = field(default_factory=dict)


def calls(n: int) -> str:
    """`1 call`, `2 calls`: what the import summaries count."""
    return f"{n} call" if n == 1 else f"{n} calls"


@dataclass
class ImportResult:
    importer: str
    files: int = 0  # files found
    files_read: int = 0  # files with something new
    lines: int = 0
    imported: int = 0  # new rows
    updated: int = 0  # rows replaced by a later line of the same response
    duplicates: int = 0  # already imported
    live: int = 0  # already metered live by the proxy: skipped
    unpriced: int = 0
    unpriced_models: set[str] = field(default_factory=set)
    cost_usd: Decimal = Decimal(0)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: ImportResult) -> None:
        """Count another run of the same importer (over other files) in this one."""
        for name in ("files", "files_read", "lines", "imported", "updated", "duplicates",
                     "live", "unpriced", "cost_usd", "seconds"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unpriced_models |= other.unpriced_models
        self.errors += other.errors

    def describe(self) -> str:
        lines = [
            f"{self.importer}: imported {calls(self.imported)} "
            f"({format_usd_fine(self.cost_usd)}) from "
            f"{self.files_read} of {self.files} files in {self.seconds:.1f}s"
        ]
        if self.updated:
            lines.append(f"{calls(self.updated)} updated with their final token counts")
        if self.live:
            were = "was" if self.live == 1 else "were"
            lines.append(f"{calls(self.live)} {were} already metered live by devmeter: skipped")
        if self.duplicates:
            were = "was" if self.duplicates == 1 else "were"
            lines.append(f"{calls(self.duplicates)} {were} already imported: skipped")
        if self.unpriced:
            models = ", ".join(sorted(self.unpriced_models))
            have = "has" if self.unpriced == 1 else "have"
            lines.append(
                f"! {calls(self.unpriced)} {have} no known price ({models}): kept with its "
                "tokens and no cost; add a [[prices]] entry to price it"
                if self.unpriced == 1
                else f"! {calls(self.unpriced)} {have} no known price ({models}): kept with "
                "their tokens and no cost; add a [[prices]] entry to price them"
            )
        lines += [f"! {e}" for e in self.errors]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "importer": self.importer,
            "files": self.files,
            "files_read": self.files_read,
            "lines": self.lines,
            "imported": self.imported,
            "updated": self.updated,
            "duplicates": self.duplicates,
            "live": self.live,
            "unpriced": self.unpriced,
            "cost_usd": float(self.cost_usd),
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


# --- reading ---------------------------------------------------------------------------


def read_new(
    path: Path, mark: FileMark | None, whole: bool = False
) -> tuple[list[bytes], FileMark] | None:
    """The whole lines added to `path` since `mark`, and the new mark; None when unchanged.

    `whole`: the file is one JSON document rewritten in place (Gemini CLI's chats): when it
    changed, all of it, as one "line"."""
    st = path.stat()
    if (
        mark is not None
        and mark.inode == st.st_ino
        and mark.size == st.st_size
        and mark.mtime_ns == st.st_mtime_ns
    ):
        return None
    if whole:
        data = path.read_bytes()
        return [data], FileMark(st.st_ino, st.st_size, st.st_mtime_ns, len(data))
    same_file = mark is not None and mark.inode == st.st_ino and st.st_size >= mark.offset
    offset = mark.offset if same_file and mark is not None else 0
    state = dict(mark.state) if same_file and mark is not None else {}
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
    # The piece after the last newline is dropped (a copy of data[:end] would cost a copy
    # of the whole file); each line's length + 1 is where the next starts.
    lines = data.split(b"\n")[:-1]
    return lines, FileMark(st.st_ino, st.st_size, st.st_mtime_ns, offset + end, state)


def load_marks(conn: sqlite3.Connection, importer: str) -> dict[str, FileMark]:
    rows = conn.execute(
        "SELECT path, inode, size, mtime_ns, offset, state FROM import_files WHERE importer = ?",
        (importer,),
    )
    return {
        path: FileMark(inode, size, mtime_ns, offset, json.loads(state) if state else {})
        for path, inode, size, mtime_ns, offset, state in rows
    }


def save_mark(conn: sqlite3.Connection, importer: str, path: Path, mark: FileMark) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO import_files (path, importer, inode, size, mtime_ns, offset, "
        "state) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (str(path), importer, mark.inode, mark.size, mark.mtime_ns, mark.offset,
         json.dumps(mark.state) if mark.state else None),
    )  # fmt: skip


# --- writing ---------------------------------------------------------------------------

# Where store() finds what it needs in a row (ledger.CALL_COLUMNS order).
_TS, _TOOL, _SESSION, _MODEL = (
    ledger.CALL_COLUMNS.index(c) for c in ("ts", "tool", "session", "model")
)
_INPUT, _READ, _WRITE, _OUTPUT = (
    ledger.CALL_COLUMNS.index(c)
    for c in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
)
_COST, _RESPONSE_ID, _KEY = (
    ledger.CALL_COLUMNS.index(c) for c in ("cost_pusd", "response_id", "import_key")
)
Row = tuple[Any, ...]


def imported_row(
    ts: float,
    tool: str,
    provider: str,
    endpoint: str,
    host: str,
    model: str | None,
    session: str | None,
    repo: str | None,
    branch: str | None,
    repo_source: str | None,
    usage: Usage,
    cost_pusd: int | None,
    price_source: str | None,
    response_id: str | None,
    import_key: str,
) -> Row:
    """The ledger row (ledger.call_row's) of an imported response, built without a Call:
    a first import builds one per response of a whole history."""
    u = usage
    return imported_counts_row(
        ts, tool, provider, endpoint, host, model, session, repo, branch, repo_source,
        u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cache_write_1h_tokens,
        u.output_tokens, u.reasoning_tokens, u.web_search_requests, u.service_tier,
        int(u.estimated), cost_pusd, price_source, response_id, import_key,
    )  # fmt: skip


def imported_counts_row(
    ts: float,
    tool: str,
    provider: str,
    endpoint: str,
    host: str,
    model: str | None,
    session: str | None,
    repo: str | None,
    branch: str | None,
    repo_source: str | None,
    input_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int,
    output_tokens: int,
    reasoning_tokens: int,
    web_search_requests: int,
    service_tier: str | None,
    estimated: int,
    cost_pusd: int | None,
    price_source: str | None,
    response_id: str | None,
    import_key: str,
) -> Row:
    """`imported_row` from the counts themselves (no Usage: claude_code's quick path)."""
    return (
        ts, tool, provider, endpoint, host, model, model, session, repo, branch, repo_source,
        None, input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens,
        output_tokens, reasoning_tokens, web_search_requests, service_tier, cost_pusd,
        price_source, estimated, 1, None, 0, None, None, None, None, None, None, response_id,
        SOURCE, import_key, "unknown", None, None, None, None, None,
    )  # fmt: skip


def call_rows(calls: Iterable[Call]) -> list[Row]:
    """Ledger rows of `calls`, marked as imported (the Codex and Gemini CLI parsers)."""
    return [ledger.call_row(c if c.source == SOURCE else replace(c, source=SOURCE)) for c in calls]


def store(
    conn: sqlite3.Connection,
    rows: Iterable[Row],
    result: ImportResult,
    claimed: set[int] | None = None,
) -> None:
    """Add imported rows exactly once (see the module docstring); inside a transaction.

    `claimed`: the live rows already matched in this run (a resumed session's file repeats
    lines that another file already matched), shared across calls. The ledger is asked
    once per batch, not once per row: which keys it has, which response ids it metered
    live, and whether any live row of the tool is near enough in time to be a twin."""
    claimed = set() if claimed is None else claimed
    finals = _final_per_key(rows, result)
    held = _held_keys(conn, [r[_KEY] for r in finals if r[_KEY] is not None])
    live_ids = _live_response_ids(conn, [r[_RESPONSE_ID] for r in finals if r[_RESPONSE_ID]])
    near = _live_counts_near(conn, finals)
    new = []
    cost = 0
    for row in finals:
        same = held.get(row[_KEY]) if row[_KEY] is not None else None
        if same is not None:
            if row[_OUTPUT] > same[1]:
                conn.execute("DELETE FROM calls WHERE id = ?", (same[0],))
                new.append(row)
                result.updated += 1
            else:
                result.duplicates += 1
            continue
        twin = live_ids.get(row[_RESPONSE_ID]) if row[_RESPONSE_ID] is not None else None
        if twin is None and _may_have_twin(near, row):
            twin = _live_twin(conn, row, claimed)
        if twin is not None:
            if twin in claimed:
                result.duplicates += 1  # the same response again, in another file
            else:
                claimed.add(twin)
                result.live += 1
            continue
        new.append(row)
        result.imported += 1
        if row[_COST] is None:
            result.unpriced += 1
            result.unpriced_models.add(row[_MODEL] or "(no model)")
        else:
            cost += row[_COST]
    result.cost_usd += from_pusd(cost) or 0
    ledger.insert_calls_in_bulk(conn, new)


_IN_BATCH = 500  # values per `IN (...)`: far below SQLite's oldest variable limit


def _held_keys(conn: sqlite3.Connection, keys: list[str]) -> dict[str, tuple[int, int]]:
    """import_key -> (id, output tokens) of the rows the ledger already has."""
    held: dict[str, tuple[int, int]] = {}
    for at in range(0, len(keys), _IN_BATCH):
        batch = keys[at : at + _IN_BATCH]
        for key, row_id, output in conn.execute(
            "SELECT import_key, id, output_tokens FROM calls WHERE import_key IN "
            f"({','.join('?' * len(batch))})",
            batch,
        ):
            held[key] = (row_id, output)
    return held


def _live_response_ids(conn: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
    """response_id -> the id of a live row (metered by the proxy) with it."""
    live: dict[str, int] = {}
    for at in range(0, len(ids), _IN_BATCH):
        batch = ids[at : at + _IN_BATCH]
        for response_id, row_id in conn.execute(
            "SELECT response_id, min(id) FROM calls WHERE source IS NULL AND response_id IN "
            f"({','.join('?' * len(batch))}) GROUP BY response_id",
            batch,
        ):
            live[response_id] = row_id
    return live


def _live_counts_near(
    conn: sqlite3.Connection, rows: list[Row]
) -> dict[tuple[Any, ...], list[float]]:
    """(tool, input, cache read, cache write, output tokens) -> the times of live rows
    with those counts, within TWIN_WINDOW of the batch's times: a row can have a twin
    matched by tokens only where its counts are here (a first import has none), so the
    ledger is asked about each row only then, not once per row of a whole history."""
    spans: dict[str, tuple[float, float]] = {}
    for row in rows:
        ts = row[_TS]
        low, high = spans.get(row[_TOOL], (ts, ts))
        spans[row[_TOOL]] = (min(low, ts), max(high, ts))
    near: dict[tuple[Any, ...], list[float]] = {}
    at_most = NEAR_AT_MOST
    for tool, (low, high) in spans.items():
        found = conn.execute(
            "SELECT ts, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens "
            "FROM calls WHERE ts BETWEEN ? AND ? AND tool = ? AND source IS NULL LIMIT ?",
            (low - TWIN_WINDOW, high + TWIN_WINDOW, tool, at_most + 1),
        ).fetchall()
        if len(found) > at_most:
            near[(tool,)] = []  # too many to hold: every row of the tool may have a twin
            continue
        for ts, *counts in found:
            near.setdefault((tool, *counts), []).append(ts)
    return near


def _may_have_twin(near: dict[tuple[Any, ...], list[float]], row: Row) -> bool:
    """Whether a live row has `row`'s tool and counts within TWIN_WINDOW of it: what
    `_live_twin` asks for, and more."""
    if (row[_TOOL],) in near:
        return True
    times = near.get((row[_TOOL], row[_INPUT], row[_READ], row[_WRITE], row[_OUTPUT]))
    if not times:
        return False
    ts = row[_TS]
    low, high = ts - TWIN_WINDOW, ts + TWIN_WINDOW  # as _live_twin's BETWEEN has them
    return any(low <= live <= high for live in times)


def _final_per_key(rows: Iterable[Row], result: ImportResult) -> list[Row]:
    """One row per key: the one with the most output (a streamed response's last line).
    The same line again (a resumed session's file repeats earlier ones) is a duplicate."""
    best: dict[str | None, Row] = {}
    unkeyed = []
    for row in rows:
        key = row[_KEY]
        if key is None:
            unkeyed.append(row)
            continue
        held = best.get(key)
        if held is None or row[_OUTPUT] > held[_OUTPUT]:
            best[key] = row
        elif row[_OUTPUT] == held[_OUTPUT]:
            result.duplicates += 1
    return [*best.values(), *unkeyed]


def _live_twin(conn: sqlite3.Connection, row: Row, claimed: set[int]) -> int | None:
    """The id of the live row for the same response, matched by its tokens (the batch
    looked up response ids already)."""
    # No id to match (Codex, Gemini CLI; or a live row a devmeter without response ids
    # wrote): the same tool's live row with the same token counts near the same time, the
    # same session first (a live Gemini CLI session with an API key is its process, not
    # the id its chat file names).
    if not (row[_INPUT] or row[_READ] or row[_WRITE] or row[_OUTPUT]):
        return None  # no tokens: nothing tells it from a refusal or another empty answer
    only_old = "AND response_id IS NULL " if row[_RESPONSE_ID] is not None else ""
    ts = row[_TS]
    for (row_id,) in conn.execute(
        "SELECT id FROM calls WHERE tool = ? AND source IS NULL AND ts BETWEEN ? AND ? "
        "AND input_tokens = ? AND cache_read_tokens = ? AND cache_write_tokens = ? "
        f"AND output_tokens = ? {only_old}ORDER BY session IS NOT ?, abs(ts - ?)",
        (row[_TOOL], ts - TWIN_WINDOW, ts + TWIN_WINDOW, row[_INPUT], row[_READ], row[_WRITE],
         row[_OUTPUT], row[_SESSION], ts),
    ):  # fmt: skip
        if row_id not in claimed:
            return int(row_id)
    return None


# --- the whole run ---------------------------------------------------------------------


def _store_batch(
    conn: sqlite3.Connection, importer: str, result: ImportResult, claimed: set[int],
    rows: list[Row], marks: dict[Path, FileMark],
) -> None:  # fmt: skip
    """One batch of rows and the marks of the files they came from, in one transaction:
    a crash or a failure stores all of it or none, so nothing is ever read in twice."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        store(conn, rows, result, claimed)
        for path, mark in marks.items():
            save_mark(conn, importer, path, mark)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class _Writer:
    """Stores batches of rows (and the marks of the files they came from) on a thread of
    its own, one transaction each, while the caller reads and parses the next: SQLite
    lets go of the GIL while it writes, so on two cores the two overlap. A batch that
    fails is rolled back, nothing after it is stored, and `finish` raises its error."""

    def __init__(self, conn: sqlite3.Connection, importer: str, result: ImportResult) -> None:
        self._conn, self._importer, self._result = conn, importer, result
        self._claimed: set[int] = set()  # live rows matched so far, across batches
        self._batches: queue.Queue[tuple[list[Row], dict[Path, FileMark]] | None] = queue.Queue(
            maxsize=2
        )  # parsed rows waiting: bounded, as memory is
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="devmeter-import", daemon=True)
        self._thread.start()

    def commit(self, rows: list[Row], marks: dict[Path, FileMark]) -> None:
        if self._error is not None:
            self.finish()  # raises it
        self._batches.put((rows, marks))

    def finish(self) -> None:
        """Wait until every batch handed over is stored; raise a batch's failure."""
        if self._thread.is_alive():
            self._batches.put(None)
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is not None:
                continue  # a batch failed: the later ones are not stored (their files
                # are read again next time, from their last committed mark)
            try:
                _store_batch(self._conn, self._importer, self._result, self._claimed, *batch)
            except BaseException as exc:
                self._error = exc


# A batch as `_parsed_batches` yields it: rows, the marks they complete, files done so far.
Batch = tuple[list[Row], dict[Path, FileMark], int]


def _parsed_batches(
    files: Sequence[Path],
    marks: dict[str, FileMark],
    parse: LineParser,
    whole_files: bool,
    result: ImportResult,
) -> Iterator[Batch]:
    """What is new in `files`, parsed, in batches of about CHUNK_LINES lines (of one file
    or of several small ones), each with the marks that say its rows are in; counts
    files read, lines and unreadable files in `result`."""
    pending: list[Row] = []
    marks_due: dict[Path, FileMark] = {}
    pending_lines = 0
    for index, path in enumerate(files, start=1):
        try:
            got = read_new(path, marks.get(str(path)), whole_files)
        except OSError as exc:
            result.errors.append(f"cannot read {path}: {exc.strerror or exc}")
            continue
        if got is None:
            continue
        lines, mark = got
        result.files_read += 1
        result.lines += len(lines)
        # A chunk's mark has no size, so a file whose import stopped half way is read
        # on from there next time.
        at = mark.offset - sum(map(len, lines)) - len(lines) if not whole_files else 0
        for start in range(0, max(len(lines), 1), CHUNK_LINES):
            chunk = lines[start : start + CHUNK_LINES]
            pending += parse(chunk, mark.state, path) if chunk else []
            last = start + CHUNK_LINES >= len(lines)
            at += sum(map(len, chunk)) + len(chunk)  # each line and its newline
            marks_due[path] = mark if last else FileMark(mark.inode, -1, 0, at, dict(mark.state))
            pending_lines += len(chunk)
            if pending_lines >= CHUNK_LINES:
                yield pending, marks_due, index
                pending, marks_due, pending_lines = [], {}, 0
    if marks_due:
        yield pending, marks_due, len(files)


def run_import(
    ledger_path: Path,
    importer: str,
    files: Sequence[Path],
    parse: LineParser,
    progress: TextIO | None = None,
    whole_files: bool = False,
    two_processes: bool = False,
) -> ImportResult:
    """Read what is new in `files` into the ledger; `progress` gets a live line.

    `two_processes`: read and parse in a forked child while this process stores
    (`devmeter import`'s own process only: see `_can_fork`)."""
    started = time.monotonic()
    result = ImportResult(importer, files=len(files))
    conn = ledger.connect(ledger_path)
    price_memory.recall(ledger_path.parent)
    shown = 0.0
    try:
        marks = load_marks(conn, importer)
    except BaseException:
        conn.close()
        raise
    # Rows and the marks that say they are in, committed together: a transaction per
    # CHUNK_LINES lines (of one file or of several small ones), so the proxy, writing the
    # same ledger, never waits behind a whole history.
    batches = _parsed_batches(files, marks, parse, whole_files, result)
    if two_processes and _can_fork():
        # No child (out of processes, of memory): the batches are read in this process.
        with contextlib.suppress(OSError):
            batches = forked.batches(batches, result, lambda: price_memory.keep(ledger_path.parent))
    writer = _Writer(conn, importer, result)
    try:
        for rows, marks_due, done in batches:
            writer.commit(rows, marks_due)
            now = time.monotonic()
            if progress is not None and now - shown >= PROGRESS_EVERY:
                shown = now
                _show(progress, importer, done, len(files), result, now - started)
    finally:
        try:
            writer.finish()  # what was handed over is committed, even when parsing failed
        finally:
            batches.close()  # a child still parsing is stopped
            conn.close()
    price_memory.keep(ledger_path.parent)
    result.seconds = time.monotonic() - started
    if progress is not None and shown:
        _show(progress, importer, len(files), len(files), result, result.seconds)
        progress.write("\n")
    return result


def _can_fork() -> bool:
    """Whether a forked child can parse: Linux (elsewhere fork is missing, Windows, or
    unsafe once system frameworks are loaded, macOS), in a process with no other thread
    (a fork copies only the calling thread, and any lock another one held)."""
    alone = threading.active_count() == 1
    return sys.platform.startswith("linux") and hasattr(os, "fork") and alone


def _show(out: TextIO, importer: str, done: int, total: int, r: ImportResult, secs: float) -> None:
    width = 24
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    out.write(
        f"\r{importer} [{bar}] {done}/{total} files, {r.imported + r.updated} rows, {secs:.1f}s "
    )
    out.flush()


def run_command(
    importer: str,
    ledger_path: Path,
    root: Path | None,
    overrides: tuple[PriceOverride, ...],
    as_json: bool,
) -> int:
    """`devmeter import IMPORTER`: the import, a progress bar on a terminal, the summary.
    The command's process does nothing else, so its import may fork (`forked`); the
    tray's background import never does."""
    progress = None if as_json else progress_stream()
    result = IMPORTERS[importer](ledger_path, root, overrides, progress, two_processes=True)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(result.describe())
    return 0


def progress_stream() -> TextIO | None:
    """stderr when it is a terminal (a progress bar there), else None."""
    return sys.stderr if sys.stderr.isatty() else None


def _importers() -> dict[str, Callable[..., ImportResult]]:
    from devmeter.importers.claude_code import import_claude_code
    from devmeter.importers.codex import import_codex
    from devmeter.importers.gemini_cli import import_gemini_cli

    return {"claude-code": import_claude_code, "codex": import_codex,
            "gemini-cli": import_gemini_cli}  # fmt: skip


class _Importers(dict):  # type: ignore[type-arg]
    """name -> import function, loaded on first use (the modules import each other)."""

    def __missing__(self, name: str) -> Callable[..., ImportResult]:
        self.update(_importers())
        return dict.__getitem__(self, name)


IMPORTERS: dict[str, Callable[..., ImportResult]] = _Importers()


def import_all(ledger_path: Path, overrides: tuple[PriceOverride, ...] = ()) -> list[ImportResult]:
    """Every history importer over its default folder (the tray's background import); a
    failure of one is reported in its result, never raised."""
    results = []
    for name in ("claude-code", "codex", "gemini-cli"):
        try:
            results.append(IMPORTERS[name](ledger_path, None, overrides, None))
        except (OSError, sqlite3.Error, ValueError) as exc:
            results.append(ImportResult(name, errors=[f"import failed: {exc}"]))
    return results
