"""The real Claude Code CLI through `devmeter run`, in a throwaway git repo.

`claude -p "say hi" --output-format json` reports its own `session_id` and
`total_cost_usd` (priced with Claude Code's own table); the ledger must agree with
both, and tie the calls to the repo and branch Claude Code worked in.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.clients_env import (
    claude_env,
    cli,
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

BRANCH = "feature/meter-e2e"
MODEL = "claude-opus-4-8"  # what Claude Code 2.1.197 asks for (it reports "claude-opus-4-8[1m]")
MICRO = Decimal("0.000001")
M = Decimal(1_000_000)

# Claude Opus 4.8 list prices, USD per million tokens (genai-prices, Anthropic's price page):
OPUS_INPUT = Decimal(5)
OPUS_OUTPUT = Decimal(25)
OPUS_CACHE_READ = Decimal("0.5")
OPUS_CACHE_WRITE_5M = Decimal("6.25")
OPUS_CACHE_WRITE_1H = Decimal(10)

# Two calls in one session: the first asks for a tool (Read), Claude Code answers with the
# tool result (a denial in -p mode) and the second ends the turn. Odd counts on purpose, and
# both cache-write durations, so a 5m/1h mix-up or a dropped call shows in the cost.
FIRST = {
    "input_tokens": 1234,
    "cache_read_tokens": 5678,
    "cache_write_5m_tokens": 321,
    "cache_write_1h_tokens": 123,
    "output_tokens": 457,
    "reasoning_tokens": 0,
}
# The second prompt is over 200k tokens (Claude Code asks for the 1M-context variant):
# both price tables bill Opus 4.8 flat, with no long-context tier.
SECOND = {
    "input_tokens": 150_077,
    "cache_read_tokens": 100_001,
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 555,
    "output_tokens": 33,
    "reasoning_tokens": 0,
}


def opus_cost(u: dict[str, int]) -> Decimal:
    return (
        u["input_tokens"] * OPUS_INPUT
        + u["cache_read_tokens"] * OPUS_CACHE_READ
        + u["cache_write_5m_tokens"] * OPUS_CACHE_WRITE_5M
        + u["cache_write_1h_tokens"] * OPUS_CACHE_WRITE_1H
        + u["output_tokens"] * OPUS_OUTPUT
    ) / M


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def run_claude(
    proxy: RunningProxy,
    tmp_path: Path,
    cwd: Path,
    session: str | None = None,
    project: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`devmeter run [--session] [--project] -- claude -p "say hi" --output-format json`:
    Claude Code's JSON result and the ledger rows the run wrote."""
    claude = cli("claude")
    mark = last_id(proxy)
    done = devmeter_run(
        [str(claude), "-p", "say hi", "--output-format", "json"],
        cwd=cwd,
        env=claude_env(proxy, tmp_path),
        session=session,
        project=project,
    )
    result = json.loads(done.stdout)
    assert result["subtype"] == "success", done.stdout
    return result, rows_after(proxy, mark, at_least=1)


def test_claude_code_session_repo_branch_and_cost_match_its_own(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "acme-api", BRANCH)
    workdir = repo / "src"  # started in a subdirectory: the repo is still the top level
    workdir.mkdir()
    upstream.set_next(
        path="/v1/messages",
        usage=FIRST,
        tool_use={"name": "Read", "input": {"file_path": str(repo / "README.md")}},
    )
    upstream.set_next(path="/v1/messages", usage=SECOND)

    result, rows = run_claude(proxy, tmp_path, workdir)
    session = result["session_id"]

    # What Claude Code sent: two /v1/messages calls, both naming its session.
    sent = upstream.find("anthropic.messages")
    assert len(sent) == 2 == result["num_turns"]
    assert {r.headers.get("x-claude-code-session-id") for r in sent} == {session}
    assert {r.model for r in sent} == {MODEL}

    # Only the two model calls are metered (its settings/bootstrap/telemetry calls are not).
    assert [r["endpoint"] for r in rows] == ["anthropic.messages"] * 2, describe(rows)
    for row in rows:
        assert row["tool"] == "claude-code"
        assert row["session"] == session
        assert row["repo"] == str(repo)
        assert row["branch"] == BRANCH
        assert row["repo_source"] == "claude-env"
        assert (row["requested_model"], row["model"]) == (MODEL, MODEL)
        assert (row["status"], row["complete"], row["estimated"]) == (200, 1, 0)
        assert row["error"] is None
        assert row["price_source"].startswith("genai-prices")

    # Token for token, call by call.
    for row, u in zip(rows, (FIRST, SECOND), strict=True):
        assert row["input_tokens"] == u["input_tokens"]
        assert row["cache_read_tokens"] == u["cache_read_tokens"]
        assert row["cache_write_tokens"] == u["cache_write_5m_tokens"] + u["cache_write_1h_tokens"]
        assert row["cache_write_1h_tokens"] == u["cache_write_1h_tokens"]
        assert row["output_tokens"] == u["output_tokens"]
        assert row["cost_usd"] == opus_cost(u)

    # ... and in total, the same as Claude Code's own account of the session.
    usage = result["usage"]
    assert sum(r["input_tokens"] for r in rows) == usage["input_tokens"]
    assert sum(r["cache_read_tokens"] for r in rows) == usage["cache_read_input_tokens"]
    assert sum(r["cache_write_tokens"] for r in rows) == usage["cache_creation_input_tokens"]
    assert (
        sum(r["cache_write_1h_tokens"] for r in rows)
        == usage["cache_creation"]["ephemeral_1h_input_tokens"]
    )
    assert sum(r["output_tokens"] for r in rows) == usage["output_tokens"]

    ours = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert ours == opus_cost(FIRST) + opus_cost(SECOND) == Decimal("0.83043075")
    theirs = Decimal(repr(result["total_cost_usd"]))
    assert ours.quantize(MICRO) == theirs.quantize(MICRO), (ours, theirs, result["modelUsage"])
    (model_usage,) = result["modelUsage"].values()
    assert Decimal(repr(model_usage["costUSD"])).quantize(MICRO) == ours.quantize(MICRO)

    # The user's view: `devmeter report --by session` has the same total for that session.
    by_session = {r["key"]: r for r in json.loads(report(proxy, "--by", "session", "--json"))}
    assert by_session[session]["requests"] == 2
    assert Decimal(repr(by_session[session]["cost_usd"])).quantize(MICRO) == ours.quantize(MICRO)
    assert by_session[session]["unpriced"] == 0


def test_claude_code_explicit_session_and_project_win(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "acme-web", BRANCH)
    result, rows = run_claude(
        proxy, tmp_path, repo, session="release-review", project="acme-platform"
    )
    assert result["session_id"] != "release-review"

    assert [r["endpoint"] for r in rows] == ["anthropic.messages"], describe(rows)
    (row,) = rows
    assert row["tool"] == "claude-code"
    assert row["session"] == "release-review"  # not Claude Code's own session id
    assert row["repo"] == "acme-platform"  # not the repo Claude Code worked in
    assert row["repo_source"] == "explicit"
    assert row["branch"] == BRANCH  # a project name: the branch still comes from the workplace
    assert row["cost_usd"] == opus_cost(
        {"input_tokens": 1200, "cache_read_tokens": 3000, "cache_write_5m_tokens": 300,
         "cache_write_1h_tokens": 200, "output_tokens": 345}  # the fake's default usage
    )  # fmt: skip
    assert row["cost_usd"].quantize(MICRO) == Decimal(repr(result["total_cost_usd"])).quantize(
        MICRO
    )
