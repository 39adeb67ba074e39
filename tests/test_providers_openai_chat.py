"""OpenAI Chat Completions and its copies (OpenRouter, DeepSeek, Groq, Mistral, xAI),
and OpenAI embeddings."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter.providers import (
    Endpoint,
    framing,
    match_endpoint,
    new_response_parser,
    parse_request,
    request_uses_images,
)
from devmeter.usage import RequestInfo, ResponseResult, Usage

WIRE = Path(__file__).parent / "fixtures" / "wire"
SSE = "text/event-stream"
JSON = "application/json"


def parse(
    host: str,
    path: str,
    data: bytes,
    content_type: str = SSE,
    request: RequestInfo | None = None,
) -> ResponseResult:
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    parser = new_response_parser(endpoint, request or RequestInfo(), content_type)
    parser.feed(data)
    return parser.result()


def openai(fixture: str, content_type: str = SSE, **request: Any) -> ResponseResult:
    data = (WIRE / fixture).read_bytes()
    return parse(
        "api.openai.com", "/v1/chat/completions", data, content_type, RequestInfo(**request)
    )


def chunks(*objs: dict[str, Any], done: bool = True) -> bytes:
    text = "".join(f"data: {json.dumps(o)}\n\n" for o in objs)
    return (text + ("data: [DONE]\n\n" if done else "")).encode()


class TestOpenAI:
    def test_stream_with_usage_subtracts_cached_tokens(self) -> None:
        result = openai("openai_chat_stream_usage.sse")
        assert result.usage == Usage(
            input_tokens=1117 - 1024,
            cache_read_tokens=1024,
            output_tokens=46,
            service_tier="default",
        )
        assert result.model == "gpt-4.1-2025-04-14"
        assert result.complete
        # Tool call names and arguments are output too.
        assert result.output_chars == len(
            'The failing test isread_file{"path": "tests/test_api.py"}'
        )

    def test_stream_without_usage_keeps_text_for_estimation(self) -> None:
        result = openai("openai_chat_stream_nousage.sse", facts={"include_usage": "0"})
        assert result.usage is None
        assert result.complete
        assert result.output_text == "The failing test is in tests/test_api.py. Ünïcödé ok."
        assert result.output_chars == len(result.output_text)

    def test_usage_asked_for_but_stream_cut_before_it(self) -> None:
        data = (WIRE / "openai_chat_stream_usage.sse").read_bytes()
        cut = data.index(b'"choices":[]')  # inside the usage chunk
        result = parse("api.openai.com", "/v1/chat/completions", data[: cut - 40])
        assert not result.complete
        assert result.usage is None
        assert result.output_text.startswith("The failing test is")

    def test_no_done_is_incomplete(self) -> None:
        data = (WIRE / "openai_chat_stream_usage.sse").read_bytes()
        assert data.endswith(b"data: [DONE]\n\n")
        result = parse("api.openai.com", "/v1/chat/completions", data[: -len(b"data: [DONE]\n\n")])
        assert not result.complete
        assert result.usage is not None  # what arrived still counts

    def test_non_streaming_reasoning_and_flex_tier(self) -> None:
        result = openai("openai_chat.json", JSON)
        assert result.usage == Usage(
            input_tokens=21, output_tokens=210, reasoning_tokens=192, service_tier="flex"
        )
        assert result.model == "o4-mini-2025-04-16"
        assert result.complete

    def test_cache_write_tokens_are_not_input(self) -> None:
        usage = {
            "prompt_tokens": 5000,
            "completion_tokens": 10,
            "total_tokens": 5010,
            "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 3000},
        }
        result = parse(
            "api.openai.com", "/v1/chat/completions", chunks({"choices": [], "usage": usage})
        )
        assert result.usage == Usage(
            input_tokens=1000, cache_read_tokens=1000, cache_write_tokens=3000, output_tokens=10
        )

    def test_error_body(self) -> None:
        result = openai("openai_error.json", JSON)
        assert result.usage is None
        assert result.error is not None
        assert result.error.startswith("tokens: Rate limit reached for gpt-4.1")

    def test_error_chunk_mid_stream(self) -> None:
        data = chunks(
            {"model": "gpt-4.1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
            {"error": {"message": "The server had an error", "type": "server_error"}},
            done=False,
        )
        result = parse("api.openai.com", "/v1/chat/completions", data)
        assert result.error == "server_error: The server had an error"
        assert not result.complete
        assert result.output_text == "Hel"

    def test_bad_json_event_is_counted_and_others_still_read(self) -> None:
        good = (WIRE / "openai_chat_stream_usage.sse").read_bytes()
        result = parse("api.openai.com", "/v1/chat/completions", b"data: {oops\n\n" + good)
        assert result.usage is not None and result.usage.output_tokens == 46
        assert result.error == "1 events were not valid JSON"


class TestCompatible:
    def test_openrouter_reported_cost_and_comments(self) -> None:
        data = (WIRE / "openrouter_stream.sse").read_bytes()
        assert data.startswith(b": OPENROUTER PROCESSING")
        result = parse("openrouter.ai", "/api/v1/chat/completions", data)
        assert result.usage == Usage(
            input_tokens=303,
            cache_read_tokens=1200,
            output_tokens=112,
            reported_cost_usd=Decimal("0.006189"),
        )
        assert result.model == "anthropic/claude-sonnet-4.5"
        assert result.complete

    def test_openrouter_mid_stream_error_with_a_choice(self) -> None:
        error_chunk = {
            "id": "gen-1",
            "object": "chat.completion.chunk",
            "model": "anthropic/claude-sonnet-4.5",
            "error": {"code": 502, "message": "Provider returned error"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        result = parse("openrouter.ai", "/api/v1/chat/completions", chunks(error_chunk))
        assert result.error == "502: Provider returned error"
        assert result.usage is None

    def test_cost_is_only_trusted_from_openrouter(self) -> None:
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "cost": 5}
        result = parse(
            "api.mistral.ai", "/v1/chat/completions", chunks({"choices": [], "usage": usage})
        )
        assert result.usage is not None and result.usage.reported_cost_usd is None

    def test_deepseek_cache_hit_and_miss(self) -> None:
        data = (WIRE / "deepseek_stream.sse").read_bytes()
        result = parse("api.deepseek.com", "/chat/completions", data)
        assert result.usage == Usage(
            input_tokens=256, cache_read_tokens=768, output_tokens=230, reasoning_tokens=180
        )
        assert result.model == "deepseek-reasoner"
        assert result.complete

    def test_groq_usage_in_x_groq(self) -> None:
        data = (WIRE / "groq_stream.sse").read_bytes()
        result = parse("api.groq.com", "/openai/v1/chat/completions", data)
        assert result.usage == Usage(input_tokens=48, output_tokens=23)
        assert result.complete

    def test_mistral(self) -> None:
        data = (WIRE / "mistral_stream.sse").read_bytes()
        result = parse("api.mistral.ai", "/v1/chat/completions", data)
        assert result.usage == Usage(input_tokens=10, output_tokens=25)
        assert result.model == "mistral-large-latest"

    def test_xai_reasoning_is_added_to_output(self) -> None:
        # xAI's completion_tokens leaves reasoning out: total = prompt + completion + reasoning.
        data = (WIRE / "xai_chat.json").read_bytes()
        result = parse("api.x.ai", "/v1/chat/completions", data, JSON)
        assert result.usage == Usage(
            input_tokens=26, cache_read_tokens=6, output_tokens=9 + 94, reasoning_tokens=94
        )


class TestEmbeddings:
    def test_embeddings(self) -> None:
        data = (WIRE / "openai_embeddings.json").read_bytes()
        result = parse("api.openai.com", "/v1/embeddings", data, JSON)
        assert result.usage == Usage(input_tokens=17)
        assert result.model == "text-embedding-3-small"
        assert result.complete

    def test_huge_body_reads_usage_from_its_tail(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(framing, "JSON_CAP", 50_000)
        monkeypatch.setattr(framing, "TAIL_SIZE", 2_000)
        vectors = [
            {"object": "embedding", "index": i, "embedding": [0.001] * 300} for i in range(100)
        ]
        doc = {
            "object": "list",
            "data": vectors,
            "model": "text-embedding-3-large",
            "usage": {"prompt_tokens": 4321, "total_tokens": 4321},
        }
        data = json.dumps(doc).encode()
        assert len(data) > 100_000
        endpoint = Endpoint("openai", "openai.embeddings")
        parser = new_response_parser(endpoint, RequestInfo(), JSON)
        for i in range(0, len(data), 1000):
            parser.feed(data[i : i + 1000])
        result = parser.result()
        assert result.usage == Usage(input_tokens=4321)
        assert result.model == "text-embedding-3-large"

    def test_embeddings_request(self) -> None:
        endpoint = Endpoint("openai", "openai.embeddings")
        info = parse_request(
            endpoint, b'{"model": "text-embedding-3-small", "input": ["abcd", "efgh"]}'
        )
        assert info.model == "text-embedding-3-small"
        assert info.prompt_tokens() == 2 + 2 * 4  # two texts, with per-item overhead


class TestRequest:
    def test_chat_request_facts(self) -> None:
        endpoint = Endpoint("openai", "openai.chat")
        body = (WIRE / "openai_chat_request.json").read_bytes()
        info = parse_request(endpoint, body)
        assert info.model == "gpt-4.1"
        assert info.stream is True
        assert info.facts == {"include_usage": "1", "uses_tools": "1", "max_tokens": "2048"}
        assert request_uses_images(endpoint, info, json.loads(body))

    @pytest.mark.parametrize(
        ("extra", "facts"),
        [
            ({"stream": True}, {}),
            ({"stream": True, "stream_options": {"include_usage": False}}, {"include_usage": "0"}),
            (
                {"reasoning_effort": "high", "max_tokens": 100},
                {"uses_thinking": "1", "max_tokens": "100"},
            ),
            ({"reasoning_effort": "none"}, {}),
            ({"reasoning": {"effort": "low"}}, {"uses_thinking": "1"}),  # OpenRouter
            ({"functions": [{"name": "f"}]}, {"uses_tools": "1"}),
        ],
    )
    def test_request_variants(self, extra: dict[str, Any], facts: dict[str, str]) -> None:
        body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], **extra}
        info = parse_request(Endpoint("openai", "openai.chat"), json.dumps(body).encode())
        assert info.facts == facts
        assert info.stream is bool(extra.get("stream"))
