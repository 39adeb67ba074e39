"""`devmeter sessions`: live and recent sessions with their burn rate, from the ledger."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter.ledger import connect_readonly, write_calls
from devmeter.sessions import FIELDS, query_sessions, to_json, to_table
from devmeter.usage import Attribution, Call, Usage

NOW = 1_780_000_000.0
MIN = 60.0


def call(
    ago: float,
    cost: str | None,
    session: str | None = "s-claude-0001",
    tool: str = "claude-code",
    repo: str | None = "/home/dev/src/devmeter",
    branch: str | None = "main",
    model: str = "claude-sonnet-4-5",
    duration_ms: int = 0,
    estimated: bool = False,
    endpoint: str = "anthropic.messages",
) -> Call:
    return Call(
        ts=NOW - ago,
        provider="anthropic",
        endpoint=endpoint,
        host="api.anthropic.com",
        requested_model=model,
        model=model,
        attribution=Attribution(tool=tool, session=session, repo=repo, branch=branch),
        usage=Usage(input_tokens=100, output_tokens=10, estimated=estimated),
        cost_usd=None if cost is None else Decimal(cost),
        price_source="genai-prices" if cost is not None else None,
        status=200,
        duration_ms=duration_ms,
    )


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "ledger.sqlite"
    write_calls(
        path,
        [
            # A live Claude Code session, an hour old, busy in the last 10 minutes.
            call(60 * MIN, "1.00"),
            call(30 * MIN, "1.00", branch="old-branch"),
            call(8 * MIN, "0.50"),
            call(2 * MIN, "0.50", duration_ms=30_000),
            call(1 * MIN, None, model="claude-next"),  # unpriced
            # A Codex session that ended 3 hours ago.
            call(4 * 60 * MIN, "2.00", session="codex-thread-42", tool="codex",
                 repo="/home/dev/src/api", model="gpt-5"),
            call(3 * 60 * MIN, "1.00", session="codex-thread-42", tool="codex",
                 repo="/home/dev/src/api", model="gpt-5"),
            # Cursor without a session id, estimated, live.
            call(3 * MIN, "0.30", session=None, tool="cursor", repo=None, branch=None,
                 estimated=True, endpoint="cursor.chat"),
            # A session that began two days ago and is still going: shown whole.
            call(2 * 24 * 60 * MIN, "5.00", session="long-runner", tool="aider"),
            call(20 * MIN, "1.00", session="long-runner", tool="aider"),
            # Too old: outside the last 24 hours.
            call(30 * 60 * MIN, "9.00", session="yesterday", tool="codex"),
            # Imported rows are not sessions.
            call(4 * MIN, "7.00", session=None, tool="cursor", repo=None,
                 endpoint="cursor.import"),
        ],
    )  # fmt: skip
    ro = connect_readonly(path)
    assert ro is not None
    return ro


def by_key(conn: sqlite3.Connection, **kwargs: object) -> dict[str, object]:
    return {s.key: s for s in query_sessions(conn, now=NOW, **kwargs)}  # type: ignore[arg-type]


def test_recent_sessions_live_first(conn: sqlite3.Connection) -> None:
    sessions = query_sessions(conn, now=NOW)
    assert [s.key for s in sessions] == [
        "s-claude-0001", "cursor@?", "long-runner", "codex-thread-42",
    ]  # fmt: skip
    assert [s.live for s in sessions] == [True, True, False, False]


def test_a_live_session(conn: sqlite3.Connection) -> None:
    s = query_sessions(conn, now=NOW)[0]
    assert (s.tool, s.repo, s.branch, s.model) == (
        "claude-code", "/home/dev/src/devmeter", "main", "claude-next",
    )  # fmt: skip
    assert s.calls == 5 and s.unpriced == 1
    assert s.cost_usd == Decimal("3.00")
    assert s.first_seen == NOW - 60 * MIN
    assert s.last_seen == NOW - 1 * MIN
    # $1.00 in the last 10 minutes: $6/hour, over the whole window.
    assert s.window_usd == Decimal("1.00")
    assert s.burn_usd_per_hour == Decimal("6")
    # $3.00 over 59 minutes.
    assert s.life_burn_usd_per_hour == pytest.approx(Decimal(3) * 60 / 59)


def test_a_call_counts_in_the_window_by_when_it_ended(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    # Started 11 minutes ago, ended 9 minutes ago: its cost landed inside the window.
    write_calls(path, [call(11 * MIN, "1.00", duration_ms=120_000)])
    ro = connect_readonly(path)
    assert ro is not None
    [s] = query_sessions(ro, now=NOW)
    # Live too: the call ended inside the one live window (10 minutes).
    assert s.window_usd == Decimal("1.00") and s.live is True
    # One call's span is its duration: $1.00 over two minutes.
    assert s.life_burn_usd_per_hour == Decimal(30)


def test_no_id_sessions_and_imports(conn: sqlite3.Connection) -> None:
    sessions = by_key(conn)
    cursor = sessions["cursor@?"]
    assert cursor.session is None and cursor.estimated == 1  # type: ignore[attr-defined]
    assert cursor.cost_usd == Decimal("0.30")  # type: ignore[attr-defined]  # not the import
    assert cursor.life_burn_usd_per_hour is None  # type: ignore[attr-defined]  # one call


def test_a_session_is_shown_whole(conn: sqlite3.Connection) -> None:
    long = by_key(conn)["long-runner"]
    assert long.calls == 2 and long.cost_usd == Decimal("6.00")  # type: ignore[attr-defined]
    assert long.first_seen == NOW - 2 * 24 * 60 * MIN  # type: ignore[attr-defined]
    assert long.burn_usd_per_hour == 0  # type: ignore[attr-defined]


def test_since_and_live_only(conn: sqlite3.Connection) -> None:
    assert set(by_key(conn, since=NOW - 2 * 24 * 3600)) >= {"yesterday", "long-runner"}
    assert set(by_key(conn, live_only=True)) == {"s-claude-0001", "cursor@?"}
    assert query_sessions(conn, now=NOW + 10 * 24 * 3600) == []


def test_json(conn: sqlite3.Connection) -> None:
    rows = json.loads(to_json(query_sessions(conn, now=NOW)))
    assert list(rows[0]) == list(FIELDS)
    assert rows[0]["cost_usd"] == 3.0 and rows[0]["burn_usd_per_hour"] == 6.0
    assert rows[0]["live"] is True
    assert rows[1]["life_burn_usd_per_hour"] is None
    assert rows[0]["first_seen"].count(":") >= 2  # ISO 8601 with the local offset


def test_table(conn: sqlite3.Connection) -> None:
    text = to_table(query_sessions(conn, now=NOW), now=NOW)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["session", "tools", "repo"]
    live = lines[1]
    assert live.startswith("●") and "s-claude " in live and "/home/dev/src/devmeter" in live
    assert "$6.00/h" in live and "1 min ago" in live and "$3.00+" in live
    # Every model the session used, its latest first.
    assert "claude-next, claude-sonnet-4-5" in live
    assert "(cursor, no id)" in lines[2] and "(unattributed)" in lines[2]
    assert "2 live (● a call in the last 10 min) of 4 sessions, $12.30 spent" in text
    assert "+ 1 call used a model with no known price and is not in the spend" in text
    assert "~ 1 call is estimated" in text
    assert to_table([], now=NOW) == "No sessions in this period.\n"


def test_ids_in_the_table_are_as_short_as_they_can_be_and_still_resolve(tmp_path: Path) -> None:
    """Codex's ids begin with a timestamp: two sessions started together share 8 characters."""
    path = tmp_path / "ledger.sqlite"
    first, second = "01a24f4d-a82b-7731-823a-c1c51761116f", "01a24f4d-bdd9-7cb3-bc2c-24c90e8d3f37"
    write_calls(path, [call(60, "0.10", session=first, tool="codex"),
                       call(30, "0.10", session=second, tool="codex")])  # fmt: skip
    conn = connect_readonly(path)
    assert conn is not None
    table = to_table(query_sessions(conn, now=NOW), now=NOW)
    assert "01a24f4d-a " in table and "01a24f4d-b " in table
