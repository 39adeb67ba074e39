"""A refused request, as the real clients show it: the devmeter message, once, no retries.

Metered traffic is paused (the same refusal a cap gives), then each real client asks
once. What each shows, and how many attempts reach the proxy, was found by trying status
codes and bodies on the real CLIs (see `Block.refusal`): Claude Code prints "Failed to
authenticate" for a 403 and shows a 402 `billing_error` as it is; Codex retries every
status but 400 (eleven attempts in ~12 s for a 403), prints a 400's plain-text body as it
is, and on its WebSocket stops at an `error` event with status 400. Gemini CLI shows
the body of a 400, 402 or 403 in Google's error shape as it is and retries none of them
(a 429 it retries, with backoff): devmeter answers 403 `PERMISSION_DENIED`, as Google
would.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devmeter import control
from tests.clients_env import claude_env, cli, client_env, codex_env
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

PAUSED = "devmeter: metered traffic is paused."


@pytest.fixture()
def paused(tmp_path: Path) -> Iterator[tuple[RunningProxy, FakeUpstream]]:
    with FakeUpstream() as upstream:
        home = tmp_path / "devmeter-home"
        home.mkdir()
        control.save(control.control_path(home), control.Control(paused=True))
        running = start_proxy(home, upstream.url)
        try:
            yield running, upstream
        finally:
            running.stop()


def run_client(
    proxy: RunningProxy, args: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The client through `devmeter run`; it is expected to fail, so no exit check."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "run", "--", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        encoding="utf-8", errors="replace", timeout=90, start_new_session=os.name != "nt",
    )  # fmt: skip
    return done, time.monotonic() - started


def refused_rows(proxy: RunningProxy, quiet: float = 1.0) -> list[dict[str, Any]]:
    """The ledger's refusal rows, once no new row came for `quiet` seconds."""
    rows: list[dict[str, Any]] = []
    stable = time.monotonic()
    deadline = stable + 15
    while time.monotonic() < deadline:
        fresh = proxy.rows("error LIKE 'devmeter: metered traffic is paused%'")
        if len(fresh) != len(rows):
            rows, stable = fresh, time.monotonic()
        elif rows and time.monotonic() - stable >= quiet:
            break
        time.sleep(0.05)
    return rows


def test_claude_code_shows_the_message_as_it_is_after_one_attempt(
    paused: tuple[RunningProxy, FakeUpstream], tmp_path: Path
) -> None:
    proxy, upstream = paused
    done, _ = run_client(proxy, [str(cli("claude")), "-p", "say hi"], claude_env(proxy, tmp_path),
                         tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert f"API Error: 402 {PAUSED}" in done.stdout, done.stdout + done.stderr
    assert "Failed to authenticate" not in done.stdout
    rows = refused_rows(proxy)
    assert [(r["endpoint"], r["status"]) for r in rows] == [("anthropic.messages", 402)]
    assert upstream.find("anthropic.messages") == []


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_codex_on_its_websocket_stops_at_the_refusal_without_reconnecting(
    paused: tuple[RunningProxy, FakeUpstream], tmp_path: Path
) -> None:
    proxy, upstream = paused
    args = [str(cli("codex")), "exec", "--json", "--skip-git-repo-check", "say hi"]
    done, seconds = run_client(proxy, args, codex_env(proxy, tmp_path), tmp_path)
    errors = [e["message"] for e in events(done.stdout) if e["type"] == "error"]
    assert len(errors) == 1, done.stdout + done.stderr  # no "Reconnecting... n/5"
    assert PAUSED in errors[0] and "devmeter resume" in errors[0]
    rows = refused_rows(proxy)
    # At most Codex's prewarm and its turn, each refused on the socket: no HTTPS fallback.
    assert 1 <= len(rows) <= 2 and {r["status"] for r in rows} == {400}
    sent = [r for r in upstream.find() if r.method == "WS" and b"response.create" in r.body]
    assert sent == []  # no turn reached the provider
    assert upstream.find("openai.responses", method="POST") == []
    assert seconds < 20


def test_codex_over_https_shows_the_message_as_it_is_after_one_attempt(
    tmp_path: Path,
) -> None:
    with FakeUpstream(websocket=False) as upstream:  # the upgrade refused: Codex uses HTTPS
        home = tmp_path / "devmeter-home"
        home.mkdir()
        control.save(control.control_path(home), control.Control(paused=True))
        proxy = start_proxy(home, upstream.url)
        try:
            args = [str(cli("codex")), "exec", "--json", "--skip-git-repo-check", "say hi"]
            done, _ = run_client(proxy, args, codex_env(proxy, tmp_path), tmp_path)
            errors = [e["message"] for e in events(done.stdout) if e["type"] == "error"]
            assert errors and errors[-1].startswith(PAUSED), done.stdout + done.stderr
            assert not any("Reconnecting" in e for e in errors)
            rows = refused_rows(proxy)
            assert [(r["endpoint"], r["status"]) for r in rows] == [("openai.responses", 400)]
        finally:
            proxy.stop()


GEMINI_LOGINS = {
    "api-key": {"GEMINI_API_KEY": "fake"},
    "google-login": {"GOOGLE_GENAI_USE_GCA": "true", "GOOGLE_CLOUD_ACCESS_TOKEN": "ya29.e2e"},
}


@pytest.mark.parametrize("login", list(GEMINI_LOGINS))
def test_gemini_cli_shows_the_message_as_it_is_without_retrying(
    paused: tuple[RunningProxy, FakeUpstream], tmp_path: Path, login: str
) -> None:
    proxy, upstream = paused
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(
        json.dumps({"privacy": {"usageStatisticsEnabled": False}})
    )
    env = client_env(proxy, home, GEMINI_CLI_TRUST_WORKSPACE="true", **GEMINI_LOGINS[login])
    args = [str(cli("gemini")), "-p", "say hi", "--output-format", "json"]
    done, seconds = run_client(proxy, args, env, tmp_path)
    # With --output-format json the CLI writes its error report to stderr: the status and
    # the body it got, as it got it (the body's JSON, the devmeter message inside).
    report = done.stderr[done.stderr.rindex('{\n  "session_id"') :]
    error = json.loads(report)["error"]
    assert error["code"] == 403, done.stderr
    shown = json.loads(error["message"])["error"]
    assert shown["message"].startswith(PAUSED) and "devmeter resume" in shown["message"]
    rows = refused_rows(proxy)
    # One attempt each: the router's classifying call (refused, the CLI falls back to its
    # default model, no retry) and the turn itself.
    assert [(r["endpoint"], r["status"]) for r in rows] == [("gemini.generate", 403)] * 2
    assert [r for r in upstream.requests if "generate" in r.path.lower()] == []
    assert seconds < 30


def test_the_sdks_raise_the_message_once_without_retrying(
    paused: tuple[RunningProxy, FakeUpstream],
) -> None:
    import anthropic
    import openai

    proxy, _ = paused
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    ant = anthropic.Anthropic(
        api_key="sk-ant-test",
        http_client=anthropic.DefaultHttpxClient(proxy=proxy.url, verify=verify),
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        ant.messages.create(
            model="claude-opus-4-8", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 402 and PAUSED in caught.value.message

    oai = openai.OpenAI(
        api_key="sk-test", http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=verify)
    )
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert PAUSED in refused.value.message
    rows = refused_rows(proxy)
    assert sorted((r["endpoint"], r["status"]) for r in rows) == [
        ("anthropic.messages", 402),
        ("openai.chat", 403),
    ]
