"""Properties of every wire parser, whatever the upstream sends.

For each wire format (Anthropic, OpenAI chat and OpenRouter, OpenAI Responses over
HTTPS and over Codex's WebSocket, Gemini direct and through cloudcode-pa's envelope,
Cursor's Connect-RPC): arbitrary bytes, real responses damaged at random, cut at any
chunk boundaries, and real responses whose usage numbers are replaced by huge, negative,
fractional, NaN or infinite ones. The parser never raises, and the row `build_call`
makes from its result has counts from 0 to MAX_TOKENS, a cost that is None or from $0 to
MAX_COST_USD, and can be inserted into a real ledger.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmeter.ledger import call_row, insert_calls, migrate
from devmeter.metering import build_call
from devmeter.providers import match_endpoint, new_response_parser, parse_request
from devmeter.providers.base import ResponseParser
from devmeter.usage import MAX_COST_USD, MAX_TOKENS, Attribution, ResponseResult

FIXTURES = Path(__file__).parent / "fixtures"
WIRE = FIXTURES / "wire"

# (name, host, path, content type, a real response of that wire format)
FORMATS = [
    ("anthropic-sse", "api.anthropic.com", "/v1/messages", "text/event-stream",
     WIRE / "anthropic_stream.sse"),
    ("anthropic-json", "api.anthropic.com", "/v1/messages", "application/json",
     WIRE / "anthropic_message.json"),
    ("openai-chat-sse", "api.openai.com", "/v1/chat/completions", "text/event-stream",
     WIRE / "openai_chat_stream_usage.sse"),
    ("openai-chat-json", "api.openai.com", "/v1/chat/completions", "application/json",
     WIRE / "openai_chat.json"),
    ("openrouter-sse", "openrouter.ai", "/api/v1/chat/completions", "text/event-stream",
     WIRE / "openrouter_stream.sse"),
    ("openai-responses-sse", "api.openai.com", "/v1/responses", "text/event-stream",
     WIRE / "openai_responses_stream.sse"),
    ("gemini-sse", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "text/event-stream",
     WIRE / "gemini_stream.sse"),
    ("gemini-array", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "application/json",
     WIRE / "gemini_stream_array.json"),
    ("cloudcode-sse", "cloudcode-pa.googleapis.com",
     "/v1internal:streamGenerateContent?alt=sse", "text/event-stream",
     WIRE / "cloudcode_stream.sse"),
    ("cursor", "api2.cursor.sh", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools",
     "application/connect+proto", FIXTURES / "cursor" / "unified_chat_response.bin"),
]  # fmt: skip
REQUESTS = {
    "api2.cursor.sh": (FIXTURES / "cursor" / "unified_chat_request.bin").read_bytes(),
    "cloudcode-pa.googleapis.com": (WIRE / "cloudcode_request.json").read_bytes(),
}
IDS = [f[0] for f in FORMATS]
WEBSOCKET = (WIRE / "codex_websocket_server.jsonl").read_text().splitlines()

# Modest sizes: each property runs in a few seconds on a shared 2-core machine.
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A JSON number (or number-like string) a hostile or broken upstream might send.
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from([str(2**63 - 1), str(-(2**63)), "1e30", "-1e30", "1e999", "-1e999",
                     "NaN", "Infinity", "-Infinity", "0.5", "-0.0", "700000000000",
                     '"12"', '"nan"', '"1e999"', "null", "true", '"x"', "[]", "{}"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)  # fmt: skip
# The usage fields of every format: the number after each is replaced.
USAGE_NUMBER = re.compile(
    rb'("(?:[a-z_]*tokens?[a-z_]*|[A-Za-z]*Token(?:s|Count)[A-Za-z]*|cost|'
    rb'web_search_requests|web_fetch_requests)"\s*:\s*)(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)'
)


@pytest.fixture(scope="module")
def ledger() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    yield conn
    conn.close()


def feed_in_chunks(parser: ResponseParser, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        parser.feed(data[start:cut])
        start = cut


def assert_sane(
    host: str, path: str, body: bytes, results: list[ResponseResult], conn: sqlite3.Connection
) -> None:
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    request = parse_request(endpoint, body)
    for result in results:
        call = build_call(
            ts=1_800_000_000.0, host=host, endpoint=endpoint, request=request,
            result=result, status=200, attribution=Attribution(),
        )  # fmt: skip
        u = call.usage
        for name in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                     "cache_write_1h_tokens", "output_tokens", "reasoning_tokens",
                     "web_search_requests"):  # fmt: skip
            value = getattr(u, name)
            assert type(value) is int and 0 <= value <= MAX_TOKENS, (name, value, result)
        cost = call.cost_usd
        assert cost is None or (isinstance(cost, Decimal) and 0 <= cost <= MAX_COST_USD), cost
        conn.execute("BEGIN")
        insert_calls(conn, [call_row(call)])  # storable: no OverflowError, no bad type
        conn.execute("ROLLBACK")


def parse_http(name: str, data: bytes, cuts: list[int]) -> tuple[str, str, bytes, ResponseResult]:
    _, host, path, content_type, _ = next(f for f in FORMATS if f[0] == name)
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    body = REQUESTS.get(host, b'{"model": "claude-sonnet-4-5", "stream": true}')
    parser = new_response_parser(endpoint, parse_request(endpoint, body), content_type)
    feed_in_chunks(parser, data, cuts)
    result = parser.result()
    assert parser.result() is result  # idempotent, as the protocol says
    return host, path, body, result


def substitute_numbers(data: bytes, draw: st.DrawFn) -> bytes:
    return USAGE_NUMBER.sub(lambda m: m.group(1) + draw(NUMBERS).encode(), data)


CHUNKS = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


@pytest.mark.parametrize("name", IDS)
@PROPERTY
@given(data=st.binary(max_size=3000), cuts=CHUNKS)
def test_arbitrary_bytes_never_raise(
    ledger: sqlite3.Connection, name: str, data: bytes, cuts: list[int]
) -> None:
    host, path, body, result = parse_http(name, data, cuts)
    assert_sane(host, path, body, [result], ledger)


@pytest.mark.parametrize("name", IDS)
@PROPERTY
@given(
    start=st.integers(min_value=0), length=st.integers(min_value=0, max_value=64),
    junk=st.binary(max_size=64), cuts=CHUNKS,
)  # fmt: skip
def test_a_real_response_damaged_anywhere_never_raises(
    ledger: sqlite3.Connection, name: str, start: int, length: int, junk: bytes, cuts: list[int]
) -> None:
    real = next(f for f in FORMATS if f[0] == name)[4].read_bytes()
    start %= len(real)
    damaged = real[:start] + junk + real[start + length :]
    host, path, body, result = parse_http(name, damaged, cuts)
    assert_sane(host, path, body, [result], ledger)


@pytest.mark.parametrize("name", [n for n in IDS if n != "cursor"])  # Cursor sends no counts
@PROPERTY
@given(data=st.data(), cuts=CHUNKS)
def test_any_numbers_in_valid_events_give_a_sane_row(
    ledger: sqlite3.Connection, name: str, data: st.DataObject, cuts: list[int]
) -> None:
    real = next(f for f in FORMATS if f[0] == name)[4].read_bytes()
    assert USAGE_NUMBER.search(real), "the fixture has usage numbers to replace"
    hostile = substitute_numbers(real, data.draw)
    host, path, body, result = parse_http(name, hostile, cuts)
    assert_sane(host, path, body, [result], ledger)


@PROPERTY
@given(data=st.data(), junk=st.lists(st.binary(max_size=80), max_size=3))
def test_codex_websocket_messages_with_any_numbers_give_sane_rows(
    ledger: sqlite3.Connection, data: st.DataObject, junk: list[bytes]
) -> None:
    host, path = "api.openai.com", "/v1/responses"
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    body = (WIRE / "codex_response_create.json").read_bytes()
    parser = new_response_parser(endpoint, parse_request(endpoint, body))
    results: list[ResponseResult] = []
    messages: list[str | bytes] = [
        substitute_numbers(line.encode(), data.draw).decode() for line in WEBSOCKET
    ]
    for piece in junk:  # messages that are not JSON, or not events, anywhere in between
        messages.insert(data.draw(st.integers(0, len(messages))), piece)
    messages.insert(data.draw(st.integers(0, len(messages))), json.dumps({"type": 7}))
    for message in messages:
        parser.feed_message(message)
        results += parser.take_completed()
    results += parser.take_unfinished()
    assert results, "the turns still end in rows"
    assert_sane(host, path, body, results, ledger)
