"""Secrets through a real proxy with the real anthropic SDK: warn lets the call through
and records a masked finding, block refuses it with the devmeter: message, redact
forwards a body the upstream sees no secret in. Nothing under DEVMETER_HOME, nor the
proxy's output, ever holds a planted secret."""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import SOCKET_SECONDS, RunningProxy, start_proxy
from tests.secrets_corpus import PLANTED
from tests.test_secrets_inspect import claude_code_read_env

pytestmark = pytest.mark.proxy

WS_TIMEOUT = SOCKET_SECONDS


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def run_proxy(tmp_path: Path, upstream: FakeUpstream, mode: str) -> RunningProxy:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[secrets]\nmode = "{mode}"\n')
    return start_proxy(home, upstream.url)


def send_env_read(proxy: RunningProxy) -> anthropic.types.Message:
    http = anthropic.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    client = anthropic.Anthropic(
        api_key="sk-ant-test", http_client=http, max_retries=0,
        default_headers={"X-Devmeter-Session": "sess-secrets"},
    )  # fmt: skip
    body = claude_code_read_env()
    return client.messages.create(
        model=body["model"], max_tokens=64, system=body["system"], messages=body["messages"]
    )


def findings(proxy: RunningProxy, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    ledger = proxy.home / "ledger.sqlite"
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(f"{ledger.as_uri()}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM findings ORDER BY id")]
            conn.close()
        except sqlite3.Error:
            rows = []
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    return rows


def assert_no_secret_leaked(proxy: RunningProxy, cli_output: str = "") -> None:
    proxy.stop()  # flushed and closed: every file is as it will stay
    for path in proxy.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for kind, secret in PLANTED.items():
                assert secret.encode() not in data, f"{kind} leaked into {path}"
    for secret in PLANTED.values():
        assert secret not in cli_output


def test_warn_lets_the_call_through_and_records_a_masked_finding(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    proxy = run_proxy(tmp_path, upstream, "warn")
    upstream.clear()
    try:
        reply = send_env_read(proxy)
        assert reply.content  # the call went through, unchanged
        assert PLANTED["stripe-key"] in upstream.requests[-1].body.decode()
        rows = findings(proxy, 4)
        assert sorted(r["kind"] for r in rows) == [
            "database-password",
            "dotenv-secret",
            "openai-api-key",
            "stripe-key",
        ]
        assert {r["action"] for r in rows} == {"warned"}
        assert {r["location"] for r in rows} == {"tool result (/home/dev/acme/.env)"}
        assert {r["session"] for r in rows} == {"sess-secrets"}
        send_env_read(proxy)  # the same turn again (a retry): not reported again
        time.sleep(0.5)
        assert len(findings(proxy, 5, timeout=0.5)) == 4
        out = subprocess.run(
            [sys.executable, "-m", "devmeter", "findings", "--json"],
            env=proxy.env(), capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        shown = json.loads(out)
        assert {"ts", "kind", "rule", "preview", "tool", "repo", "session", "action"} <= set(
            shown[0]
        )
        stripe = next(r for r in shown if r["kind"] == "stripe-key")
        assert stripe["preview"] == PLANTED["stripe-key"][:4] + "…" + PLANTED["stripe-key"][-4:]
        alerts = subprocess.run(
            [sys.executable, "-m", "devmeter", "alerts", "--json"],
            env=proxy.env(), capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert [a["kind"] for a in json.loads(alerts)] == ["secret"] * 4
    finally:
        assert_no_secret_leaked(proxy, proxy.log.read_text() if proxy.log.exists() else "")


def test_block_refuses_with_the_devmeter_message_and_sends_nothing(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    proxy = run_proxy(tmp_path, upstream, "block")
    upstream.clear()
    try:
        with pytest.raises(anthropic.APIStatusError) as refused:
            send_env_read(proxy)
        assert refused.value.status_code == 402
        assert "devmeter: refused: the request holds a secret" in str(refused.value)
        assert "allow_fingerprints" in str(refused.value)
        assert f"in {proxy.home / 'config.toml'} (or set" in str(refused.value)  # which file
        assert not [r for r in upstream.requests if r.method == "POST"]
        assert {r["action"] for r in findings(proxy, 4)} == {"blocked"}
        calls = proxy.new_calls(1)
        assert calls[0]["error"].startswith("devmeter: refused")
    finally:
        assert_no_secret_leaked(proxy)


def test_redact_forwards_a_body_without_the_secrets(tmp_path: Path, upstream: FakeUpstream) -> None:
    proxy = run_proxy(tmp_path, upstream, "redact")
    upstream.clear()
    try:
        assert send_env_read(proxy).content
        seen = upstream.requests[-1].body.decode()
        for secret in PLANTED.values():
            assert secret not in seen
        assert "[REDACTED by devmeter: stripe-key]" in seen
        assert "DEBUG=false" in seen  # the rest of the file still reaches the model
        assert {r["action"] for r in findings(proxy, 4)} == {"redacted"}
    finally:
        assert_no_secret_leaked(proxy)


def test_codex_websocket_turns_per_rule_block_and_redact(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """On Codex's socket: a turn holding a private key is refused (per-kind "block"), a
    turn holding a Stripe key goes through redacted (mode "redact"); the socket stays up."""

    from tests.test_secrets_inspect import codex_ws_turn

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[secrets]\nmode = "redact"\n[secrets.modes]\n"private-key" = "block"\n'
    )
    proxy = start_proxy(home, upstream.url)
    upstream.clear()
    pem_turn = codex_ws_turn()
    stripe_turn = codex_ws_turn()
    stripe_turn["input"][-1]["output"] = "STRIPE_KEY=" + PLANTED["stripe-key"] + "\n"
    events: list[dict[str, Any]] = []
    try:
        with proxy.responses_socket("codex-ws", timeout=WS_TIMEOUT) as socket:
            for turn in (pem_turn, stripe_turn):
                socket.send(json.dumps(turn))
                while True:
                    event = json.loads(socket.recv(timeout=WS_TIMEOUT))
                    if event["type"] in ("response.completed", "error"):
                        events.append(event)
                        break
        assert events[0]["type"] == "error"
        assert "devmeter: refused: the request holds a secret, private-key" in json.dumps(events[0])
        assert events[1]["type"] == "response.completed"
        sent = [r.body.decode() for r in upstream.find() if r.method == "WS"]
        assert len(sent) == 1  # the refused turn never reached the provider
        assert "[REDACTED by devmeter: stripe-key]" in sent[0]
        assert PLANTED["stripe-key"] not in sent[0] and "PRIVATE KEY" not in sent[0]
        rows = findings(proxy, 2)
        assert [(r["kind"], r["action"], r["tool"]) for r in rows] == [
            ("private-key", "blocked", rows[0]["tool"]),
            ("stripe-key", "redacted", rows[0]["tool"]),
        ]
        assert rows[0]["location"] == "tool result (deploy/id_ed25519)"
    finally:
        assert_no_secret_leaked(proxy)


def test_a_config_reload_turns_blocking_on_without_a_restart(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """Started with inspection off, the proxy blocks once `mode = "block"` is saved."""
    from tests.test_proxy_config_reload import edit, wait_for

    proxy = run_proxy(tmp_path, upstream, "off")
    try:
        send_env_read(proxy)  # off: through, and nothing recorded
        edit(proxy.home / "config.toml", '[secrets]\nmode = "block"\n')

        def refused() -> bool:
            try:
                send_env_read(proxy)
            except anthropic.APIStatusError as exc:
                return "devmeter: refused" in str(exc)
            return False

        wait_for(refused, "mode = block never took effect")
        assert {r["action"] for r in findings(proxy, 4)} == {"blocked"}
    finally:
        assert_no_secret_leaked(proxy)


def test_gemini_service_account_is_redacted_in_both_gemini_hosts(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """Gemini's API and Gemini CLI's cloudcode envelope: the service-account key and its
    private key are replaced before the request leaves; the rest of the JSON stays."""
    import httpx2

    from tests.test_secrets_inspect import gemini_request

    proxy = run_proxy(tmp_path, upstream, "redact")
    upstream.clear()
    try:
        trust = ssl.create_default_context(cafile=str(proxy.bundle))
        with httpx2.Client(proxy=proxy.url, verify=trust, timeout=30) as http:
            r = http.post(
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:"
                "generateContent",
                json=gemini_request(), headers={"x-goog-api-key": "test"},
            )  # fmt: skip
            assert r.status_code == 200
            r = http.post(
                "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse",
                json={"model": "gemini-2.5-pro", "project": "p", "request": gemini_request()},
            )
            assert r.status_code == 200
        sent = [r.body.decode() for r in upstream.requests if r.method == "POST"]
        assert len(sent) == 2
        for body in sent:
            assert PLANTED["gcp-service-account"] not in body
            assert "[REDACTED by devmeter: gcp-service-account]" in body
            assert "[REDACTED by devmeter: private-key]" in body
            assert "deployer@acme-prod-4471.iam.gserviceaccount.com" in body
        # Once per fingerprint: the second request's same key is not reported again.
        assert sorted(r["kind"] for r in findings(proxy, 2)) == [
            "gcp-service-account", "private-key",
        ]  # fmt: skip
    finally:
        assert_no_secret_leaked(proxy)


def test_secret_alerts_are_pushed_with_the_masked_preview_only(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """[notify] targets get one `secret` alert per finding: the preview, never the value."""
    from tests.test_push import Receiver

    receiver = Receiver()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[secrets]\nmode = "warn"\n'
        f'[notify.webhook]\nurl = "{receiver.url}/hook"\n'
        f'[notify.ntfy]\nserver = "{receiver.url}"\ntopic = "dm"\n'
    )
    proxy = start_proxy(home, upstream.url)
    try:
        send_env_read(proxy)
        receiver.wait(8, timeout=20)  # 4 findings, 2 targets
        hooks = [json.loads(b) for path, _, b in receiver.posts if path == "/hook"]
        assert sorted(h["kind"] for h in hooks) == ["secret"] * 4
        stripe = PLANTED["stripe-key"]
        assert any(f"{stripe[:4]}…{stripe[-4:]}" in h["message"] for h in hooks)
        for _, _, body in receiver.posts:
            for kind, secret in PLANTED.items():
                assert secret.encode() not in body, f"{kind} pushed"
    finally:
        receiver.server.shutdown()
        assert_no_secret_leaked(proxy)


def test_realtime_events_are_inspected_redacted_and_refused_on_the_socket(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """An OpenAI Realtime socket: a user message holding an AWS key goes on redacted, a
    function_call_output holding a private key is refused with an `error` event (per-kind
    "block"), and the socket carries on to a response."""
    from tests.secrets_corpus import CONTEXT
    from tests.test_proxy_other_paid import realtime_socket

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[secrets]\nmode = "redact"\n[secrets.modes]\n"private-key" = "block"\n'
    )
    proxy = start_proxy(home, upstream.url)
    upstream.clear()
    text = "deploy with\n" + CONTEXT["aws-access-key"]
    say = {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
           "content": [{"type": "input_text", "text": text}]}}  # fmt: skip
    key = {"type": "conversation.item.create", "item": {"type": "function_call_output",
           "call_id": "call_1", "output": CONTEXT["private-key"]}}  # fmt: skip
    try:
        with realtime_socket(proxy, "voice-secrets") as socket:
            socket.send(
                json.dumps({"type": "session.update", "session": {"instructions": "Be brief."}})
            )
            socket.send(json.dumps(say))
            socket.send(json.dumps(key))
            while (refusal := json.loads(socket.recv(timeout=WS_TIMEOUT)))[
                "type"
            ] == "session.created":
                pass
            assert refusal["type"] == "error"
            assert "devmeter: refused: the request holds a secret, private-key" in json.dumps(
                refusal
            )
            socket.send(json.dumps({"type": "response.create"}))
            while (event := json.loads(socket.recv(timeout=WS_TIMEOUT)))["type"] != "response.done":
                assert event["type"] != "error", event
        sent = [r.body.decode() for r in upstream.find() if r.method == "WS"]
        assert len(sent) == 3  # session.update, the redacted message, response.create
        assert PLANTED["aws-access-key"] not in sent[1]
        assert "[REDACTED by devmeter: aws-access-key]" in sent[1] and "eu-west-1" in sent[1]
        assert not any("PRIVATE KEY" in body for body in sent)
        rows = findings(proxy, 2)
        assert [(r["kind"], r["action"], r["location"], r["session"]) for r in rows] == [
            ("aws-access-key", "redacted", "message", "voice-secrets"),
            ("private-key", "blocked", "tool result", "voice-secrets"),
        ]
    finally:
        assert_no_secret_leaked(proxy)
