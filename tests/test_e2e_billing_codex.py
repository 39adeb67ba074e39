"""Codex's billing and quota through a real proxy.

With `OPENAI_API_KEY`, the real Codex CLI against api.openai.com: billed to the key.

With a ChatGPT login, the real Codex CLI 0.169 does accept an offline `auth.json` (an
unsigned JWT, a recent `last_refresh`): it then sends to chatgpt.com, but before every
turn it asks `GET /backend-api/wham/accounts/check` which workspace serves the account,
and its answer's schema is private (an `AccountEntry` of 11 fields and a routing override
it validates): no answer built offline was accepted ("workspace routing discovery has
invalid account routing override"), so Codex never sends a turn. The test therefore
replays what Codex sends and gets on that path through the proxy: a ChatGPT access token
(a JWT) as a Bearer to chatgpt.com/backend-api/codex/responses, over its WebSocket and
over HTTPS with SSE, answered with the `x-codex-*` headers and the `codex.rate_limits`
event by the fake upstream.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.clients_env import (
    QUICK_TIMEOUT,
    cli,
    codex_env,
    describe,
    devmeter_run,
    git_repo,
    last_id,
    rows_after,
)
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

ACCESS_TOKEN_MARK = "PLANTEDchatgptAccessQw8Er4Ty6"
PRIMARY_RESET = 1_796_650_000
SECONDARY_RESET = 1_797_100_000
CODEX_HEADERS = {
    "x-codex-primary-used-percent": "42.5",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-at": str(PRIMARY_RESET),
    "x-codex-secondary-used-percent": "9",
    "x-codex-secondary-window-minutes": "10080",
    "x-codex-secondary-reset-at": str(SECONDARY_RESET),
    "x-codex-plan-type": "plus",
    "x-codex-credits-has-credits": "false",
}
# The event moves the 5-hour window on (it comes during the turn, after the headers).
RATE_LIMITS_EVENT = {
    "plan_type": "plus",
    "rate_limits": {
        "primary": {"used_percent": 43.0, "window_minutes": 300, "reset_at": PRIMARY_RESET},
        "secondary": {"used_percent": 9.0, "window_minutes": 10080, "reset_at": SECONDARY_RESET},
    },
}
TRANSPORTS = {"websocket": True, "https": False}


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def fake_jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT: Codex reads its claims offline and never checks a signature."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.{ACCESS_TOKEN_MARK}"


def run_codex(proxy: RunningProxy, cwd: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    mark = last_id(proxy)
    done = devmeter_run([str(cli("codex")), "exec", "--json", "say hi"], cwd=cwd, env=env)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert any(e["type"] == "turn.completed" for e in events), done.stdout + done.stderr
    return rows_after(proxy, mark, at_least=1)


def chatgpt_token() -> str:
    claims = {
        "email": "dev@example.com",
        "exp": int(time.time()) + 86400,
        "https://api.openai.com/auth": {"chatgpt_plan_type": "plus"},
    }
    return fake_jwt(claims)


def replay_chatgpt_turn(proxy: RunningProxy, transport: str, session: str) -> None:
    """One Codex turn as Codex sends it with a ChatGPT login."""
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    headers = {
        "Authorization": f"Bearer {chatgpt_token()}",
        "chatgpt-account-id": "acct-fake-0001",
        "originator": "codex_exec",
        "User-Agent": "codex_exec/0.169.0 (Debian 13.0.0; x86_64) xterm",
        "session-id": session,
        "X-Devmeter-Session": session,
    }
    turn = {"model": "gpt-6.1-sol", "input": [], "stream": True, "store": False}
    if transport == "websocket":
        from websockets.sync.client import connect

        with connect(
            "wss://chatgpt.com/backend-api/codex/responses",
            ssl=context,
            proxy=proxy.url,
            additional_headers=headers,
            open_timeout=10,
        ) as socket:
            socket.send(json.dumps({"type": "response.create", **turn}))
            while json.loads(socket.recv(timeout=10))["type"] != "response.completed":
                pass
    else:
        with httpx2.Client(proxy=proxy.url, verify=context, timeout=30) as http:
            r = http.post(
                "https://chatgpt.com/backend-api/codex/responses", json=turn, headers=headers
            )
            assert r.status_code == 200 and "codex.rate_limits" in r.text


def quota(proxy: RunningProxy) -> dict[tuple[str, str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "quota", "--json"],
        env={**os.environ, "DEVMETER_HOME": str(proxy.home)},
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=True,
    )
    return {(q["account"], q["window"]): q for q in json.loads(done.stdout)}


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_codex_chatgpt_login_is_a_subscription_with_exact_quota(
    proxy: RunningProxy, upstream: FakeUpstream, transport: str
) -> None:
    upstream.defaults.update(headers=CODEX_HEADERS, rate_limits=RATE_LIMITS_EVENT)
    session = f"codex-chatgpt-{transport}"
    mark = last_id(proxy)
    replay_chatgpt_turn(proxy, transport, session)
    rows = rows_after(proxy, mark, at_least=1)

    sent = upstream.find("openai.responses")
    assert sent and all(r.path.startswith("/backend-api/codex/responses") for r in sent)
    turns = [r for r in rows if r["session"] == session and r["output_tokens"]]
    assert len(turns) == 1, describe(rows)
    (turn,) = turns
    assert (turn["billing"], turn["host"], turn["error"]) == ("subscription", "chatgpt.com", None)
    account = turn["account"]

    windows = quota(proxy)
    five, week = windows[(account, "5h")], windows[(account, "7d")]
    # The event (43%) came after the headers (42.5%): the latest wins.
    assert {k: five[k] for k in ("provider", "utilization", "resets_at", "status")} == {
        "provider": "openai",
        "utilization": 0.43,
        "resets_at": iso(PRIMARY_RESET),
        "status": "allowed",
    }
    assert (week["utilization"], week["resets_at"]) == (0.09, iso(SECONDARY_RESET))

    for path in proxy.home.rglob("*"):
        if path.is_file():
            assert ACCESS_TOKEN_MARK.encode() not in path.read_bytes(), path


def test_codex_with_an_api_key_is_billed_to_it(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "payments", "main")
    rows = run_codex(proxy, repo, codex_env(proxy, tmp_path))
    assert upstream.find("openai.responses")
    turns = [r for r in rows if r["endpoint"] == "openai.responses"]
    assert turns and {(r["billing"], r["host"]) for r in turns} == {("api", "api.openai.com")}
    # Its WebSocket handshake carries no key (tests/clients' Codex 0.169, as captured): no
    # account to tie the rate-limit headers to, so no quota window either.
    assert {r["account"] for r in turns} == {None}
