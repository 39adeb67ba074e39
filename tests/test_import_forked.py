"""A history import read and parsed in a forked child while the parent stores
(`devmeter import`'s own process: importers/forked.py): the same rows, marks and rollups
as in one process, and exactly once when either side fails or the child dies."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devmeter.importers import claude_code, history
from devmeter.importers.claude_code import import_claude_code
from tests.test_import_bulk import line, live, snapshot, write

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only (Linux)")


@pytest.fixture(autouse=True)
def alone() -> None:
    """history._can_fork forks only a process with no other thread: a thread an earlier
    test left ending (in the whole suite, under load) would make these imports run in one
    process and the test fail for it. Such threads are waited for a while; one that does
    not end is named."""
    deadline = time.monotonic() + 60
    while others := [t for t in threading.enumerate() if t is not threading.main_thread()]:
        assert time.monotonic() < deadline, f"threads an earlier test left: {others}"
        others[0].join(0.2)


def import_command(importer: str, home: Path, folder: Path) -> dict[str, Any]:
    """`devmeter import IMPORTER --path FOLDER --json` as a user runs it (its own process,
    which forks on Linux), into the ledger in `home`: its summary."""
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "import", importer, "--path", str(folder), "--json"],
        env={**os.environ, "DEVMETER_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def history_folder(root: Path) -> Path:
    """Several sessions, each response streamed as two lines, a resumed session repeating
    some of them, a user line without usage, and one response the proxy metered live."""
    for s in range(3):
        lines: list[dict[str, Any]] = [{"type": "user", "message": {"content": "hi"}}]
        for k in range(5):
            n = 10 * s + k
            lines += [line(n, 1, session=f"s-{s}"), line(n, 40 + n, session=f"s-{s}")]
        write(root / "projects" / "p" / f"s-{s}.jsonl", lines)
    write(
        root / "projects" / "p" / "resumed.jsonl",
        [line(n, 40 + n, session="s-0") for n in range(3)],
    )
    return root


def parse_pids(
    monkeypatch: pytest.MonkeyPatch, log: Path, fail_at: int = 0, die_at: int = 0
) -> None:
    """claude_code.parse_lines, noting the process that ran it in `log` (a child's lists
    are its own), failing or dying at the given call (counted per process)."""
    real, calls = claude_code.parse_lines, []

    def parse(chunk: Any, *args: Any) -> Any:
        calls.append(1)
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        if len(calls) == fail_at:
            raise OSError("the disk went away")
        if len(calls) == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(chunk, *args)

    monkeypatch.setattr(claude_code, "parse_lines", parse)


def pids(log: Path) -> set[int]:
    return {int(p) for p in log.read_text().split()}


def ledger_with_a_live_twin(db: Path) -> None:
    from datetime import UTC, datetime

    from devmeter import ledger

    conn = ledger.connect(db)
    ledger.insert_calls(
        conn, [ledger.call_row(live(12, 52, datetime(2026, 11, 30, 18, tzinfo=UTC)))]
    )
    conn.commit()
    conn.close()


def test_two_processes_store_what_one_process_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "CHUNK_LINES", 4)  # several batches, files split across them
    root = history_folder(tmp_path / "claude")
    one, two = tmp_path / "one" / "ledger.sqlite", tmp_path / "two" / "ledger.sqlite"
    for db in (one, two):
        db.parent.mkdir()
        ledger_with_a_live_twin(db)
    alone = import_claude_code(one, root)
    log = tmp_path / "pids"
    parse_pids(monkeypatch, log)
    forked = import_claude_code(two, root, two_processes=True)
    assert pids(log) and os.getpid() not in pids(log)  # a child parsed every chunk
    assert snapshot(two) == snapshot(one)
    assert {**forked.as_dict(), "seconds": 0} == {**alone.as_dict(), "seconds": 0}
    assert (forked.imported, forked.live, forked.lines) == (14, 1, 36)
    marks = "SELECT path, inode, size, mtime_ns, offset, state FROM import_files ORDER BY path"
    assert sqlite3.connect(two).execute(marks).fetchall() == (
        sqlite3.connect(one).execute(marks).fetchall()
    )
    again = import_claude_code(two, root, two_processes=True)  # nothing new: nothing added
    assert (again.imported, again.files_read) == (0, 0)
    assert snapshot(two) == snapshot(one)


def test_the_command_stores_what_an_import_in_one_process_stores(tmp_path: Path) -> None:
    """`devmeter import claude-code` (a process of its own: it forks) against the same
    import in this process; the rates it priced with are kept by its child, the only
    process of the command that priced anything."""
    root = history_folder(tmp_path / "claude")
    alone = import_claude_code(tmp_path / "one.sqlite", root)
    summary = import_command("claude-code", tmp_path / "home", root)
    assert {**summary, "seconds": 0} == {**alone.as_dict(), "seconds": 0}
    assert snapshot(tmp_path / "home" / "ledger.sqlite") == snapshot(tmp_path / "one.sqlite")
    kept = json.loads((tmp_path / "home" / "price-memory.json").read_text())
    assert {model for _, model, _, _ in kept["hours"]} == {"claude-sonnet-4-5"}


@pytest.fixture
def small_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """A history read in batches of 4 lines (so a failure can fall between two), the
    ledger to import it into, and a reference ledger it was imported into in one go."""
    monkeypatch.setattr(history, "CHUNK_LINES", 4)
    root = history_folder(tmp_path / "claude")
    db, reference = tmp_path / "ledger.sqlite", tmp_path / "reference.sqlite"
    import_claude_code(reference, root)
    return root, db, reference


def test_a_child_that_fails_stores_what_it_sent_and_the_next_import_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_batches: tuple[Path, Path, Path]
) -> None:
    root, db, reference = small_batches
    real = claude_code.parse_lines
    parse_pids(monkeypatch, tmp_path / "pids", fail_at=3)
    with pytest.raises(OSError, match="the disk went away"):  # the child's error, as raised
        import_claude_code(db, root, two_processes=True)
    stored = sqlite3.connect(db).execute("SELECT count(*) FROM calls").fetchone()[0]
    assert 0 < stored < 14  # the batches sent before the failure are in
    monkeypatch.setattr(claude_code, "parse_lines", real)
    import_claude_code(db, root, two_processes=True)
    assert snapshot(db) == snapshot(reference)


def test_a_child_killed_mid_import_leaves_nothing_doubled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_batches: tuple[Path, Path, Path]
) -> None:
    root, db, reference = small_batches
    real = claude_code.parse_lines
    parse_pids(monkeypatch, tmp_path / "pids", die_at=4)
    with pytest.raises(RuntimeError, match="run the import again to read on"):
        import_claude_code(db, root, two_processes=True)
    monkeypatch.setattr(claude_code, "parse_lines", real)
    again = import_claude_code(db, root, two_processes=True)
    assert again.imported > 0
    assert snapshot(db) == snapshot(reference)


def test_a_batch_the_parent_cannot_store_stops_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_batches: tuple[Path, Path, Path]
) -> None:
    root, db, reference = small_batches
    log = tmp_path / "pids"
    parse_pids(monkeypatch, log)
    real, batches = history.store, []

    def failing(conn: sqlite3.Connection, rows: Any, *args: Any) -> None:
        batches.append(len(rows))
        if len(batches) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        real(conn, rows, *args)

    monkeypatch.setattr(history, "store", failing)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        import_claude_code(db, root, two_processes=True)
    for pid in pids(log):  # reaped: no process outlives the import
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    monkeypatch.setattr(history, "store", real)
    import_claude_code(db, root, two_processes=True)
    assert snapshot(db) == snapshot(reference)


@pytest.mark.parametrize("two_processes", [False, True])
def test_a_last_line_being_written_and_lines_added_while_read_are_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_processes: bool
) -> None:
    import json

    root = tmp_path / "claude"
    path = root / "projects" / "p" / "s.jsonl"
    write(path, [line(n, 5 + n) for n in range(3)])
    third, fourth = (json.dumps(line(n, 5 + n)) + "\n" for n in (3, 4))
    with path.open("a") as f:
        f.write(third[:60])  # a last line still being written
    real = claude_code.parse_lines

    def parse(chunk: Any, *args: Any) -> Any:
        with path.open("a") as f:  # the rest of it, and one more line, after the read
            f.write(third[60:] + fourth)
        return real(chunk, *args)

    monkeypatch.setattr(claude_code, "parse_lines", parse)
    db = tmp_path / "ledger.sqlite"
    first = import_claude_code(db, root, two_processes=two_processes)
    assert (first.imported, first.lines) == (3, 3)
    monkeypatch.setattr(claude_code, "parse_lines", real)
    then = import_claude_code(db, root, two_processes=two_processes)
    assert (then.imported, then.lines) == (2, 2)
    ids = sqlite3.connect(db).execute("SELECT response_id FROM calls ORDER BY ts").fetchall()
    assert sorted(i for (i,) in ids) == [f"msg_{n}" for n in range(5)]


def test_a_process_with_other_threads_imports_in_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fail-safe: where a fork is unsafe (another thread running, as in the tray) or
    missing (not Linux), the import runs in the calling process, with the same result."""
    root = history_folder(tmp_path / "claude")
    log = tmp_path / "pids"
    parse_pids(monkeypatch, log)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        result = import_claude_code(tmp_path / "a.sqlite", root, two_processes=True)
    finally:
        stop.set()
        other.join()
    assert pids(log) == {os.getpid()} and result.imported == 15
    log.unlink()
    monkeypatch.setattr(history.sys, "platform", "darwin")
    result = import_claude_code(tmp_path / "b.sqlite", root, two_processes=True)
    assert pids(log) == {os.getpid()} and result.imported == 15
