"""The real anthropic and openai SDKs through a real devmeter proxy to a fake upstream.

Every expected cost is worked out by hand from the provider's published list price
(USD per million tokens), so a wrong parser, a wrong cache split or a wrong price
lookup fails here to the micro-dollar.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import anthropic
import brotli
import httpx2
import openai
import pytest
import zstandard

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy

pytestmark = pytest.mark.proxy

M = Decimal(1_000_000)
USAGE = {
    "input_tokens": 1200,
    "cache_read_tokens": 3000,
    "cache_write_5m_tokens": 300,
    "cache_write_1h_tokens": 200,
    "output_tokens": 345,
    "reasoning_tokens": 120,
    "web_search_requests": 0,
}
# Claude Opus 5.5 list prices: input 4, output 20, cache read 0.20, 5m write 5, 1h write 8.
OPUS_55_COST = (1200 * 4 + 3000 * Decimal("0.2") + 300 * 5 + 200 * 8 + 345 * 20) / M


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.reset()
    upstream.defaults.update(usage=dict(USAGE))
    proxy.skip_existing()


def trust(proxy: RunningProxy) -> ssl.SSLContext:
    """What `devmeter env` gives a Python client: the system roots plus devmeter's CA."""
    return ssl.create_default_context(cafile=str(proxy.bundle))


def anthropic_client(proxy: RunningProxy, **kw: object) -> anthropic.Anthropic:
    http = anthropic.DefaultHttpxClient(proxy=proxy.url, verify=trust(proxy))
    return anthropic.Anthropic(api_key="sk-ant-test", http_client=http, **kw)  # type: ignore[arg-type]


def openai_client(proxy: RunningProxy, **kw: object) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(proxy=proxy.url, verify=trust(proxy))
    return openai.OpenAI(api_key="sk-test", http_client=http, **kw)  # type: ignore[arg-type]


def raw_client(proxy: RunningProxy) -> httpx2.Client:
    return httpx2.Client(proxy=proxy.url, verify=trust(proxy), timeout=30)


HELLO = [{"role": "user", "content": "hi"}]


# -- Anthropic ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_exact_tokens_and_cost(proxy: RunningProxy, stream: bool) -> None:
    client = anthropic_client(proxy)
    if stream:
        with client.messages.stream(model="claude-opus-5-5", max_tokens=64, messages=HELLO) as s:
            reply = s.get_final_message()
    else:
        reply = client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=HELLO)
    assert reply.usage.output_tokens == 345  # the client got the upstream's answer

    (row,) = proxy.new_calls(1)
    assert row["tool"] == "anthropic-sdk-python"
    assert row["endpoint"] == "anthropic.messages"
    assert (row["requested_model"], row["model"]) == ("claude-opus-5-5", "claude-opus-5-5")
    assert row["input_tokens"] == 1200
    assert row["cache_read_tokens"] == 3000
    assert row["cache_write_tokens"] == 500
    assert row["cache_write_1h_tokens"] == 200
    assert row["output_tokens"] == 345
    assert row["cost_usd"] == OPUS_55_COST == Decimal("0.0154")
    assert row["estimated"] == 0 and row["status"] == 200 and row["complete"] == 1


def test_anthropic_web_search_and_count_tokens(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    upstream.set_next(usage={"web_search_requests": 3})
    client = anthropic_client(proxy)
    client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=HELLO)
    client.messages.count_tokens(model="claude-opus-5-5", messages=HELLO)
    search, count = proxy.new_calls(2)
    assert search["web_search_requests"] == 3
    assert search["cost_usd"] == OPUS_55_COST + 3 * Decimal(10) / 1000  # $10 per 1k searches
    assert count["endpoint"] == "anthropic.count_tokens"
    assert count["cost_usd"] == 0


# -- OpenAI ------------------------------------------------------------------------------

# gpt-5 list prices: input 1.25, cached input 0.125, output 10.
GPT5_COST = (1200 * Decimal("1.25") + 3000 * Decimal("0.125") + 345 * 10) / M
OPENAI_USAGE = {**USAGE, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0}


def test_openai_chat_streaming_with_include_usage(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.defaults.update(usage=OPENAI_USAGE)
    stream = openai_client(proxy).chat.completions.create(
        model="gpt-5", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 345
    (row,) = proxy.new_calls(1)
    assert row["tool"] == "openai-sdk-python"
    assert row["endpoint"] == "openai.chat"
    assert row["input_tokens"] == 1200  # prompt_tokens minus cached_tokens
    assert row["cache_read_tokens"] == 3000
    assert row["output_tokens"] == 345 and row["reasoning_tokens"] == 120
    assert row["cost_usd"] == GPT5_COST
    assert row["estimated"] == 0


def test_openai_chat_stream_without_usage_is_estimated(proxy: RunningProxy) -> None:
    text = "".join(
        c.choices[0].delta.content or ""
        for c in openai_client(proxy).chat.completions.create(
            model="gpt-5", messages=HELLO, stream=True
        )
        if c.choices
    )
    assert text
    (row,) = proxy.new_calls(1)
    assert row["estimated"] == 1
    assert row["output_tokens"] > 0 and row["input_tokens"] > 0
    expected = (row["input_tokens"] * Decimal("1.25") + row["output_tokens"] * 10) / M
    assert row["cost_usd"] == expected


@pytest.mark.parametrize("stream", [False, True])
def test_openai_responses(proxy: RunningProxy, upstream: FakeUpstream, stream: bool) -> None:
    upstream.defaults.update(usage=OPENAI_USAGE)
    client = openai_client(proxy)
    if stream:
        events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
        assert events[-1].type == "response.completed"
    else:
        assert client.responses.create(model="gpt-5", input="hi").usage.output_tokens == 345
    (row,) = proxy.new_calls(1)
    assert row["endpoint"] == "openai.responses"
    assert (row["input_tokens"], row["cache_read_tokens"]) == (1200, 3000)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (345, 120)
    assert row["cost_usd"] == GPT5_COST


def test_openai_embeddings(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    openai_client(proxy).embeddings.create(model="text-embedding-3-small", input="hello world")
    (row,) = proxy.new_calls(1)
    assert row["endpoint"] == "openai.embeddings"
    assert row["output_tokens"] == 0
    # text-embedding-3-small: $0.02 per million tokens.
    assert row["cost_usd"] == row["input_tokens"] * Decimal("0.02") / M
    assert row["input_tokens"] > 0


# -- Gemini and OpenAI-compatible hosts (plain HTTPS clients) -------------------------------


def test_gemini_stream_and_cloudcode_envelope(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    upstream.defaults.update(usage=OPENAI_USAGE)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with raw_client(proxy) as http:
        r = http.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:"
            "streamGenerateContent?alt=sse",
            json=body,
            headers={"x-goog-api-key": "test"},
        )
        assert r.status_code == 200 and "usageMetadata" in r.text
        r = http.post(
            "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse",
            json={"model": "gemini-2.5-pro", "project": "p", "request": body},
        )
        assert r.status_code == 200
    direct, cloudcode = proxy.new_calls(2)
    for row in (direct, cloudcode):
        assert row["provider"] == "google" and row["model"] == "gemini-2.5-pro"
        assert (row["input_tokens"], row["cache_read_tokens"]) == (1200, 3000)
        assert row["output_tokens"] == 345  # candidates + thoughts
        # gemini-2.5-pro up to 200k: input 1.25, cached 0.125 (genai-prices), output 10.
        assert row["cost_usd"] == GPT5_COST
    assert cloudcode["host"] == "cloudcode-pa.googleapis.com"


def test_openrouter_reported_cost_and_deepseek_cache(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.defaults.update(usage={**OPENAI_USAGE, "cost": 0.004321})
    chat = {"messages": HELLO}
    with raw_client(proxy) as http:
        r = http.post(
            "https://openrouter.ai/api/v1/chat/completions",
            json={**chat, "model": "anthropic/claude-opus-4.5"},
        )
        assert r.status_code == 200
        r = http.post(
            "https://api.deepseek.com/chat/completions", json={**chat, "model": "deepseek-chat"}
        )
        assert r.status_code == 200
    router, deepseek = proxy.new_calls(2)
    assert router["provider"] == "openrouter"
    assert router["cost_usd"] == Decimal("0.004321")
    assert deepseek["provider"] == "deepseek"
    assert (deepseek["input_tokens"], deepseek["cache_read_tokens"]) == (1200, 3000)
    assert deepseek["cost_usd"] is not None and deepseek["cost_usd"] > 0


# -- Streaming is not buffered --------------------------------------------------------------


def test_stream_events_reach_the_client_as_they_are_sent(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.set_next(delay_ms=200)
    client = anthropic_client(proxy)
    arrivals: list[float] = []
    with client.messages.stream(model="claude-opus-5-5", max_tokens=64, messages=HELLO) as s:
        for _event in s:
            arrivals.append(time.monotonic())
    request = upstream.find("anthropic.messages")[-1]
    sent = [e.time for e in upstream.events_of(request)]
    assert len(sent) >= 5
    # The first event arrived long before the upstream even sent the last one.
    assert arrivals[0] < sent[-1] - 0.5
    # And it arrived promptly after it was sent (no buffering in the proxy).
    assert arrivals[0] - sent[0] < 0.15
    (row,) = proxy.new_calls(1)
    assert row["cost_usd"] == OPUS_55_COST


# -- Compressed bodies ------------------------------------------------------------------------


DECOMPRESS = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


@pytest.mark.parametrize("encoding", sorted(DECOMPRESS))
@pytest.mark.parametrize("stream", [False, True])
def test_compressed_bodies_are_metered_and_forwarded_unchanged(
    proxy: RunningProxy, upstream: FakeUpstream, encoding: str, stream: bool
) -> None:
    upstream.set_next(encoding=encoding, chunking="random")
    body = {"model": "claude-opus-5-5", "max_tokens": 64, "messages": HELLO, "stream": stream}
    with (
        raw_client(proxy) as http,
        http.stream(
            "POST",
            "https://api.anthropic.com/v1/messages",
            json=body,
            headers={"anthropic-version": "2023-06-01", "accept-encoding": encoding},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-encoding"] == encoding  # forwarded as the upstream sent it
        raw = b"".join(r.iter_raw())
    assert b"claude-opus-5-5" in DECOMPRESS[encoding](raw)  # still the upstream's bytes
    (row,) = proxy.new_calls(1)
    assert row["cost_usd"] == OPUS_55_COST and row["error"] is None


# -- Bad input: answered, nothing lost --------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 529])
def test_upstream_errors_are_recorded_at_zero(
    proxy: RunningProxy, upstream: FakeUpstream, status: int
) -> None:
    upstream.set_next(status=status)
    client = anthropic_client(proxy, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=HELLO)
    assert caught.value.status_code == status
    (row,) = proxy.new_calls(1)
    assert row["status"] == status
    assert row["cost_usd"] == 0 and row["output_tokens"] == 0


def test_malformed_request_json_is_forwarded_and_recorded(proxy: RunningProxy) -> None:
    with raw_client(proxy) as http:
        r = http.post(
            "https://api.anthropic.com/v1/messages",
            content=b'{"model": "claude-opus-5-5", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert r.status_code >= 400  # the upstream's answer, not the proxy's
    (row,) = proxy.new_calls(1)
    assert row["status"] == r.status_code
    assert row["cost_usd"] == 0, str({k: v for k, v in row.items() if v})


def test_malformed_response_json_does_not_break_the_client(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.set_next(malformed="json")
    with raw_client(proxy) as http:
        r = http.post(
            "https://api.anthropic.com/v1/messages",
            json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": HELLO},
        )
    assert r.status_code == 200
    (row,) = proxy.new_calls(1)
    assert row["error"]  # recorded as unreadable, not dropped
    assert row["status"] == 200


def test_stream_cut_mid_event_keeps_what_was_billed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.set_next(cut_after=8)
    client = anthropic_client(proxy, max_retries=0)
    stream = client.messages.stream(model="claude-opus-5-5", max_tokens=64, messages=HELLO)
    with pytest.raises((anthropic.APIError, httpx2.HTTPError)), stream as events:
        for _ in events:
            pass
    (row,) = proxy.new_calls(1)
    assert row["complete"] == 0
    # message_start reported the input; the output the client saw is estimated.
    assert row["input_tokens"] == 1200 and row["cache_read_tokens"] == 3000
    assert row["estimated"] == 1
    assert row["output_tokens"] > 0


def test_ten_megabyte_request(proxy: RunningProxy) -> None:
    big = "x" * (10 * 1024 * 1024)
    reply = anthropic_client(proxy).messages.create(
        model="claude-opus-5-5", max_tokens=64, messages=[{"role": "user", "content": big}]
    )
    assert reply.usage.output_tokens == 345
    (row,) = proxy.new_calls(1)
    assert row["cost_usd"] == OPUS_55_COST


def test_unknown_model_recorded_with_tokens_and_null_cost(proxy: RunningProxy) -> None:
    anthropic_client(proxy).messages.create(model="claude-nonesuch-9", max_tokens=8, messages=HELLO)
    (row,) = proxy.new_calls(1)
    assert row["model"] == "claude-nonesuch-9"
    assert row["output_tokens"] == 345
    assert row["cost_usd"] is None and row["price_source"] is None


def test_other_hosts_are_tunnelled_not_intercepted(proxy: RunningProxy, tmp_path: Path) -> None:
    """A host devmeter does not meter is tunnelled: the client sees the server's own cert."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=bank.example", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert raw.recv(1024).startswith(b"HTTP/1.1 200")
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        with client_ctx.wrap_socket(raw) as tls:
            seen = tls.getpeercert(binary_form=True)
            tls.sendall(b"hello")
    thread.join(5)
    listener.close()
    assert seen == ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert proxy.rows("id > ?", (proxy._seen_id,)) == []


def test_ca_private_key_is_readable_by_the_user_only(proxy: RunningProxy) -> None:
    key = proxy.home / "ca" / "mitmproxy-ca.pem"
    assert key.exists()
    assert key.stat().st_mode & 0o077 == 0
    assert (proxy.home / "ca").stat().st_mode & 0o077 == 0
    bundle = proxy.bundle.read_text()
    assert proxy.ca_cert.read_text().strip() in bundle
    assert bundle.count("BEGIN CERTIFICATE") > 10  # the system roots are still there


def test_ledger_has_no_api_keys_or_prompt_text(proxy: RunningProxy) -> None:
    secret = "sk-ant-api03-SECRET-KEY"
    prompt = "the launch codes are 0000"
    http = anthropic.DefaultHttpxClient(proxy=proxy.url, verify=trust(proxy))
    anthropic.Anthropic(api_key=secret, http_client=http).messages.create(
        model="claude-opus-5-5", max_tokens=8, messages=[{"role": "user", "content": prompt}]
    )
    proxy.new_calls(1)
    for path in proxy.home.rglob("*"):
        if path.is_file() and path.suffix != ".log":
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert prompt.encode() not in data, path


# -- CLI around the proxy ---------------------------------------------------------------------


def test_broken_config_stops_the_proxy_with_file_and_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[proxy]\nlisten = "0.0.0.0:8788"\n')
    result = subprocess.run(
        [sys.executable, "-m", "devmeter", "proxy"],
        env={"DEVMETER_HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{home / 'config.toml'}, line 2 [proxy.listen]" in result.stderr
    assert "loopback" in result.stderr


def test_report_over_the_proxy_ledger(proxy: RunningProxy) -> None:
    anthropic_client(proxy).messages.create(model="claude-opus-5-5", max_tokens=8, messages=HELLO)
    proxy.new_calls(1)
    result = subprocess.run(
        [sys.executable, "-m", "devmeter", "report", "--by", "request", "--json"],
        env=proxy.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = json.loads(result.stdout)
    assert rows[-1]["cost_usd"] == float(OPUS_55_COST)
    assert rows[-1]["tool"] == "anthropic-sdk-python"


def test_gzip_request_body_is_read(proxy: RunningProxy) -> None:
    body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8, "messages": HELLO}).encode()
    with raw_client(proxy) as http:
        r = http.post(
            "https://api.anthropic.com/v1/messages",
            content=gzip.compress(body),
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )
    (row,) = proxy.new_calls(1)
    assert row["requested_model"] == "claude-opus-5-5"
    assert row["status"] == r.status_code
