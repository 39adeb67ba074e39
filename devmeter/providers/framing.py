"""Response body framing: which bytes make up one JSON document or one event.

A response body is one of:
- an SSE stream (`text/event-stream`): events, each with a JSON payload;
- one JSON document (non-streaming responses, and JSON error bodies);
- a streamed JSON array of documents (Gemini's streamGenerateContent without alt=sse);
- anything else (an HTML 429 page from a gateway): kept only as a short error snippet.

The choice comes from the content type and the first non-blank byte, since error
bodies often arrive with a content type that does not match them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from devmeter import fastjson
from devmeter.sse import SSEDecoder

# A single JSON document larger than this (an embeddings response with thousands of
# vectors) is not parsed whole: only its head and tail are kept, and the usage-like
# keys are read from the tail, where every API puts them.
JSON_CAP = 16 * 1024 * 1024
TAIL_SIZE = 256 * 1024
_SNIFF_SKIP = b" \t\r\n\xef\xbb\xbf"  # whitespace and a UTF-8 BOM

OnEvent = Callable[[str | None, str, bool], None]  # (event name, data, flushed at close)
OnDocument = Callable[[Any, bool], None]  # (parsed JSON, is an element of a streamed array)


class BodyReader:
    """Routes body bytes to the parser's callbacks, whatever the framing."""

    def __init__(
        self,
        content_type: str,
        on_event: OnEvent,
        on_document: OnDocument,
        tail_keys: tuple[str, ...] = ("usage", "model"),
    ) -> None:
        self._content_type = (content_type or "").lower()
        self._on_event = on_event
        self._on_document = on_document
        self._tail_keys = tail_keys
        self.mode: str | None = None  # "sse", "json", "array" or "raw" once decided
        self._sniffed: list[bytes] = []
        # Made once the mode is known: a reader only ever needs one of them.
        self._sse: SSEDecoder | None = None
        self._json: _JsonBuffer | None = None
        self._array: _ArraySplitter | None = None
        self._raw = b""
        self._raw_size = 0
        self.bad_documents = 0  # array elements that were not valid JSON

    def feed(self, data: bytes) -> None:
        if self.mode is None:
            if self._sniffed:  # whitespace came first: decide on all of it
                data = b"".join([*self._sniffed, data])
            head = data.lstrip(_SNIFF_SKIP)
            if not head:
                self._sniffed = [data]
                return  # only whitespace so far: keep waiting
            self._sniffed = []
            self.mode = self._decide(head[:1])
            if self.mode == "sse":
                self._sse = SSEDecoder()
            elif self.mode == "json":
                self._json = _JsonBuffer()
            elif self.mode == "array":
                self._array = _ArraySplitter()
        if self.mode == "sse":
            assert self._sse is not None
            for event in self._sse.feed(data):
                self._on_event(event.event, event.data, False)
        elif self.mode == "json":
            assert self._json is not None
            self._json.feed(data)
        elif self.mode == "array":
            assert self._array is not None
            for element in self._array.feed(data):
                try:
                    doc = fastjson.loads(element)
                except ValueError:
                    self.bad_documents += 1
                    continue
                self._on_document(doc, True)
        else:
            self._raw_size += len(data)
            if len(self._raw) < 512:
                self._raw += data[: 512 - len(self._raw)]

    def detach(self) -> None:
        """Drop the parser's callbacks once it has its result. They refer back to the
        parser: a cycle that only the garbage collector could free, and the proxy's
        collector already has every flow's own cycles to trace, for every call."""
        self._on_event = self._on_document = _ignored

    def finish(self) -> tuple[bool, str | None]:
        """End of body: flush, and say whether it ended where its framing says it should.

        Returns (framing complete, error). Errors here are about the body itself
        (not JSON, cut short); errors the provider reported come through the callbacks.
        """
        if self.mode is None:
            return True, None  # empty body (e.g. a 204, or a HEAD): nothing to meter
        if self.mode == "sse":
            assert self._sse is not None
            events, clean = self._sse.close()
            for event in events:
                self._on_event(event.event, event.data, True)
            return clean, _dropped_error(self._sse.dropped_events, "SSE event")
        if self.mode == "json":
            assert self._json is not None
            doc, err = self._json.finish(self._tail_keys)
            if doc is not None:
                self._on_document(doc, False)
            return err is None, err
        if self.mode == "array":
            assert self._array is not None
            return self._array.closed, _dropped_error(self._array.dropped, "array element")
        return True, _raw_error(self._raw, self._raw_size, self._content_type)

    def _decide(self, first: bytes) -> str:
        if first == b"{":
            return "json"
        if first == b"[":
            # A JSON array streamed element by element (Gemini without alt=sse).
            return "array"
        if first == b"<":
            return "raw"  # an HTML error page, whatever the header says
        if "event-stream" in self._content_type:
            return "sse"
        if not self._content_type and first in b"de:ir":  # data:, event:, :, id:, retry:
            return "sse"
        return "raw"


def _dropped_error(count: int, what: str) -> str | None:
    if not count:
        return None
    return f"{count} {what}(s) over {JSON_CAP >> 20} MiB dropped unread"


def _ignored(*_: object) -> None:
    """What a detached reader calls: nothing more to parse."""


def _raw_error(head: bytes, size: int, content_type: str) -> str:
    """A short, single-line description of a non-JSON body, e.g. a gateway's 429 page."""
    text = head.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    text = re.sub(r"<[^>]*>", " ", text)
    snippet = " ".join(text.split())[:160]
    kind = content_type.split(";")[0].strip() or "unknown type"
    return f"non-JSON response body ({kind}, {size} bytes): {snippet}"


class _JsonBuffer:
    """Holds one JSON document's bytes, bounded: head and tail only past JSON_CAP."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._tail: bytearray | None = None  # set once the document outgrew JSON_CAP

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._tail is None:
            self._chunks.append(data)
            if self._size > JSON_CAP:
                self._tail = bytearray(b"".join(self._chunks)[-TAIL_SIZE:])
                self._chunks = []
        else:
            self._tail += data
            if len(self._tail) > 2 * TAIL_SIZE:  # trim in batches: amortised linear
                del self._tail[:-TAIL_SIZE]

    def finish(self, tail_keys: tuple[str, ...]) -> tuple[Any, str | None]:
        if self._tail is not None:
            found = _values_from_tail(bytes(self._tail), tail_keys)
            if not found:
                return None, f"JSON body of {self._size} bytes: no usage in its last bytes"
            return found, None
        body = b"".join(self._chunks)
        try:
            return fastjson.loads(body), None
        except ValueError:
            return None, f"truncated or malformed JSON body ({self._size} bytes)"


def _values_from_tail(tail: bytes, keys: tuple[str, ...]) -> dict[str, Any]:
    """Read top-level-looking `"key": value` pairs from the end of a huge JSON document."""
    text = tail.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    for key in keys:
        for match in reversed(list(re.finditer(rf'"{re.escape(key)}"\s*:\s*', text))):
            try:
                found[key] = decoder.raw_decode(text, match.end())[0]
                break
            except (ValueError, RecursionError):
                continue
    return found


# In a string only a quote (its end) or a backslash (escaping the next byte) matter;
# outside, only brackets and quotes. Both are ASCII, so they never occur inside a
# multi-byte UTF-8 sequence, and the splitter can work on raw bytes.
_OUTSIDE = re.compile(rb'[{}\[\]"]')
_INSIDE = re.compile(rb'["\\]')


class _ArraySplitter:
    """Cuts a streamed top-level JSON array into its elements' bytes, incrementally.

    The regexes jump between structural bytes in C, so the Python loop runs once per
    bracket or quote, not once per byte.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False  # a backslash ended the previous chunk
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._dropping = False  # the current element outgrew JSON_CAP: skipped to its end
        self.dropped = 0  # elements skipped for their size
        self.closed = False

    def feed(self, data: bytes) -> list[bytes]:
        elements: list[bytes] = []
        if self.closed:
            return elements
        pos = 0
        start = 0  # where the current element starts in this chunk
        n = len(data)
        while pos < n:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                m = _INSIDE.search(data, pos)
                if m is None:
                    pos = n
                    break
                pos = m.end()
                if m.group() == b"\\":
                    self._escape = True
                else:
                    self._in_string = False
                continue
            m = _OUTSIDE.search(data, pos)
            if m is None:
                pos = n
                break
            pos = m.end()
            c = m.group()
            if c == b'"':
                self._in_string = True
            elif c in (b"{", b"["):
                if self._depth == 1:
                    start = m.start()
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 1:
                    self._keep(data[start:pos])
                    if self._dropping:
                        self.dropped += 1
                    else:
                        elements.append(b"".join(self._parts))
                    self._parts = []
                    self._parts_size = 0
                    self._dropping = False
                elif self._depth <= 0:
                    self.closed = True
                    return elements
        if self._depth >= 2:
            self._keep(data[start:])
        return elements

    def _keep(self, part: bytes) -> None:
        """Hold a piece of the current element, unless it outgrew JSON_CAP (then drop it)."""
        if self._dropping:
            return
        self._parts_size += len(part)
        if self._parts_size > JSON_CAP:
            self._parts = []
            self._dropping = True
            return
        self._parts.append(part)
