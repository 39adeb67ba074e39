"""The first alert of a runaway, per shape and client, at the default config.

Real Claude Code and Codex CLIs run against the fake upstream at ~$0.11 a call, in three
shapes: stuck (the same tool call every turn), cycling (two calls in turn) and distinct
(a new call every turn). Each run stops at its session's first alert; the test records
that alert's kind, the session's spend when it fired and the seconds since its first
call, and holds them to the bounds README.md states ("Guard rails"): before $5 and 60 s.
Run with `-s` to see the figures the README table is filled from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter.money import PICO
from tests.clients_env import claude_env, cli, codex_env
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

NO_CACHE = {"cache_read_tokens": 0, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
            "reasoning_tokens": 0}  # fmt: skip
# $0.11 a call at each CLI's default model: claude-opus-4-8 ($5 / $25 per million),
# gpt-6.1-sol ($2 / $10 per million for prompts this short).
CLIENTS: dict[str, dict[str, Any]] = {
    "claude-code": {
        "usage": {**NO_CACHE, "input_tokens": 18_000, "output_tokens": 800},
        "path": "/v1/messages",
        "tool": lambda command: {"name": "Bash", "input": {"command": command}},
    },
    "codex": {
        "usage": {**NO_CACHE, "input_tokens": 45_000, "output_tokens": 2_000},
        "path": "/v1/responses",
        "tool": lambda command: {"name": "exec_command", "input": {"cmd": command}},
    },
}
PER_CALL = Decimal("0.11")
SHAPES = {
    "stuck": lambda turn: "ls",
    "cycling": lambda turn: ("ls", "pwd")[turn % 2],
    "distinct": lambda turn: f"echo step {turn}",
}
# The bounds the README promises for the first alert of any runaway shape.
MAX_USD = Decimal(5)
MAX_SECONDS = 60.0
# Each answer streams over a fraction of a second: the CLIs' own work sets the pace.
DELAY_MS = 40
TURNS = 90


@pytest.fixture()
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(websocket=False, delay_ms=DELAY_MS) as server:
        yield server


def first_alert(proxy: RunningProxy, tool: str) -> dict[str, Any] | None:
    """The first session alert of `tool`'s busiest session, with the spend and seconds
    at which it fired; None while there is none."""
    conn = sqlite3.connect(f"{(proxy.home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        sessions = conn.execute(
            "SELECT session FROM calls WHERE tool = ? AND session IS NOT NULL "
            "GROUP BY session ORDER BY count(*) DESC LIMIT 1",
            (tool,),
        ).fetchall()
        if not sessions:
            return None
        session = sessions[0]["session"]
        alert = conn.execute(
            "SELECT kind, ts, message FROM alerts WHERE session = ? ORDER BY ts, id LIMIT 1",
            (session,),
        ).fetchone()
        if alert is None:
            return None
        calls = conn.execute(
            "SELECT ts, ts + duration_ms / 1000.0 AS end_ts, cost_pusd FROM calls "
            "WHERE session = ? ORDER BY ts",
            (session,),
        ).fetchall()
    except sqlite3.OperationalError:
        return None  # the ledger is not created yet
    finally:
        conn.close()
    spent = sum(
        (Decimal(c["cost_pusd"] or 0) / PICO for c in calls if c["end_ts"] <= alert["ts"] + 1e-3),
        Decimal(0),
    )
    return {
        "kind": alert["kind"],
        "usd": spent,
        "seconds": alert["ts"] - calls[0]["ts"],
        "calls": sum(c["end_ts"] <= alert["ts"] + 1e-3 for c in calls),
        "message": alert["message"],
    }


def run_until_alert(
    args: list[str], env: dict[str, str], cwd: Path, proxy: RunningProxy, tool: str
) -> dict[str, Any] | None:
    """The client through `devmeter run`, stopped at its session's first alert."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmeter", "run", "--", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=os.name != "nt",
    )  # fmt: skip
    found = None
    deadline = time.monotonic() + MAX_SECONDS + 30
    try:
        while time.monotonic() < deadline and found is None and proc.poll() is None:
            time.sleep(0.25)
            found = first_alert(proxy, tool)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    return found or first_alert(proxy, tool)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("tool", list(CLIENTS))
def test_first_alert_of_a_runaway_comes_before_5_dollars_and_a_minute(
    tool: str, shape: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    client = CLIENTS[tool]
    upstream.defaults["usage"] = client["usage"]
    upstream.defaults["tool_use"] = client["tool"]("ls")
    for turn in range(TURNS):
        upstream.set_next(path=client["path"], tool_use=client["tool"](SHAPES[shape](turn)))
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("hello\n")
    proxy = start_proxy(tmp_path / "devmeter-home", upstream.url)
    try:
        if tool == "claude-code":
            args = [str(cli("claude")), "-p", "list the files", "--max-turns", str(TURNS),
                    "--allowedTools", "Bash"]  # fmt: skip
            env = claude_env(proxy, tmp_path)
        else:
            args = [str(cli("codex")), "exec", "--json", "--skip-git-repo-check",
                    "--dangerously-bypass-approvals-and-sandbox", "list the files"]  # fmt: skip
            env = codex_env(proxy, tmp_path)
        alert = run_until_alert(args, env, work, proxy, tool)
    finally:
        proxy.stop()
    assert alert is not None, f"{tool} ran {shape} with no alert"
    print(
        f"\n{tool} {shape}: first alert {alert['kind']} after {alert['calls']} calls, "
        f"{alert['seconds']:.1f} s, ${alert['usd']:.2f}"
    )
    # The agent's turns on its main model; a side call on a small model costs less.
    rows = proxy.rows("tool = ? AND status = 200", (tool,))
    main = [r for r in rows if Decimal(r["cost_pusd"]) / PICO == PER_CALL]
    assert len(main) >= len(rows) - 2
    # Whichever comes first at the client's own pace: a loop (stuck, cycling) or the burn
    # rate; a run of distinct calls is never called a loop.
    kinds = {"loop", "projection"} if shape != "distinct" else {"projection"}
    assert alert["kind"] in kinds, alert["message"]
    assert alert["usd"] < MAX_USD
    assert alert["seconds"] < MAX_SECONDS
    assert "`devmeter stop " in alert["message"]
