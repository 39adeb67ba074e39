"""Real CLIs in a runaway: every answer of the fake upstream is the same tool call.

With the default config, the loop is reported once per session (not once per request
it cycles over, not once per call after the eighth), with a command that stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients_env import claude_env, cli, codex_env
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]


Setup = tuple[RunningProxy, FakeUpstream, Path]


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[Setup]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("hello\n")
    with FakeUpstream(websocket=False) as upstream:
        proxy = start_proxy(tmp_path / "devmeter-home", upstream.url)
        try:
            yield proxy, upstream, work
        finally:
            proxy.stop()


def run_for(args: list[str], env: dict[str, str], cwd: Path, seconds: float) -> None:
    """The client through `devmeter run`, stopped after `seconds` if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmeter", "run", "--", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=os.name != "nt",
    )  # fmt: skip
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def alerts(proxy: RunningProxy) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "alerts", "--json"],
        env=proxy.env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def loop_rows(proxy: RunningProxy, session: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [a for a in alerts(proxy) if a["kind"] == "loop" and a["key"] == session]
        if found:
            time.sleep(0.5)  # a second (duplicate) row would show up by now
            return [a for a in alerts(proxy) if a["kind"] == "loop" and a["key"] == session]
        time.sleep(0.2)
    return []


def main_session(proxy: RunningProxy, tool: str) -> tuple[str, list[dict[str, Any]]]:
    rows = proxy.rows("tool = ? AND status IN (200, 101)", (tool,))  # 101: a WebSocket turn
    assert rows, f"no {tool} calls were metered"
    sessions = {r["session"] for r in rows}
    session = max(sessions, key=lambda s: sum(r["session"] == s for r in rows))
    return session, [r for r in rows if r["session"] == session]


@pytest.mark.parametrize("websocket", [False, True], ids=["https", "websocket"])
def test_codex_stuck_on_one_command_is_reported_once_with_a_stop_command(
    setup: Setup, tmp_path: Path, websocket: bool
) -> None:
    """Over HTTPS and over its Responses WebSocket (Codex's default where the server
    offers one): each turn on the socket is fingerprinted from its own message."""
    proxy, upstream, work = setup
    upstream.defaults["websocket"] = websocket
    # Every answer is the same call (Codex 0.169's shell tool): a stuck agent.
    upstream.defaults["tool_use"] = {"name": "exec_command", "input": {"cmd": "ls"}}
    env = codex_env(proxy, tmp_path)
    args = [str(cli("codex")), "exec", "--json", "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox", "list the files"]  # fmt: skip
    run_for(args, env, work, seconds=12)
    session, calls = main_session(proxy, "codex")
    assert len(calls) >= 8
    (loop,) = loop_rows(proxy, session)
    assert f"`devmeter stop {session[:8]}`" in loop["message"]


def test_claude_code_stuck_on_one_command_is_reported_once_with_a_stop_command(
    setup: Setup, tmp_path: Path
) -> None:
    proxy, upstream, work = setup
    upstream.defaults["tool_use"] = {"name": "Bash", "input": {"command": "ls"}}
    args = [str(cli("claude")), "-p", "list the files", "--max-turns", "12",
            "--allowedTools", "Bash"]  # fmt: skip
    run_for(args, claude_env(proxy, tmp_path), work, seconds=60)
    session, calls = main_session(proxy, "claude-code")
    assert len(calls) >= 8
    (loop,) = loop_rows(proxy, session)
    assert f"`devmeter stop {session[:8]}`" in loop["message"]
