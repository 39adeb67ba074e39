"""Every wire fixture, every way of cutting it: the same result, and never an exception."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from devmeter.providers import Endpoint, match_endpoint, new_response_parser
from devmeter.providers.base import BaseParser
from devmeter.usage import RequestInfo, ResponseResult

WIRE = Path(__file__).parent / "fixtures" / "wire"
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

# fixture, host, path, content type
CASES = [
    ("anthropic_stream.sse", "api.anthropic.com", "/v1/messages?beta=true", SSE),
    ("anthropic_web_search_stream.sse", "api.anthropic.com", "/v1/messages", SSE),
    ("anthropic_error_stream.sse", "api.anthropic.com", "/v1/messages", SSE),
    ("anthropic_message.json", "api.anthropic.com", "/v1/messages", JSON),
    ("anthropic_count_tokens.json", "api.anthropic.com", "/v1/messages/count_tokens", JSON),
    ("openai_chat_stream_usage.sse", "api.openai.com", "/v1/chat/completions", SSE),
    ("openai_chat_stream_nousage.sse", "api.openai.com", "/v1/chat/completions", SSE),
    ("openai_chat.json", "api.openai.com", "/v1/chat/completions", JSON),
    ("openai_responses_stream.sse", "api.openai.com", "/v1/responses", SSE),
    ("openai_embeddings.json", "api.openai.com", "/v1/embeddings", JSON),
    (
        "gemini_stream.sse",
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        SSE,
    ),
    (
        "gemini_stream_array.json",
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        JSON,
    ),
    (
        "gemini_generate.json",
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        JSON,
    ),
    (
        "cloudcode_stream.sse",
        "cloudcode-pa.googleapis.com",
        "/v1internal:streamGenerateContent?alt=sse",
        SSE,
    ),
    ("openrouter_stream.sse", "openrouter.ai", "/api/v1/chat/completions", SSE),
    ("deepseek_stream.sse", "api.deepseek.com", "/chat/completions", SSE),
    ("groq_stream.sse", "api.groq.com", "/openai/v1/chat/completions", SSE),
    ("mistral_stream.sse", "api.mistral.ai", "/v1/chat/completions", SSE),
    ("xai_chat.json", "api.x.ai", "/v1/chat/completions", JSON),
]
IDS = [case[0] for case in CASES]
# The error stream ends without message_stop: incomplete by design (see test_providers_anthropic).
WHOLE = [case for case in CASES if case[0] != "anthropic_error_stream.sse"]


def endpoint_for(host: str, path: str) -> Endpoint:
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    return endpoint


def run(case: tuple[str, str, str, str], chunks: list[bytes]) -> ResponseResult:
    _, host, path, content_type = case
    parser = new_response_parser(endpoint_for(host, path), RequestInfo(), content_type)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.result()


def body(case: tuple[str, str, str, str]) -> bytes:
    return (WIRE / case[0]).read_bytes()


@pytest.mark.parametrize("case", WHOLE, ids=[case[0] for case in WHOLE])
def test_every_fixture_completes_with_usage(case: tuple[str, str, str, str]) -> None:
    result = run(case, [body(case)])
    assert result.complete, result
    assert result.error is None
    if case[0] != "openai_chat_stream_nousage.sse":
        assert result.usage is not None
        assert result.output_text == ""  # usage reported: no text kept


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_byte_by_byte_and_random_chunks_match_whole(case: tuple[str, str, str, str]) -> None:
    data = body(case)
    whole = run(case, [data])
    assert run(case, [data[i : i + 1] for i in range(len(data))]) == whole
    rng = random.Random(case[0])
    for _ in range(10):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 40))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert run(case, chunks) == whole


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_prefix_is_incomplete_and_never_raises(case: tuple[str, str, str, str]) -> None:
    data = body(case)
    step = max(1, len(data) // 150)
    for cut in range(0, len(data) - 2, step):
        result = run(case, [data[:cut]])
        if cut > 0:
            assert not result.complete, (cut, result)


@pytest.mark.parametrize("api_case", [CASES[0], CASES[5], CASES[8], CASES[9], CASES[10]], ids=str)
@pytest.mark.parametrize(
    ("page", "content_type", "headline"),
    [
        ("error_429.html", "text/html", "429 Too Many Requests"),
        ("error_500.html", "text/html; charset=utf-8", "Internal Server Error"),
        ("error_502.txt", "text/plain", "upstream connect error"),
    ],
)
def test_non_json_error_bodies(
    api_case: tuple[str, str, str, str], page: str, content_type: str, headline: str
) -> None:
    _, host, path, _ = api_case
    parser = new_response_parser(endpoint_for(host, path), RequestInfo(model="m"), content_type)
    parser.feed((WIRE / page).read_bytes())
    result = parser.result()
    assert result.usage is None
    assert result.complete  # the page arrived whole; it just is not a response
    assert result.error is not None
    assert result.error.startswith("non-JSON response body")
    assert headline in result.error
    assert result.model == "m"


def test_html_page_with_an_event_stream_content_type_is_still_an_error() -> None:
    parser = new_response_parser(
        endpoint_for("api.anthropic.com", "/v1/messages"), RequestInfo(), SSE
    )
    parser.feed((WIRE / "error_429.html").read_bytes())
    assert "429 Too Many Requests" in (parser.result().error or "")


def test_json_error_body_sent_as_event_stream_is_read_as_json() -> None:
    parser = new_response_parser(
        endpoint_for("api.anthropic.com", "/v1/messages"), RequestInfo(), SSE
    )
    parser.feed((WIRE / "anthropic_error.json").read_bytes())
    assert (parser.result().error or "").startswith("rate_limit_error:")


def test_empty_body() -> None:
    parser = new_response_parser(
        endpoint_for("api.openai.com", "/v1/chat/completions"), RequestInfo(), JSON
    )
    parser.feed(b"")
    result = parser.result()
    assert result.usage is None
    assert not result.complete


# Shapes no provider sends, which a buggy gateway might: parsers must shrug.
WEIRD_EVENTS = [
    b"data: null\n\n",
    b"data: []\n\n",
    b'data: "text"\n\n',
    b"data: 42\n\n",
    b'data: {"type": "message_start", "message": "oops"}\n\n',
    b'data: {"type": "message_delta", "usage": [1, 2]}\n\n',
    b'data: {"type": "content_block_delta", "delta": null}\n\n',
    b'data: {"choices": "x", "usage": {"prompt_tokens": "12", "completion_tokens": null}}\n\n',
    b'data: {"choices": [null, 3, {"delta": [1]}]}\n\n',
    b'data: {"type": "response.completed", "response": {"usage": {"input_tokens": []}}}\n\n',
    b'data: {"type": "response.output_item.done", "item": "x"}\n\n',
    b'data: {"candidates": [1, {"content": "x"}], "usageMetadata": {"promptTokenCount": {}}}\n\n',
    b'data: {"response": {"candidates": [{"content": {"parts": [null, {"text": 5}]}}]}}\n\n',
    b'data: {"error": null}\n\n',
    b"data: {not json}\n\n",
    b"\xff\xfe\x00garbage\n\n",
]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weird_events_never_raise(case: tuple[str, str, str, str]) -> None:
    _, host, path, _ = case
    for weird in WEIRD_EVENTS:
        parser = new_response_parser(endpoint_for(host, path), RequestInfo(), SSE)
        parser.feed(weird)
        parser.feed_message(weird[6:].strip())
        result = parser.result()
        assert isinstance(result, ResponseResult)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_random_byte_corruption_never_raises(case: tuple[str, str, str, str], seed: int) -> None:
    data = bytearray(body(case))
    rng = random.Random(seed)
    for _ in range(max(1, len(data) // 50)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    assert isinstance(run(case, [bytes(data)]), ResponseResult)


def test_a_parser_bug_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: BaseParser, name: str | None, obj: object) -> None:
        raise KeyError("bug")

    case = CASES[0]
    parser = new_response_parser(endpoint_for(case[1], case[2]), RequestInfo(), SSE)
    monkeypatch.setattr(type(parser), "on_event", boom)
    parser.feed(body(case))  # must not raise
    parser.feed(b"more")
    result = parser.result()
    assert not result.complete
    assert result.error is not None and "parser error: KeyError" in result.error


def test_result_is_idempotent_and_later_bytes_are_ignored() -> None:
    case = CASES[0]
    parser = new_response_parser(endpoint_for(case[1], case[2]), RequestInfo(), SSE)
    parser.feed(body(case))
    first = parser.result()
    parser.feed(b"event: error\ndata: {}\n\n")
    assert parser.result() is first
