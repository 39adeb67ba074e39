"""The v10 rollups (rollup_group, rollup_session, rollup_day) are kept by triggers whose
SQL one function writes (ledger._rollup_triggers). SQLite keeps each trigger's text in
sqlite_master, so a ledger must hold exactly the text v10 shipped with, whether created
fresh or migrated from v9; and the rollups must equal the calls' own sums after rows come
and go (live rows replacing imported twins delete rows, as do imports). Also: the
ledger's one rule for what routing saved, as every report reads it."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

from devmeter.ledger import MIGRATIONS, _statements, call_row, connect, insert_calls, migrate
from devmeter.usage import Attribution, Call, Usage

# Read from ledgers built by the v10 code as it shipped (commit f96a2fa), before the
# triggers were generated.
GOLDEN_FILE = Path(__file__).parent / "fixtures/ledger/v10_rollup_triggers.json"
GOLDEN = json.loads(GOLDEN_FILE.read_text())


def _triggers(conn: sqlite3.Connection) -> dict[str, str]:
    names = tuple(GOLDEN)
    marks = ", ".join("?" * len(names))
    rows = conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})",
        names,
    )
    return dict(rows.fetchall())


def test_fresh_and_migrated_ledgers_hold_the_v10_trigger_text_as_shipped(tmp_path: Path) -> None:
    assert _triggers(connect(tmp_path / "fresh.sqlite")) == GOLDEN
    v9 = sqlite3.connect(tmp_path / "v9.sqlite", isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:9], start=1):
        for statement in _statements(script):
            v9.execute(statement)
        v9.execute(f"PRAGMA user_version = {version}")
    assert _triggers(v9) == {}
    migrate(v9)
    assert _triggers(v9) == GOLDEN


def _call(i: int) -> Call:
    return Call(
        ts=1_800_000_000.0 + i * 700.0,  # across quarter hours and two local days
        provider="anthropic" if i % 3 else "openai",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-sonnet-4-5",
        model=None if i % 5 == 0 else f"m{i % 2}",
        attribution=Attribution(
            tool=("claude-code", "codex")[i % 2],
            session=None if i % 4 == 0 else f"s{i % 3}",
            repo=None if i % 6 == 0 else f"/src/r{i % 2}",
        ),
        usage=Usage(
            input_tokens=100 + i,
            cache_read_tokens=i % 7,
            cache_write_tokens=i % 4,
            output_tokens=5 * i,
            reasoning_tokens=i % 3,
            estimated=i % 8 == 0,
        ),
        cost_usd=None if i % 9 == 0 else Decimal(i) / 1000,
        price_source="test",
        status=200,
        billing=("api", "subscription", "overage", "unknown")[i % 4],
    )


SUMS = (
    "count(*), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),"
    " sum(output_tokens), sum(reasoning_tokens), sum(coalesce(cost_pusd, 0)),"
    " sum(cost_pusd IS NULL), sum(estimated),"
    " sum(CASE WHEN billing IN ('api', 'overage') THEN coalesce(cost_pusd, 0) ELSE 0 END),"
    " sum(CASE WHEN billing = 'subscription' THEN coalesce(cost_pusd, 0) ELSE 0 END)"
)
ROLLED = (
    "requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens,"
    " reasoning_tokens, cost_pusd, unpriced, estimated, billed_pusd, covered_pusd"
)
GROUP = (
    "CAST(ts / 900 AS INTEGER), coalesce(repo, ''), tool, provider,"
    " coalesce(model, requested_model, '')"
)
SESSION = "CAST(ts / 900 AS INTEGER), coalesce(session, '')"
LOCAL = "CAST(strftime('%s', ts, 'unixepoch', 'localtime') AS INTEGER)"
DAY = f"{LOCAL} / 86400, ({LOCAL} - CAST(ts AS INTEGER)) / 900, coalesce(repo, ''), tool," + (
    " provider, coalesce(model, requested_model, '')"
)


def _rollups_equal_the_calls(conn: sqlite3.Connection) -> None:
    for table, key, keys in (
        ("rollup_group", GROUP, "bucket, repo, tool, provider, model"),
        ("rollup_session", SESSION, "bucket, session"),
        ("rollup_day", DAY, "day, utc_offset, repo, tool, provider, model"),
    ):
        raw = conn.execute(f"SELECT {key}, {SUMS} FROM calls GROUP BY {key}").fetchall()
        rolled = conn.execute(f"SELECT {keys}, {ROLLED} FROM {table}").fetchall()
        assert sorted(rolled) == sorted(raw), table


def test_rollups_equal_the_calls_sums_after_inserts_and_deletes(tmp_path: Path) -> None:
    conn = connect(tmp_path / "ledger.sqlite")
    insert_calls(conn, [call_row(_call(i)) for i in range(150)])
    _rollups_equal_the_calls(conn)
    conn.execute("DELETE FROM calls WHERE id % 3 = 0")
    _rollups_equal_the_calls(conn)
    conn.execute("DELETE FROM calls WHERE ts < 1800040000")  # whole buckets emptied
    _rollups_equal_the_calls(conn)
    (left,) = conn.execute("SELECT count(*) FROM rollup_group").fetchone()
    assert left > 0
    conn.execute("DELETE FROM calls")
    for table in ("rollup_group", "rollup_session", "rollup_day"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table


def test_a_request_rows_saving_is_the_savings_reports_rule(tmp_path: Path) -> None:
    # One rule (ledger.SAVING_PUSD) for `report --by request`, `report --savings` and the
    # exporters: routed saves the requested model's cost less its own; shadow would have
    # saved its cost less the target's; a missing price or a fallback saves nothing known.
    from dataclasses import replace

    from devmeter import reports

    conn = connect(tmp_path / "ledger.sqlite")
    base = _call(1)
    cases = [
        ("routed", Decimal("0.25"), Decimal("1.00"), Decimal("0.75")),
        ("shadow", Decimal("1.00"), Decimal("0.10"), Decimal("0.90")),
        ("fallback", Decimal("1.00"), Decimal("1.00"), None),
        ("routed", None, Decimal("1.00"), None),
        (None, Decimal("1.00"), None, None),
    ]
    calls = [
        replace(base, ts=base.ts + i, routing=routing, cost_usd=cost, alt_cost_usd=alt)
        for i, (routing, cost, alt, _) in enumerate(cases)
    ]
    insert_calls(conn, [call_row(c) for c in calls])
    rows = reports.query(conn, "request")
    assert [r["saving_usd"] for r in rows] == [saved for *_, saved in cases]
    assert [r["saving_usd"] for r in reports.session_calls(conn, "s1")] == [
        saved for *_, saved in cases
    ]
    assert reports.savings_totals(reports.savings(conn)) == (Decimal("0.75"), Decimal("0.90"))
