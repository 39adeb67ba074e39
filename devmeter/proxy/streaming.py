"""Bounds on what the proxy holds for one flow: bodies, headers, WebSocket frames.

Everything a client or an upstream sends passes through as it arrives; devmeter keeps
only what metering needs, within fixed limits, whatever the other side sends:

- request bodies over `REQUEST_BODY_LIMIT`, or of no declared length, are streamed
  through unread and metered by an estimate from their length (the provider's reported
  usage still counts);
- responses of paths devmeter does not meter are streamed, never buffered whole;
- compressed bodies are decoded for metering within `devmeter.decoding`'s budget;
- response headers over `RESPONSE_HEADERS_LIMIT` (which stall mitmproxy's HTTP/2
  encoder for every client) are replaced by a 502 that says why.

Pure helpers and small mitmproxy adapters; the Meter calls them from its hooks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import chain
from typing import Any

from mitmproxy import http

from devmeter import providers
from devmeter.decoding import decode_bounded, decoder_for
from devmeter.providers import Endpoint, ResponseParser, parse_request_doc
from devmeter.providers.lazy_doc import LAZY_FROM, LazyDoc
from devmeter.providers.lazy_prefix import PrefixMemory
from devmeter.usage import RequestInfo, ResponseResult, Usage

log = logging.getLogger(__name__)

# A request body over this is forwarded as it arrives, unread: Anthropic refuses requests
# over 32 MB, and every other API's limit for a model call is in the same range. Below it,
# the body is read whole (guard rails, routing, attribution read it before it is sent).
REQUEST_BODY_LIMIT = 32 << 20
# Response headers over this are refused: real ones are a few KB, and mitmproxy's HTTP/2
# encoder takes seconds per 256 KB, on the event loop every client shares.
RESPONSE_HEADERS_LIMIT = 64 << 10
# A refused rewritten request's error body is kept for the routing fallback only up to this.
FALLBACK_BODY_LIMIT = 1 << 20
# The fallback's own answer is held whole to replace the refusal: at most this much.
FALLBACK_ANSWER_LIMIT = 64 << 20
# Tokens per byte of a request body nobody read: JSON text runs ~4 bytes a token.
BYTES_PER_TOKEN = 4

REPLACED_KEY = "devmeter.replaced"  # flow.metadata: the body of devmeter's own 502


def body_framing(headers: http.Headers) -> tuple[int | None, bool]:
    """(the body length the headers declare, or None; whether the body is chunked), in
    one pass over the raw fields: each of mitmproxy's own header lookups walks them all."""
    length: int | None = None
    chunked = False
    for name, value in headers.fields:
        if len(name) == 14 and name.lower() == b"content-length":
            text = value.strip()
            length = int(text) if text.isdigit() else None
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            chunked = True
    return (None if chunked else length), chunked


def held_whole_if_read(request: http.Request, length: int | None, chunked: bool) -> bool:
    """Whether reading this request's body means holding one of unbounded size: over the
    limit, chunked, or an HTTP/2 (3) POST that declares no length."""
    if length is not None:
        return length > REQUEST_BODY_LIMIT
    return chunked or (request.method == "POST" and (request.is_http2 or request.is_http3))


def declared_length(headers: http.Headers) -> int | None:
    """The body length the headers declare, or None when they declare none (chunked)."""
    return body_framing(headers)[0]


def unread_request_info(
    endpoint: Endpoint,
    length: int | None,
    counted: list[int] | None = None,
    reason: str | None = None,
) -> RequestInfo:
    """What is known of a request whose body streams through unread (or could not be
    decoded, `reason`): an estimate of its prompt from its length, declared or `counted`
    as it passed (the provider's reported usage replaces it)."""
    if reason is None:
        limit = f"over the {REQUEST_BODY_LIMIT >> 20} MiB limit"
        size = "of no declared length" if length is None else f"of {length:,} bytes, {limit}"
        reason = f"request body {size}: streamed through unread, prompt estimated from its length"

    def estimate() -> int:
        size = counted[0] if counted is not None else length or 0
        return size // BYTES_PER_TOKEN

    return RequestInfo(
        model=endpoint.path_model,
        stream=endpoint.stream,
        facts={"request_error": reason},
        prompt_estimator=estimate,
    )


def counting_tap(counted: list[int]) -> Callable[[bytes], bytes]:
    """A request's stream callable: passes each chunk on, counting its bytes."""

    def tap(chunk: bytes) -> bytes:
        counted[0] += len(chunk)
        return chunk

    return tap


# The proxy's large request bodies, recently checked: the next turn of a conversation
# is checked only from where it differs (providers/lazy_prefix.py).
REQUEST_MEMORY = PrefixMemory()


def read_request(
    endpoint: Endpoint, body: bytes, lazy: bool = True
) -> tuple[RequestInfo, dict[str, Any] | LazyDoc | None, str | None]:
    """`parse_request_doc`, made total: whatever the body is (nested 10,000 deep, not
    UTF-8) or a bug in a parser, the call still gets its guard check and its row. The
    third value is the error for the row when the parser itself failed. `lazy`: a large
    body is a `LazyDoc` where it can be, each reader decoding only what it reads (False
    when a reader will read all of it)."""
    try:
        lazy_from = LAZY_FROM if lazy else None
        info, doc = parse_request_doc(endpoint, body, lazy_from, REQUEST_MEMORY)
        return info, doc, None
    except Exception as exc:
        reason = f"devmeter could not read the request: {type(exc).__name__}: {exc}"[:300]
        log.warning("devmeter: %s", reason)
        info = RequestInfo(
            model=endpoint.path_model, stream=endpoint.stream, facts={"request_error": reason}
        )
        return info, None, reason


def request_body(request: http.Request, encoding: str | None) -> tuple[bytes, str | None]:
    """The request body to meter: decoded when the client compressed it (`encoding`),
    within the limit, since a small compressed body can expand a thousandfold; and why
    it fell short, if it did."""
    raw = request.raw_content or b""
    if not encoding:
        return raw, None
    return decode_bounded(raw, encoding, REQUEST_BODY_LIMIT)


def header_bytes(headers: http.Headers) -> int:
    """Names and values, plus ": " and CRLF per field; summed in C (it runs every call)."""
    fields = headers.fields
    return len(b"".join(chain.from_iterable(fields))) + 4 * len(fields)


def oversized_headers_error(response: http.Response) -> str | None:
    """Why a response's headers are refused, or None when they are within the limit."""
    size = header_bytes(response.data.headers)
    if size <= RESPONSE_HEADERS_LIMIT:
        return None
    return (
        f"devmeter: the upstream sent {size:,} bytes of response headers, over the "
        f"{RESPONSE_HEADERS_LIMIT >> 10} KiB devmeter accepts; the response was dropped"
    )


def oversized_request_headers_error(request: http.Request) -> str | None:
    """Why a request's headers are refused (they would stall the same HTTP/2 encoder on
    the way to the provider), or None when they are within the limit."""
    size = header_bytes(request.data.headers)
    if size <= RESPONSE_HEADERS_LIMIT:
        return None
    return (
        f"devmeter: the request has {size:,} bytes of headers, over the "
        f"{RESPONSE_HEADERS_LIMIT >> 10} KiB devmeter passes on; it was not sent"
    )


def replace_with_error(flow: http.HTTPFlow, message: str, api: str) -> None:
    """Answer 502 in the provider's error shape instead of the upstream's response.

    Called from `responseheaders`: the upstream body still arrives, and is swallowed as
    it comes; the error body goes out at its end (or in `restore_replacement`, when the
    upstream sent no body and mitmproxy replaced it with the empty one it read).
    """
    body = json.dumps(error_body(api, 502, message)).encode()
    flow.response = http.Response.make(
        502, body, {"content-type": "application/json", "x-should-retry": "false"}
    )
    flow.metadata[REPLACED_KEY] = body

    def swallow(chunk: bytes) -> bytes:
        return b"" if chunk else body  # b"" is the end of the upstream's body

    flow.response.stream = swallow


def restore_replacement(flow: http.HTTPFlow) -> None:
    body = flow.metadata.get(REPLACED_KEY)
    if body is not None and flow.response is not None and not flow.response.raw_content:
        flow.response.content = body


def error_body(api: str, status: int, message: str) -> dict[str, Any]:
    """An error in the shape the client's SDK reads for `api` (its wire format's)."""
    return providers.error_body(api, status, message)


def fallback_body_too_large(response: http.Response) -> bool:
    """A refused rewrite's error body too large to keep whole, or of no declared length
    (mitmproxy would hold it whole, however large): passed on as it comes instead, with
    no fallback. Providers send their JSON errors with a length."""
    length = declared_length(response.headers)
    return length is None or length > FALLBACK_BODY_LIMIT


def fallback_error_text(response: http.Response) -> bytes:
    """A refused rewrite's (small, buffered) error body, decoded within the limit."""
    if response.raw_content is None:
        return b""  # streamed: mitmproxy already sent it on
    body, _ = decode_bounded(
        response.raw_content, response.headers.get("content-encoding"), FALLBACK_BODY_LIMIT
    )
    return body


async def read_capped(
    chunks: AsyncIterator[bytes], limit: int = FALLBACK_ANSWER_LIMIT
) -> tuple[bytes, str | None]:
    """A body read whole, up to `limit` bytes: the bytes (b"" past the limit) and why
    reading stopped, if it did (the rest is not read at all)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return b"", f"the answer is over the {limit >> 20} MiB devmeter holds to pass it on"
        parts.append(chunk)
    return b"".join(parts), None


def parse_whole_body(parser: ResponseParser, response: http.Response) -> str | None:
    """Feed a buffered body to the parser through the bounded decoder; why it stopped
    short, if it did."""
    raw = response.raw_content
    if not raw:
        return None
    decoder = decoder_for(response.headers.get("content-encoding"))
    if decoder is None:
        return "response body in an encoding devmeter cannot decode"
    decoder.feed(raw, parser.feed)
    return decoder.limit_error


def with_estimate_if_unread(
    result: ResponseResult, request: RequestInfo, stopped: bool
) -> ResponseResult:
    """A body metering stopped reading (over the decode budget) reported no usage:
    bill the prompt, estimated, rather than nothing."""
    if not stopped or result.usage is not None or result.output_text:
        return result
    usage = Usage(input_tokens=request.prompt_tokens() or 0, estimated=True)
    return ResponseResult(
        usage=usage,
        model=result.model,
        complete=False,
        output_chars=result.output_chars,
        output_text=result.output_text,
        error=result.error,
    )


def drop_frames(messages: list[Any]) -> None:
    """An unmetered WebSocket's frames: mitmproxy keeps every one until the socket closes."""
    del messages[:]


def join_errors(errors: Iterable[str | None]) -> str | None:
    kept = [e for e in errors if e]
    return "; ".join(kept) if kept else None
