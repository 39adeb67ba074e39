"""OpenAI Responses API over HTTP (SSE, JSON) and over Codex CLI's WebSocket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devmeter.providers import (
    Endpoint,
    match_endpoint,
    new_response_parser,
    parse_request,
    request_uses_images,
)
from devmeter.usage import RequestInfo, ResponseResult, Usage

WIRE = Path(__file__).parent / "fixtures" / "wire"
RESPONSES = Endpoint("openai", "openai.responses")
SSE = "text/event-stream"


def parse(data: bytes, content_type: str = SSE) -> ResponseResult:
    parser = new_response_parser(RESPONSES, RequestInfo(model="gpt-5.1"), content_type)
    parser.feed(data)
    return parser.result()


def sse(*objs: dict[str, Any]) -> bytes:
    return "".join(f"event: {o['type']}\ndata: {json.dumps(o)}\n\n" for o in objs).encode()


def response(rid: str = "resp_1", **fields: Any) -> dict[str, Any]:
    return {"id": rid, "object": "response", "model": "gpt-5.1-2025-11-13", "output": [], **fields}


USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 400},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 1050,
}
EXPECTED = Usage(input_tokens=600, cache_read_tokens=400, output_tokens=50, reasoning_tokens=20)


class TestHttp:
    def test_stream_with_web_search(self) -> None:
        result = parse((WIRE / "openai_responses_stream.sse").read_bytes())
        assert result == ResponseResult(
            usage=Usage(
                input_tokens=8412 - 6144,
                cache_read_tokens=6144,
                output_tokens=302,
                reasoning_tokens=256,
                # one search, seen in output_item.done and again in the final output
                web_search_requests=1,
                service_tier="default",
            ),
            model="gpt-5.1-2025-11-13",
            complete=True,
            output_chars=len("Use `uv lock --upgrade-package NAME`."),
            # the id the Responses API gives it, which a Codex transcript import matches
            response_id="resp_68a1f0c2b7d48190a6a3c1b5e9d2f7a3",
        )

    def test_incomplete_response_still_has_usage(self) -> None:
        data = sse(
            {"type": "response.created", "response": response(status="in_progress")},
            {"type": "response.output_text.delta", "delta": "partial"},
            {
                "type": "response.incomplete",
                "response": response(status="incomplete", usage=USAGE),
            },
        )
        result = parse(data)
        assert result.usage == EXPECTED
        assert result.complete  # the stream ended properly; max_output_tokens cut the answer

    def test_failed_response_records_error_and_usage(self) -> None:
        failed = response(
            status="failed", usage=USAGE, error={"code": "server_error", "message": "boom"}
        )
        data = sse(
            {"type": "response.created", "response": response(status="in_progress")},
            {"type": "response.failed", "response": failed},
        )
        result = parse(data)
        assert result.usage == EXPECTED
        assert result.error == "server_error: boom"

    def test_error_event_without_response(self) -> None:
        data = sse({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down"})
        result = parse(data)
        assert result.usage is None
        assert result.error == "rate_limit_exceeded: Slow down"
        assert not result.complete

    def test_cut_stream_keeps_text(self) -> None:
        data = (WIRE / "openai_responses_stream.sse").read_bytes()
        result = parse(data[: data.index(b"event: response.output_text.done")])
        assert not result.complete
        assert result.usage is None
        assert result.output_text == "Use `uv lock --upgrade-package NAME`."
        assert result.model == "gpt-5.1-2025-11-13"

    def test_non_streaming_json(self) -> None:
        body = response(
            status="completed",
            usage=USAGE,
            service_tier="priority",
            output=[
                {"type": "web_search_call", "id": "ws_1"},
                {"type": "web_search_call", "id": "ws_2"},
                {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            ],
        )
        result = parse(json.dumps(body).encode(), "application/json")
        assert result.usage == Usage(
            input_tokens=600,
            cache_read_tokens=400,
            output_tokens=50,
            reasoning_tokens=20,
            web_search_requests=2,
            service_tier="priority",
        )
        assert result.complete and result.output_chars == 2

    def test_json_error_body(self) -> None:
        body = {"error": {"message": "Invalid model", "type": "invalid_request_error"}}
        result = parse(json.dumps(body).encode(), "application/json")
        assert result.usage is None
        assert result.error == "invalid_request_error: Invalid model"

    def test_routes(self) -> None:
        assert match_endpoint("chatgpt.com", "POST", "/backend-api/codex/responses") == RESPONSES
        assert match_endpoint("api.x.ai", "POST", "/v1/responses") == Endpoint(
            "x-ai", "openai.responses"
        )
        # The WebSocket upgrade Codex opens first.
        assert match_endpoint("api.openai.com", "GET", "/v1/responses") == RESPONSES


def websocket_messages() -> list[str]:
    return (WIRE / "codex_websocket_server.jsonl").read_text().splitlines()


class TestWebSocket:
    def test_codex_prewarm_then_turn(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(model="gpt-6.1-sol"), "")
        completed: list[ResponseResult] = []
        after_each: list[int] = []
        for message in websocket_messages():
            parser.feed_message(message)
            taken = parser.take_completed()
            completed += taken
            after_each.append(len(taken))
        # Each response is handed over as soon as its response.completed arrives.
        assert after_each[1] == 1 and after_each[-1] == 1 and sum(after_each) == 2
        prewarm, turn = completed
        assert prewarm == ResponseResult(
            usage=Usage(input_tokens=4120, service_tier="default"),
            model="gpt-6.1-sol",
            response_id="resp_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        )
        assert turn == ResponseResult(
            usage=Usage(
                input_tokens=37,
                cache_read_tokens=4096,
                output_tokens=27,
                reasoning_tokens=12,
                service_tier="default",
            ),
            model="gpt-6.1-sol",
            output_chars=len("Hi! What can I do for you?"),
            response_id="resp_1f2e3d4c5b6a79880716253443526170",
        )
        assert parser.take_completed() == []
        assert parser.take_unfinished() == []

    def test_bytes_messages(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(), "")
        for message in websocket_messages():
            parser.feed_message(message.encode())
        assert len(parser.take_completed()) == 2

    def test_socket_closed_mid_turn(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(model="gpt-6.1-sol"), "")
        messages = websocket_messages()
        for message in messages[:-1]:  # the turn's response.completed never arrives
            parser.feed_message(message)
        assert len(parser.take_completed()) == 1  # the prewarm
        (unfinished,) = parser.take_unfinished()
        assert not unfinished.complete
        assert unfinished.usage is None
        assert unfinished.output_text == "Hi! What can I do for you?"
        assert parser.take_unfinished() == []

    def test_interleaved_lanes(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(), "")
        a = response("resp_a", model="gpt-a")
        b = response("resp_b", model="gpt-b")
        for event in (
            {"type": "response.created", "stream_id": "A", "response": a},
            {"type": "response.created", "stream_id": "B", "response": b},
            {"type": "response.output_text.delta", "stream_id": "A", "delta": "aaa"},
            {"type": "response.output_text.delta", "stream_id": "B", "delta": "bb"},
            {"type": "response.completed", "stream_id": "B", "response": dict(b, usage=USAGE)},
        ):
            parser.feed_message(json.dumps(event))
        (done_b,) = parser.take_completed()
        assert done_b.model == "gpt-b" and done_b.usage == EXPECTED
        assert done_b.output_chars == 2
        (open_a,) = parser.take_unfinished()
        assert open_a.model == "gpt-a" and open_a.output_text == "aaa"

    def test_new_response_on_a_lane_concludes_the_abandoned_one(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(), "")
        parser.feed_message(json.dumps({"type": "response.created", "response": response("r1")}))
        parser.feed_message(json.dumps({"type": "response.output_text.delta", "delta": "x"}))
        parser.feed_message(json.dumps({"type": "response.created", "response": response("r2")}))
        (abandoned,) = parser.take_completed()
        assert not abandoned.complete and abandoned.output_text == "x"
        assert len(parser.take_unfinished()) == 1  # r2

    def test_websocket_error_frame(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(model="gpt-6.1-sol"), "")
        frame = {
            "type": "error",
            "status": 429,
            "error": {"type": "usage_limit_reached", "message": "The usage limit has been reached"},
        }
        parser.feed_message(json.dumps(frame))
        (result,) = parser.take_completed()
        assert result.error == "usage_limit_reached: The usage limit has been reached"
        assert result.usage is None and result.model == "gpt-6.1-sol"

    def test_error_during_a_response_waits_for_its_failure(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(), "")
        parser.feed_message(json.dumps({"type": "response.created", "response": response()}))
        parser.feed_message(json.dumps({"type": "error", "message": "stream broke"}))
        assert parser.take_completed() == []
        failed = response(status="failed", usage=USAGE)
        parser.feed_message(json.dumps({"type": "response.failed", "response": failed}))
        (result,) = parser.take_completed()
        assert result.error == "stream broke" and result.usage == EXPECTED

    def test_unknown_and_invalid_messages_are_ignored(self) -> None:
        parser = new_response_parser(RESPONSES, RequestInfo(), "")
        parser.feed_message('{"type": "codex.rate_limits", "primary": {"used_percent": 4}}')
        parser.feed_message("not json at all")
        parser.feed_message(b"\xff\xfe")
        parser.feed_message("[1, 2, 3]")
        assert parser.take_completed() == []
        assert parser.take_unfinished() == []


class TestRequest:
    def test_codex_prewarm_frame(self) -> None:
        info = parse_request(RESPONSES, (WIRE / "codex_response_create.json").read_bytes())
        assert info.model == "gpt-6.1-sol"
        assert info.stream is True
        assert info.facts == {"uses_thinking": "1", "prewarm": "1"}

    def test_post_body(self) -> None:
        body = {
            "model": "gpt-5.1",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                }
            ],
            "tools": [{"type": "web_search"}],
            "max_output_tokens": 500,
            "reasoning": {"effort": "none"},
        }
        info = parse_request(RESPONSES, json.dumps(body).encode())
        assert info.facts == {"uses_tools": "1", "max_tokens": "500"}
        assert request_uses_images(RESPONSES, info, body)
        assert info.stream is False
