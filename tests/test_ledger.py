import json
import os
import sqlite3
import weakref
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import reports
from devmeter.cli import main
from devmeter.ledger import (
    CALL_COLUMNS,
    MIGRATIONS,
    LedgerWriter,
    call_row,
    connect,
    connect_readonly,
    insert_calls,
    migrate,
    write_calls,
)
from devmeter.usage import Attribution, Call, Usage


def make_call(ts: float, cost: str | None, **kw: object) -> Call:
    attribution = Attribution(
        tool=str(kw.pop("tool", "claude-code")),
        session=kw.pop("session", "s1"),  # type: ignore[arg-type]
        repo=kw.pop("repo", "/src/acme"),  # type: ignore[arg-type]
        branch="main",
    )
    usage = Usage(input_tokens=100, cache_read_tokens=10, output_tokens=5, **kw)  # type: ignore[arg-type]
    return Call(
        ts=ts, provider="anthropic", endpoint="anthropic.messages", host="api.anthropic.com",
        requested_model="claude-sonnet-4-5", model="claude-sonnet-4-5", attribution=attribution,
        usage=usage, cost_usd=None if cost is None else Decimal(cost), price_source="test",
        status=200,
    )  # fmt: skip


def test_writer_commits_in_batches_and_sums_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    writer = LedgerWriter(path)
    for i in range(1000):
        writer.add_call(make_call(1_700_000_000 + i, "0.0000003"))  # 1 token at $0.30/M
    assert writer.flush()
    writer.close()
    conn = connect_readonly(path)
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = reports.query(conn, "session")
    assert rows[0]["requests"] == 1000
    assert rows[0]["cost_usd"] == Decimal("0.0003")  # exact, no float drift


@pytest.mark.parametrize("variable_limit", [999, 32766])
def test_multi_row_inserts_write_every_row_in_order_within_sqlites_variable_limit(
    tmp_path: Path, variable_limit: int
) -> None:
    # 999 bound variables is the limit of SQLite builds before 3.32: 16 rows a statement.
    conn = connect(tmp_path / "ledger.sqlite")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    calls = [make_call(1_700_000_000 + i, f"0.00{i:04d}", session=f"s{i % 7}") for i in range(257)]
    sizes: set[int] = set()  # rows per INSERT statement (the trace shows bound values)

    def trace(sql: str) -> None:
        if sql.startswith("INSERT INTO calls"):
            sizes.add(sql.count("), (") + 1)

    conn.set_trace_callback(trace)
    for start, end in ((0, 101), (101, 157), (157, 257)):  # batches of several lengths
        conn.execute("BEGIN")
        insert_calls(conn, [call_row(c) for c in calls[start:end]])
        conn.execute("COMMIT")
    conn.set_trace_callback(None)
    # A few statement sizes (powers of two), not one per batch length: each is a prepared
    # statement SQLite keeps in the connection's cache.
    assert len(sizes) > 1 and all(size & (size - 1) == 0 for size in sizes), sizes
    stored = conn.execute("SELECT ts, session, cost_pusd FROM calls ORDER BY id").fetchall()
    cost = CALL_COLUMNS.index("cost_pusd")
    assert stored == [(c.ts, c.attribution.session, call_row(c)[cost]) for c in calls]
    # The rollup trigger fires for each row of a multi-row INSERT too.
    assert conn.execute("SELECT sum(requests), count(DISTINCT session) FROM rollup").fetchone() == (
        257,
        7,
    )


def test_a_waiting_call_is_held_as_its_row_not_the_call(tmp_path: Path) -> None:
    # Only a call's row waits to be committed (here for good: the ledger path is a
    # directory), not the call and all it refers to.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    writer = LedgerWriter(blocked, on_problem=lambda _: None, retry_seconds=0.01)
    call = make_call(1_700_000_000, "0.02")
    gone = weakref.ref(call)
    writer.add_call(call)
    del call
    assert gone() is None
    assert writer.backlog == 1  # held, not dropped
    writer.close(timeout=0.2)


def test_unwritable_ledger_keeps_rows_and_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file permissions; make the ledger path a directory instead.
        blocked = tmp_path / "blocked"
        blocked.mkdir()
        path = blocked
    else:
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        path = locked / "ledger.sqlite"
    problems: list[str] = []
    writer = LedgerWriter(path, on_problem=problems.append, retry_seconds=0.01)
    writer.add_call(make_call(1.0, "1"))
    writer.add_call(make_call(2.0, "2"))
    assert not writer.flush(timeout=0.3)
    assert writer.backlog == 2  # held, not dropped
    assert problems and str(path) in problems[0] and "held in memory" in problems[0]
    assert len(problems) == 1  # said once, not once per retry
    # The disk comes back: the same rows land.
    good = tmp_path / "good.sqlite"
    writer.path = good
    assert writer.flush(timeout=5)
    writer.close()
    assert problems[-1].endswith("is writable again.")
    conn = connect_readonly(good)
    assert conn is not None
    assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 2


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    connect(path).close()
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("CREATE TABLE calls (x)")


def test_a_reader_never_sees_a_ledger_half_created(tmp_path: Path) -> None:
    # A new user's first start: the headless line read the ledger while the proxy was
    # creating it and printed "no such column: refused_scope" (a ledger between two
    # migrations). Readers must see no ledger yet, or all of it.
    path = tmp_path / "l.sqlite"
    seen: list[object] = []

    def look(statement: str) -> None:
        if statement.startswith("ALTER TABLE"):  # mid-way through the migrations
            reader = connect_readonly(path)
            try:
                seen.append(
                    None if reader is None
                    else reader.execute("SELECT refused_scope FROM calls LIMIT 1").fetchall()
                )  # fmt: skip
            except sqlite3.OperationalError as exc:
                seen.append(exc)
            finally:
                if reader is not None:
                    reader.close()

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.set_trace_callback(look)
    migrate(conn)
    conn.set_trace_callback(None)
    assert seen and all(s is None for s in seen), seen
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_report_groupings_and_formats(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_calls(
        devmeter_home / "ledger.sqlite",
        [
            make_call(1_700_000_000, "0.5", session="a", repo="/src/acme"),
            make_call(1_700_000_100, "0.25", session="a", repo="/src/acme"),
            make_call(1_700_000_200, None, session="b", repo=None, tool="codex"),
            make_call(1_700_000_300, "1.000001", session="c", repo="/src/web", estimated=True),
        ],
    )
    assert main(["report", "--by", "repo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == ["/src/web", "/src/acme", "(unattributed)"]
    assert rows[0]["cost_usd"] == 1.000001
    assert rows[1]["requests"] == 2 and rows[1]["cost_usd"] == 0.75
    assert set(reports.GROUP_FIELDS) <= set(rows[0])

    assert main(["report", "--by", "request", "--json"]) == 0
    calls = json.loads(capsys.readouterr().out)
    assert len(calls) == 4
    required = {"ts", "tool", "provider", "endpoint", "requested_model", "model", "session",
                "repo", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                "output_tokens", "reasoning_tokens", "cost_usd", "estimated", "status"}  # fmt: skip
    assert required <= set(calls[0])
    assert calls[2]["cost_usd"] is None and calls[3]["estimated"] is True

    assert main(["report", "--by", "tool"]) == 0
    table = capsys.readouterr().out
    assert "claude-code" in table and "codex" in table
    assert "1 call used a model with no known price and is not in the total" in table
    assert "1 call is estimated" in table

    assert main(["report", "--by", "session", "--csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].startswith("key,requests,")
    assert csv_lines[1].startswith("c,1,")

    assert main(["report", "--since", "yesterday-ish"]) == 2
    assert "--since" in capsys.readouterr().err


def test_empty_ledger_says_so(capsys: pytest.CaptureFixture[str], devmeter_home: Path) -> None:
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No calls metered yet")
    assert "Start devmeter: `devmeter`" in out  # nothing runs: start it
    assert main(["report", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "[]\n"  # still valid JSON for tools that read it
    assert "No calls metered yet" in captured.err

    # devmeter runs (a new user's first report, right after starting it): no advice to
    # start a proxy, whose port the running one holds; how to route tools through it.
    import json
    import os

    devmeter_home.mkdir(parents=True, exist_ok=True)
    (devmeter_home / "proxy.json").write_text(
        json.dumps({"host": "127.0.0.1", "port": 18791, "pid": os.getpid(), "started": 0})
    )
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No calls metered yet") and "runs on 127.0.0.1:18791" in out
    assert "Start" not in out and "devmeter proxy" not in out
    assert "devmeter run -- CMD" in out and "devmeter doctor" in out


def test_grouped_reports_from_the_rollup_equal_the_calls(tmp_path: Path) -> None:
    """Grouped reports read a quarter-hour rollup kept by a trigger; they must agree with
    the calls themselves, for any --since (inside a quarter hour too), and a ledger
    written before the rollup existed is backfilled when it migrates."""
    import random

    from devmeter import ledger

    rng = random.Random(3)
    start = 1_700_000_000.0
    calls = [
        make_call(
            start + i * 97.3,
            None if i % 11 == 0 else str(Decimal(rng.randint(1, 10**6)) / 10**9),
            session=rng.choice(["a", "b", None]),
            repo=rng.choice(["/src/x", "/src/y", None]),
            tool=rng.choice(["claude-code", "codex"]),
        )
        for i in range(400)
    ]
    path = tmp_path / "l.sqlite"
    old = sqlite3.connect(path, isolation_level=None)  # a ledger from before the rollup
    for statement in ledger._statements(ledger.MIGRATIONS[0]):
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    v1 = ledger.CALL_COLUMNS[: ledger.CALL_COLUMNS.index("route_note") + 1]  # v1's columns
    old.executemany(
        f"INSERT INTO calls ({', '.join(v1)}) VALUES ({', '.join('?' * len(v1))})",
        [ledger.call_row(c)[: len(v1)] for c in calls[:200]],
    )
    old.close()
    write_calls(path, calls[200:])  # migrates (backfilling), then the trigger keeps it

    conn = connect_readonly(path)
    assert conn is not None
    windows = [(None, None), (start + 5000.5, None), (start + 900 * 20, None),
               (None, start + 9000.3), (start + 5000.5, start + 30000.7),
               (start + 900 * 20, start + 900 * 30), (start + 100, start + 700)]  # fmt: skip
    for since, until in windows:
        for by in ("session", "repo", "tool", "model", "day", "branch", "provider"):
            got = {r["key"]: r for r in reports.query(conn, by, since, until=until)}
            chosen = [
                c
                for c in calls
                if (since is None or c.ts >= since) and (until is None or c.ts < until)
            ]
            want: dict[str, list[Call]] = {}
            for c in chosen:
                want.setdefault(_key(by, c), []).append(c)
            assert set(got) == set(want), (by, since, until)
            for key, group in want.items():
                row = got[key]
                assert row["requests"] == len(group)
                assert row["input_tokens"] == sum(c.usage.input_tokens for c in group)
                assert row["cost_usd"] == sum(c.cost_usd or Decimal(0) for c in group)
                assert row["unpriced"] == sum(c.cost_usd is None for c in group)


def _key(by: str, call: Call) -> str:
    from datetime import datetime

    a = call.attribution
    return {
        "session": a.session or "(unattributed)",
        "repo": a.repo or "(unattributed)",
        "branch": f"{a.repo or '(unattributed)'} @ {a.branch or '?'}",
        "tool": a.tool,
        "model": call.model or "(unknown)",
        "provider": call.provider,
        "day": datetime.fromtimestamp(call.ts).strftime("%Y-%m-%d"),
    }[by]


def test_a_ledger_file_without_its_tables_yet_reads_as_no_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    sqlite3.connect(path).close()  # the writer has created the file, not yet its tables
    assert path.exists() and connect_readonly(path) is None
    connect(path).close()
    conn = connect_readonly(path)
    assert conn is not None and conn.execute("SELECT count(*) FROM calls").fetchone() == (0,)
    conn.close()
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        connect_readonly(path)


@pytest.mark.parametrize("by", ["session", "repo", "tool", "provider", "model", "day", "branch"])
def test_whole_history_reports_equal_the_same_report_since_the_epoch(
    tmp_path: Path, by: str
) -> None:
    # All of history reads the rollup directly; a --since window goes through the union of
    # rollup and calls. Both must give the same rows, unattributed calls included.
    path = tmp_path / "l.sqlite"
    calls = [
        make_call(1_700_000_000 + 97 * i, f"0.0{i % 7 + 1}", session=s, repo=r, tool=t)
        for i, (s, r, t) in enumerate(
            [("a", "/src/x", "codex"), (None, "/src/x", "claude-code"), ("", None, "cursor")] * 9
        )
    ]
    write_calls(path, calls)
    conn = connect_readonly(path)
    assert conn is not None
    whole = reports.query(conn, by)
    assert whole == reports.query(conn, by, since=0.0)
    assert sum(r["requests"] for r in whole) == len(calls)
    if by == "session":
        assert {r["key"] for r in whole} == {"a", reports.UNATTRIBUTED}


# -- the writer never stops --------------------------------------------------------------


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


def test_a_row_sqlite_cannot_store_is_set_aside_and_the_rows_after_it_are_written(
    tmp_path: Path,
) -> None:
    """A row past SQLite's 64-bit integers (build_call refuses to make one; a bug or a
    damaged spool could) raised OverflowError in the commit and stopped the writer."""
    path = tmp_path / "ledger.sqlite"
    problems: list[str] = []
    writer = LedgerWriter(path, on_problem=problems.append)
    writer.add_call(make_call(1.0, "0.01"))
    writer.add_call(make_call(2.0, "0.01", web_search_requests=10**30, session="poison"))
    for i in range(100):
        writer.add_call(make_call(3.0 + i, "0.01"))
    assert writer.flush(timeout=5)
    writer.close()
    assert _count(path) == 101 and writer.rows_quarantined == 1
    (line,) = (tmp_path / "ledger.sqlite.quarantine.jsonl").read_text().splitlines()
    held = json.loads(line)
    assert held["table"] == "calls" and "OverflowError" in held["reason"]
    assert held["row"][CALL_COLUMNS.index("session")] == "poison"
    assert sum("set it aside" in p for p in problems) == 1
    assert oct(os.stat(tmp_path / "ledger.sqlite.quarantine.jsonl").st_mode & 0o777) == "0o600"


def test_a_poison_row_in_the_spool_is_never_replayed_into_a_crash_loop(tmp_path: Path) -> None:
    """A killed run left a row SQLite refuses in the spool: the next start sets it aside,
    recovers the others, and the start after that replays nothing."""
    from devmeter.spool import Spool, spool_dir

    path = tmp_path / "ledger.sqlite"
    connect(path).close()
    spool = Spool(spool_dir(path))
    spool.append(call_row(make_call(1.0, "0.01", session="before")))
    spool.append(call_row(make_call(2.0, "0.01", web_search_requests=2**63, session="poison")))
    spool.append((1, 2, 3))  # not a call row at all
    spool.append(call_row(make_call(3.0, "0.01", session="after")))
    spool.close()
    for _ in range(2):
        writer = LedgerWriter(path, on_problem=lambda _: None)
        assert writer.flush(timeout=5)
        writer.close()
    conn = sqlite3.connect(path)
    sessions = [r[0] for r in conn.execute("SELECT session FROM calls ORDER BY id")]
    conn.close()
    assert sessions == ["before", "after"]
    assert len((tmp_path / "ledger.sqlite.quarantine.jsonl").read_text().splitlines()) == 2


def test_a_report_that_fails_does_not_stop_the_writer(tmp_path: Path) -> None:
    """stderr on the full disk: every problem report raises ENOSPC. The writer goes on and
    writes the rows once the ledger can be written."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()  # a directory where the ledger should be: cannot be written

    def enospc(message: str) -> None:
        raise OSError(28, "No space left on device")

    writer = LedgerWriter(blocked, on_problem=enospc, retry_seconds=0.01)
    for i in range(20):
        writer.add_call(make_call(float(i), "0.01"))
    assert not writer.flush(timeout=0.3)
    writer.path = tmp_path / "good.sqlite"  # the disk is back
    assert writer.flush(timeout=5)
    writer.close()
    assert _count(tmp_path / "good.sqlite") == 20


def test_a_clean_stop_writes_the_rows_held_in_memory(tmp_path: Path) -> None:
    """Neither the spool nor the ledger could be written, and every report failed: the
    rows wait in memory. Once the disk is back, a stop (without a flush first) writes
    them all."""
    from devmeter.spool import spool_dir

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    spool_dir(blocked).write_text("not a directory")  # the spool cannot be created

    def enospc(message: str) -> None:
        raise OSError(28, "No space left on device")

    writer = LedgerWriter(blocked, on_problem=enospc, retry_seconds=3600)
    held = [writer.add_call(make_call(float(i), "0.01")) for i in range(300)]
    assert held == [False] * 300  # in memory only
    writer.path = tmp_path / "good.sqlite"
    writer.close()
    assert _count(tmp_path / "good.sqlite") == 300


def test_an_unexpected_error_in_the_writer_is_survived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import devmeter.ledger as ledger_module

    real = ledger_module.insert_calls
    failures = [RuntimeError("a bug"), MemoryError()]

    def flaky(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        if failures:
            raise failures.pop(0)
        real(conn, rows)

    monkeypatch.setattr(ledger_module, "insert_calls", flaky)
    problems: list[str] = []
    writer = LedgerWriter(tmp_path / "l.sqlite", on_problem=problems.append, retry_seconds=0.01)
    writer.add_call(make_call(1.0, "0.01"))
    assert writer.flush(timeout=5)
    writer.close()
    assert _count(tmp_path / "l.sqlite") == 1
    assert any("unexpected error" in p for p in problems)


def test_a_clean_stop_leaves_every_row_in_the_ledger_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    writer = LedgerWriter(path)
    for i in range(50):
        writer.add_call(make_call(float(i), "0.01"))
    writer.close()
    wal = tmp_path / "ledger.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed into ledger.sqlite
    alone = tmp_path / "copy.sqlite"
    alone.write_bytes(path.read_bytes())  # the main file alone, as a backup would copy it
    assert _count(alone) == 50


def test_a_writer_whose_ledger_cannot_be_written_stops_at_once(tmp_path: Path) -> None:
    """Before, close() waited for the disk (flush, then join: over 20 s in the proxy)."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    problems: list[str] = []
    writer = LedgerWriter(blocked, on_problem=problems.append, retry_seconds=3600)
    writer.add_call(make_call(1.0, "0.01"))
    writer.close(timeout=60)
    assert not writer._thread.is_alive()
    assert "1 are in the spool and are written at the next start" in problems[-1]


def test_files_and_folders_are_private(tmp_path: Path) -> None:
    os.umask(0o022)  # the usual umask: devmeter must not rely on a stricter one
    data = tmp_path / "data"
    writer = LedgerWriter(data / "ledger.sqlite")
    writer.add_call(make_call(1.0, "0.01"))
    assert writer.flush()
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [data, *data.rglob("*")]}
    writer.close()
    assert modes.pop("data") == "0o700" and modes.pop("ledger.sqlite.spool") == "0o700"
    assert {"ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"} <= set(modes)
    assert set(modes.values()) == {"0o600"}, modes


def test_a_problem_stderr_could_not_take_is_said_once_it_can(tmp_path: Path) -> None:
    """The first 'cannot write' went to a full stderr: it is said on a later retry rather
    than never, and then not again."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    heard: list[str] = []
    full = [True]

    def stderr(message: str) -> bool:
        if full[0]:
            return False  # as diagnostics.say does when stderr raises ENOSPC
        heard.append(message)
        return True

    writer = LedgerWriter(blocked, on_problem=stderr, retry_seconds=0.01)
    writer.add_call(make_call(1.0, "0.01"))
    assert not writer.flush(timeout=0.2) and heard == []
    full[0] = False
    assert not writer.flush(timeout=0.3)
    writer.close(timeout=5)
    assert sum(m.startswith("devmeter: cannot write the ledger") for m in heard) == 1, heard


def _steps_to_insert(conn: sqlite3.Connection, row: tuple[object, ...]) -> int:
    """SQLite virtual-machine steps one live insert takes, its triggers included: a count
    of work, not a time, so it is the same on a busy machine."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        insert_calls(conn, [row])
    finally:
        conn.set_progress_handler(None, 0)
    return steps


def test_an_upstream_repeating_one_response_id_does_not_slow_every_later_insert(
    tmp_path: Path,
) -> None:
    """A live row deletes its imported twin by response id; through the index of every
    response id, each insert walked all earlier live rows with the same id, so an
    upstream that repeats an id made the ledger slower with every call (ledger v11)."""
    conn = connect(tmp_path / "ledger.db")
    row = call_row(replace(make_call(1_000.0, "0.01"), response_id="msg_same"))
    first = _steps_to_insert(conn, row)
    insert_calls(conn, [row] * 3000)
    later = _steps_to_insert(conn, row)
    assert later < 2 * first, (first, later)
    # The twin rule itself still holds: an imported row goes when its live twin lands.
    conn.execute("UPDATE calls SET source = 'import', response_id = 'msg_twin' WHERE id = 1")
    insert_calls(conn, [call_row(replace(make_call(1_001.0, "0.01"), response_id="msg_twin"))])
    sources = conn.execute("SELECT source FROM calls WHERE response_id = 'msg_twin'").fetchall()
    assert sources == [(None,)]
