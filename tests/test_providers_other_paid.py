"""The paid APIs beside chat: legacy completions, batches, images, audio, Realtime and
embeddings on every provider, each read from its real wire shape and priced by genai-prices."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from devmeter import metering
from devmeter.pricing import list_price
from devmeter.providers import match_endpoint, new_response_parser, parse_request
from devmeter.usage import Attribution, Call, ResponseResult, Usage

NOW = time.time()  # genai-prices' batch rates start on 2026-10-14
JSON = "application/json"
SSE = "text/event-stream"


def call(
    host: str,
    method: str,
    path: str,
    request: bytes,
    response: bytes,
    ctype: str = JSON,
    status: int = 200,
) -> tuple[Call, list[Call]]:
    """The rows devmeter records for one exchange (the first, and any further ones)."""
    endpoint = match_endpoint(host, method, path)
    assert endpoint is not None
    info = parse_request(endpoint, request)
    parser = new_response_parser(endpoint, info, ctype)
    for i in range(0, len(response), 7):  # cut anywhere
        parser.feed(response[i : i + 7])

    def build(result: ResponseResult) -> Call:
        return metering.build_call(
            ts=NOW,
            host=host,
            endpoint=endpoint,
            request=info,
            result=result,
            status=status,
            attribution=Attribution(),
        )

    first = build(parser.result())
    # As the meter does: only batch results add rows past the first at a body's end.
    more = parser.take_completed() if endpoint.api == "anthropic.batch_results" else []
    return first, [build(r) for r in more]


def price_of(provider: str, model: str, usage: Usage) -> Decimal | None:
    return list_price(provider, model, usage, datetime.fromtimestamp(NOW, UTC))


def test_anthropic_legacy_complete_is_estimated_from_prompt_and_completion() -> None:
    request = json.dumps(
        {
            "model": "claude-2.1",
            "prompt": "\n\nHuman: say hi " * 40 + "\n\nAssistant:",
            "max_tokens_to_sample": 50,
        }
    ).encode()
    answer = json.dumps(
        {
            "type": "completion",
            "completion": " Hi there, " * 30,
            "stop_reason": "stop_sequence",
            "model": "claude-2.1",
        }
    ).encode()
    row, _ = call("api.anthropic.com", "POST", "/v1/complete", request, answer)
    assert row.endpoint == "anthropic.complete" and row.model == "claude-2.1"
    assert row.usage.estimated and row.usage.input_tokens > 100 and row.usage.output_tokens > 30
    assert row.cost_usd is not None and row.cost_usd > 0 and row.complete


def test_anthropic_legacy_complete_stream() -> None:
    events = b"".join(
        b"event: completion\ndata: " + json.dumps(e).encode() + b"\n\n"
        for e in (
            {
                "type": "completion",
                "completion": " Hello",
                "stop_reason": None,
                "model": "claude-2.1",
            },
            {
                "type": "completion",
                "completion": " world",
                "stop_reason": "stop_sequence",
                "model": "claude-2.1",
            },
        )
    )
    request = b'{"model": "claude-2.1", "prompt": "Human: hi Assistant:", "stream": true}'
    row, _ = call("api.anthropic.com", "POST", "/v1/complete", request, events, SSE)
    assert row.complete and row.usage.output_tokens > 0 and row.usage.estimated


def _batch_line(custom_id: str, model: str, inp: int, out: int, kind: str = "succeeded") -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": inp, "output_tokens": out, "service_tier": "batch"},
    }
    result = {"type": kind, "message": message} if kind == "succeeded" else {"type": kind}
    return json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n"


def test_batch_results_are_summed_per_model_at_the_batch_rate() -> None:
    body = (
        _batch_line("a", "claude-opus-5-5", 1000, 200)
        + _batch_line("b", "claude-opus-5-5", 3000, 800)
        + _batch_line("c", "claude-sonnet-5-5", 500, 100)
        + _batch_line("d", "claude-opus-5-5", 9999, 9999, kind="errored")  # not billed
        + b"not json\n"
    )
    path = "/v1/messages/batches/msgbatch_01/results"
    first, more = call("api.anthropic.com", "GET", path, b"", body, "application/binary")
    rows = {r.model: r for r in (first, *more)}
    opus, sonnet = rows["claude-opus-5-5"], rows["claude-sonnet-5-5"]
    assert (opus.usage.input_tokens, opus.usage.output_tokens) == (4000, 1000)
    assert (sonnet.usage.input_tokens, sonnet.usage.output_tokens) == (500, 100)
    standard = price_of(
        "anthropic", "claude-opus-5-5", Usage(input_tokens=4000, output_tokens=1000)
    )
    assert standard is not None and opus.cost_usd == standard / 2  # genai-prices' batch rate
    assert "1 result lines could not be read" in (first.error or "")


def test_batch_results_lines_longer_than_the_cap_are_skipped_not_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from devmeter.providers import anthropic_legacy

    monkeypatch.setattr(anthropic_legacy, "LINE_CAP", 100)
    body = _batch_line("a", "claude-opus-5-5", 1000, 200) + b"x" * 1000 + b"\n"
    row, _ = call("api.anthropic.com", "GET", "/v1/messages/batches/b/results", b"", body)
    assert row.usage.input_tokens == 0  # the first line is past the (tiny) cap too
    assert "2 result lines could not be read" in (row.error or "")


def test_openai_legacy_completions() -> None:
    request = b'{"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}'
    answer = json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": "Hi!", "index": 0, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    ).encode()
    row, _ = call("api.openai.com", "POST", "/v1/completions", request, answer)
    assert (row.usage.input_tokens, row.usage.output_tokens) == (3, 2) and not row.usage.estimated
    assert row.cost_usd == price_of("openai", "gpt-3.5-turbo-instruct", row.usage)


def test_image_generation_prices_image_input_tokens_at_their_own_rate() -> None:
    request = b'{"model": "gpt-image-1", "prompt": "a cat"}'
    answer = json.dumps(
        {
            "created": 1,
            "data": [{"b64_json": "iVBOR" * 1000}],
            "usage": {
                "total_tokens": 1600,
                "input_tokens": 600,
                "output_tokens": 1000,
                "input_tokens_details": {"text_tokens": 100, "image_tokens": 500},
            },
        }
    ).encode()
    row, _ = call("api.openai.com", "POST", "/v1/images/generations", request, answer)
    assert row.model == "gpt-image-1" and row.usage.input_tokens == 600
    text_only = price_of("openai", "gpt-image-1", Usage(input_tokens=600, output_tokens=1000))
    assert row.cost_usd is not None and text_only is not None and row.cost_usd > text_only


def test_an_image_edit_reads_the_model_from_the_multipart_form() -> None:
    boundary = b"----x"
    form = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
        b"\r\nContent-Type: image/png\r\n\r\n\x89PNG\x00\x01binary\r\n"
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        b"gpt-image-1\r\n--" + boundary + b"--\r\n"
    )
    answer = b'{"data": [], "usage": {"input_tokens": 10, "output_tokens": 20}}'
    row, _ = call("api.openai.com", "POST", "/v1/images/edits", form, answer)
    assert row.requested_model == "gpt-image-1" and row.cost_usd is not None and row.cost_usd > 0


def test_dall_e_reports_no_usage_and_is_unpriced_not_free() -> None:
    row, _ = call(
        "api.openai.com",
        "POST",
        "/v1/images/generations",
        b'{"prompt": "a cat"}',
        b'{"created": 1, "data": [{"url": "https://x"}]}',
    )
    assert row.model == "dall-e-2" and row.cost_usd is None and row.status == 200


def test_transcription_in_tokens_and_in_seconds() -> None:
    tokens = json.dumps(
        {
            "text": "hello",
            "usage": {
                "type": "tokens",
                "input_tokens": 14,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                "output_tokens": 45,
                "total_tokens": 59,
            },
        }
    ).encode()
    row, _ = call(
        "api.openai.com",
        "POST",
        "/v1/audio/transcriptions",
        b'{"model": "gpt-4o-transcribe"}',
        tokens,
    )
    assert (row.usage.input_tokens, row.usage.output_tokens) == (14, 45)
    assert row.cost_usd is not None and row.cost_usd > 0
    seconds = b'{"text": "hello", "usage": {"type": "duration", "seconds": 60}}'
    row, _ = call(
        "api.openai.com", "POST", "/v1/audio/transcriptions", b'{"model": "whisper-1"}', seconds
    )
    assert row.cost_usd is not None and row.cost_usd > 0


def test_speech_is_recorded_unpriced() -> None:
    row, _ = call(
        "api.openai.com",
        "POST",
        "/v1/audio/speech",
        b'{"model": "tts-1", "input": "hi", "voice": "alloy"}',
        b"ID3\x00\x01mp3 bytes",
        "audio/mpeg",
    )
    assert row.model == "tts-1" and row.cost_usd is None and row.status == 200


def test_realtime_records_each_response_done_with_audio_priced_as_audio() -> None:
    endpoint = match_endpoint("api.openai.com", "GET", "/v1/realtime?model=gpt-realtime")
    assert endpoint is not None
    parser = new_response_parser(endpoint, parse_request(endpoint, b""), "websocket")
    parser.feed_message(
        json.dumps({"type": "session.created", "session": {"model": "gpt-realtime"}})
    )
    usage = {
        "total_tokens": 1500,
        "input_tokens": 1000,
        "output_tokens": 500,
        "input_token_details": {
            "cached_tokens": 200,
            "text_tokens": 400,
            "audio_tokens": 600,
            "cached_tokens_details": {"audio_tokens": 100},
        },
        "output_token_details": {"text_tokens": 100, "audio_tokens": 400},
    }
    for _ in range(2):
        parser.feed_message(json.dumps({"type": "response.created", "response": {}}))
        parser.feed_message(
            json.dumps(
                {"type": "response.done", "response": {"status": "completed", "usage": usage}}
            )
        )
    done = parser.take_completed()
    assert len(done) == 2 and parser.take_completed() == []
    first = done[0]
    assert first.usage is not None and first.model == "gpt-realtime"
    assert (first.usage.input_tokens, first.usage.cache_read_tokens) == (800, 200)
    text_only = price_of(
        "openai", "gpt-realtime", Usage(input_tokens=800, cache_read_tokens=200, output_tokens=500)
    )
    audio = price_of("openai", "gpt-realtime", first.usage)
    assert audio is not None and text_only is not None and audio > text_only


def test_gemini_embeddings_are_estimated_from_the_texts_sent() -> None:
    request = json.dumps(
        {
            "requests": [
                {
                    "model": "models/gemini-embedding-001",
                    "content": {"parts": [{"text": "hello " * 50}]},
                },
                {
                    "model": "models/gemini-embedding-001",
                    "content": {"parts": [{"text": "world " * 50}]},
                },
            ]
        }
    ).encode()
    answer = b'{"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}'
    row, _ = call(
        "generativelanguage.googleapis.com",
        "POST",
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        request,
        answer,
    )
    assert row.endpoint == "gemini.embed" and row.model == "gemini-embedding-001"
    assert row.usage.estimated and row.usage.input_tokens >= 90
    assert row.cost_usd is not None and row.cost_usd > 0


def test_embeddings_on_compatible_hosts() -> None:
    answer = json.dumps(
        {"model": "mistral-embed", "data": [], "usage": {"prompt_tokens": 12, "total_tokens": 12}}
    ).encode()
    row, _ = call(
        "api.mistral.ai",
        "POST",
        "/v1/embeddings",
        b'{"model": "mistral-embed", "input": "x"}',
        answer,
    )
    assert row.provider == "mistral" and row.usage.input_tokens == 12
    assert row.cost_usd is not None and row.cost_usd > 0


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("api.openai.com", "/v1/responses/compact"),
        ("chatgpt.com", "/backend-api/codex/responses/compact"),
    ],
)
def test_codex_remote_compaction_is_a_metered_responses_call(host: str, path: str) -> None:
    request = json.dumps(
        {
            "model": "gpt-5",
            "input": [{"role": "user", "content": "hi"}],
            "instructions": "compact this",
        }
    ).encode()
    answer = json.dumps(
        {
            "id": "resp_1",
            "object": "response.compaction",
            "created_at": 1,
            "output": [{"type": "compaction", "encrypted_content": "x"}],
            "usage": {
                "input_tokens": 5000,
                "input_tokens_details": {"cached_tokens": 1000},
                "output_tokens": 300,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 5300,
            },
        }
    ).encode()
    row, more = call(host, "POST", path, request, answer)
    assert row.endpoint == "openai.compact" and more == []
    assert (row.usage.input_tokens, row.usage.cache_read_tokens) == (4000, 1000)
    assert row.usage.output_tokens == 300 and row.cost_usd is not None and row.cost_usd > 0
