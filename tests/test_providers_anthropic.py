"""Anthropic Messages: Claude Code's requests and the usage in its streams."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from devmeter.metering import conclude_usage
from devmeter.providers import (
    Endpoint,
    match_endpoint,
    new_response_parser,
    parse_request,
    request_uses_images,
)
from devmeter.usage import RequestInfo, ResponseResult, Usage

WIRE = Path(__file__).parent / "fixtures" / "wire"
MESSAGES = Endpoint("anthropic", "anthropic.messages")
SSE = "text/event-stream"


def parse(
    data: bytes, content_type: str = SSE, request: RequestInfo | None = None
) -> ResponseResult:
    parser = new_response_parser(MESSAGES, request or RequestInfo(), content_type)
    parser.feed(data)
    return parser.result()


def events(*objs: dict[str, Any]) -> bytes:
    return "".join(f"event: {o['type']}\ndata: {json.dumps(o)}\n\n" for o in objs).encode()


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-5-5",
        "content": [],
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": 1},
    },
}
STOP = {"type": "message_stop"}


class TestStream:
    def test_claude_code_stream(self) -> None:
        result = parse((WIRE / "anthropic_stream.sse").read_bytes())
        assert result == ResponseResult(
            usage=Usage(
                input_tokens=3,
                cache_read_tokens=12034,
                cache_write_tokens=5317,
                cache_write_1h_tokens=5317,
                output_tokens=187,
                reasoning_tokens=64,
                service_tier="standard",
            ),
            model="claude-opus-5-5",
            complete=True,
            # thinking + text + tool-input JSON, every character of output counted
            output_chars=len("The user wants the test suite run. I'll use Bash.")
            + len("Running the tests — one moment ✅ 日本語")
            + len('{"command": "uv run pytest -q", "description": "Run tests"}'),
            # message_start's id, which Claude Code's transcript names the response by
            response_id="msg_01Hq8XJ2yGQmTg7rY5cK3bWz",
        )

    def test_message_delta_is_cumulative_overwrite_not_add(self) -> None:
        data = events(
            START,
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 10}},
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 25}},
            STOP,
        )
        usage = parse(data).usage
        assert usage is not None
        assert usage.output_tokens == 25
        assert usage.input_tokens == 10  # message_start's counts stand when not repeated

    def test_message_delta_overwrites_input_and_cache_counts(self) -> None:
        result = parse((WIRE / "anthropic_web_search_stream.sse").read_bytes())
        assert result.usage == Usage(
            input_tokens=10682,  # message_start said 2105: search results were added
            output_tokens=510,
            web_search_requests=1,
            service_tier="priority",
        )
        assert result.model == "claude-sonnet-4-5-20250929"

    def test_null_counts_do_not_erase(self) -> None:
        delta = {"type": "message_delta", "usage": {"output_tokens": 5, "input_tokens": None}}
        usage = parse(events(START, delta, STOP)).usage
        assert usage is not None and usage.input_tokens == 10

    def test_cache_split_without_total(self) -> None:
        start = json.loads(json.dumps(START))
        start["message"]["usage"]["cache_creation"] = {
            "ephemeral_5m_input_tokens": 30,
            "ephemeral_1h_input_tokens": 70,
        }
        usage = parse(events(start, STOP)).usage
        assert usage is not None
        assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (100, 70)

    def test_no_message_stop_is_incomplete(self) -> None:
        data = events(START, {"type": "message_delta", "usage": {"output_tokens": 25}})
        result = parse(data)
        assert not result.complete
        assert result.usage is not None and result.usage.output_tokens == 25

    def test_cut_mid_event_keeps_tokens_so_far(self) -> None:
        data = (WIRE / "anthropic_stream.sse").read_bytes()
        cut = data.index(b'"type":"message_delta"') + 30  # inside the final usage event
        result = parse(data[:cut])
        assert not result.complete
        assert result.error is None  # a cut stream is truncation, not a provider error
        assert result.usage == Usage(
            input_tokens=3,
            cache_read_tokens=12034,
            cache_write_tokens=5317,
            cache_write_1h_tokens=5317,
            output_tokens=2,  # message_start's placeholder: the real count never came
            service_tier="standard",
        )
        # The text that did arrive is kept, so the output can be estimated.
        assert "Running the tests" in result.output_text
        assert "uv run pytest" in result.output_text
        estimated = conclude_usage(
            Endpoint("anthropic", "anthropic.messages"),
            RequestInfo(model="claude-opus-5-5"),
            result,
            200,
        )
        assert estimated.estimated and estimated.output_tokens > 2
        assert estimated.cache_read_tokens == 12034

    def test_error_event_mid_stream(self) -> None:
        result = parse((WIRE / "anthropic_error_stream.sse").read_bytes())
        assert result.error == "overloaded_error: Overloaded"
        assert not result.complete
        assert result.usage == Usage(
            input_tokens=812, cache_read_tokens=4096, output_tokens=1, service_tier="standard"
        )
        assert result.output_text == "Let me look at"

    def test_ping_and_unknown_events_are_ignored(self) -> None:
        data = events(START, {"type": "ping"}, {"type": "future_event", "x": 1}, STOP)
        result = parse(data)
        assert result.complete and result.error is None


class TestWholeResponses:
    def test_non_streaming_message(self) -> None:
        result = parse((WIRE / "anthropic_message.json").read_bytes(), "application/json")
        assert result.usage == Usage(input_tokens=14, output_tokens=12, service_tier="standard")
        assert result.model == "claude-haiku-4-5-20251001"
        assert result.complete

    def test_error_body(self) -> None:
        result = parse((WIRE / "anthropic_error.json").read_bytes(), "application/json")
        assert result.usage is None
        assert result.error is not None
        assert result.error.startswith("rate_limit_error: This request would exceed")

    def test_truncated_json_body(self) -> None:
        data = (WIRE / "anthropic_message.json").read_bytes()
        result = parse(data[: len(data) // 2], "application/json")
        assert not result.complete and result.usage is None
        assert "JSON body" in (result.error or "")

    def test_count_tokens_is_free(self) -> None:
        endpoint = match_endpoint("api.anthropic.com", "POST", "/v1/messages/count_tokens")
        assert endpoint == Endpoint("anthropic", "anthropic.count_tokens", free=True)
        parser = new_response_parser(
            endpoint, RequestInfo(model="claude-opus-5-5"), "application/json"
        )
        parser.feed((WIRE / "anthropic_count_tokens.json").read_bytes())
        result = parser.result()
        assert result.usage == Usage()
        assert result.complete and result.model == "claude-opus-5-5"


class TestRequest:
    def test_claude_code_request(self) -> None:
        info = parse_request(MESSAGES, (WIRE / "anthropic_request.json").read_bytes())
        assert info.model == "claude-opus-5-5"
        assert info.stream is True
        assert info.facts == {
            "uses_tools": "1",
            "uses_thinking": "1",
            "max_tokens": "128000",
            "cwd": "/home/dev/src/acme-api",
            "session_id": "c94186ab-2b3f-417d-a580-48a4be19ff53",
        }
        assert (info.prompt_tokens() or 0) > 100

    def test_older_claude_code_request(self) -> None:
        info = parse_request(MESSAGES, (WIRE / "anthropic_request_old.json").read_bytes())
        assert info.facts["cwd"] == "/Users/dev/old-proj"  # <env> in the system prompt
        assert info.facts["session_id"] == "7d0e4e3b-5f0a-4c3e-9f1b-2a6c8d9e0f1a"
        assert "uses_thinking" not in info.facts

    def test_images_and_disabled_thinking(self) -> None:
        image = {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "AA"},
        }
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "thinking": {"type": "disabled"},
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}],
        }
        info = parse_request(MESSAGES, json.dumps(body).encode())
        assert info.facts == {"max_tokens": "1024"}
        assert info.stream is False
        assert request_uses_images(MESSAGES, info, body)
        body["messages"][0]["content"] = [{"type": "text", "text": "what?"}]
        assert not request_uses_images(MESSAGES, info, body)

    def test_windows_working_directory(self) -> None:
        text = (
            "# Environment\n - Primary working directory: C:\\Users\\dev\\proj\n - Platform: win32"
        )
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        assert (
            parse_request(MESSAGES, json.dumps(body).encode()).facts["cwd"]
            == "C:\\Users\\dev\\proj"
        )

    def test_cwd_only_from_the_first_user_message(self) -> None:
        body = {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "Primary working directory: /tmp/elsewhere"},
            ],
        }
        assert "cwd" not in parse_request(MESSAGES, json.dumps(body).encode()).facts

    def test_malformed_json(self) -> None:
        info = parse_request(MESSAGES, b'{"model": "claude-opus-5-5", "messages": [')
        assert info.model is None
        assert info.facts["request_error"].startswith("request body is not JSON")

    def test_odd_user_id_is_ignored(self) -> None:
        for user_id in ("{not json", "plain-user", "", 42, '["session_id"]'):
            body = {"model": "m", "metadata": {"user_id": user_id}, "messages": []}
            assert "session_id" not in parse_request(MESSAGES, json.dumps(body).encode()).facts

    def test_ten_megabyte_body_is_quick(self) -> None:
        body = json.loads((WIRE / "anthropic_request.json").read_text())
        chunk = {"type": "text", "text": "lorem ipsum dolor sit amet " * 400}
        body["messages"] += [
            {"role": "assistant" if i % 2 else "user", "content": [chunk]} for i in range(1000)
        ]
        data = json.dumps(body).encode()
        assert len(data) > 10_000_000
        started = time.perf_counter()
        info = parse_request(MESSAGES, data)
        assert time.perf_counter() - started < 1.0
        assert info.facts["cwd"] == "/home/dev/src/acme-api"
        assert (info.prompt_tokens() or 0) > 2_000_000
