"""What every response parser shares: never raising, bounded text, the final result."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Protocol

from devmeter import fastjson
from devmeter.providers.framing import BodyReader
from devmeter.usage import NOT_A_NUMBER, RequestInfo, ResponseResult, Usage

# Output text kept for estimation when usage is missing: enough for a good ratio,
# small enough not to matter per connection. output_chars still counts everything.
TEXT_CAP = 256 * 1024
ERROR_CAP = 500


class ResponseParser(Protocol):
    """Reads one response (or one WebSocket's server messages) and concludes its usage."""

    def feed(self, data: bytes) -> None:
        """Decompressed body bytes, cut anywhere. Never raises; cheap per chunk."""

    def feed_message(self, text: str | bytes) -> None:
        """One WebSocket server message (Codex's Responses-over-WebSocket)."""

    def result(self) -> ResponseResult:
        """The conclusion once the body ended (idempotent)."""

    def take_completed(self) -> list[ResponseResult]:
        """Responses completed on a WebSocket since the last call (one row each)."""

    def take_unfinished(self) -> list[ResponseResult]:
        """Responses still in flight when the WebSocket closed, as complete=False."""


def as_int(value: Any) -> int:
    """A token count from JSON: ints, integral floats and numeric strings; else 0.

    Never raises: NaN and infinities (which `json` reads from `NaN`, `Infinity` and
    `1e999`) come back as NOT_A_NUMBER, for `usage.checked_usage` to flag. Range is
    not checked here; `metering.build_call` does that once for every wire format.
    """
    if type(value) is int:  # nearly always; bool is not `int` by type, so it falls through
        return value
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else NOT_A_NUMBER
    return 0


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# A provider's own message, as stored: enough to say what went wrong ("prompt is too
# long: 250000 tokens > 200000 maximum"), too short to carry much of anything else.
MESSAGE_CAP = 160

# What looks like a credential in an error message: provider keys (also masked, as in
# OpenAI's "Incorrect API key provided: sk-proj-****abcd"), Google keys and OAuth
# tokens, bearer tokens, "a key ending in abcd", and any long run of letters and digits
# (a token, a secret, a signature).
_SECRETS = re.compile(
    r"\b(?:sk|pk|rk|gsk|xai|sess)[-_][A-Za-z0-9_*\-.]{6,}"
    r"|\bAIza[0-9A-Za-z_\-]{20,}"
    r"|\bya29\.[0-9A-Za-z_\-.]+"
    r"|(?i:\bbearer\s+)\S+"
    r"|(?i:\b(?:ending|ends) (?:in|with)\s+)['\"]?[^\s'\".,;]+['\"]?"
    r"|\b(?=[A-Za-z0-9_\-+/=]*[0-9])(?=[A-Za-z0-9_\-+/=]*[A-Za-z])[A-Za-z0-9_\-+/=]{32,}"
)
# Quoted text this long is most likely the prompt echoed back ("Invalid value: '...'").
_LONG_QUOTE = re.compile(r"'[^']{32,}'|\"[^\"]{32,}\"|`[^`]{32,}`")


def scrub(text: str) -> str:
    """`text` without anything that looks like a key or token, or a quoted prompt."""
    text = _SECRETS.sub("[redacted]", text)
    return _LONG_QUOTE.sub("'[text removed]'", text)


def error_text(error: Any) -> str:
    """One short line from a provider's error object: its type, status or code, then
    its message, scrubbed and cut to MESSAGE_CAP characters.

    Provider messages can echo part of the key that was refused or of the prompt; the
    ledger keeps neither.
    """
    if isinstance(error, dict):
        kind = error.get("type") or error.get("status") or error.get("code")
        message = error.get("message")
        if isinstance(message, (dict, list)):
            message = json.dumps(message)
        if not kind and not message:
            message = json.dumps(error)
    else:
        kind, message = None, str(error)
    message = " ".join(scrub(str(message)).split()) if message else ""
    if len(message) > MESSAGE_CAP:
        message = message[: MESSAGE_CAP - 1] + "…"
    kind_text = " ".join(str(kind).split())[:60] if kind else ""
    return ": ".join(p for p in (kind_text, message) if p)[:ERROR_CAP]


class TextBuffer:
    """Output text for estimation, bounded at TEXT_CAP; counts every character."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._kept = 0
        self.chars = 0

    def add(self, text: Any) -> None:
        if not isinstance(text, str) or not text:
            return
        self.chars += len(text)
        if self._kept < TEXT_CAP:
            piece = text[: TEXT_CAP - self._kept]
            self._parts.append(piece)
            self._kept += len(piece)

    def value(self) -> str:
        return "".join(self._parts)


class BaseParser:
    """Feeds framing callbacks to a subclass's `on_event` / `on_document`, safely.

    Subclasses set `self.terminal` when the format's end marker arrives, record
    `self.model` / `self.error`, add output text to `self.text`, and implement
    `usage()`. Any exception inside parsing is caught, recorded, and stops further
    parsing of this response; the bytes keep flowing to the client regardless.
    """

    # Keys to read from the tail of a JSON body too large to parse whole.
    TAIL_KEYS: tuple[str, ...] = ("usage", "model")

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        self.request = request
        self.model: str | None = None
        self.response_id: str | None = None  # the provider's id, where the format has one
        self.error: str | None = None
        self.terminal = False
        self.text = TextBuffer()
        self.bad_events = 0
        self._broken = False
        self._result: ResponseResult | None = None
        self._reader = BodyReader(content_type, self._sse_event, self._document, self.TAIL_KEYS)

    # --- the ResponseParser protocol -------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._broken or self._result is not None or not data:
            return
        try:
            self._reader.feed(data)
        except Exception as exc:  # never let a parser bug reach the proxy's stream
            self._fail(exc)

    def feed_message(self, text: str | bytes) -> None:
        if self._broken:
            return
        try:
            obj = fastjson.loads(text)
        except ValueError:
            self.bad_events += 1
            return
        try:
            self.on_message(obj)
        except Exception as exc:
            self._fail(exc)

    def result(self) -> ResponseResult:
        if self._result is None:
            framing_ok, body_error = False, None
            try:
                framing_ok, body_error = self._reader.finish()
            except Exception as exc:
                self._fail(exc)
            try:
                self._result = self.build(framing_ok, body_error)
            except Exception as exc:  # the meter must always get a row to record
                self._fail(exc)
                self._result = ResponseResult(
                    usage=None, model=self.request.model, complete=False, error=self.error
                )
            self._reader.detach()
        return self._result

    def take_completed(self) -> list[ResponseResult]:
        return []

    def take_unfinished(self) -> list[ResponseResult]:
        return []

    # --- for subclasses --------------------------------------------------------------

    def on_event(self, name: str | None, obj: Any) -> None:
        raise NotImplementedError

    def on_document(self, obj: Any) -> None:
        """A whole JSON body (non-streaming response or error). Default: one event."""
        self.on_event(None, obj)

    def on_message(self, obj: Any) -> None:
        """A WebSocket message. Default: one event."""
        self.on_event(None, obj)

    def on_done(self) -> None:
        """`data: [DONE]`, OpenAI's end-of-stream sentinel."""
        self.terminal = True

    def usage(self) -> Usage | None:
        raise NotImplementedError

    def set_error(self, error: Any) -> None:
        self.error = error_text(error)

    def build(self, framing_ok: bool, body_error: str | None) -> ResponseResult:
        usage = None
        try:
            usage = self.usage()
        except Exception as exc:
            self._fail(exc)
        if self._reader.mode == "raw":
            self.terminal = True  # a whole non-JSON body (an error page) is complete as sent
        complete = framing_ok and self.terminal and not self._broken
        errors = [e for e in (self.error, body_error) if e]
        if self.bad_events:
            errors.append(f"{self.bad_events} events were not valid JSON")
        # Text is only worth keeping when something must be estimated from it.
        keep_text = usage is None or not complete
        return ResponseResult(
            usage=usage,
            model=self.model or self.request.model,
            complete=complete,
            output_chars=self.text.chars,
            output_text=self.text.value() if keep_text else "",
            error="; ".join(errors)[:ERROR_CAP] if errors else None,
            response_id=self.response_id,
        )

    # --- internals -------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        self._broken = True
        if self.error is None:
            self.error = f"parser error: {type(exc).__name__}: {exc}"[:ERROR_CAP]

    def _sse_event(self, name: str | None, data: str, flushed: bool) -> None:
        if data == "[DONE]":
            self.on_done()
            return
        try:
            obj = fastjson.loads(data)
        except ValueError:
            # An event cut by the end of the stream is truncation, not a bad event.
            if not flushed:
                self.bad_events += 1
            return
        self.on_event(name, obj)

    def _document(self, obj: Any, in_array: bool) -> None:
        if in_array:
            self.on_event(None, obj)
        else:
            self.terminal = True  # a whole JSON body arrived
            self.on_document(obj)
