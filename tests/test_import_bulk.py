"""A first import's fast paths give exactly what the general ones do: rows built and priced
without a Call (claude_code.line_row, pricing.cost_pusd) and rows stored with the rollups
summed set-wise (ledger.insert_calls_in_bulk) instead of by the per-row triggers."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter import ledger, pricing
from devmeter.importers import claude_code
from devmeter.importers.claude_code import import_claude_code
from devmeter.money import to_pusd
from devmeter.providers.anthropic import document_usage
from devmeter.usage import Attribution, Call, Usage
from tests.genai_reference import genai_total

ROLLUPS = ("rollup", "rollup_group", "rollup_session", "rollup_day")


def line(
    n: int,
    output: int,
    *,
    minute: int = 0,
    model: str = "claude-sonnet-4-5",
    session: str = "s-1",
    cwd: str = "/nowhere/acme",
    base: datetime = datetime(2026, 11, 30, 18, tzinfo=UTC),
    **usage: Any,
) -> dict[str, Any]:
    when = base + timedelta(minutes=minute, seconds=n % 60, milliseconds=n % 1000)
    return {
        "type": "assistant",
        "sessionId": session,
        "cwd": cwd,
        "gitBranch": "main",
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "requestId": f"req_{n}",
        "message": {
            "id": f"msg_{n}",
            "model": model,
            "usage": {
                "input_tokens": 100 + n,
                "cache_read_input_tokens": 7 * n,
                "cache_creation_input_tokens": 3 * n,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 2 * n,
                    "ephemeral_1h_input_tokens": n,
                },  # fmt: skip
                "output_tokens": output,
                **usage,
            },
        },
    }


def write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(o) + "\n" for o in lines)


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    tables = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in ROLLUPS}
    columns = ", ".join(ledger.CALL_COLUMNS)
    types = ", ".join(f"typeof({c})" for c in ledger.CALL_COLUMNS)
    tables["calls"] = conn.execute(f"SELECT {columns}, {types} FROM calls ORDER BY id").fetchall()
    # Every rollup holds the raw sums of the calls.
    raw = conn.execute("SELECT count(*), sum(output_tokens), sum(cost_pusd) FROM calls").fetchone()
    for table in ROLLUPS:
        sums = conn.execute(
            f"SELECT sum(requests), sum(output_tokens), sum(cost_pusd) FROM {table}"
        ).fetchone()
        assert sums == raw, table
    conn.close()
    return tables


def live(n: int, output: int, base: datetime) -> Call:
    """What the proxy records for response n of `line` (and one it has no line for)."""
    return Call(
        ts=(base + timedelta(seconds=n % 60)).timestamp(),
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-sonnet-4-5",
        model="claude-sonnet-4-5",
        attribution=Attribution(tool="claude-code", session="s-1", repo="/nowhere/acme"),
        usage=Usage(input_tokens=100 + n, output_tokens=output),
        cost_usd=Decimal("0.25"),
        price_source="genai-prices",
        status=200,
        billing="subscription",
        response_id=f"msg_{n}",
    )


@pytest.mark.parametrize(
    ("zone", "base"),
    [
        # Half an hour off UTC: local days start on a quarter hour (18:30 UTC), not an hour.
        ("Asia/Kolkata", datetime(2026, 11, 30, 18, tzinfo=UTC)),
        # Summer time ends at 01:00 UTC: two offsets in the same local day.
        ("Europe/Berlin", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ],
)
def test_rollups_summed_set_wise_equal_the_triggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zone: str, base: datetime
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        first = [line(n, o, minute=n // 7, session=f"s-{n % 3}", cwd=f"/nowhere/r{n % 2}",
                      base=base) for n in range(400) for o in (1, 50 + n)]  # fmt: skip
        first += [line(400, 9, model="no-such-model", base=base)]  # unpriced
        later = [line(n, 5000 + n, minute=n // 7, base=base) for n in range(390, 400)]
        later += [line(n, 60, minute=n // 5, base=base) for n in range(1000, 1300)]
        seen = []
        for bulk_at_least in (ledger.BULK_AT_LEAST, 10**9):  # set-wise, then by triggers
            monkeypatch.setattr(ledger, "BULK_AT_LEAST", bulk_at_least)
            root, db = tmp_path / str(bulk_at_least), tmp_path / f"{bulk_at_least}.sqlite"
            write(root / "projects" / "p" / "a.jsonl", first)
            assert import_claude_code(db, root).imported == 401
            steps = [snapshot(db)]
            # Live rows for msg_5 and msg_7 replace the imported ones; one has no line.
            ledger.write_calls(db, [live(5, 55, base), live(7, 999, base), live(2000, 3, base)])
            steps.append(snapshot(db))
            write(root / "projects" / "p" / "a.jsonl", later)
            write(root / "projects" / "p" / "b.jsonl", first[:100])  # a resumed session
            again = import_claude_code(db, root)
            assert (again.imported, again.updated) == (300, 10), again
            steps.append(snapshot(db))
            seen.append(steps)
        set_wise, by_triggers = seen
        for step, (ours, theirs) in enumerate(zip(set_wise, by_triggers, strict=True)):
            for table in ("calls", *ROLLUPS):
                assert ours[table] == theirs[table], (step, table)
        assert len(set_wise[-1]["calls"]) == 401 - 2 + 3 + 300
        conn = sqlite3.connect(tmp_path / f"{ledger.BULK_AT_LEAST}.sqlite")
        triggers = {name for (name,) in conn.execute("SELECT name FROM sqlite_master "
                                                    "WHERE type = 'trigger'")}  # fmt: skip
        assert {"calls_rollup", "calls_rollup_group", "calls_rollup_day"} <= triggers
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def reference_row(obj: dict[str, Any], overrides: tuple[pricing.PriceOverride, ...]) -> Any:
    """The row built the general way: a Call, priced by pricing.price, ledger.call_row."""
    message, usage = obj["message"], document_usage(obj["message"]["usage"])
    assert usage is not None
    ts = datetime.fromisoformat(obj["timestamp"].replace("Z", "+00:00")).timestamp()
    found = pricing.price("anthropic", message["model"], usage, overrides,
                          datetime.fromtimestamp(ts, UTC))  # fmt: skip
    return ledger.call_row(
        Call(
            ts=ts, provider="anthropic", endpoint="claude-code.import",
            host="api.anthropic.com", requested_model=message["model"], model=message["model"],
            attribution=Attribution(tool="claude-code", session=obj["sessionId"],
                                    repo=obj["cwd"], branch="main", repo_source="transcript"),
            usage=usage, cost_usd=found.cost_usd, price_source=found.source, status=None,
            response_id=message["id"], source="import",
            import_key=f"claude-code:{message['id']}:{obj['requestId']}",
        )
    )  # fmt: skip


def test_rows_built_without_a_call_equal_the_general_path() -> None:
    overrides = pricing.parse_overrides([
        {"model": "claude-haiku-*", "discount": 0.2},
        {"model": "claude-opus-4-1", "input_mtok": 1, "output_mtok": 2.5},
    ])  # fmt: skip
    lines = [
        line(1, 700),
        line(2, 800, model="claude-haiku-4-5"),  # a discount
        line(3, 900, model="claude-opus-4-1"),  # rates of one's own
        line(4, 10, model="no-such-model"),  # unpriced
        line(5, 10, server_tool_use={"web_search_requests": 3}),
        line(6, 10, service_tier="priority"),  # a priced tier: genai-prices decides
        line(300_000, 10),  # over 200k input: Sonnet's long-context tier
    ]
    for obj in lines:
        for given in ((), overrides):
            assert claude_code.line_row(obj, given) == reference_row(obj, given), obj
    unknown = claude_code.line_row(line(4, 1, model="no-such-model"), ())
    assert unknown is not None and unknown[ledger.CALL_COLUMNS.index("cost_pusd")] is None


def test_cost_in_pico_dollars_equals_genai_prices_for_every_model() -> None:
    import random

    from genai_prices import data_snapshot

    rng = random.Random(18)
    when = datetime(2026, 11, 23, 12, tzinfo=UTC)
    checked = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            write = rng.choice([0, rng.randint(1, 50_000)])
            usage = Usage(
                input_tokens=rng.randint(0, 250_000),
                cache_read_tokens=rng.choice([0, rng.randint(1, 500_000)]),
                cache_write_tokens=write,
                cache_write_1h_tokens=rng.choice([0, write // 3]),
                output_tokens=rng.randint(0, 40_000),
                web_search_requests=rng.choice([0, 0, 3]),
            )
            for tier in (None, "standard"):
                usage = replace(usage, service_tier=tier)
                ours, source = pricing.cost_pusd(provider.id, model.id, usage, (), when.timestamp())
                try:
                    theirs = genai_total(provider.id, model.id, usage, when)
                except Exception:  # genai-prices refuses some usages for some models
                    continue
                checked += 1
                assert ours == to_pusd(Decimal(theirs)), (provider.id, model.id, usage)
                assert source == pricing.genai_prices_source()
    assert checked > 500


def test_a_batch_the_writer_cannot_store_stops_the_import_and_the_next_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are stored on a thread of their own: a failure there is the import's (it
    raises, nothing after the failed batch is stored), and the next import reads on from
    the last batch that was committed, exactly once."""
    from devmeter.importers import history

    monkeypatch.setattr(history, "CHUNK_LINES", 4)  # a transaction every four lines
    for n in range(5):
        write(tmp_path / "projects" / "p" / f"{n}.jsonl",
              [line(10 * n + k, 5 + k) for k in range(4)])  # fmt: skip
    real, batches = history.store, []

    def failing(conn: sqlite3.Connection, rows: Any, *args: Any) -> None:
        batches.append(len(rows))
        if len(batches) == 3:
            raise sqlite3.OperationalError("disk I/O error")
        real(conn, rows, *args)

    monkeypatch.setattr(history, "store", failing)
    db = tmp_path / "ledger.sqlite"
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        import_claude_code(db, tmp_path)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM calls").fetchone() == (8,)  # two batches
    monkeypatch.setattr(history, "store", real)
    again = import_claude_code(db, tmp_path)
    assert (again.imported, again.files_read) == (12, 3)
    assert conn.execute("SELECT count(*), count(DISTINCT import_key) FROM calls").fetchone() == (
        20,
        20,
    )


def test_lines_with_ids_of_the_wrong_type_are_skipped_or_kept_never_fatal(tmp_path: Path) -> None:
    """A hostile or damaged transcript: ids that are lists or objects (unhashable: they
    used to stop the whole import), usage that is no object, JSON that is no object."""
    odd = [line(1, 5), line(2, 6), line(3, 7)]
    odd[0]["message"]["id"] = ["msg_1"]  # no usable ids: its uuid names it
    odd[0]["requestId"] = {"r": 1}
    odd[0]["uuid"] = "u-1"
    odd[1]["message"]["usage"] = ["not", "an", "object"]
    odd[2]["message"] = "no message"
    write(tmp_path / "projects" / "p" / "s.jsonl", [*odd, line(4, 8)])
    with (tmp_path / "projects" / "p" / "s.jsonl").open("a") as f:
        f.write('[1, 2, "usage"]\n"usage"\n{"message": {"usage": 1}}\n')
    db = tmp_path / "ledger.sqlite"
    result = import_claude_code(db, tmp_path)
    assert result.imported == 2, result
    keys = sorted(k for (k,) in sqlite3.connect(db).execute("SELECT import_key FROM calls"))
    assert keys == ["claude-code:msg_4:req_4", "claude-code:uuid:u-1"]


def test_counts_no_call_can_have_are_recorded_as_zero_as_the_proxy_does(tmp_path: Path) -> None:
    """NaN and counts beyond any call (a damaged transcript) are taken out as
    usage.checked_usage takes them out of a live row; they used to stop the import
    (a number SQLite cannot hold)."""
    odd = [line(1, 5), line(2, 6), line(3, 7)]
    odd[1]["message"]["usage"]["input_tokens"] = 10**30
    odd[2]["message"]["usage"]["cache_read_input_tokens"] = -5
    write(tmp_path / "projects" / "p" / "s.jsonl", odd)
    with (tmp_path / "projects" / "p" / "s.jsonl").open("a") as f:
        f.write(json.dumps(line(4, 8)).replace('"output_tokens": 8', '"output_tokens": NaN') + "\n")
    db = tmp_path / "ledger.sqlite"
    assert import_claude_code(db, tmp_path).imported == 4
    got = dict(
        sqlite3.connect(db).execute(
            "SELECT response_id, input_tokens + cache_read_tokens + output_tokens FROM calls"
        )
    )
    assert got == {"msg_1": 101 + 7 + 5, "msg_2": 0 + 14 + 6, "msg_3": 103 + 0 + 7,
                   "msg_4": 104 + 28 + 0}  # fmt: skip


def test_values_a_batch_shares_are_stored_exactly_as_bound(tmp_path: Path) -> None:
    """insert_calls_in_bulk writes what every row has the same into the statement: text
    with quotes or a NUL, integers, floats and NULL come back exactly as insert_calls
    stores them, types included."""
    base = live(1, 1, datetime(2026, 11, 30, 18, tzinfo=UTC))
    odd = replace(base, attribution=replace(base.attribution, session="it's \x00 'q'",
                                            repo="/tmp/a\x00b"), duration_ms=7)  # fmt: skip
    calls = [replace(odd, ts=odd.ts + n, response_id=f"r{n}", host="h'\"x") for n in range(300)]
    stored = []
    for insert in (ledger.insert_calls, ledger.insert_calls_in_bulk):
        conn = sqlite3.connect(tmp_path / f"{insert.__name__}.sqlite", isolation_level=None)
        ledger.migrate(conn)
        conn.execute("BEGIN")
        insert(conn, [ledger.call_row(c) for c in calls])
        conn.execute("COMMIT")
        columns = ", ".join(f"{c}, typeof({c})" for c in ledger.CALL_COLUMNS)
        stored.append(conn.execute(f"SELECT {columns} FROM calls ORDER BY id").fetchall())
    assert stored[0] == stored[1]
    assert stored[1][0][2 * ledger.CALL_COLUMNS.index("session")] == "it's \x00 'q'"


def test_codex_and_gemini_counts_no_call_can_have_are_recorded_as_zero(tmp_path: Path) -> None:
    """The same check for Codex's cumulative totals and Gemini CLI's chats: a count past
    2**63 (SQLite's integers are signed 64-bit) used to stop the import."""
    from devmeter.importers.codex import import_codex
    from devmeter.importers.gemini_cli import import_gemini_cli

    def total(inp: int, out: int, ts: str) -> dict[str, Any]:
        usage = {"input_tokens": inp, "cached_input_tokens": 0, "output_tokens": out,
                 "reasoning_output_tokens": 0}  # fmt: skip
        info = {"type": "token_count", "info": {"total_token_usage": usage}}
        return {"timestamp": ts, "type": "event_msg", "payload": info}

    rollout = tmp_path / "codex" / "sessions" / "rollout-1.jsonl"
    rollout.parent.mkdir(parents=True)
    rollout.write_text("".join(json.dumps(o) + "\n" for o in [
        {"timestamp": "2026-12-01T09:00:00Z", "type": "session_meta", "payload": {"id": "s"}},
        {"timestamp": "2026-12-01T09:00:00Z", "type": "turn_context",
         "payload": {"model": "gpt-5"}},
        total(1000, 2**63 + 10, "2026-12-01T09:00:01Z"),
        total(2000, 2**63 + 15, "2026-12-01T09:00:02Z"),
    ]))  # fmt: skip
    db = tmp_path / "ledger.sqlite"
    assert import_codex(db, tmp_path / "codex").imported == 2
    got = sqlite3.connect(db).execute("SELECT input_tokens, output_tokens FROM calls ORDER BY ts")
    assert got.fetchall() == [(1000, 0), (1000, 5)]
    chat = tmp_path / "gemini" / "tmp" / "h" / "chats" / "session-1.json"
    chat.parent.mkdir(parents=True)
    chat.write_text(json.dumps({"sessionId": "g", "messages": [
        {"id": "m1", "timestamp": "2026-12-01T10:00:02Z", "type": "gemini",
         "model": "gemini-2.5-pro", "tokens": {"input": 2**63 + 10, "output": 7}},
    ]}))  # fmt: skip
    assert import_gemini_cli(db, tmp_path / "gemini").imported == 1


def test_twins_by_tokens_found_the_same_with_and_without_the_live_rows_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows without a response id are matched to live rows by tool, counts and time. The
    live rows near a batch are held so that only rows whose counts are among them ask the
    ledger; past NEAR_AT_MOST every row asks. Both find the same twins."""
    from devmeter.importers import history
    from devmeter.importers.codex import import_codex

    def total(inp: int, out: int, second: int) -> dict[str, Any]:
        usage = {"input_tokens": inp, "cached_input_tokens": 0, "output_tokens": out,
                 "reasoning_output_tokens": 0}  # fmt: skip
        info = {"type": "token_count", "info": {"total_token_usage": usage}}
        ts = (datetime(2026, 12, 1, 9, tzinfo=UTC) + timedelta(seconds=second)).isoformat()
        return {"timestamp": ts, "type": "event_msg", "payload": info}

    lines = [{"timestamp": "2026-12-01T09:00:00Z", "type": "session_meta", "payload": {"id": "s"}},
             {"timestamp": "2026-12-01T09:00:00Z", "type": "turn_context",
              "payload": {"model": "gpt-5"}}]  # fmt: skip
    # 399 responses, response n with 1000 + n input and 10 output tokens, a minute apart
    lines += [total(sum(1000 + k for k in range(1, n + 1)), 10 * n, 60 * n) for n in range(1, 400)]
    at = datetime(2026, 12, 1, 9, tzinfo=UTC).timestamp()
    live_rows = [
        Call(
            ts=at + 60 * n + shift,
            provider="openai",
            endpoint="openai.responses",
            host="api.openai.com",
            requested_model="gpt-5",
            model="gpt-5",
            attribution=Attribution(tool="codex", session="s"),
            usage=Usage(input_tokens=inp, output_tokens=out),
            cost_usd=Decimal(1),
            price_source="x",
            status=200,
        )
        for n in range(1, 400)
        for shift, inp, out in ((899.0, 1000 + n, 10), (901.0, 1000 + n, 10), (5.0, 1000 + n, 11))
        if n % 3 == 0
    ]  # fmt: skip  (the same counts in the window, just outside it; other counts)
    seen = []
    for at_most in (history.NEAR_AT_MOST, 0):
        monkeypatch.setattr(history, "NEAR_AT_MOST", at_most)
        root, db = tmp_path / str(at_most), tmp_path / f"{at_most}.sqlite"
        write(root / "sessions" / "rollout-1.jsonl", lines)
        ledger.write_calls(db, live_rows)
        result = import_codex(db, root)
        got = sqlite3.connect(db).execute("SELECT ts, source FROM calls ORDER BY id").fetchall()
        seen.append(((result.imported, result.live, result.duplicates), got))
    assert seen[0] == seen[1]
    (imported, live, duplicates), _ = seen[0]
    assert live == 133 and imported == 399 - 133, seen[0][0]


def test_a_bulk_insert_that_fails_leaves_the_triggers_and_rollups_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollup triggers are dropped inside the import's transaction: when the insert
    fails, the rollback puts them back, and the live rows written next still roll up."""
    write(tmp_path / "projects" / "p" / "s.jsonl", [line(n, 5) for n in range(300)])
    db = tmp_path / "ledger.sqlite"
    ledger.write_calls(db, [live(1000, 3, datetime(2026, 11, 30, 18, tzinfo=UTC))])

    def failing(conn: sqlite3.Connection, rows: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ledger, "_insert_varying", failing)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        import_claude_code(db, tmp_path)
    conn = sqlite3.connect(db)
    triggers = {name for (name,) in conn.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'trigger'")}  # fmt: skip
    assert {"calls_rollup", "calls_rollup_group", "calls_rollup_session",
            "calls_rollup_day"} <= triggers  # fmt: skip
    ledger.write_calls(db, [live(1001, 4, datetime(2026, 11, 30, 18, tzinfo=UTC))])
    snapshot(db)  # every rollup still sums the calls
    assert conn.execute("SELECT count(*) FROM calls").fetchone() == (2,)


def test_prices_that_change_within_an_hour_are_not_taken_from_the_hours_rates() -> None:
    """Rates are looked up once per model and hour. DeepSeek Chat's off-peak price starts
    at 16:30 and ends at 00:30 UTC: its calls in those half hours were priced at the other
    rate (live rows and imported ones). Every model, at times across an hour, against
    genai-prices at the call's own time."""
    from genai_prices import data_snapshot

    usage = Usage(input_tokens=1_000_000, cache_read_tokens=1000, output_tokens=1_000_000)
    checked = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for hour, minute in ((0, 15), (0, 45), (16, 15), (16, 45), (3, 59), (4, 1)):
                when = datetime(2026, 12, 1, hour, minute, tzinfo=UTC)
                try:
                    theirs = genai_total(provider.id, model.id, usage, when)
                except Exception:  # genai-prices refuses some usages for some models
                    continue
                checked += 1
                ours = pricing.price(provider.id, model.id, usage, (), when).cost_usd
                assert ours == Decimal(theirs), (provider.id, model.id, when)
                pusd, _ = pricing.cost_pusd(provider.id, model.id, usage, (), when.timestamp())
                assert pusd == to_pusd(Decimal(theirs)), (provider.id, model.id, when)
    assert checked > 1000


# --- claude_code's quick row: the general path's answer for every line ------------------

REAL = Path(__file__).parent / "fixtures" / "claude_code_2.1.197"  # the real CLI's files


def transcript_objects(paths: list[Path]) -> list[Any]:
    """Every JSON line of `paths` with a usage object somewhere (what parse_lines reads)."""
    found = []
    for path in paths:
        for raw in path.read_bytes().splitlines():
            if b'"usage"' in raw:
                found.append(json.loads(raw))
    return found


def assert_quick_equals_general(objs: list[Any], all_quick: bool) -> None:
    """line_row (quick where it can be) gives exactly the general path's row for each;
    `all_quick`: every line with a real response took the quick path."""
    for obj in objs:
        quick = claude_code._quick_row(obj)
        general = claude_code._general_row(obj, ())
        if quick is not claude_code._NOT_QUICK:
            assert quick == general, obj
        elif all_quick and general is not None:
            raise AssertionError(f"the quick path refused a plain response: {obj}")
        assert claude_code.line_row(obj) == general


def test_quick_rows_equal_the_general_path_over_real_and_generated_transcripts(
    tmp_path: Path,
) -> None:
    """The real Claude Code CLI's transcripts (2.1.197 against the fake upstream: text,
    a tool call and its result, a subagent) and the benchmark's generated history."""
    from benchmarks.history_bench import generate

    real = transcript_objects(sorted(REAL.glob("*.jsonl")))
    assert sum(1 for o in real if o.get("type") == "assistant") >= 8
    assert_quick_equals_general(real, all_quick=True)
    generate(tmp_path, 120, per_session=40)
    generated = transcript_objects(sorted(tmp_path.rglob("*.jsonl")))
    assert len(generated) >= 360  # three lines a response, and a resumed file
    assert_quick_equals_general(generated, all_quick=True)


def hostile_variants(base: dict[str, Any]) -> list[Any]:
    """`base` (a real response line) with one field at a time made odd, as a damaged
    transcript or another writer may have it."""
    odd_values: list[Any] = [None, 0, -1, 1.0, 1.5, True, "7", "", [], {}, 10**30, float("nan"),
                             100_000_000, 100_000_001]  # fmt: skip
    variants: list[Any] = []

    def with_value(path: tuple[str, ...], value: Any) -> None:
        obj = json.loads(json.dumps(base))
        holder = obj
        for key in path[:-1]:
            holder = holder.setdefault(key, {}) if isinstance(holder, dict) else holder
        if isinstance(holder, dict):
            holder[path[-1]] = value
            variants.append(obj)

    usage = ("message", "usage")
    counts = [*(usage + (k,) for k in ("input_tokens", "output_tokens",
              "cache_read_input_tokens", "cache_creation_input_tokens")),
              usage + ("cache_creation", "ephemeral_5m_input_tokens"),
              usage + ("cache_creation", "ephemeral_1h_input_tokens"),
              usage + ("server_tool_use", "web_search_requests"),
              usage + ("output_tokens_details", "thinking_tokens")]  # fmt: skip
    for path in counts:
        for value in odd_values:
            with_value(path, value)
    for path in (usage + ("cache_creation",), usage + ("server_tool_use",),
                 usage + ("output_tokens_details",), usage, ("message",)):  # fmt: skip
        for value in (None, [], "x", 3, {}):
            with_value(path, value)
    for value in ("priority", "batch", "flex", "standard", "default", "auto", "", None, 5, []):
        with_value(usage + ("service_tier",), value)
    for value in ("", "<synthetic>", "models/claude-sonnet-4-5", "no-such-model", None, 5,
                  "claude-haiku-4-5", "claude-opus-4-1"):  # fmt: skip
        with_value(("message", "model"), value)
    for path in (("message", "id"), ("requestId",), ("uuid",), ("timestamp",), ("type",),
                 ("cwd",), ("sessionId",), ("gitBranch",)):  # fmt: skip
        for value in (None, "", 5, ["x"], "2026-13-45T99:00:00Z", "2026-11-30T18:00:00+02:00"):
            with_value(path, value)
    # No totals, only the split; a split larger than the total; a long context.
    for drop in ("cache_creation_input_tokens", "cache_read_input_tokens", "input_tokens"):
        obj = json.loads(json.dumps(base))
        obj["message"]["usage"].pop(drop, None)
        variants.append(obj)
    with_value(usage + ("cache_creation", "ephemeral_1h_input_tokens"), 10**6)
    with_value(usage + ("input_tokens",), 250_000)
    variants += [None, 5, "usage", ["usage"], {"message": {"usage": 1}}, {}]
    return variants


def test_quick_rows_equal_the_general_path_on_hostile_lines() -> None:
    """Every field of a real line made odd, one at a time and then several at once: the
    quick path gives the general path's row, or leaves the line to it."""
    import random

    real = [o for o in transcript_objects(sorted(REAL.glob("*.jsonl")))
            if o.get("type") == "assistant"]  # fmt: skip
    base = real[0]
    variants = hostile_variants(base)
    assert_quick_equals_general(variants, all_quick=False)
    rng = random.Random(18)
    mixed = []
    for _ in range(300):  # several odd fields at once
        obj = json.loads(json.dumps(rng.choice(real)))
        for odd in rng.sample(variants[:-6], 3):
            if isinstance(odd, dict) and isinstance(odd.get("message"), dict):
                message = obj.setdefault("message", {})
                if isinstance(message, dict):
                    message.update({k: v for k, v in odd["message"].items()
                                    if rng.random() < 0.5})  # fmt: skip
            obj.update({k: v for k, v in odd.items() if k != "message" and rng.random() < 0.3})
        mixed.append(obj)
    assert_quick_equals_general(mixed, all_quick=False)
