"""One session table for budgets, runaway detection and routing (issue 16): one key per
session, forgotten once for all three, bounded, and routing's spend kept over a restart."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from devmeter.budget import parse_budgets
from devmeter.guard import Guard
from devmeter.ledger import connect_readonly, write_calls
from devmeter.providers import Endpoint, parse_request
from devmeter.routing import parse_routing
from devmeter.routing.session_router import Router
from devmeter.runaway import RunawayConfig
from devmeter.session_table import (
    BUDGET_PART,
    ROUTING_PART,
    RUNAWAY_PART,
    SessionTable,
    session_key,
)
from devmeter.usage import Attribution, Call, Usage

D = Decimal
NOW = 1_796_000_000.0
ENDPOINT = Endpoint("anthropic", "anthropic.messages")
BODY = json.dumps(
    {"model": "claude-opus-4-1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
).encode()
SPEND_RULE = {"name": "spendy", "session_spend_over_usd": 1, "to": "claude-haiku-4-5"}


def who(session: str | None, tool: str = "claude-code", repo: str = "/src/acme") -> Attribution:
    return Attribution(tool=tool, session=session, repo=repo)


def call(ts: float, cost: str, attribution: Attribution) -> Call:
    return Call(
        ts=ts,
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-4-1",
        model="claude-opus-4-1",
        attribution=attribution,
        usage=Usage(input_tokens=1000, output_tokens=100),
        cost_usd=D(cost),
        price_source="genai-prices",
        status=200,
        duration_ms=500,
    )


def proxy_state(table: SessionTable) -> tuple[Guard, Router]:
    """A guard (session budget with a threshold, runaway) and a router sharing `table`,
    as the proxy wires them (proxy/server.py)."""
    guard = Guard(
        parse_budgets({"session": {"notify_usd": [100]}}), RunawayConfig(), sessions=table
    )
    router = Router(parse_routing({"mode": "on", "rules": [SPEND_RULE]}), sessions=table)
    return guard, router


def finished(guard: Guard, router: Router, c: Call) -> None:
    """What the Meter does with a finished call: routing columns, then the guard."""
    router.settle(c, None)
    guard.observe(c, "print", False)


def routed(router: Router, attribution: Attribution, now: float) -> bool:
    plan = router.plan(ENDPOINT, parse_request(ENDPOINT, BODY), attribution, {}, BODY, now)
    return plan is not None and plan.decision.rule == "spendy"


def test_one_session_key_for_all_three() -> None:
    assert session_key(who("abc")) == "abc"
    assert session_key(who(None)) == "claude-code@/src/acme"
    assert session_key(Attribution(tool="codex")) == "codex@?"
    table = SessionTable()
    guard, router = proxy_state(table)
    finished(guard, router, call(NOW, "2", who("abc")))
    entry = table.get("abc")
    assert entry is not None
    assert set(entry.parts) == {BUDGET_PART, RUNAWAY_PART, ROUTING_PART}
    assert entry.spent_usd == D(2)  # counted once, by the guard, not again by the router
    assert guard.budgets.spent("session", "abc", NOW) == D(2)


def test_a_session_evicted_from_the_table_is_evicted_from_all_three() -> None:
    table = SessionTable(max_sessions=3)
    guard, router = proxy_state(table)
    for i, session in enumerate(("a", "b", "c")):
        finished(guard, router, call(NOW + i, "2", who(session)))
    assert routed(router, who("a"), NOW + 3)
    assert guard.runaway.burn("a", NOW + 3) is not None

    finished(guard, router, call(NOW + 4, "2", who("d")))  # one more than the table holds

    assert "a" not in table and table.by_recency() == ["b", "c", "d"]
    assert guard.budgets.spent("session", "a", NOW + 5) == 0
    assert guard.runaway.burn("a", NOW + 5) is None
    assert not routed(router, who("a"), NOW + 5)  # its spend is forgotten too
    assert routed(router, who("b"), NOW + 5) and guard.runaway.burn("b", NOW + 5) is not None


def test_an_idle_session_loses_its_windows_but_keeps_its_spend_and_budget() -> None:
    table = SessionTable(max_sessions=10)
    guard, router = proxy_state(table)
    assert table.idle_seconds == 120 * 60  # [runaway] idle_evict_minutes, for all three
    finished(guard, router, call(NOW, "2", who("lunch")))
    table.touch("unpriced", NOW)  # seen, never priced: nothing to keep

    table.evict_idle(NOW + 3 * 3600)

    assert "unpriced" not in table
    entry = table.get("lunch")
    assert entry is not None and set(entry.parts) == {BUDGET_PART}
    assert guard.runaway.burn("lunch", NOW + 3 * 3600) is None  # runaway starts afresh
    assert guard.budgets.spent("session", "lunch", NOW + 3 * 3600) == D(2)
    assert routed(router, who("lunch"), NOW + 3 * 3600)


def test_a_restart_keeps_routings_session_spend(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [call(NOW - 60, "0.70", who("s1")), call(NOW - 30, "0.70", who("s1")),
                         call(NOW - 20, "0.70", who(None, tool="codex"))])  # fmt: skip
    guard, router = proxy_state(SessionTable())
    assert not routed(router, who("s1"), NOW)

    conn = connect_readonly(ledger)
    assert conn is not None
    guard.seed_from_ledger(conn, NOW)  # what proxy/server.py does at start, and only that

    assert routed(router, who("s1"), NOW)  # $1.40 so far: over the rule's $1
    assert not routed(router, who(None, tool="codex"), NOW)  # $0.70: under it
    assert not routed(router, who("s2"), NOW)


def test_a_restart_does_not_count_imported_history_in_routings_session_spend(
    tmp_path: Path,
) -> None:
    # The running proxy never sees a call imported from a tool's history: its spend rule
    # must not fire after a restart because of one (it would route a session the proxy
    # had left alone), while the session's metered spend still counts.
    from dataclasses import replace

    ledger = tmp_path / "ledger.sqlite"
    imported = replace(call(NOW - 50, "5.00", who("s1")), source="import", usage=Usage(7))
    metered = [call(NOW - 40, "0.70", who("s1")), call(NOW - 30, "0.70", who("s2"))]
    write_calls(ledger, [imported, *metered, call(NOW - 20, "0.70", who("s2"))])
    guard, router = proxy_state(SessionTable())
    conn = connect_readonly(ledger)
    assert conn is not None
    guard.seed_from_ledger(conn, NOW)

    assert not routed(router, who("s1"), NOW)  # $0.70 metered; the $5 imported not counted
    assert routed(router, who("s2"), NOW)  # $1.40 metered: over the rule's $1


def test_the_table_stays_bounded_with_100k_distinct_sessions() -> None:
    table = SessionTable(max_sessions=1000)
    guard, router = proxy_state(table)
    for i in range(100_000):
        finished(guard, router, call(NOW + i * 0.01, "0.01", who(f"s{i}")))
    assert len(table) == 1000
    assert len(guard.runaway) == 1000
    assert table.by_recency()[0] == "s99000" and table.by_recency()[-1] == "s99999"
    # Sessions without an id share their tool@repo's entry, not one per call.
    for i in range(1000):
        finished(guard, router, call(NOW + 2000 + i, "0.01", who(None)))
    assert table.by_recency()[-1] == "claude-code@/src/acme" and len(table) == 1000


def test_a_session_cap_still_holds_after_a_long_pause_and_a_reload_sets_the_idle_time() -> None:
    table = SessionTable()
    guard = Guard(parse_budgets({"session": {"block_usd": 5}}), RunawayConfig(), sessions=table)
    guard.observe(call(NOW, "6", who("capped")), None, None)
    assert not guard.check(who("capped"), NOW + 60).allowed

    later = NOW + 5 * 3600  # back from a long pause: the windows go, the spend stays
    guard.observe(call(later, "0.01", who("other")), None, None)  # sweeps the idle ones
    assert guard.runaway.burn("capped", later) is None
    assert not guard.check(who("capped"), later).allowed

    guard.reconfigure(guard.budgets.budgets, RunawayConfig(idle_evict_minutes=30))
    assert table.idle_seconds == 30 * 60
