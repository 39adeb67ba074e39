"""The real Claude Code CLI's own transcripts, imported: the same rows the proxy records.

One scripted conversation (a tool call and its answer, a `--continue`d turn, and a
`--resume --fork-session` turn, whose new file repeats the earlier lines) is run twice
against the fake upstream: once straight to it (ANTHROPIC_BASE_URL, no proxy) and
imported from the transcripts Claude Code wrote, once through `devmeter run`. The rows
must agree token for token and to the micro-dollar, and each session's total must be
Claude Code's own `total_cost_usd`. Then the proxied run's transcripts are imported into
the proxy's own ledger: nothing doubles; and importing twice adds nothing.

A second conversation has Claude Code spawn a subagent (its `Agent` tool, scripted as the
fake upstream's answer): the subagent's calls go to a transcript of their own
(`<session>/subagents/agent-*.jsonl`, every line `isSidechain`), which imports once, in
the parent's session, and again agrees with the proxy and with Claude Code's total.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter.importers.claude_code import import_claude_code
from devmeter.money import from_pusd
from tests.clients_env import claude_env, cli, devmeter_run, git_repo, last_id, rows_after
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy
from tests.test_import_bulk import assert_quick_equals_general, transcript_objects
from tests.test_import_forked import import_command

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

MICRO = Decimal("0.000001")
BRANCH = "feature/history"
FIRST = {
    "input_tokens": 1234,
    "cache_read_tokens": 5678,
    "cache_write_5m_tokens": 321,
    "cache_write_1h_tokens": 123,
    "output_tokens": 457,
    "reasoning_tokens": 0,
}
SECOND = {
    "input_tokens": 2001,
    "cache_read_tokens": 7001,
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 555,
    "output_tokens": 33,
    "reasoning_tokens": 0,
}
CONTINUED = {
    "input_tokens": 77,
    "cache_read_tokens": 9100,
    "cache_write_5m_tokens": 410,
    "cache_write_1h_tokens": 0,
    "output_tokens": 91,
    "reasoning_tokens": 0,
}
FORKED = {"input_tokens": 19, "cache_read_tokens": 9500, "cache_write_5m_tokens": 12,
          "cache_write_1h_tokens": 7, "output_tokens": 250, "reasoning_tokens": 0}  # fmt: skip
TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
          "output_tokens", "web_search_requests", "model", "cost_pusd")  # fmt: skip


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def script(upstream: FakeUpstream, repo: Path) -> None:
    upstream.set_next(
        path="/v1/messages",
        usage=FIRST,
        tool_use={"name": "Read", "input": {"file_path": str(repo / "README.md")}},
    )
    upstream.set_next(path="/v1/messages", usage=SECOND)
    upstream.set_next(path="/v1/messages", usage=CONTINUED)
    upstream.set_next(path="/v1/messages", usage=FORKED)


def conversation(run: Any) -> list[dict[str, Any]]:
    """The three invocations; Claude Code's JSON result of each."""
    first = run(["-p", "say hi"])
    second = run(["-p", "and again", "--continue"])
    third = run(["-p", "a fork", "--resume", first["session_id"], "--fork-session"])
    return [first, second, third]


def run_direct(claude: Path, cwd: Path, env: dict[str, str], args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(claude), *args, "--output-format", "json"], cwd=cwd, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["subtype"] == "success", done.stdout
    return result


def ledger_rows(db: Path, where: str = "1") -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM calls WHERE {where} ORDER BY ts, id")]
    conn.close()
    return rows


def per_session_cost(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for r in rows:
        totals[r["session"]] = totals.get(r["session"], Decimal(0)) + from_pusd(r["cost_pusd"])
    return totals


def test_imported_transcripts_equal_the_proxied_run(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, devmeter_home: Path
) -> None:
    claude = cli("claude")
    repo = git_repo(tmp_path / "acme-api", BRANCH)

    # 1. Without the proxy: Claude Code straight to the fake upstream, then import.
    script(upstream, repo)
    direct_env = claude_env(proxy, tmp_path / "direct")
    direct_env["ANTHROPIC_BASE_URL"] = upstream.url
    direct_env.pop("DEVMETER_HOME")
    direct = conversation(lambda args: run_direct(claude, repo, direct_env, args))
    config_dir = Path(direct_env["CLAUDE_CONFIG_DIR"])
    assert len(list((config_dir / "projects").rglob("*.jsonl"))) == 2  # the fork's own file

    db = devmeter_home / "ledger.sqlite"
    result = import_command("claude-code", devmeter_home, config_dir)  # the command's path
    imported = ledger_rows(db)
    assert result["imported"] == 4 == len(imported), result
    assert import_claude_code(db, config_dir).imported == 0  # twice: nothing more
    assert len(ledger_rows(db)) == 4
    # The quick row (claude_code._quick_row) reads every response this CLI wrote, and
    # reads it as the general path does.
    lines = transcript_objects(sorted((config_dir / "projects").rglob("*.jsonl")))
    assert_quick_equals_general(lines, all_quick=True)

    # Each session's total is Claude Code's own, to the micro-dollar.
    totals = per_session_cost(imported)
    original, forked = direct[0]["session_id"], direct[2]["session_id"]
    assert original != forked and direct[1]["session_id"] == original
    ours = totals[original].quantize(MICRO)
    theirs = Decimal(repr(direct[0]["total_cost_usd"])) + Decimal(repr(direct[1]["total_cost_usd"]))
    assert ours == theirs.quantize(MICRO)
    assert totals[forked].quantize(MICRO) == Decimal(repr(direct[2]["total_cost_usd"])).quantize(
        MICRO
    )
    for row in imported:
        assert (row["tool"], row["source"], row["repo"], row["branch"]) == (
            "claude-code", "import", str(repo), BRANCH,
        )  # fmt: skip

    # 2. The same conversation through the proxy: the same rows, token for token.
    script(upstream, repo)
    mark = last_id(proxy)
    proxied_env = claude_env(proxy, tmp_path / "proxied")

    def through_proxy(args: list[str]) -> dict[str, Any]:
        done = devmeter_run(
            [str(claude), *args, "--output-format", "json"], cwd=repo, env=proxied_env
        )
        return json.loads(done.stdout)

    proxied = conversation(through_proxy)
    live = rows_after(proxy, mark, at_least=4)
    live = [r for r in live if r["endpoint"] == "anthropic.messages"]
    assert len(live) == 4
    live_db = proxy.home / "ledger.sqlite"
    live_full = ledger_rows(live_db, f"id > {mark} AND endpoint = 'anthropic.messages'")
    assert [tuple(r[k] for k in TOKENS) for r in live_full] == [
        tuple(r[k] for k in TOKENS) for r in imported
    ]
    assert all(r["response_id"] and r["response_id"].startswith("msg_") for r in live_full)

    # 3. Its transcripts imported into the proxy's own ledger: every call already there.
    before = ledger_rows(live_db)
    again = import_claude_code(live_db, Path(proxied_env["CLAUDE_CONFIG_DIR"]))
    assert (again.imported, again.live) == (0, 4), again
    assert len(ledger_rows(live_db)) == len(before)
    assert again.duplicates == 3  # the fork's copies of the first session's lines
    assert [r["session_id"] for r in proxied][:2] == [proxied[0]["session_id"]] * 2


SUBAGENT = {"name": "Agent", "input": {"description": "look around", "prompt": "list the files",
                                       "subagent_type": "general-purpose"}}  # fmt: skip


def _usage(inp: int, read: int, write_5m: int, write_1h: int, out: int) -> dict[str, int]:
    return {
        "input_tokens": inp,
        "cache_read_tokens": read,
        "cache_write_5m_tokens": write_5m,
        "cache_write_1h_tokens": write_1h,
        "output_tokens": out,
        "reasoning_tokens": 0,
    }


ASKS_AGENT = _usage(1500, 4000, 600, 0, 120)
AGENT_ANSWERS = _usage(2600, 0, 2100, 0, 310)  # the subagent's own call
MAIN_ANSWERS = _usage(300, 5600, 90, 10, 75)


def test_a_subagent_s_calls_import_once_in_the_parent_session(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, devmeter_home: Path
) -> None:
    claude = cli("claude")
    repo = git_repo(tmp_path / "acme-agents", BRANCH)

    def script_subagent() -> None:
        upstream.set_next(path="/v1/messages", usage=ASKS_AGENT, tool_use=SUBAGENT)
        upstream.set_next(path="/v1/messages", usage=AGENT_ANSWERS)  # the subagent's call
        upstream.set_next(path="/v1/messages", usage=MAIN_ANSWERS)

    # Without the proxy, then imported.
    script_subagent()
    direct_env = claude_env(proxy, tmp_path / "direct")
    direct_env["ANTHROPIC_BASE_URL"] = upstream.url
    direct_env.pop("DEVMETER_HOME")
    result = run_direct(claude, repo, direct_env, ["-p", "say hi"])
    assert result["num_turns"] == 2, result
    session = result["session_id"]
    config_dir = Path(direct_env["CLAUDE_CONFIG_DIR"])
    (sidechain,) = (config_dir / "projects").rglob("subagents/*.jsonl")
    agent_lines = [json.loads(line) for line in sidechain.read_text().splitlines()]
    agent_ids = {
        line["message"]["id"]
        for line in agent_lines
        if line.get("type") == "assistant" and isinstance(line.get("message"), dict)
    }
    assert len(agent_ids) == 1 and all(line.get("isSidechain") for line in agent_lines)
    assert {line.get("sessionId") for line in agent_lines} == {session}

    db = devmeter_home / "ledger.sqlite"
    assert import_claude_code(db, config_dir).imported == 3
    assert import_claude_code(db, config_dir).imported == 0  # twice: nothing more
    imported = ledger_rows(db)
    assert len(imported) == 3
    (agent_row,) = [r for r in imported if r["response_id"] in agent_ids]
    assert (agent_row["session"], agent_row["repo"], agent_row["branch"]) == (
        session, str(repo), BRANCH,
    )  # fmt: skip
    assert (agent_row["input_tokens"], agent_row["output_tokens"]) == (2600, 310)
    assert {r["session"] for r in imported} == {session}
    # The session's total, subagent included, is Claude Code's own.
    assert per_session_cost(imported)[session].quantize(MICRO) == Decimal(
        repr(result["total_cost_usd"])
    ).quantize(MICRO)

    # Through the proxy: the same three calls, token for token; its transcripts imported
    # into the proxy's ledger add nothing.
    script_subagent()
    mark = last_id(proxy)
    proxied_env = claude_env(proxy, tmp_path / "proxied")
    devmeter_run(
        [str(claude), "-p", "say hi", "--output-format", "json"], cwd=repo, env=proxied_env
    )
    rows_after(proxy, mark, at_least=3)
    live_db = proxy.home / "ledger.sqlite"
    live = ledger_rows(live_db, f"id > {mark} AND endpoint = 'anthropic.messages'")
    assert [tuple(r[k] for k in TOKENS) for r in live] == [
        tuple(r[k] for k in TOKENS) for r in imported
    ]
    again = import_claude_code(live_db, Path(proxied_env["CLAUDE_CONFIG_DIR"]))
    assert (again.imported, again.live) == (0, 3), again
