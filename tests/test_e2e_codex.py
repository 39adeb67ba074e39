"""The real Codex CLI through `devmeter run`, over its WebSocket transport and its HTTPS fallback.

`codex exec --json "say hi"` prints a `thread.started` event with its thread id (the
`session-id` header it sends) and a `turn.completed` event with the usage it was told.
The ledger must bill that turn exactly once, at list price, to Codex's session, repo and
branch; the `generate: false` prewarm Codex sends first on a WebSocket is not a turn.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.clients_env import (
    cli,
    codex_env,
    describe,
    devmeter_run,
    git_repo,
    last_id,
    report,
    rows_after,
)
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

BRANCH = "fix/codex-metering"
MODEL = "gpt-6.1-sol"  # Codex CLI 0.169.0's default model
M = Decimal(1_000_000)

# GPT-6.1 Sol list prices, USD per million tokens (genai-prices, OpenAI's pricing page;
# below the long-context tier, which starts far above these prompts):
SOL_INPUT = Decimal(2)
SOL_CACHED_INPUT = Decimal("0.1")
SOL_OUTPUT = Decimal(10)

# What the fake upstream reports for the turn. On the Responses wire that is
# input_tokens 9134 (uncached + cached), cached_tokens 6789, output_tokens 432
# (reasoning 210 included).
TURN = {
    "input_tokens": 2345,
    "cache_read_tokens": 6789,
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0,
    "output_tokens": 432,
    "reasoning_tokens": 210,
}
TURN_COST = (2345 * SOL_INPUT + 6789 * SOL_CACHED_INPUT + 432 * SOL_OUTPUT) / M

TRANSPORTS = {"websocket": True, "https": False}


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def run_codex(
    proxy: RunningProxy, tmp_path: Path, cwd: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`devmeter run -- codex exec --json "say hi"`: its JSONL events and the ledger rows."""
    codex = cli("codex")
    mark = last_id(proxy)
    done = devmeter_run(
        [str(codex), "exec", "--json", "say hi"], cwd=cwd, env=codex_env(proxy, tmp_path)
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert any(e["type"] == "turn.completed" for e in events), done.stdout + done.stderr
    return events, rows_after(proxy, mark, at_least=1)


def event(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [e for e in events if e["type"] == kind]
    return found


def billed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that carry tokens: the turns devmeter billed."""
    counts = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
    return [r for r in rows if any(r[c] for c in counts)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_codex_turn_billed_once_to_its_session_repo_and_branch(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, transport: str
) -> None:
    upstream.defaults.update(websocket=TRANSPORTS[transport], usage=TURN)
    repo = git_repo(tmp_path / "payments", BRANCH)
    workdir = repo / "services" / "ledger"  # a subdirectory: the repo is the top level
    workdir.mkdir(parents=True)

    events, rows = run_codex(proxy, tmp_path, workdir)
    thread = event(events, "thread.started")["thread_id"]

    # What Codex sent: its session id on every request, the transport under test.
    sent = upstream.find("openai.responses")
    assert sent, "Codex never reached the fake upstream"
    assert {r.headers.get("session-id") for r in sent if r.method != "WS"} == {thread}
    turns = [r for r in sent if r.method in ("WS", "POST") and r.json.get("generate") is not False]
    assert len(turns) == 1 and turns[0].model == MODEL
    if transport == "websocket":
        assert turns[0].method == "WS"
        prewarms = [r for r in sent if r.method == "WS" and r.json.get("generate") is False]
        assert len(prewarms) == 1, "Codex sent no prewarm: the test no longer covers it"
    else:
        assert turns[0].method == "POST"
        assert not [r for r in sent if r.method == "WS"]

    # Exactly one billed row: the turn (the zero-usage prewarm is not billed), with the
    # tokens the upstream reported and its list price.
    turns_billed = billed(rows)
    assert len(turns_billed) == 1, f"billed rows:\n{describe(rows)}"
    (row,) = turns_billed
    assert row["tool"] == "codex"
    assert row["endpoint"] == "openai.responses"
    assert row["session"] == thread
    assert row["repo"] == str(repo), describe(rows)
    assert row["branch"] == BRANCH
    assert row["repo_source"] == "process"  # Codex's cwd, found from its socket
    assert (row["requested_model"], row["model"]) == (MODEL, MODEL)
    assert row["status"] == (101 if transport == "websocket" else 200)
    assert (row["complete"], row["estimated"], row["error"]) == (1, 0, None)
    assert row["input_tokens"] == TURN["input_tokens"]  # uncached: 9134 - 6789
    assert row["cache_read_tokens"] == TURN["cache_read_tokens"]
    assert row["cache_write_tokens"] == 0
    assert row["output_tokens"] == TURN["output_tokens"]
    assert row["reasoning_tokens"] == TURN["reasoning_tokens"]
    assert row["cost_usd"] == TURN_COST == Decimal("0.0096889")
    assert row["price_source"].startswith("genai-prices")

    # Codex's own account of the turn says the same.
    usage = event(events, "turn.completed")["usage"]
    assert row["input_tokens"] + row["cache_read_tokens"] == usage["input_tokens"]
    assert row["cache_read_tokens"] == usage["cached_input_tokens"]
    assert row["cache_write_tokens"] == usage["cache_write_input_tokens"]
    assert row["output_tokens"] == usage["output_tokens"]
    assert row["reasoning_tokens"] == usage["reasoning_output_tokens"]

    # Nothing else costs anything or is flagged unpriced: neither the WebSocket handshake
    # nor a refused upgrade is an LLM call, and the session total is the turn's cost.
    for other in rows:
        assert other["session"] == thread, describe(rows)
        if other is not row:
            assert other["cost_usd"] == 0, f"a non-turn row is not $0:\n{describe(rows)}"
    by_session = {r["key"]: r for r in json.loads(report(proxy, "--by", "session", "--json"))}
    assert by_session[thread]["unpriced"] == 0, describe(rows)
    assert Decimal(repr(by_session[thread]["cost_usd"])) == TURN_COST


def test_codex_prewarm_that_reports_usage_is_billed(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A prewarm is skipped only when it reports no usage: spend is spend."""
    prewarm = {"input_tokens": 1500, "cache_read_tokens": 0, "output_tokens": 0}
    upstream.defaults.update(websocket=True, usage=TURN, prewarm_usage=prewarm)
    repo = git_repo(tmp_path / "payments", BRANCH)

    events, rows = run_codex(proxy, tmp_path, repo)
    thread = event(events, "thread.started")["thread_id"]

    both = billed(rows)
    assert len(both) == 2, describe(rows)
    warm, turn = both
    assert (warm["session"], turn["session"]) == (thread, thread)
    assert warm["requested_model"] == MODEL
    assert warm["input_tokens"] == 1500 and warm["output_tokens"] == 0
    assert warm["cost_usd"] == 1500 * SOL_INPUT / M
    assert turn["output_tokens"] == TURN["output_tokens"]
    assert turn["cost_usd"] == TURN_COST


def test_codex_turn_cut_off_on_its_websocket_is_still_billed(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The upstream drops the socket mid-answer; Codex reconnects and asks again. The cut
    turn generated tokens too: it is billed (estimated), not lost with the socket."""
    upstream.defaults.update(websocket=True, usage=TURN)
    # response.created, in_progress, reasoning added/done, message added, part added,
    # three text deltas: then half a frame and the connection is gone.
    upstream.set_next(cut_after=9)
    repo = git_repo(tmp_path / "payments", BRANCH)

    events, rows = run_codex(proxy, tmp_path, repo)
    thread = event(events, "thread.started")["thread_id"]
    assert len(upstream.find("openai.responses.websocket")) == 2  # it reconnected

    both = billed(rows)
    assert len(both) == 2, describe(rows)
    (cut,) = [r for r in both if not r["complete"]]
    (retried,) = [r for r in both if r["complete"]]
    assert cut["session"] == retried["session"] == thread
    assert cut["requested_model"] == MODEL  # paired with the turn, not the prewarm
    assert (cut["estimated"], cut["status"]) == (1, 101)
    assert cut["input_tokens"] > 0 and cut["output_tokens"] > 0
    assert cut["cost_usd"] is not None and cut["cost_usd"] > 0
    assert retried["estimated"] == 0
    assert retried["cost_usd"] == TURN_COST
    assert all(r["cost_usd"] is not None for r in rows), describe(rows)
