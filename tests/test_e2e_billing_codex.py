"""Codex's billing and quota through a real proxy, with the real Codex CLI (0.169).

With `OPENAI_API_KEY`, against api.openai.com: billed to the key.

With a ChatGPT login: an offline `auth.json` (unsigned JWTs, a recent `last_refresh`)
that Codex accepts as it is. Before a turn it asks chatgpt.com's
`GET /backend-api/wham/accounts/check` which backend serves the selected workspace, and
sends nothing until the account its `auth.json` names is listed there with a
`workspace_backend_origin` and an `account_routing_override` it knows; the fake upstream
answers with `NO_CONSTRAINT` for both (tests/fake_upstream/server.py), which keeps the
turns on chatgpt.com. Codex then sends its turns, with the ChatGPT access token as a
Bearer, to chatgpt.com/backend-api/codex/responses over its WebSocket (or, when the
WebSocket is refused, over HTTPS with SSE), and the fake answers with the `x-codex-*`
headers and the `codex.rate_limits` event.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
CHATGPT_ACCOUNT = "acct-fake-0001"  # auth.json's ChatGPT account (a workspace id)
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


def chatgpt_login_env(proxy: RunningProxy, tmp: Path) -> dict[str, str]:
    """Codex with a ChatGPT login and no API key: the `auth.json` `codex login` writes."""
    env = codex_env(proxy, tmp)
    env.pop("OPENAI_API_KEY")
    claims = {
        "email": "dev@example.com",
        "exp": int(time.time()) + 86400,
        "https://api.openai.com/auth": {
            "chatgpt_plan_type": "plus", "chatgpt_account_id": CHATGPT_ACCOUNT,
            "chatgpt_user_id": "user-fake-0001",
        },
    }  # fmt: skip
    token = fake_jwt(claims)
    auth = {
        "OPENAI_API_KEY": None,
        "tokens": {"id_token": token, "access_token": token,
                   "refresh_token": "rt-fake-never-used", "account_id": CHATGPT_ACCOUNT},
        "last_refresh": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }  # fmt: skip
    (Path(env["CODEX_HOME"]) / "auth.json").write_text(json.dumps(auth))
    return env


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
    proxy: RunningProxy, upstream: FakeUpstream, transport: str, tmp_path: Path
) -> None:
    upstream.defaults.update(
        headers=CODEX_HEADERS, rate_limits=RATE_LIMITS_EVENT, websocket=TRANSPORTS[transport]
    )
    repo = git_repo(tmp_path / "web", "main")
    rows = run_codex(proxy, repo, chatgpt_login_env(proxy, tmp_path))

    (check,) = {r.headers.get("chatgpt-account-id") for r in upstream.find("aux.chatgpt")}
    assert check == CHATGPT_ACCOUNT  # the workspace discovery came first, and was answered
    sent = upstream.find("openai.responses")
    assert sent and all(r.path.startswith("/backend-api/codex/responses") for r in sent)
    if transport == "websocket":
        assert upstream.find("openai.responses.ws"), [r.endpoint for r in sent]
    else:  # the WebSocket refused (426): Codex falls back to POST with SSE
        assert upstream.find("openai.responses", method="POST"), [r.endpoint for r in sent]
    turns = [r for r in rows if r["endpoint"] == "openai.responses" and r["output_tokens"]]
    assert turns, describe(rows)
    assert {(r["billing"], r["host"], r["error"]) for r in turns} == {
        ("subscription", "chatgpt.com", None)
    }, describe(turns)
    (account,) = {r["account"] for r in turns}
    assert account.startswith("acct-")

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
