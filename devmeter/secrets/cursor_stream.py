"""Cursor's chat requests, inspected: a whole body, or Connect frames as they stream.

Cursor's chat is Connect-RPC with protobuf messages (devmeter/providers/cursor.py reads
them without a schema). A request read whole (`application/proto`) is inspected like any
other: warn beside it, block refuses it, redact rewrites the message. A streamed request
(`application/connect+proto`) stays open while its answer streams, and later frames
carry the tool results of the same call; each frame is inspected as it completes:

- warn: bytes pass as they arrive; each whole frame is read and scanned on the worker.
- block/redact: bytes are held until their frame is whole (the upstream cannot use part
  of a frame anyway) and the frame goes on rewritten when it holds a secret. Its call
  already streams an answer and cannot be refused any more, so `block` redacts here, and
  the finding says `redacted`.

Fails open: a frame that cannot be read, is larger than the proxy reads, or a bug, lets
the rest of the stream through as sent (and says so once).
"""

from __future__ import annotations

from collections.abc import Callable

from devmeter.providers import cursor
from devmeter.secrets.inspector import Outcome, SecretInspector
from devmeter.secrets.new_content import cursor_doc
from devmeter.usage import Attribution


def inspect_body(
    inspector: SecretInspector, body: bytes, who: Attribution, now: float
) -> tuple[Outcome, bytes | None]:
    """A whole Cursor request body: what to do with it, and its rewritten bytes when a
    secret was redacted (None: send it as it is). warn reads it on the worker."""
    mode = inspector.policy.strictest_possible(who.repo)
    if mode == "off":
        return Outcome(), None
    if mode == "warn":
        inspector.inspect_beside(
            lambda: [("message", text) for text in cursor.request_texts(body)], who, now
        )
        return Outcome(), None
    texts = cursor.request_texts(body)
    if not texts:
        return Outcome(), None
    doc = cursor_doc(list(texts))
    outcome = inspector.inspect("cursor.chat", doc, who, now)
    if not outcome.redacted:
        return outcome, None
    return outcome, cursor.rewrite_body(body, _replacements(texts, doc["texts"]))


def _replacements(before: list[str], after: list[str]) -> Callable[[str], str | None]:
    changed = {old: new for old, new in zip(before, after, strict=True) if old != new}
    return changed.get


class CursorStream:
    """The request side of one streamed Cursor call; `feed` is mitmproxy's stream hook."""

    def __init__(
        self, inspector: SecretInspector, who: Attribution, clock: Callable[[], float]
    ) -> None:
        self._inspector = inspector
        self._who = who
        self._clock = clock
        self._hold = inspector.policy.strictest_possible(who.repo) in ("block", "redact")
        self._buf = bytearray()
        self._through = False  # stopped reading: the rest passes as sent
        self.problem: str | None = None  # why it stopped, for the call's row

    def feed(self, chunk: bytes) -> list[bytes]:
        """What to send upstream for this chunk (b"": the request ended). Never raises."""
        if self._through:
            return [chunk] if chunk else []
        ready = self._frames(chunk)
        if not self._hold:
            return [chunk] if chunk else []
        if not chunk and self._buf:  # the stream ended inside a frame: send it on as is
            ready.append(bytes(self._buf))
            self._buf.clear()
        return ready

    def _frames(self, chunk: bytes) -> list[bytes]:
        """The whole frames now in the buffer, each as it goes on. Bytes that are not
        frames the proxy can hold end the reading: what is held goes on untouched."""
        buf = self._buf
        buf += chunk
        out: list[bytes] = []
        while len(buf) >= 5:
            flags = buf[0]
            length = int.from_bytes(buf[1:5], "big")
            if flags & ~0x03 or length > cursor.FRAME_CAP:
                self._through = True
                self.problem = "a Cursor request frame devmeter cannot read went on uninspected"
                if self._hold:
                    out.append(bytes(buf))
                buf.clear()
                return out
            if len(buf) < 5 + length:
                break
            frame = bytes(buf[: 5 + length])
            del buf[: 5 + length]
            if not self._hold:  # warn: the frame is read on the worker, beside the stream
                self._inspector.inspect_beside(
                    lambda frame=frame: [("message", t) for t in frame_texts(frame)],
                    self._who,
                    self._clock(),
                )
                continue
            try:
                out.append(self._inspect(frame))
            except Exception as exc:  # fail open; its type only: the text could be a secret
                self.problem = (
                    f"devmeter secret scan failed (frame let through): {type(exc).__name__}"
                )
                out.append(frame)
        return out

    def _inspect(self, frame: bytes) -> bytes:
        texts = frame_texts(frame)
        if not texts:
            return frame
        flags, payload = frame[0], frame[5:]
        doc = cursor_doc(list(texts))
        outcome = self._inspector.inspect("cursor.chat", doc, self._who, self._clock(), False)
        if not outcome.redacted:
            return frame
        return cursor.rewrite_frame(flags, payload, _replacements(texts, doc["texts"])) or frame


def frame_texts(frame: bytes) -> list[str]:
    """The texts of one whole Connect frame (none for the end-stream frame, a keep-alive
    or a payload that cannot be inflated)."""
    flags, payload = frame[0], frame[5:]
    if flags & 0x02 or not payload:
        return []
    readable = cursor.inflate(payload) if flags & 0x01 else payload
    if readable is None:
        return []
    texts: list[str] = []
    cursor.rewrite_payload(readable, lambda text: texts.append(text))
    return texts
