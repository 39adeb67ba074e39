"""Incremental Server-Sent Events decoder, following the WHATWG "event stream" rules.

It runs on every chunk of every streamed response, so it does linear work only:
a chunk's text is split once, and an unterminated line is kept as a list of pieces
joined when its end arrives (never re-scanned, never concatenated per chunk).

Bytes may be cut anywhere, including inside a multi-byte UTF-8 character (an
incremental decoder holds the partial bytes) and between the `\\r` and `\\n` of a
CRLF (remembered in `_skip_lf`).

Bounded: a line longer than `MAX_LINE` characters, or an event whose data grows past
`MAX_EVENT`, is dropped as it arrives (never held whole) and counted in
`dropped_events`; parsing goes on with the next event. Real events stay far below:
the largest, a Responses `response.completed` or a partial image, is a few MB.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

# The spec's line terminators: CRLF, lone CR, lone LF. Not str.splitlines(), which
# also splits on \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029.
_LINE_END = re.compile(r"\r\n|\r|\n")

MAX_LINE = 16 << 20  # characters of one line
MAX_EVENT = 16 << 20  # characters of one event's data, all its lines together


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `event` is None when the stream named no type ("message")."""

    event: str | None
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed bytes as they arrive; get back the events they complete."""

    def __init__(self) -> None:
        # errors="replace": a stray invalid byte must not stop metering the stream.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # a leading BOM is only stripped once, at the very start
        self._skip_lf = False  # the previous chunk ended with "\r": a leading "\n" is its pair
        self._partial: list[str] = []  # pieces of the current, unterminated line
        self._partial_size = 0
        self._skipping_line = False  # the current line outgrew MAX_LINE: drop it to its end
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0
        self._oversized = False  # the current event outgrew a cap: dropped at its end
        self.last_event_id: str | None = None
        self.dropped_events = 0  # events dropped for their size

    def feed(self, data: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(data)
        return self._feed_text(text) if text else []

    def close(self) -> tuple[list[SSEEvent], bool]:
        """Flush at end of stream.

        Returns the events still pending and whether the stream ended cleanly on an
        event boundary. The spec discards an event the stream cut short; we dispatch
        it anyway (a final usage chunk sent without its blank line is still usage)
        and report the stream as not clean, so the caller can decide.
        """
        tail = self._decoder.decode(b"", final=True)
        clean = not tail  # a non-empty tail here is a replacement char for cut UTF-8
        events = self._feed_text(tail) if tail else []
        if self._partial or self._skipping_line:
            clean = False
            line = "".join(self._partial)  # "" for a dropped line: dispatches, and drops
            self._end_partial()
            event = self._line(line)
            if event is not None:
                events.append(event)
        if self._data or self._event is not None or self._oversized:
            clean = False
            event = self._dispatch()
            if event is not None:
                events.append(event)
        return events, clean

    def _feed_text(self, text: str) -> list[SSEEvent]:
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text and text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        if (
            text[-2:] == "\n\n"
            and not self._partial
            and not self._data
            and self._event is None
            and not self._oversized
            and not self._skipping_line
            and len(text) <= MAX_LINE
            and len(text) <= MAX_EVENT
            and "\r" not in text
        ):
            return self._whole_events(text)
        # Nearly every stream ends its lines with "\n" alone: without a "\r" in the text,
        # str.split gives the regex's lines at a fifth of its cost (per event, per stream).
        lines = text.split("\n") if "\r" not in text else _LINE_END.split(text)
        if len(lines) == 1:
            self._keep_partial(text)
            return []
        # A "\r" at the very end may be the first half of a CRLF cut by the chunking.
        self._skip_lf = text[-1] == "\r"
        # The first line ends the one held from earlier chunks; dropped if it is too long.
        drop_first = self._skipping_line or (self._partial_size + len(lines[0]) > MAX_LINE)
        if drop_first:
            self._oversized = True
        elif self._partial:
            self._partial.append(lines[0])
            lines[0] = "".join(self._partial)
        self._end_partial()
        events: list[SSEEvent] = []
        read_line = self._line
        for i in range(1 if drop_first else 0, len(lines) - 1):
            event = read_line(lines[i])
            if event is not None:
                events.append(event)
        if lines[-1]:  # after the complete lines: it may flag its event as oversized
            self._keep_partial(lines[-1])
        return events

    def _whole_events(self, text: str) -> list[SSEEvent]:
        """`_feed_text` for text of whole events, starting at an event's start: nearly
        every chunk of a provider's stream (each event flushed as it is made). What the
        line-by-line path does, in one loop: no line can outgrow MAX_LINE, nor an event
        MAX_EVENT, in text no longer than either; it ends where no event is under way."""
        events: list[SSEEvent] = []
        event_type: str | None = None
        data: list[str] = []
        for line in text[:-1].split("\n"):
            if not line:  # dispatch
                if data:
                    events.append(SSEEvent(event_type or None, "\n".join(data), self.last_event_id))
                    data = []
                event_type = None
                continue
            if line[0] == ":":
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                event_type = value
            elif field == "id" and "\0" not in value:
                self.last_event_id = value
        return events

    def _keep_partial(self, text: str) -> None:
        """Hold a piece of an unterminated line, unless the line grew past MAX_LINE."""
        if self._skipping_line:
            return
        if self._partial_size + len(text) > MAX_LINE:
            self._partial = []
            self._partial_size = 0
            self._skipping_line = True
            self._oversized = True  # the event it belongs to is dropped too
            return
        self._partial.append(text)
        self._partial_size += len(text)

    def _end_partial(self) -> None:
        self._partial = []
        self._partial_size = 0
        self._skipping_line = False

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if len(line) > MAX_LINE:  # a whole line in one chunk can be too long as well
            self._oversized = True
            return None
        if line[0] == ":":  # comment, e.g. OpenRouter's ": OPENROUTER PROCESSING"
            return None
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            if self._oversized:
                return None
            self._data_size += len(value) + 1
            if self._data_size > MAX_EVENT:
                self._data = []
                self._oversized = True
                return None
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self.last_event_id = value
        # "retry" and unknown fields are ignored, as the spec says.
        return None

    def _dispatch(self) -> SSEEvent | None:
        event_type, self._event = self._event, None
        if self._oversized:
            self._oversized = False
            self._data = []
            self._data_size = 0
            self.dropped_events += 1
            return None
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        self._data_size = 0
        return SSEEvent(event_type or None, data, self.last_event_id)
