"""The pure parts of devmeter's bounds, unit by unit, with small caps (the proxy-level
cases are in test_hostile_input.py)."""

from __future__ import annotations

import random

import pytest
from mitmproxy import http

from devmeter import fastjson
from devmeter.providers import Endpoint, framing
from devmeter.providers.framing import BodyReader, _ArraySplitter
from devmeter.proxy import streaming

ELEMENTS = [b'{"a": 1}', b'{"big": "' + b"z" * 300 + b'"}', b'{"b": [2, {"c": "]"}]}']
ARRAY = b"[" + b", ".join(ELEMENTS) + b"]"


@pytest.mark.parametrize("seed", ["whole", "bytes", *range(50)])
def test_an_oversized_array_element_is_dropped_at_any_chunk_boundary(
    seed: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(framing, "JSON_CAP", 100)
    if seed == "whole":
        chunks = [ARRAY]
    elif seed == "bytes":
        chunks = [ARRAY[i : i + 1] for i in range(len(ARRAY))]
    else:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(ARRAY)), rng.randint(1, 40)))
        chunks = [ARRAY[a:b] for a, b in zip([0, *cuts], [*cuts, len(ARRAY)], strict=True)]
    splitter = _ArraySplitter()
    got = [element for chunk in chunks for element in splitter.feed(chunk)]
    assert got == [ELEMENTS[0], ELEMENTS[2]]
    assert splitter.dropped == 1 and splitter.closed
    assert splitter._parts == []  # nothing of the dropped element is held


def test_the_body_reader_names_dropped_sse_events(monkeypatch: pytest.MonkeyPatch) -> None:
    from devmeter import sse

    monkeypatch.setattr(sse, "MAX_LINE", 50)
    seen: list[str] = []
    reader = BodyReader("text/event-stream", lambda n, d, f: seen.append(d), lambda d, a: None)
    reader.feed(b"data: " + b"q" * 80 + b"\n\ndata: kept\n\n")
    assert reader.finish() == (True, "1 SSE event(s) over 16 MiB dropped unread")
    assert seen == ["kept"]


@pytest.mark.parametrize("depth", [1100, 5000, 100_000])
def test_deep_nesting_is_a_value_error(depth: int) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        fastjson.loads(b"[" * depth + b"]" * depth)
    with pytest.raises(ValueError, match="nested too deeply"):
        fastjson.loads(b'{"a":' * depth + b"1" + b"}" * depth)


def test_a_parser_bug_still_gives_request_info(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RecursionError("deep")

    monkeypatch.setattr(streaming, "parse_request_doc", broken)
    info, doc, note = streaming.read_request(Endpoint("openai", "openai.chat"), b"{}")
    assert doc is None and note is not None and "RecursionError" in note
    assert info.facts["request_error"] == note


def test_body_framing_reads_length_and_chunking_once() -> None:
    assert streaming.body_framing(http.Headers(content_length="12")) == (12, False)
    chunked = http.Headers(content_length="12", transfer_encoding="chunked")
    assert streaming.body_framing(chunked) == (None, True)
    assert streaming.body_framing(http.Headers(content_length="x")) == (None, False)
    assert streaming.body_framing(http.Headers()) == (None, False)


def test_unread_request_estimates_from_the_bytes_counted() -> None:
    counted = [0]
    info = streaming.unread_request_info(Endpoint("openai", "openai.chat"), None, counted)
    tap = streaming.counting_tap(counted)
    for _ in range(10):
        assert tap(b"x" * 4000) == b"x" * 4000
    assert info.prompt_tokens() == 10_000  # 40,000 bytes at 4 a token
    assert "no declared length" in info.facts["request_error"]


def test_oversized_headers_are_named() -> None:
    small = http.Response.make(200, b"", {"x-a": "b"})
    assert streaming.oversized_headers_error(small) is None
    big = http.Response.make(200, b"", {"x-junk": "j" * (streaming.RESPONSE_HEADERS_LIMIT + 1)})
    error = streaming.oversized_headers_error(big)
    assert error is not None and "response headers" in error and "64 KiB" in error


def test_a_bounded_decode_of_a_small_body() -> None:
    import gzip

    from devmeter.decoding import decode_bounded

    refusal = http.Response.make(400, b"", {"content-encoding": "gzip"})
    refusal.raw_content = gzip.compress(b"y" * 5000)  # as sent: not re-encoded
    assert streaming.fallback_error_text(refusal) == b"y" * 5000
    cut, why = decode_bounded(gzip.compress(b"y" * 50_000), "gzip", 1000)
    assert len(cut) <= 1000 and why is not None


def test_a_stream_cut_inside_an_oversized_line_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from devmeter import sse

    monkeypatch.setattr(sse, "MAX_LINE", 50)
    decoder = sse.SSEDecoder()
    events = decoder.feed(b"data: ok\n\ndata: " + b"w" * 40)
    events += decoder.feed(b"w" * 40)  # past the cap, and the stream ends here
    tail, clean = decoder.close()
    assert [e.data for e in events + tail] == ["ok"]
    assert not clean and decoder.dropped_events == 1
