"""Cursor on the wire: Connect frames of schema-less protobuf, metered as estimates."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sys
from decimal import Decimal
from pathlib import Path

import brotli
import pytest
import zstandard

from devmeter import metering
from devmeter.providers import (
    INTERCEPT_HOSTS,
    Endpoint,
    cursor,
    effective_endpoint,
    match_endpoint,
    new_response_parser,
    parse_request,
)
from devmeter.usage import Attribution, RequestInfo, ResponseResult, Usage

FIXTURES = Path(__file__).parent / "fixtures" / "cursor"
CONNECT = "application/connect+proto"
CHAT_PATH = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"


def _load_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cursor_fixture_build", FIXTURES / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_builder()
field, message, frame = build.field, build.message, build.frame


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def endpoint() -> Endpoint:
    found = match_endpoint("api2.cursor.sh", "POST", CHAT_PATH)
    assert found is not None
    return found


def request_info(name: str = "unified_chat_request.bin") -> RequestInfo:
    return parse_request(endpoint(), fixture(name))


def respond(body: bytes, request: RequestInfo | None = None, ctype: str = CONNECT,
            cuts: list[int] | None = None) -> ResponseResult:  # fmt: skip
    parser = new_response_parser(endpoint(), request or request_info(), ctype)
    start = 0
    for cut in [*(cuts or []), len(body)]:
        parser.feed(body[start:cut])
        start = cut
    return parser.result()


def random_cuts(body: bytes, rng: random.Random, n: int) -> list[int]:
    return sorted(rng.sample(range(1, len(body)), min(n, len(body) - 1)))


# --- which requests are Cursor chat ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        CHAT_PATH,
        "/aiserver.v1.ChatService/StreamUnifiedChatWithToolsSSE",
        "/aiserver.v1.ChatService/StreamUnifiedChat",
        "/aiserver.v1.AiService/StreamChat",
        "/aiserver.v1.AiService/StreamChatWeb",
        "/aiserver.v1.AiService/StreamComposer",
        "/agent.v1.AgentService/Run",
        "/agent.v1.AgentService/RunSSE",
    ],
)
def test_chat_paths_are_metered(path: str) -> None:
    assert match_endpoint("api2.cursor.sh:443", "POST", path) == Endpoint(
        "cursor", "cursor.chat", stream=True
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/aiserver.v1.AiService/StreamCpp"),  # Cursor Tab
        ("POST", "/aiserver.v1.BidiService/BidiAppend"),
        ("POST", "/aiserver.v1.DashboardService/GetTeams"),
        ("POST", "/aiserver.v1.AiService/AvailableModels"),
        ("GET", CHAT_PATH),
    ],
)
def test_everything_else_on_cursor_passes_unmetered(method: str, path: str) -> None:
    assert match_endpoint("api2.cursor.sh", method, path) is None


def test_cursor_host_is_intercepted() -> None:
    assert "api2.cursor.sh" in INTERCEPT_HOSTS


def test_fixtures_are_what_the_builder_writes() -> None:
    for name, data in build.FIXTURES.items():
        assert fixture(name) == data, f"{name} is stale: run python tests/fixtures/cursor/build.py"


# --- requests ----------------------------------------------------------------------------


def test_request_names_model_maker_and_an_input_estimate() -> None:
    info = request_info()
    assert info.model == "claude-4.5-sonnet-thinking"
    assert info.facts["provider"] == "anthropic"
    assert info.facts["price_model"] == "claude-sonnet-4-5"
    assert "request_error" not in info.facts
    # Conversation + system text: about a quarter token per character, ids not counted.
    text_chars = len(build.USER_TEXT) + len(build.ASSISTANT_TEXT) + len(build.SYSTEM_TEXT)
    assert text_chars / 6 < (info.prompt_tokens() or 0) < text_chars / 2


def test_request_keeps_no_text() -> None:
    info = request_info()
    kept = repr(info)
    assert "Refactor" not in kept and "ledger" not in kept and "English" not in kept


def test_gzip_frames_images_and_later_frames_are_read() -> None:
    plain, packed = request_info(), request_info("unified_chat_request_gzip.bin")
    assert packed.model == plain.model
    assert packed.facts["uses_images"] == "1"
    # One image's fixed estimate plus the tool result frame on top of the same text.
    extra = (packed.prompt_tokens() or 0) - (plain.prompt_tokens() or 0)
    assert 1600 <= extra < 1700


def test_request_read_in_chunks_equals_whole() -> None:
    body = fixture("unified_chat_request_gzip.bin")
    rng = random.Random(7)
    whole = cursor.parse_request(body)
    for _ in range(50):
        reader = cursor.RequestReader()
        start = 0
        for cut in [*random_cuts(body, rng, rng.randint(1, 40)), len(body)]:
            reader.feed(body[start:cut])
            start = cut
        assert reader.info() == whole


def test_unary_proto_and_json_requests() -> None:
    bare = build.unified_chat_request("gpt-5")
    assert cursor.parse_request(bare).model == "gpt-5"
    assert cursor.parse_request(gzip.compress(bare)).model == "gpt-5"
    doc = {"request": {"messages": [{"text": "hello there"}], "modelDetails": {"modelName": "o3"}}}
    info = cursor.parse_request(frame(json.dumps(doc).encode()))
    assert (info.model, info.facts["provider"]) == ("o3", "openai")


def test_model_field_beats_look_alikes_in_the_conversation() -> None:
    request = message(
        field(1, message(field(1, "o3"), field(2, 1))),  # the user typed just "o3"
        field(1, message(field(1, "see gpt-4.py"), field(2, 1))),
        field(3, message(field(1, "gpt-4.py"))),  # a file name, not a model
        field(5, message(field(1, "claude-4-sonnet"))),
    )
    info = cursor.parse_request(frame(message(field(1, request))))
    assert info.model == "claude-4-sonnet"


def test_priced_model_beats_unpriced_candidate() -> None:
    request = message(
        field(1, message(field(1, "cursor-small"))), field(5, message(field(1, "gpt-5")))
    )
    assert cursor.parse_request(frame(request)).model == "gpt-5"


def test_unknown_model_is_cursors() -> None:
    info = cursor.parse_request(frame(message(field(5, message(field(1, "composer-1"))))))
    assert info.model == "composer-1"
    assert info.facts["provider"] == "cursor"
    assert "price_model" not in info.facts
    info = cursor.parse_request(frame(message(field(1, "no model named here"))))
    assert info.model is None and info.facts["provider"] == "cursor"


def test_sse_variant_request_carries_only_an_id() -> None:
    info = request_info("sse_request.bin")
    assert info.model is None
    assert info.facts["cursor_request_id"] == build.BIDI_REQUEST_ID
    assert info.prompt_tokens() == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty request body"),
        (b"\x00\x00\x00\x00\x10abc", "ends inside a frame"),
        (b"\x00\x00\x00\x00\x00\x07\x00\x00\x00\x01a", "not Connect frames"),
        (b"\x01\x00\x00\x00\x03abc", "compressed request frames could not be read"),
        (b"\xff\xfe not protobuf", "not a protobuf or JSON message"),
    ],
)
def test_bad_requests_are_said_not_raised(body: bytes, problem: str) -> None:
    info = parse_request(endpoint(), body)
    assert problem in info.facts["request_error"]
    assert info.facts["provider"] == "cursor"


def test_random_bytes_never_raise() -> None:
    rng = random.Random(3)
    for _ in range(300):
        body = rng.randbytes(rng.randint(0, 300))
        assert isinstance(cursor.parse_request(body), RequestInfo)
        assert isinstance(respond(body, ctype=rng.choice([CONNECT, "", "application/proto"])),
                          ResponseResult)  # fmt: skip


def test_deep_nesting_is_bounded() -> None:
    inner = field(1, "gpt-5")
    for _ in range(2000):
        inner = field(1, inner)
    info = cursor.parse_request(frame(inner))
    assert isinstance(info, RequestInfo)  # deeper than MAX_DEPTH: read as bytes, no recursion


# --- responses ---------------------------------------------------------------------------


def test_streamed_answer_is_estimated() -> None:
    request = request_info()
    result = respond(fixture("unified_chat_response.bin"), request)
    assert result.complete and result.error is None
    assert result.model == "claude-sonnet-4-5"
    assert result.output_text == ""  # the estimate is made in the parser, the text dropped
    assert result.output_chars == len(build.THINKING) + len("".join(build.ANSWER))
    usage = result.usage
    assert usage is not None and usage.estimated
    assert usage.input_tokens == request.prompt_tokens()
    assert result.output_chars / 6 < usage.output_tokens < result.output_chars / 2


def test_any_chunk_boundaries_give_the_same_result() -> None:
    body = fixture("unified_chat_response.bin")
    whole = respond(body)
    rng = random.Random(11)
    for _ in range(200):
        assert respond(body, cuts=random_cuts(body, rng, rng.randint(1, 60))) == whole
    assert respond(body, cuts=list(range(1, len(body)))) == whole  # byte by byte


def test_cut_stream_is_incomplete_but_billed_for_what_passed() -> None:
    body = fixture("unified_chat_response.bin")
    cut = body[: len(body) // 2]
    result = respond(cut)
    assert not result.complete
    assert result.usage is not None and result.usage.output_tokens > 0
    assert result.usage.estimated


def test_error_trailer_costs_nothing() -> None:
    result = respond(fixture("error_response.bin"))
    assert result.complete
    assert result.error == "resource_exhausted: You've hit your usage limit"
    assert result.usage == Usage()


def test_error_after_output_bills_the_output() -> None:
    body = frame(build.response_message(text="partial answer " * 20)) + fixture(
        "error_response.bin"
    )
    result = respond(body)
    assert result.error and result.usage and result.usage.output_tokens > 0


def test_unary_proto_response() -> None:
    body = build.response_message(text="a whole answer in one message")
    result = respond(body, ctype="application/proto")
    assert result.complete and result.output_chars == len("a whole answer in one message")


def test_unary_json_error_and_html_gateway_error() -> None:
    body = json.dumps({"code": "unauthenticated", "message": "Not logged in"}).encode()
    result = respond(body, ctype="application/json")
    assert result.error == "unauthenticated: Not logged in" and result.usage == Usage()
    result = respond(b"<html><body>502 Bad Gateway</body></html>", ctype=CONNECT)
    assert not result.complete and result.usage == Usage()
    assert result.error == "response is not Connect frames"


def test_connect_json_stream() -> None:
    body = frame(json.dumps({"message": {"content": "hello from JSON"}}).encode()) + (
        build.end_stream()
    )
    result = respond(body, ctype="application/connect+json")
    assert result.complete and result.output_chars == len("hello from JSON")


def test_zstd_and_brotli_frames() -> None:
    payload = build.response_message(text="compressed answer")
    for packed in (zstandard.ZstdCompressor().compress(payload), brotli.compress(payload)):
        body = bytes([1]) + len(packed).to_bytes(4, "big") + packed + build.end_stream()
        result = respond(body)
        assert result.complete and result.output_chars == len("compressed answer")


def test_compressed_frames_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cursor, "INFLATE_CAP", 1000)
    bomb = gzip.compress(b"\x00" * 100_000)
    assert cursor.inflate(bomb) is None
    body = bytes([1]) + len(bomb).to_bytes(4, "big") + bomb + build.end_stream()
    result = respond(body)
    assert result.error == "1 response frames could not be read"


def test_oversize_frame_is_skipped_not_buffered() -> None:
    reader = cursor.FrameReader(cap=10)
    big = bytes([0]) + (100).to_bytes(4, "big") + b"x" * 100
    small = frame(b"ok")
    frames = []
    for i in range(0, len(big + small), 7):
        frames += reader.feed((big + small)[i : i + 7])
    assert frames == [(0, b"ok")] and reader.oversize == 1 and reader.pending == 0


def test_end_stream_error_is_what_cursor_expects() -> None:
    body = cursor.end_stream_error("devmeter: the repo budget of $20/day is spent")
    [(flags, payload)] = list(cursor.FrameReader().feed(body))
    assert flags == 0x02
    assert json.loads(payload)["error"]["code"] == "resource_exhausted"
    assert respond(body).error == (
        "resource_exhausted: devmeter: the repo budget of $20/day is spent"
    )


# --- model names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("claude-4-sonnet", ("anthropic", "claude-sonnet-4-0")),
        ("claude-4.5-sonnet-thinking", ("anthropic", "claude-sonnet-4-5")),
        ("claude-4.1-opus", ("anthropic", "claude-opus-4-1")),
        ("gpt-5-high", ("openai", "gpt-5")),
        ("o3", ("openai", "o3")),
        ("gemini-2.5-pro", ("google", "gemini-2.5-pro")),
        ("grok-code-fast-1", ("x-ai", "grok-code-fast-1")),
        ("composer-2.5", ("cursor", "composer-2.5")),  # Cursor's own price list
        ("grok-4.5", ("cursor", "grok-4.5")),  # hosted and priced by Cursor
        ("composer-1", ("cursor", None)),
        ("cursor-small", ("cursor", None)),
        ("gpt-99-turbo", ("openai", None)),  # unpriced, but plainly OpenAI's
    ],
)
def test_resolve_model(name: str, expected: tuple[str, str | None]) -> None:
    assert cursor.resolve_model(name) == expected


# --- to a ledger row ---------------------------------------------------------------------


def test_a_cursor_call_becomes_an_estimated_priced_row() -> None:
    ep = endpoint()
    request = request_info()
    result = respond(fixture("unified_chat_response.bin"), request)
    call = metering.build_call(
        ts=1_700_000_000.0,
        host="api2.cursor.sh",
        endpoint=effective_endpoint(ep, request),
        request=request,
        result=result,
        status=200,
        attribution=Attribution(tool="cursor"),
    )
    assert call.provider == "anthropic" and call.endpoint == "cursor.chat"
    assert call.requested_model == "claude-4.5-sonnet-thinking"
    assert call.model == "claude-sonnet-4-5"
    assert call.estimated
    # $3/M input, $15/M output at Sonnet 4.5's list price.
    u = call.usage
    expected = (Decimal(u.input_tokens) * 3 + Decimal(u.output_tokens) * 15) / 1_000_000
    assert call.cost_usd == expected


def test_a_refused_cursor_call_costs_nothing() -> None:
    request = request_info()
    call = metering.build_call(
        ts=1_700_000_000.0,
        host="api2.cursor.sh",
        endpoint=effective_endpoint(endpoint(), request),
        request=request,
        result=respond(b'{"code":"permission_denied","message":"no"}', request, "application/json"),
        status=403,
        attribution=Attribution(tool="cursor"),
    )
    assert call.cost_usd == 0 and call.price_source == "not billed"
