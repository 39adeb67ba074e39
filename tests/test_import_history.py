"""History imports (Claude Code, Codex, Gemini CLI): each transcript pitfall, incremental
reads, and exactly once against earlier imports and against live rows."""

from __future__ import annotations

import json
import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

from devmeter import ledger, reports
from devmeter.importers.claude_code import import_claude_code
from devmeter.importers.codex import import_codex
from devmeter.importers.gemini_cli import import_gemini_cli
from devmeter.usage import Attribution, Call, Usage
from tests.genai_reference import genai_total

M = Decimal(1_000_000)
SESSION = "5b0c8f1e-6a1d-4c7e-9a43-0f3f7d9a2b11"


def assistant(
    msg: str,
    req: str,
    output: int,
    *,
    model: str = "claude-opus-4-8",
    ts: str = "2026-12-01T10:00:00.000Z",
    sidechain: bool = False,
    cwd: str = "/nowhere/acme",
    session: str = SESSION,
) -> dict[str, Any]:
    return {
        "parentUuid": None,
        "isSidechain": sidechain,
        "type": "assistant",
        "message": {
            "id": msg,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "not stored"}],
            "usage": {
                "input_tokens": 1234,
                "cache_creation_input_tokens": 444,
                "cache_read_input_tokens": 5678,
                "output_tokens": output,
                "server_tool_use": {"web_search_requests": 2},
                "service_tier": "standard",
                "cache_creation": {
                    "ephemeral_1h_input_tokens": 123,
                    "ephemeral_5m_input_tokens": 321,
                },
            },
        },
        "requestId": req,
        "uuid": f"u-{msg}-{output}",
        "timestamp": ts,
        "cwd": cwd,
        "sessionId": session,
        "gitBranch": "feature/x",
    }


def write_jsonl(path: Path, objs: list[dict[str, Any]], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in objs) + tail)
    return path


def rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    found = [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY ts, id")]
    conn.close()
    return found


def opus(u: dict[str, int]) -> int:
    """Opus 4.8 list price in pico-dollars: $5 in, $0.50 cache read, $6.25 / $10 cache
    writes (5m / 1h), $25 out per million tokens; $10 per thousand web searches."""
    usd = (
        u["input"] * 5 + u["read"] * Decimal("0.5") + u["w5"] * Decimal("6.25")
        + u["w1"] * 10 + u["out"] * 25
    ) / M + u["search"] * Decimal("0.01")  # fmt: skip
    return int(usd * 10**12)


def test_claude_code_transcript_pitfalls(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    projects = tmp_path / "claude" / "projects"
    user = {"type": "user", "message": {"role": "user", "content": "secret prompt"}}
    write_jsonl(
        projects / "-acme" / f"{SESSION}.jsonl",
        [
            {"type": "summary", "summary": "x"},
            user,
            # one streamed response written three times, output growing: keep the last
            assistant("msg_A", "req_A", 1),
            assistant("msg_A", "req_A", 40),
            assistant("msg_A", "req_A", 457),
            # a subagent's call in the same session: a real call, kept
            assistant("msg_S", "req_S", 9, sidechain=True, ts="2026-12-01T10:00:05Z"),
            # Claude Code's own made-up error message: no API call behind it
            assistant("msg_X", "req_X", 0, model="<synthetic>"),
            # a model nobody prices: kept, with no cost
            assistant("msg_U", "req_U", 5, model="claude-nonesuch-9", ts="2026-12-01T10:00:09Z"),
        ],
        # the file is being written: its last line is not whole yet
        tail='{"type":"assistant","message":{"id":"msg_T","usa',
    )
    # A resumed session: a new file repeats the earlier lines, then goes on.
    write_jsonl(
        projects / "-acme" / "resumed.jsonl",
        [assistant("msg_A", "req_A", 457), assistant("msg_B", "req_B", 33, ts="2026-12-01T11:00Z")],
    )

    result = import_claude_code(db, tmp_path / "claude")
    got = rows(db)
    assert [r["response_id"] for r in got] == ["msg_A", "msg_S", "msg_U", "msg_B"]
    assert result.imported == 4 and result.unpriced == 1
    a = got[0]
    assert (a["input_tokens"], a["cache_read_tokens"], a["cache_write_tokens"]) == (1234, 5678, 444)
    assert (a["cache_write_1h_tokens"], a["output_tokens"], a["web_search_requests"]) == (
        123, 457, 2,
    )  # fmt: skip
    assert a["cost_pusd"] == opus(
        {"input": 1234, "read": 5678, "w5": 321, "w1": 123, "out": 457, "search": 2}
    )
    assert (a["tool"], a["session"], a["source"], a["endpoint"]) == (
        "claude-code", SESSION, "import", "claude-code.import",
    )  # fmt: skip
    assert (a["repo"], a["branch"]) == ("/nowhere/acme", "feature/x")  # gone: as written
    assert got[2]["model"] == "claude-nonesuch-9" and got[2]["cost_pusd"] is None
    # `report --by request --json` marks them as imported
    by_request = reports.query(ledger.connect(db), "request")
    assert {r["source"] for r in by_request} == {"import"}
    assert "secret" not in db.read_bytes().decode("latin-1")

    # Again: nothing new. Then the truncated line is finished: just that one comes in.
    again = import_claude_code(db, tmp_path / "claude")
    assert (again.imported, again.files_read) == (0, 0)
    live_file = projects / "-acme" / f"{SESSION}.jsonl"
    with live_file.open("a") as f:
        f.write('ge":{}}}\n' + json.dumps(assistant("msg_T", "req_T", 7)) + "\n")
    third = import_claude_code(db, tmp_path / "claude")
    assert (third.imported, third.lines) == (1, 2)  # read from where it stopped
    assert [r["response_id"] for r in rows(db)].count("msg_T") == 1


def test_claude_code_stream_split_across_imports_keeps_the_final_counts(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    path = write_jsonl(tmp_path / "p" / "s.jsonl", [assistant("msg_A", "req_A", 1)])
    import_claude_code(db, tmp_path / "p")
    with path.open("a") as f:
        f.write(json.dumps(assistant("msg_A", "req_A", 900)) + "\n")
    result = import_claude_code(db, tmp_path / "p")
    assert result.updated == 1 and result.imported == 0
    (row,) = rows(db)
    assert row["output_tokens"] == 900
    by_session = reports.query(ledger.connect(db), "session", None)
    assert [(r["requests"], r["output_tokens"]) for r in by_session] == [(1, 900)]  # rollup too


def live_call(response_id: str | None, **usage: int) -> Call:
    return Call(
        ts=1_796_000_000.0,
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-4-8",
        model="claude-opus-4-8",
        attribution=Attribution(tool="claude-code", session=SESSION),
        usage=Usage(**usage),
        cost_usd=Decimal("0.5"),
        price_source="genai-prices",
        status=200,
        response_id=response_id,
    )


def test_live_rows_win_over_imported_ones(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    write_jsonl(
        tmp_path / "p" / "s.jsonl",
        [assistant("msg_LIVE", "r1", 457), assistant("msg_OLD", "r2", 5)],
    )
    ledger.write_calls(db, [live_call("msg_LIVE", output_tokens=457)])
    result = import_claude_code(db, tmp_path / "p")
    assert (result.imported, result.live) == (1, 1)  # metered live: not imported again
    # The proxy meters msg_OLD after it was imported (a transcript read mid-session):
    # the live row replaces the imported one, in the calls and in the rollup.
    ledger.write_calls(db, [live_call("msg_OLD", output_tokens=5)])
    got = rows(db)
    assert sorted((r["response_id"], r["source"]) for r in got) == [
        ("msg_LIVE", None), ("msg_OLD", None),
    ]  # fmt: skip
    conn = ledger.connect(db)
    (grouped,) = reports.query(conn, "session", None)
    assert grouped["requests"] == 2 and grouped["output_tokens"] == 462
    assert import_claude_code(db, tmp_path / "p").imported == 0


def codex_line(kind: str, payload: dict[str, Any], ts: str = "2026-12-01T09:00:00Z") -> dict:
    return {"timestamp": ts, "type": kind, "payload": payload}


def token_count(inp: int, cached: int, out: int, reasoning: int, ts: str) -> dict[str, Any]:
    total = {"input_tokens": inp, "cached_input_tokens": cached, "output_tokens": out,
             "reasoning_output_tokens": reasoning, "total_tokens": inp + out}  # fmt: skip
    return codex_line(
        "event_msg", {"type": "token_count", "info": {"total_token_usage": total}}, ts
    )


def test_codex_cumulative_token_counts_become_per_response_rows(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    repo = tmp_path / "acme"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    rollout = tmp_path / "codex" / "sessions" / "2026" / "12" / "01" / "rollout-x.jsonl"
    write_jsonl(
        rollout,
        [
            codex_line(
                "session_meta", {"id": "sess-1", "cwd": str(repo), "git": {"branch": "dev"}}
            ),
            codex_line("turn_context", {"cwd": str(repo), "model": "gpt-5"}),
            codex_line("event_msg", {"type": "token_count", "info": None}),
            token_count(1000, 200, 50, 10, "2026-12-01T09:00:01Z"),
            token_count(1000, 200, 50, 10, "2026-12-01T09:00:01Z"),  # a repeat: nothing
            token_count(2500, 1100, 80, 10, "2026-12-01T09:00:05Z"),
        ],
    )
    first = import_codex(db, tmp_path / "codex")
    assert first.imported == 2
    a, b = rows(db)
    assert (a["input_tokens"], a["cache_read_tokens"], a["output_tokens"]) == (800, 200, 50)
    assert a["reasoning_tokens"] == 10
    assert (b["input_tokens"], b["cache_read_tokens"], b["output_tokens"]) == (600, 900, 30)
    assert (a["session"], a["repo"], a["branch"], a["tool"]) == (
        "sess-1",
        str(repo),
        "dev",
        "codex",
    )
    # gpt-5: $1.25 in, $0.125 cached, $10 out per million
    assert a["cost_pusd"] == int(
        (800 * Decimal("1.25") + 200 * Decimal("0.125") + 500) / M * 10**12
    )
    # Incremental: the totals carry over from the last read.
    with rollout.open("a") as f:
        f.write(json.dumps(token_count(2600, 1100, 90, 10, "2026-12-01T09:01:00Z")) + "\n")
    second = import_codex(db, tmp_path / "codex")
    assert (second.imported, second.lines) == (1, 1)
    assert (rows(db)[-1]["input_tokens"], rows(db)[-1]["output_tokens"]) == (100, 10)
    assert import_codex(db, tmp_path / "codex").imported == 0


def test_codex_row_metered_live_is_not_imported(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    live = Call(
        ts=1_796_000_000.0, provider="openai", endpoint="openai.responses",
        host="api.openai.com", requested_model="gpt-5", model="gpt-5",
        attribution=Attribution(tool="codex", session="sess-1"),
        usage=Usage(input_tokens=800, cache_read_tokens=200, output_tokens=50),
        cost_usd=Decimal(1), price_source="x", status=200, response_id="resp_1",
    )  # fmt: skip
    ledger.write_calls(db, [live])
    write_jsonl(
        tmp_path / "sessions" / "rollout-1.jsonl",
        [
            codex_line("session_meta", {"id": "sess-1"}),
            codex_line("turn_context", {"model": "gpt-5"}),
            token_count(1000, 200, 50, 0, "2025-12-01T00:00:00Z"),  # far from the live row
        ],
    )
    # Out of the window: a different response with the same counts, imported.
    assert import_codex(db, tmp_path).imported == 1
    db2 = tmp_path / "ledger2.sqlite"
    ledger.write_calls(db2, [live])
    write_jsonl(
        tmp_path / "c2" / "sessions" / "rollout-2.jsonl",
        [
            codex_line("session_meta", {"id": "sess-1"}),
            codex_line("turn_context", {"model": "gpt-5"}),
            token_count(1000, 200, 50, 0, "2026-11-30T00:53:25Z"),  # 5 s after the live row
        ],
    )
    result = import_codex(db2, tmp_path / "c2")
    assert (result.imported, result.live) == (0, 1)


def test_gemini_cli_recorded_chats(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    chat = tmp_path / "gemini" / "tmp" / "abc123" / "chats" / "session-2026-12-01T10-00-aa.json"
    chat.parent.mkdir(parents=True)

    def message(ident: str, ts: str) -> dict[str, Any]:
        return {"id": ident, "timestamp": ts, "type": "gemini", "content": "x",
                "model": "gemini-2.5-pro",
                "tokens": {"input": 9000, "output": 300, "cached": 4000, "thoughts": 120,
                           "tool": 50, "total": 9470}}  # fmt: skip

    doc = {"sessionId": "g-1", "projectHash": "abc123", "messages": [
        {"id": "u1", "timestamp": "2026-12-01T10:00:00Z", "type": "user", "content": "hi"},
        message("m1", "2026-12-01T10:00:02Z"),
    ]}  # fmt: skip
    chat.write_text(json.dumps(doc))
    assert import_gemini_cli(db, tmp_path / "gemini").imported == 1
    (row,) = rows(db)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        5050,
        4000,
        420,
    )
    assert (row["reasoning_tokens"], row["session"], row["tool"]) == (120, "g-1", "gemini-cli")
    assert row["cost_pusd"] is not None
    doc["messages"].append(message("m2", "2026-12-01T10:01:00Z"))  # the file is rewritten
    chat.write_text(json.dumps(doc))
    os.utime(chat, ns=(chat.stat().st_atime_ns, chat.stat().st_mtime_ns + 10**9))
    result = import_gemini_cli(db, tmp_path / "gemini")
    assert (result.imported, result.duplicates) == (1, 1)
    assert len(rows(db)) == 2


def test_cli_import_and_statusline(
    tmp_path: Path, devmeter_home: Path, capsys: Any, monkeypatch: Any
) -> None:
    import io

    from devmeter.cli import main

    write_jsonl(tmp_path / "claude" / "projects" / "p" / "s.jsonl", [assistant("msg_A", "r", 457)])
    assert main(["import", "claude-code", "--path", str(tmp_path / "claude"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["imported"], summary["files"]) == (1, 1)
    assert main(["import", "claude-code", "--path", str(tmp_path / "claude")]) == 0
    # Dollars as `devmeter report` prints them: $0.00, not $0.0000 (nor $0.0200 for $0.02).
    assert "imported 0 calls ($0.00) from" in capsys.readouterr().out
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))  # the default folder
    assert main(["import", "claude-code", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 1
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"session_id": SESSION})))
    assert main(["statusline"]) == 0
    assert capsys.readouterr().out.startswith("devmeter · session $")


def test_a_rescan_with_nothing_new_loads_neither_the_cli_nor_the_importers(
    tmp_path: Path, devmeter_home: Path, capsys: Any
) -> None:
    """`devmeter import ...` with nothing new answers from file sizes and times and the
    ledger's marks (devmeter/entry.py, importers/scan.py): the same summary as the full
    import, without loading the CLI, the ledger module, pricing or the parsers."""
    import subprocess
    import sys

    from devmeter.cli import main
    from devmeter.entry import main as entry

    claude = tmp_path / "claude"
    transcript = write_jsonl(claude / "projects" / "p" / "s.jsonl", [assistant("msg_A", "r", 4)])
    write_jsonl(
        tmp_path / "codex" / "sessions" / "rollout-1.jsonl",
        [codex_line("session_meta", {"id": "s"}), token_count(10, 0, 5, 0, "2026-12-01T09:00:01Z")],
    )  # fmt: skip
    gemini = tmp_path / "gemini" / "tmp" / "h" / "chats"
    write_jsonl(gemini / "session-1.jsonl", [{"sessionId": "g", "kind": "main"}])
    write_jsonl(gemini / "session-2.json", [{"sessionId": "g2", "messages": []}])
    for name, home in (("claude-code", claude), ("codex", tmp_path / "codex"),
                       ("gemini-cli", tmp_path / "gemini")):  # fmt: skip
        assert main(["import", name, "--path", str(home), "--json"]) == 0
        capsys.readouterr()
        assert main(["import", name, "--path", str(home), "--json"]) == 0
        full = json.loads(capsys.readouterr().out)
        assert entry(["import", name, f"--path={home}", "--json"]) == 0
        quick = json.loads(capsys.readouterr().out)
        assert {**quick, "seconds": 0} == {**full, "seconds": 0}, name
        assert main(["import", name, "--path", str(home)]) == 0
        text = capsys.readouterr().out
        assert entry(["import", name, "--path", str(home)]) == 0
        assert capsys.readouterr().out.split(" in ")[0] == text.split(" in ")[0]
    probe = (
        "import sys; from devmeter.entry import main; status = main(sys.argv[1:]); "
        "heavy = [m for m in ('devmeter.cli', 'devmeter.ledger', 'devmeter.pricing', "
        "'devmeter.providers', 'devmeter.importers.history', 'argparse', 'platformdirs', "
        "'typing') "
        "if m in sys.modules]; print(status, heavy, file=sys.stderr)"
    )
    args = [sys.executable, "-c", probe, "import", "claude-code", "--path", str(claude)]
    quick_run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    assert quick_run.stderr.strip() == "0 []", quick_run.stderr
    assert "imported 0 calls" in quick_run.stdout
    # Something new: the full import runs (and finds it).
    with transcript.open("a") as f:
        f.write(json.dumps(assistant("msg_B", "r2", 9)) + "\n")
    grown = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    assert "imported 1 call (" in grown.stdout
    # ... with the ledger and the importer, still without the rest of the CLI.
    assert "devmeter.ledger" in grown.stderr and "devmeter.cli" not in grown.stderr


def test_an_import_run_without_the_cli_reports_errors_as_the_cli_does(
    tmp_path: Path, devmeter_home: Path, capsys: Any
) -> None:
    """`devmeter import claude-code` with something new runs without the rest of the CLI
    (devmeter/entry.py): a config mistake and a damaged ledger read as from the CLI."""
    from devmeter.entry import main as entry

    claude = tmp_path / "claude"
    write_jsonl(claude / "projects" / "p" / "s.jsonl", [assistant("msg_A", "r", 4)])
    devmeter_home.mkdir(parents=True)
    (devmeter_home / "config.toml").write_text("[prices\n")
    assert entry(["import", "claude-code", "--path", str(claude)]) == 2
    assert "bad config" in capsys.readouterr().err
    (devmeter_home / "config.toml").write_text('[[prices]]\nmodel = "claude-opus-*"\nfree = true\n')
    (devmeter_home / "ledger.sqlite").write_bytes(b"not a ledger" * 1000)
    assert entry(["import", "claude-code", "--path", str(claude)]) == 1
    err = capsys.readouterr().err
    assert "cannot read the ledger" in err and "Traceback" not in err
    (devmeter_home / "ledger.sqlite").unlink()
    assert entry(["import", "claude-code", "--path", str(claude), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == 1
    (row,) = rows(devmeter_home / "ledger.sqlite")
    assert (row["cost_pusd"], row["price_source"]) == (0, "override claude-opus-*")


def test_import_config_and_the_background_import(tmp_path: Path, monkeypatch: Any) -> None:
    import threading
    import time

    import pytest

    from devmeter.config import ConfigError, parse
    from devmeter.importers.auto import ImportConfig, start_auto_import

    conf = tmp_path / "config.toml"
    assert parse("", conf).section("import") == ImportConfig(auto=True, interval_minutes=5.0)
    assert parse("[import]\nauto = false\n", conf).section("import").auto is False
    with pytest.raises(ConfigError, match=r"line 2 \[import.every\]: unknown key"):
        parse("[import]\nevery = 3\n", conf)
    with pytest.raises(ConfigError, match="import.auto"):
        parse('[import]\nauto = "yes"\n', conf)
    assert start_auto_import(ImportConfig(auto=False), tmp_path / "l.sqlite") is None

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no Codex or Gemini CLI history
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    write_jsonl(tmp_path / "claude" / "projects" / "p" / "s.jsonl", [assistant("msg_A", "r", 4)])
    db = tmp_path / "ledger.sqlite"
    stop = threading.Event()
    said: list[str] = []
    thread = start_auto_import(ImportConfig(), db, stop=stop, say=said.append, first_delay=0)
    assert thread is not None
    deadline = time.monotonic() + 20
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert said == ["devmeter: imported 1 claude-code call from its own history"]
    assert [r["response_id"] for r in rows(db)] == ["msg_A"]


def test_two_writers_migrating_at_once(tmp_path: Path) -> None:
    """The proxy and the background import open the same new ledger together: whichever
    runs a migration second finds it done instead of failing on it."""
    db = tmp_path / "ledger.sqlite"
    first = sqlite3.connect(db, isolation_level=None)
    second = sqlite3.connect(db, isolation_level=None)
    (seen,) = second.execute("PRAGMA user_version").fetchone()  # 0: a new file
    ledger.migrate(first)  # meanwhile, the other writer migrates it all
    ledger._migrate_from(second, seen)  # no "duplicate column" or "table exists"
    assert second.execute("PRAGMA user_version").fetchone()[0] == len(ledger.MIGRATIONS)
    first.close()
    second.close()


def test_first_import_shows_progress(tmp_path: Path) -> None:
    import io

    for n in range(3):
        write_jsonl(tmp_path / "p" / f"s{n}.jsonl", [assistant(f"msg_{n}", "r", 4)])
    out = io.StringIO()
    from devmeter.importers import history

    history_progress_every = history.PROGRESS_EVERY
    history.PROGRESS_EVERY = 0.0  # every file, for the test
    try:
        import_claude_code(tmp_path / "l.sqlite", tmp_path / "p", progress=out)
    finally:
        history.PROGRESS_EVERY = history_progress_every
    shown = out.getvalue()
    assert "\rclaude-code [" in shown and "3/3 files, 3 rows" in shown and shown.endswith("\n")


def test_an_import_in_chunks_stopped_half_way_goes_on_from_there(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import pytest

    from devmeter.importers import claude_code, history

    monkeypatch.setattr(history, "CHUNK_LINES", 2)  # a transaction every two lines
    lines = []
    for n in range(4):  # each response streamed as two lines: some straddle two chunks
        lines += [assistant(f"msg_{n}", f"r{n}", 1), assistant(f"msg_{n}", f"r{n}", 100 + n)]
    write_jsonl(tmp_path / "p" / "s.jsonl", [{"type": "user"}, *lines])
    real = claude_code.parse_lines
    seen = []

    def failing(chunk: list[bytes], *args: Any) -> list[Call]:
        seen.append(len(chunk))
        if len(seen) == 3:
            raise OSError("the disk went away")
        return real(chunk, *args)

    monkeypatch.setattr(claude_code, "parse_lines", failing)
    db = tmp_path / "l.sqlite"
    with pytest.raises(OSError):
        import_claude_code(db, tmp_path / "p")
    assert len(rows(db)) == 2  # the first two chunks are in
    monkeypatch.setattr(claude_code, "parse_lines", real)
    result = import_claude_code(db, tmp_path / "p")
    assert result.lines == 5  # only what was not committed yet
    assert [(r["response_id"], r["output_tokens"]) for r in rows(db)] == [
        (f"msg_{n}", 100 + n) for n in range(4)
    ]


def test_live_rows_written_before_response_ids_still_win(tmp_path: Path) -> None:
    """A ledger from an older devmeter: its live Claude Code rows have no response id; the
    transcript's lines for them are matched by tool, time and tokens, not imported."""
    from datetime import UTC, datetime

    db = tmp_path / "ledger.sqlite"
    at = "2026-12-01T10:00:00.000Z"
    when = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC).timestamp()
    usage = Usage(input_tokens=1234, cache_read_tokens=5678, cache_write_tokens=444,
                  cache_write_1h_tokens=123, output_tokens=457)  # fmt: skip
    old = live_call(None, output_tokens=0)
    from dataclasses import replace

    ledger.write_calls(db, [replace(old, ts=when - 2, usage=usage)])
    write_jsonl(
        tmp_path / "p" / "s.jsonl",
        [assistant("msg_A", "r1", 457, ts=at), assistant("msg_B", "r2", 458, ts=at)],
    )
    result = import_claude_code(db, tmp_path / "p")
    assert (result.live, result.imported) == (1, 1)  # msg_B's counts differ: imported
    assert sorted((r["source"] or "live", r["output_tokens"]) for r in rows(db)) == [
        ("import", 458), ("live", 457),
    ]  # fmt: skip


def test_gemini_cli_0_61_jsonl_chats(tmp_path: Path) -> None:
    """Gemini CLI 0.61 appends records (read from its ChatRecordingService): metadata, each
    message as recorded, the same message again once its tokens arrive, `$set` updates."""
    db = tmp_path / "ledger.sqlite"
    log = tmp_path / "gemini" / "tmp" / "abc" / "chats" / "session-2026-12-01T10-00-g2aa.jsonl"
    tokens = {"input": 9000, "output": 300, "cached": 4000, "thoughts": 120, "tool": 50,
              "total": 9470}  # fmt: skip
    answer = {"id": "m1", "timestamp": "2026-12-01T10:00:02Z", "type": "gemini",
              "content": "x", "model": "gemini-2.5-pro", "tokens": None}  # fmt: skip
    write_jsonl(
        log,
        [
            {
                "sessionId": "g-2",
                "projectHash": "abc",
                "startTime": "2026-12-01T10:00:00Z",
                "lastUpdated": "2026-12-01T10:00:00Z",
                "kind": "main",
            },  # fmt: skip
            {"id": "u1", "timestamp": "2026-12-01T10:00:00Z", "type": "user", "content": "hi"},
            answer,  # recorded before its tokens
            {"$set": {"lastUpdated": "2026-12-01T10:00:02Z"}},
            {**answer, "tokens": tokens},  # pushed again with them
        ],
    )
    first = import_gemini_cli(db, tmp_path / "gemini")
    assert first.imported == 1
    (row,) = rows(db)
    assert (row["session"], row["input_tokens"], row["output_tokens"]) == ("g-2", 5050, 420)
    with log.open("a") as f:
        f.write(json.dumps({**answer, "id": "m2", "tokens": tokens}) + "\n")
        f.write(json.dumps({"$rewindTo": "u1"}) + "\n")  # rewound: what it cost stays
    second = import_gemini_cli(db, tmp_path / "gemini")
    assert (second.imported, second.lines) == (1, 2)
    assert [r["import_key"] for r in rows(db)] == ["gemini-cli:g-2:m1", "gemini-cli:g-2:m2"]


def test_codex_and_gemini_rows_imported_first_are_replaced_by_their_live_twins(
    tmp_path: Path,
) -> None:
    """Rollouts and chats name no response id: a live row arriving after the import (the
    proxy's spool replayed once the ledger could be written again) replaces the imported
    row with the same tool, token counts and time (within 15 minutes), one for one."""
    from dataclasses import replace
    from datetime import UTC, datetime

    db = tmp_path / "ledger.sqlite"
    write_jsonl(
        tmp_path / "codex" / "sessions" / "rollout-1.jsonl",
        [
            codex_line("session_meta", {"id": "sess-1"}),
            codex_line("turn_context", {"model": "gpt-5"}),
            token_count(1000, 200, 50, 0, "2026-12-01T09:00:01Z"),
            token_count(2000, 400, 100, 0, "2026-12-01T09:00:09Z"),  # the same counts again
            token_count(3500, 400, 170, 0, "2026-12-01T09:00:20Z"),
        ],
    )
    log = tmp_path / "gemini" / "tmp" / "abc" / "chats" / "session-2026-12-01T10-00-g3aa.jsonl"
    tokens = {"input": 9000, "output": 300, "cached": 4000, "thoughts": 120, "tool": 50}
    write_jsonl(
        log,
        [
            {"sessionId": "g-3", "projectHash": "abc", "kind": "main"},
            {
                "id": "m1",
                "timestamp": "2026-12-01T10:00:02Z",
                "type": "gemini",
                "model": "gemini-2.5-pro",
                "tokens": tokens,
            },  # fmt: skip
            {
                "id": "m2",
                "timestamp": "2026-12-01T10:00:05Z",
                "type": "gemini",
                "model": "gemini-2.5-pro",
                "tokens": {},
            },  # an answer that recorded no tokens
        ],
    )
    assert import_codex(db, tmp_path / "codex").imported == 3
    assert import_gemini_cli(db, tmp_path / "gemini").imported == 2
    assert len(rows(db)) == 5

    at = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC).timestamp()
    codex_live = Call(
        ts=at, provider="openai", endpoint="openai.responses", host="api.openai.com",
        requested_model="gpt-5", model="gpt-5",
        attribution=Attribution(tool="codex", session="sess-1"),
        usage=Usage(input_tokens=800, cache_read_tokens=200, output_tokens=50),
        cost_usd=Decimal(1), price_source="x", status=200, response_id="resp_1",
    )  # fmt: skip
    gemini_live = replace(
        codex_live, ts=at + 3602, provider="google", endpoint="gemini.generate",
        model="gemini-2.5-pro", requested_model="gemini-2.5-pro",
        attribution=Attribution(tool="gemini-cli", session="proc-123"),  # another session id
        usage=Usage(input_tokens=5050, cache_read_tokens=4000, output_tokens=420),
        response_id="gem-resp-1",
    )  # fmt: skip
    # The second Codex response has the same counts as the first: one live row takes one
    # imported row, the nearest in time; a live row matching nothing imported replaces nothing.
    unrelated = replace(codex_live, usage=Usage(input_tokens=1, output_tokens=1), response_id="r9")
    # A refusal (no tokens) is no answer's twin, not even of one that recorded no tokens.
    refused = replace(gemini_live, ts=at + 3605, usage=Usage(), status=429, response_id=None)
    ledger.write_calls(db, [codex_live, gemini_live, unrelated, refused])
    got = sorted((r["tool"], r["source"] or "live", r["ts"] - at) for r in rows(db))
    assert got == [
        ("codex", "import", 9.0), ("codex", "import", 20.0), ("codex", "live", 0.0),
        ("codex", "live", 0.0), ("gemini-cli", "import", 3605.0), ("gemini-cli", "live", 3602.0),
        ("gemini-cli", "live", 3605.0),
    ]  # fmt: skip
    # The rollup forgot the replaced rows: the report counts each response once.
    conn = ledger.connect(db)
    by_tool = {r["key"]: r["requests"] for r in reports.query(conn, "tool", None, None)}
    conn.close()
    assert by_tool == {"codex": 4, "gemini-cli": 3}, by_tool
    # Importing again adds nothing back: the files were read, and the live rows are twins.
    assert import_codex(db, tmp_path / "codex").imported == 0
    assert import_gemini_cli(db, tmp_path / "gemini").imported == 0
    assert len(rows(db)) == 7


def test_rates_kept_from_an_earlier_import_price_the_next_without_genai_prices(
    tmp_path: Path,
) -> None:
    """A later import (a new process) prices with the rates an earlier one kept beside the
    ledger: the same costs and price source, genai-prices never loaded; rates kept for
    other genai-prices data, or a damaged file, are not used."""
    import stat
    import subprocess
    import sys

    from devmeter.importers import price_memory

    home = tmp_path / "home"

    def long_context(msg: str) -> dict[str, Any]:  # past Sonnet's 200k tier: its other rates
        line = assistant(msg, f"r{msg}", 70, model="claude-sonnet-4-5")
        line["message"]["usage"]["input_tokens"] = 250_000
        return line

    one = write_jsonl(tmp_path / "one" / "p" / "a.jsonl", [
        assistant("msg_1", "r1", 50, model="claude-sonnet-4-5"),
        assistant("msg_2", "r2", 60, model="claude-haiku-4-5", ts="2026-12-01T11:30:00.000Z"),
        long_context("msg_5"),
    ])  # fmt: skip
    two = write_jsonl(tmp_path / "two" / "p" / "b.jsonl", [
        assistant("msg_3", "r3", 50, model="claude-sonnet-4-5"),
        assistant("msg_4", "r4", 60, model="claude-haiku-4-5", ts="2026-12-01T11:30:00.000Z"),
        long_context("msg_6"),
    ])  # fmt: skip
    probe = (
        "import sys; from pathlib import Path; "
        "from devmeter.importers.claude_code import import_claude_code; "
        "r = import_claude_code(Path(sys.argv[1]) / 'ledger.sqlite', Path(sys.argv[2])); "
        "print(r.imported, 'genai_prices' in sys.modules)"
    )

    def run(folder: Path) -> str:
        return subprocess.run(
            [sys.executable, "-c", probe, str(home), str(folder)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip

    assert run(one.parent.parent) == ["3", "True"]  # nothing kept yet: genai-prices prices
    kept = home / price_memory.FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert run(two.parent.parent) == ["3", "False"]  # the same hours and models: kept rates
    got = {
        r["response_id"]: (r["cost_pusd"], r["price_source"]) for r in rows(home / "ledger.sqlite")
    }
    assert got["msg_3"] == got["msg_1"] and got["msg_4"] == got["msg_2"]
    assert got["msg_6"] == got["msg_5"]
    # ... which are genai-prices' own, at the long-context tier too.
    from datetime import UTC, datetime

    from devmeter.money import to_pusd
    from devmeter.providers.anthropic import document_usage

    usage = document_usage(long_context("x")["message"]["usage"])
    assert usage is not None
    when = datetime(2026, 12, 1, 10, tzinfo=UTC)
    theirs = genai_total("anthropic", "claude-sonnet-4-5", usage, when)
    assert got["msg_5"][0] == to_pusd(Decimal(theirs))
    assert got["msg_1"][0] > 0 and got["msg_1"][1].startswith("genai-prices ")

    memory = json.loads(kept.read_text())
    memory["genai_prices"] = "another version"
    kept.write_text(json.dumps(memory))
    sonnet = "claude-sonnet-4-5"
    three = write_jsonl(tmp_path / "3" / "p" / "c.jsonl", [assistant("m5", "r5", 5, model=sonnet)])
    assert run(three.parent.parent) == ["1", "True"]  # kept for other data: not used
    kept.write_text("{not json")
    four = write_jsonl(tmp_path / "4" / "p" / "d.jsonl", [assistant("m6", "r6", 6, model=sonnet)])
    assert run(four.parent.parent) == ["1", "True"]
    assert json.loads(kept.read_text())["genai_prices"] != "another version"  # rewritten
