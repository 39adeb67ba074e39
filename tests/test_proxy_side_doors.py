"""No side doors to a cap, through a real proxy: every spelling of a paid path is metered
before the cap and refused after it, every other paid path is refused too, and only the
free list passes. Requests are sent with http.client, which sends a path byte for byte
(httpx would resolve `..` itself)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

USAGE = {
    "input_tokens": 1200, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 345, "reasoning_tokens": 0,
}  # fmt: skip
VARIANTS = [
    "//v1/messages",
    "/v1//messages",
    "/v1/%6Dessages",
    "/V1/MESSAGES",
    "/v1/messages;x",
    "/v1/messages/",
    "/v1/x/../messages",
    "/v1/./messages?beta=true",
]
# ~$0.0117 a call: the cap falls after the variants and one more call.
CONFIG = """
[budgets.day]
notify_usd = []
block_usd = 0.1
"""
# devmeter's refusals, in the status each client shows best: 402 for Anthropic's APIs,
# 403 for OpenAI's and Gemini's (see the README's guard rails).
REFUSED = {402, 403}
BODY = json.dumps(
    {"model": "claude-opus-5-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
).encode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


@pytest.fixture()
def proxy(upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningProxy]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(CONFIG)
    running = start_proxy(home, upstream.url)
    yield running
    running.stop()


def send(
    proxy: RunningProxy,
    host: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    conn = http.client.HTTPSConnection(proxy.host, proxy.port, context=context, timeout=15)
    conn.set_tunnel(host, 443)
    try:
        all_headers = {"content-type": "application/json", "x-api-key": "sk-ant-test"}
        conn.request(method, path, body=body or None, headers=all_headers | (headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_every_spelling_is_metered_before_the_cap_and_refused_after_it(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.clear()
    for path in VARIANTS:
        status, _ = send(proxy, "api.anthropic.com", "POST", path, BODY)
        assert status == 200, path
    rows = proxy.new_calls(len(VARIANTS))
    assert [r["endpoint"] for r in rows] == ["anthropic.messages"] * len(VARIANTS)
    assert all(r["cost_usd"] and r["cost_usd"] > 0 for r in rows)
    # Forwarded as sent: the upstream saw each spelling, not devmeter's canonical form.
    assert [r.path for r in upstream.find("anthropic.messages")] == VARIANTS

    status, _ = send(proxy, "api.anthropic.com", "POST", "/v1/messages", BODY)  # crosses $0.10
    assert status == 200
    proxy.new_calls(1)
    sent = len(upstream.requests)
    for path in ["/v1/messages", *VARIANTS]:
        status, body = send(proxy, "api.anthropic.com", "POST", path, BODY)
        assert status in REFUSED, path
        assert json.loads(body)["error"]["message"].startswith("devmeter:")
    assert len(upstream.requests) == sent  # none of them reached the provider
    refused = proxy.new_calls(len(VARIANTS) + 1)
    assert {r["status"] for r in refused} <= REFUSED and all(r["cost_usd"] == 0 for r in refused)
    assert all(r["error"].startswith("devmeter:") for r in refused)


# Realtime is not here: its handshake is let through like Codex's, and each event on the
# socket is refused (tests/test_proxy_other_paid.py). The Gemini Live socket is.
PAID = [
    ("api.anthropic.com", "POST", "/v1/messages/batches", {}),
    ("api.anthropic.com", "POST", "/v1/complete", {}),
    ("api.anthropic.com", "POST", "/v1/some-future-api", {}),
    ("api.openai.com", "POST", "/v1/completions", {}),
    ("api.openai.com", "POST", "/v1/images/generations", {}),
    ("api.openai.com", "POST", "/v1/audio/speech", {}),
    ("api.openai.com", "POST", "/v1/batches", {}),
    ("api.openai.com", "POST", "/v1/embeddings", {}),
    ("generativelanguage.googleapis.com", "POST", "/v1beta/models/imagen-4:predict", {}),
    ("generativelanguage.googleapis.com", "POST",
     "/v1beta/models/gemini-embedding-001:embedContent", {}),
    ("generativelanguage.googleapis.com", "GET",
     "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
     {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}),
]  # fmt: skip
FREE = [
    ("api.anthropic.com", "GET", "/v1/models"),
    ("api.anthropic.com", "POST", "/v1/messages/count_tokens"),
    ("api.anthropic.com", "GET", "/v1/messages/batches/msgbatch_1"),
    ("api.anthropic.com", "GET", "/api/claude_code/settings"),
    ("api.openai.com", "GET", "/v1/models"),
    ("api.openai.com", "GET", "/v1/files/file-1/content"),
    ("generativelanguage.googleapis.com", "GET", "/v1beta/models"),
]


def test_when_paused_only_the_free_list_passes(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    from devmeter import control
    from devmeter.paths import paths

    control.update(control.control_path(paths(proxy.env()).data_dir), paused=True)
    status, _ = send(proxy, "api.anthropic.com", "POST", "/v1/messages", BODY)
    deadline = 20
    while status not in REFUSED and deadline:  # the proxy reads control.json twice a second
        deadline -= 1
        status, _ = send(proxy, "api.anthropic.com", "POST", "/v1/messages", BODY)
    assert status in REFUSED
    proxy.skip_existing()
    upstream.clear()
    for host, method, path, headers in PAID:
        status, body = send(proxy, host, method, path, BODY if method == "POST" else b"", headers)
        assert status in REFUSED, (host, path)
        assert b"devmeter: metered traffic is paused" in body, (host, path)
    assert upstream.requests == []
    rows = proxy.new_calls(len(PAID))
    assert {r["status"] for r in rows} <= REFUSED
    for host, method, path in FREE:
        status, body = send(proxy, host, method, path, BODY if method == "POST" else b"")
        assert status not in REFUSED and b"devmeter:" not in body, (host, path)
    assert len(upstream.requests) == len(FREE)
