"""The fake upstream speaks each provider's wire format well enough for the real SDKs."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import anthropic
import brotli
import openai
import pytest
import zstandard
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from tests.fake_upstream import DEFAULT_TEXT, FakeUpstream
from tests.fake_upstream.process import FakeUpstreamProcess
from tests.fake_upstream.pytest_plugin import fake_upstream  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def up(server: FakeUpstream) -> FakeUpstream:
    server.reset()
    return server


def claude(up: FakeUpstream, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=up.url, api_key="sk-ant-test", max_retries=0, **kwargs)


def gpt(up: FakeUpstream, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.url + "/v1", api_key="sk-test", max_retries=0, **kwargs)


def post(
    up: FakeUpstream,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
    host: str | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    all_headers = {"content-type": "application/json", **(headers or {})}
    if host:
        all_headers["Host"] = host
    with connection(up) as conn:
        conn.request("POST", path, json.dumps(body), all_headers)
        response = conn.getresponse()
        return response, response.read()


def connection(up: FakeUpstream) -> contextlib.closing[http.client.HTTPConnection]:
    return contextlib.closing(http.client.HTTPConnection("127.0.0.1", up.port, timeout=10))


def sse_data(raw: bytes) -> list[Any]:
    """JSON payloads of an SSE body (either line ending), `[DONE]` kept as a string."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if lines:
            payload = b"\n".join(lines).decode()  # data lines of one event join with \n
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


MESSAGES = [{"role": "user", "content": "say hi"}]


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_sdk_plain(up: FakeUpstream) -> None:
    message = claude(up).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES
    )
    assert message.model == "claude-sonnet-4-6"
    assert message.content[0].text == DEFAULT_TEXT  # type: ignore[union-attr]
    usage = message.usage
    assert (
        usage.input_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
        usage.output_tokens,
    ) == (1200, 3000, 500, 345)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 300
    assert usage.cache_creation.ephemeral_1h_input_tokens == 200

    [request] = up.requests
    assert (request.method, request.path, request.endpoint) == (
        "POST",
        "/v1/messages",
        "anthropic.messages",
    )
    assert request.model == "claude-sonnet-4-6"
    # anthropic SDK 2.x sends a bearer token; 0.x and Claude Code send x-api-key
    assert "sk-ant-test" in request.headers.get("authorization", request.headers.get("x-api-key"))
    assert request.json["messages"] == MESSAGES


def test_anthropic_sdk_stream_with_scripted_usage(up: FakeUpstream) -> None:
    up.set_next(usage={"input_tokens": 7, "output_tokens": 9, "web_search_requests": 2})
    with claude(up).messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_TEXT
    assert final.model == "claude-haiku-4-5"
    assert final.usage.input_tokens == 7
    assert final.usage.output_tokens == 9
    assert final.usage.cache_read_input_tokens == 3000
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_search_requests == 2
    names = [e.name for e in up.sent_events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]


def test_anthropic_beta_path_tool_use_and_count_tokens(up: FakeUpstream) -> None:
    client = claude(up)
    up.set_next(tool_use={"name": "Bash", "input": {"command": "ls -la"}})
    with client.beta.messages.stream(
        model="claude-opus-4-5", max_tokens=100, messages=MESSAGES
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = final.content[-1]
    assert tool.type == "tool_use" and tool.input == {"command": "ls -la"}
    response, raw = post(up, "/v1/messages?beta=true", {"model": "claude-opus-4-5"})
    assert json.loads(raw)["type"] == "message"
    assert (up.requests[-1].route, up.requests[-1].query) == ("/v1/messages", {"beta": ["true"]})

    count = client.messages.count_tokens(model="claude-opus-4-5", messages=MESSAGES)
    assert count.input_tokens == 1200 + 3000 + 500


def test_claude_code_side_calls_are_answered_quietly(up: FakeUpstream) -> None:
    with connection(up) as conn:
        for path, status in [
            ("/api/claude_code/policy_limits", 200),
            ("/api/claude_code/settings", 404),
            ("/api/claude_cli/bootstrap?entrypoint=sdk-cli", 200),
            ("/api/claude_code/organizations/metrics_enabled", 200),
        ]:
            conn.request("GET", path)
            response = conn.getresponse()
            json.loads(response.read())
            assert response.status == status, path
        assert {r.endpoint for r in up.requests} == {"aux.anthropic"}


# --------------------------------------------------------------------------- OpenAI


def test_openai_chat_plain_and_stream(up: FakeUpstream) -> None:
    client = gpt(up)
    completion = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.model == "gpt-4.1"
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4200
    assert completion.usage.prompt_tokens_details.cached_tokens == 3000  # type: ignore[union-attr]
    assert completion.usage.completion_tokens_details.reasoning_tokens == 120  # type: ignore[union-attr]

    chunks = list(
        client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 345

    chunks = list(
        client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
    )
    assert all(c.usage is None for c in chunks)
    assert up.sent_events[-1].name == "done"


def test_openai_embeddings_base64_default(up: FakeUpstream) -> None:
    result = gpt(up).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [len(item.embedding) for item in result.data] == [1536, 1536]
    assert result.usage.prompt_tokens == 1200
    assert up.requests[-1].json["encoding_format"] == "base64"


def test_openai_responses_plain_and_stream(up: FakeUpstream) -> None:
    client = gpt(up)
    response = client.responses.create(model="gpt-5", input="say hi")
    assert response.output_text == DEFAULT_TEXT
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 3000
    assert response.usage.output_tokens_details.reasoning_tokens == 120

    up.set_next(usage={"output_tokens": 50, "reasoning_tokens": 0})
    with client.responses.stream(model="gpt-5", input="say hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_TEXT
    assert final.usage is not None and final.usage.output_tokens == 50
    names = [e.name for e in up.events_of(up.requests[-1])]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert names[-1] == "response.completed"

    # Codex signed in with ChatGPT posts to chatgpt.com/backend-api/codex/responses
    _, raw = post(up, "/backend-api/codex/responses", {"model": "gpt-5-codex"}, host="chatgpt.com")
    assert json.loads(raw)["usage"]["total_tokens"] == 4545
    assert up.requests[-1].endpoint == "openai.responses"


def test_responses_websocket_prewarm_then_turn(up: FakeUpstream) -> None:
    url = up.url.replace("http", "ws") + "/v1/responses"
    with connect(url, additional_headers={"Host": "api.openai.com", "x-fake-delay-ms": "1"}) as ws:
        ws.send(
            json.dumps(
                {"type": "response.create", "model": "gpt-5-codex", "input": [], "generate": False}
            )
        )
        prewarm = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        assert [m["type"] for m in prewarm] == ["response.created", "response.completed"]
        assert prewarm[1]["response"]["usage"]["output_tokens"] == 0

        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "model": "gpt-5-codex",
                    "input": [{"role": "user", "content": "hi"}],
                }
            )
        )
        turn = []
        while not turn or turn[-1]["type"] != "response.completed":
            turn.append(json.loads(ws.recv(timeout=5)))
    assert "response.output_text.delta" in {m["type"] for m in turn}
    assert turn[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 3000
    upgrade, *frames = up.requests
    assert (upgrade.endpoint, upgrade.status, upgrade.host) == (
        "openai.responses.websocket",
        101,
        "api.openai.com",
    )
    assert [f.json.get("generate") for f in frames] == [False, None]
    assert all(f.endpoint == "openai.responses.ws" and f.websocket_of == upgrade.id for f in frames)


def test_responses_websocket_faults(up: FakeUpstream) -> None:
    url = up.url.replace("http", "ws") + "/v1/responses"
    create = json.dumps({"type": "response.create", "model": "gpt-5-codex", "input": []})
    up.set_next(status=429)
    up.set_next(cut_after=2)
    with connect(url) as ws:
        ws.send(create)
        error = json.loads(ws.recv(timeout=5))
        assert (error["type"], error["status"]) == ("error", 429)
        ws.send(create)
        assert len([ws.recv(timeout=5) for _ in range(2)]) == 2
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=5)
    assert [e.name for e in up.sent_events][-1] == "cut"


def test_responses_websocket_can_be_refused(up: FakeUpstream) -> None:
    up.defaults["websocket"] = False
    with pytest.raises(InvalidStatus) as info:
        connect(up.url.replace("http", "ws") + "/v1/responses")
    assert info.value.response.status_code == 426


# --------------------------------------------------------------------------- others


def test_gemini_generate_stream_and_cloudcode_envelope(up: FakeUpstream) -> None:
    response, raw = post(up, "/v1beta/models/gemini-2.5-pro:generateContent", {"contents": []})
    body = json.loads(raw)
    assert body["modelVersion"] == "gemini-2.5-pro"
    assert body["usageMetadata"] == {
        "promptTokenCount": 4200,
        "candidatesTokenCount": 225,
        "totalTokenCount": 4545,
        "cachedContentTokenCount": 3000,
        "thoughtsTokenCount": 120,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4200}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 3000}],
    }

    _, raw = post(up, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": []})
    assert json.loads(raw)[-1]["candidates"][0]["finishReason"] == "STOP"  # a JSON array

    response, raw = post(
        up, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"contents": []}
    )
    assert b"\r\n\r\n" in raw
    chunks = sse_data(raw)
    assert (
        "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == DEFAULT_TEXT
    )
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 225
    assert up.requests[-1].model == "gemini-2.5-flash"

    _, raw = post(
        up,
        "/v1internal:streamGenerateContent?alt=sse",
        {"model": "gemini-2.5-pro", "request": {"contents": []}},
        host="cloudcode-pa.googleapis.com",
    )
    wrapped = sse_data(raw)
    assert all(set(c) == {"response", "traceId"} for c in wrapped)
    assert wrapped[-1]["response"]["usageMetadata"]["totalTokenCount"] == 4545


def test_openrouter_and_deepseek_usage(up: FakeUpstream) -> None:
    _, raw = post(
        up,
        "/api/v1/chat/completions",
        {"model": "anthropic/claude-sonnet-4.5", "messages": MESSAGES, "stream": True},
        host="openrouter.ai",
    )
    assert raw.startswith(b": OPENROUTER PROCESSING\n\n")
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["cost"] == 0.0123  # OpenRouter always sends usage

    _, raw = post(
        up,
        "/chat/completions",
        {"model": "deepseek-chat", "messages": MESSAGES},
        host="api.deepseek.com",
    )
    usage = json.loads(raw)["usage"]
    assert (usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]) == (3000, 1200)
    assert [r.endpoint for r in up.requests] == ["openrouter.chat", "deepseek.chat"]


# --------------------------------------------------------------------------- faults


def test_scripted_status_then_success_with_retry(up: FakeUpstream) -> None:
    up.set_next(status=429, retry_after=0.01)
    client = anthropic.Anthropic(base_url=up.url, api_key="k", max_retries=1)
    assert (
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES
        ).usage.output_tokens
        == 345
    )
    assert [r.status for r in up.requests] == [429, 200]

    with pytest.raises(openai.RateLimitError):
        gpt(up).chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-fake-status": "429"},
        )


def test_delay_spaces_events_and_they_arrive_unbuffered(up: FakeUpstream) -> None:
    up.defaults.update(delay_ms=40, text="Hi there, friend.")
    with connection(up) as conn:
        conn.request("POST", "/v1/messages", json.dumps({"model": "m", "stream": True}))
        response = conn.getresponse()
        first = response.read1()
        first_seen = time.monotonic()
        assert first.startswith(b"event: message_start")
        response.read()
        events = up.sent_events
        gaps = [b.time - a.time for a, b in zip(events, events[1:], strict=False)]
        assert min(gaps) >= 0.035
        assert first_seen < events[1].time  # the client had event 0 before event 1 was sent


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate"])
def test_stream_compression_is_flushed_per_event(up: FakeUpstream, encoding: str) -> None:
    decoders = {
        "gzip": lambda: zlib.decompressobj(wbits=31).decompress,
        "deflate": lambda: zlib.decompressobj().decompress,
        "br": lambda: brotli.Decompressor().process,
        "zstd": lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
    }
    decode = decoders[encoding]()
    with connection(up) as conn:
        conn.request(
            "POST",
            "/v1/messages",
            json.dumps({"model": "m", "stream": True}),
            {"x-fake-encoding": encoding, "x-fake-delay-ms": "30", "x-fake-text": "hi"},
        )
        response = conn.getresponse()
        assert response.headers["content-encoding"] == encoding
        assert decode(response.read1()).startswith(b"event: message_start")  # decodable at once
        rest = decode(response.read())
        assert sse_data(rest)[-1] == {"type": "message_stop"}


@pytest.mark.parametrize("chunking", ["bytes", "random"])
def test_chunking_keeps_the_body_intact(up: FakeUpstream, chunking: str) -> None:
    body = {"model": "gpt-4.1", "stream": True, "stream_options": {"include_usage": True}}
    _, raw = post(
        up, "/v1/chat/completions", body, {"x-fake-chunking": chunking, "x-fake-encoding": "gzip"}
    )
    events = sse_data(gzip.decompress(raw))
    assert events[-1] == "[DONE]" and events[-2]["usage"]["total_tokens"] == 4545


def test_cut_after_closes_mid_event(up: FakeUpstream) -> None:
    with connection(up) as conn:
        conn.request(
            "POST",
            "/v1/messages",
            json.dumps({"model": "m", "stream": True}),
            {"x-fake-cut-after": "3"},
        )
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as info:
            response.read()
        partial = info.value.partial
        assert partial.count(b"\n\n") == 3 and not partial.endswith(b"\n\n")
        assert [e.name for e in up.sent_events][-1] == "cut"


def test_malformed_json_and_sse(up: FakeUpstream) -> None:
    _, raw = post(up, "/v1/messages", {"model": "m"}, {"x-fake-malformed": "1"})
    with pytest.raises(ValueError):
        json.loads(raw)
    _, raw = post(up, "/v1/messages", {"model": "m", "stream": True}, {"x-fake-malformed": "sse"})
    assert b"\xff\xfe" in raw
    with pytest.raises(ValueError):
        sse_data(raw)


def test_bad_directive_is_a_400(up: FakeUpstream) -> None:
    response, raw = post(up, "/v1/messages", {"model": "m"}, {"x-fake-usage": '{"bogus": 1}'})
    assert response.status == 400 and b"bogus" in raw
    with pytest.raises(ValueError):
        up.set_next(no_such_directive=1)


# --------------------------------------------------------------------------- subprocess


def test_subprocess_with_control_api() -> None:
    with FakeUpstreamProcess("--no-websocket") as proc:
        proc.set_defaults(usage={"output_tokens": 11})
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="k", max_retries=0)
        response = client.responses.create(model="gpt-5", input="hi")
        assert response.usage is not None and response.usage.output_tokens == 11
        [request] = proc.requests()
        assert request["model"] == "gpt-5" and request["endpoint"] == "openai.responses"
        with pytest.raises(InvalidStatus):
            connect(proc.url.replace("http", "ws") + "/v1/responses")


def test_pytest_plugin_fixture(fake_upstream: FakeUpstream) -> None:  # noqa: F811
    fake_upstream.defaults["usage"] = {"output_tokens": 3}
    _, raw = post(fake_upstream, "/v1/messages", {"model": "claude-haiku-4-5"})
    assert json.loads(raw)["usage"]["output_tokens"] == 3
