"""The SSE decoder: WHATWG event-stream rules, at any chunk boundary, in linear time."""

from __future__ import annotations

import random
import time

import pytest

from devmeter.sse import SSEDecoder, SSEEvent


def decode(*chunks: bytes) -> tuple[list[SSEEvent], bool]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    tail, clean = decoder.close()
    return events + tail, clean


def bytewise(data: bytes) -> tuple[list[SSEEvent], bool]:
    return decode(*(data[i : i + 1] for i in range(len(data))))


# A stream exercising every rule: names, multi-line data, comments, ids, all three
# line endings, a field without a colon, and multi-byte characters.
STREAM = (
    ": comment line\r\n"
    "event: message_start\n"
    'data: {"type":"message_start"}\n'
    "\n"
    "data: first line\r"
    "data:second line, no space\r\n"
    "data:  two spaces keep one\n"
    "id: 7\n"
    "\r\n"
    "event: delta\n"
    "data: ✅ 日本語 👋\n"
    "retry: 1000\n"
    "unknown: field\n"
    "\n"
    "data\n"
    "\n"
).encode()

EXPECTED = [
    SSEEvent("message_start", '{"type":"message_start"}'),
    SSEEvent(None, "first line\nsecond line, no space\n two spaces keep one", "7"),
    SSEEvent("delta", "✅ 日本語 👋", "7"),
    SSEEvent(None, "", "7"),
]


def test_whole_stream() -> None:
    assert decode(STREAM) == (EXPECTED, True)


def test_byte_by_byte_matches_whole() -> None:
    assert bytewise(STREAM) == (EXPECTED, True)


@pytest.mark.parametrize("seed", range(25))
def test_random_chunk_boundaries_match_whole(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 30)))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    assert decode(*chunks) == (EXPECTED, True)


def test_split_inside_multibyte_characters() -> None:
    data = "data: ✅👋é\n\n".encode()
    # Cut after each byte of the 3-byte check mark and the 4-byte emoji.
    for cut in range(6, 14):
        assert decode(data[:cut], data[cut:]) == ([SSEEvent(None, "✅👋é")], True)


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # If "\r" and "\n" counted as two line ends, the blank line would dispatch "a" alone.
    events, clean = decode(b"data: a\r", b"\ndata: b\r\n\r\n")
    assert events == [SSEEvent(None, "a\nb")]
    assert clean


def test_lone_cr_line_endings() -> None:
    assert decode(b"event: x\rdata: 1\r\rdata: 2\r\r") == (
        [SSEEvent("x", "1"), SSEEvent(None, "2")],
        True,
    )


def test_event_type_resets_after_each_dispatch() -> None:
    events, _ = decode(b"event: a\ndata: 1\n\ndata: 2\n\n")
    assert [e.event for e in events] == ["a", None]


def test_event_without_data_is_not_dispatched() -> None:
    events, _ = decode(b"event: ping\n\ndata: x\n\n")
    assert events == [SSEEvent(None, "x")]


def test_comments_only_give_no_events() -> None:
    assert decode(b": OPENROUTER PROCESSING\n\n: keep-alive\n\n") == ([], True)


def test_leading_bom_is_stripped_once() -> None:
    events, _ = decode(b"\xef\xbb", b"\xbfdata: x\n\n")
    assert events == [SSEEvent(None, "x")]
    # A BOM later in the stream is data, not a marker.
    events, _ = decode("data: \ufeffy\n\n".encode())
    assert events == [SSEEvent(None, "\ufeffy")]


def test_id_with_nul_is_ignored() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n")
    assert [e.id for e in events] == ["1", "1"]
    assert decoder.last_event_id == "1"


def test_empty_event_name_means_message() -> None:
    assert decode(b"event:\ndata: x\n\n")[0] == [SSEEvent(None, "x")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events, clean = decode(b"data: a\xffb\n\n")
    assert events == [SSEEvent(None, "a\ufffdb")]
    assert clean


class TestClose:
    def test_clean_on_event_boundary(self) -> None:
        assert decode(b"data: a\n\n") == ([SSEEvent(None, "a")], True)

    def test_empty_stream_is_clean(self) -> None:
        assert decode() == ([], True)

    def test_pending_event_is_flushed_but_not_clean(self) -> None:
        # Dispatched anyway: a final usage chunk missing its blank line is still usage.
        assert decode(b"data: a\n\ndata: b\n") == (
            [SSEEvent(None, "a"), SSEEvent(None, "b")],
            False,
        )

    def test_unterminated_last_line_is_flushed_but_not_clean(self) -> None:
        assert decode(b'data: {"usa') == ([SSEEvent(None, '{"usa')], False)

    def test_cut_inside_a_character_is_not_clean(self) -> None:
        assert decode(b"data: a\n\n", "✅".encode()[:2]) == ([SSEEvent(None, "a")], False)

    def test_event_name_without_data_is_not_clean(self) -> None:
        assert decode(b"data: a\n\nevent: message_stop\n") == ([SSEEvent(None, "a")], False)


class TestSpeed:
    """Linear time: no re-scanning of a growing buffer."""

    def test_one_huge_line_in_small_chunks(self) -> None:
        payload = b"data: " + b"x" * 4_000_000 + b"\n\n"
        decoder = SSEDecoder()
        started = time.perf_counter()
        events = []
        for i in range(0, len(payload), 512):
            events += decoder.feed(payload[i : i + 512])
        elapsed = time.perf_counter() - started
        assert len(events) == 1 and len(events[0].data) == 4_000_000
        # Quadratic joining would take minutes here; linear takes tens of milliseconds.
        assert elapsed < 1.0

    def test_many_small_events(self) -> None:
        payload = b'event: content_block_delta\ndata: {"text":"hi"}\n\n' * 50_000
        decoder = SSEDecoder()
        started = time.perf_counter()
        count = 0
        for i in range(0, len(payload), 1400):
            count += len(decoder.feed(payload[i : i + 1400]))
        assert count == 50_000
        assert time.perf_counter() - started < 1.0


def test_an_oversized_line_is_dropped_and_the_next_event_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from devmeter import sse

    monkeypatch.setattr(sse, "MAX_LINE", 1000)
    monkeypatch.setattr(sse, "MAX_EVENT", 1000)
    decoder = SSEDecoder()
    events = decoder.feed(b"data: " + b"x" * 600)
    events += decoder.feed(b"x" * 600)  # the line outgrows the cap here, unterminated
    assert decoder._partial == []  # nothing of it is held
    events += decoder.feed(b'xx\n\ndata: {"ok": 1}\n\n')
    assert [e.data for e in events] == ['{"ok": 1}']
    assert decoder.dropped_events == 1


def test_an_event_of_many_data_lines_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    from devmeter import sse

    monkeypatch.setattr(sse, "MAX_EVENT", 1000)
    decoder = SSEDecoder()
    events = []
    for _ in range(50):
        events += decoder.feed(b"data: " + b"y" * 100 + b"\n")
    assert sum(len(d) for d in decoder._data) <= 1000
    events += decoder.feed(b"\ndata: done\n\n")
    assert [e.data for e in events] == ["done"]
    assert decoder.dropped_events == 1


# Two events over a 64-character cap between normal ones: one long line (ended by CRLF),
# one of many short data lines. Whatever the chunking, both are dropped, the rest parsed.
CAPPED_STREAM = (
    STREAM.decode()
    + "event: big\r\ndata: " + "x" * 200 + "\r\n\r\n"
    + "data: after one\n\n"
    + "".join(f"data: line {i:03}\n" for i in range(20)) + "\n"
    + "event: last\ndata: after two\n\n"
).encode()  # fmt: skip
CAPPED_EXPECTED = [
    *EXPECTED,
    SSEEvent(None, "after one", "7"),
    SSEEvent("last", "after two", "7"),
]


@pytest.mark.parametrize("seed", ["whole", "bytes", *range(200)])
def test_capped_events_are_dropped_at_any_chunk_boundary(
    seed: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devmeter import sse

    monkeypatch.setattr(sse, "MAX_LINE", 64)
    monkeypatch.setattr(sse, "MAX_EVENT", 64)
    data = CAPPED_STREAM
    if seed == "whole":
        chunks = [data]
    elif seed == "bytes":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 60)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    tail, clean = decoder.close()
    assert (events + tail, clean) == (CAPPED_EXPECTED, True)
    assert decoder.dropped_events == 2


# STREAM with "\n" line ends only, as providers send: chunks of whole events take the
# decoder's one-loop path (_whole_events), which must read them as the line path does.
LF_STREAM = STREAM.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
LF_CAPPED_STREAM = CAPPED_STREAM.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def event_chunks(data: bytes, per_chunk: int) -> list[bytes]:
    """`data` cut after every `per_chunk`-th blank line: chunks of whole events."""
    pieces = data.split(b"\n\n")
    ends = [*(piece + b"\n\n" for piece in pieces[:-1]), pieces[-1]]
    return [b"".join(ends[i : i + per_chunk]) for i in range(0, len(ends), per_chunk)]


@pytest.mark.parametrize("per_chunk", [1, 2, 3, 100])
def test_chunks_of_whole_events_read_as_byte_by_byte(
    per_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devmeter import sse

    whole_event_chunks = []
    one_loop = SSEDecoder._whole_events

    def counted(decoder: SSEDecoder, text: str) -> list[SSEEvent]:
        whole_event_chunks.append(text)
        return one_loop(decoder, text)

    monkeypatch.setattr(sse.SSEDecoder, "_whole_events", counted)
    chunks = event_chunks(LF_STREAM, per_chunk)
    assert decode(*chunks) == bytewise(LF_STREAM) == (EXPECTED, True)
    assert whole_event_chunks  # the one-loop path read them
    # An event still under way at a chunk's start is read line by line, then the path resumes.
    cut = LF_STREAM.index(b"data: first")
    assert decode(LF_STREAM[: cut + 4], LF_STREAM[cut + 4 :]) == (EXPECTED, True)


@pytest.mark.parametrize("per_chunk", [1, 2, 100])
def test_capped_events_in_chunks_of_whole_events(
    per_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devmeter import sse

    monkeypatch.setattr(sse, "MAX_LINE", 64)
    monkeypatch.setattr(sse, "MAX_EVENT", 64)
    decoder = SSEDecoder()
    events = [e for chunk in event_chunks(LF_CAPPED_STREAM, per_chunk) for e in decoder.feed(chunk)]
    tail, clean = decoder.close()
    assert (events + tail, clean) == (CAPPED_EXPECTED, True)
    assert decoder.dropped_events == 2
