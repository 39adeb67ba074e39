"""HTTP/1.1 plumbing: read a request, write a reply with the scripted faults.

Deliberately small: one request at a time per connection (keep-alive), Content-Length or
chunked request bodies, chunked responses for streams. Faults are applied in this order:
format events -> break them (``malformed``) -> compress (``encoding``, flushed per event)
-> split (``chunking``) -> pace (``delay_ms``) -> cut (``cut_after``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .directives import Directives
from .providers import Event, Reply

MAX_HEAD = 1 << 20

_REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


@dataclass
class HttpRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in reversed(self.headers):
            if key.lower() == name:
                return value
        return default

    @property
    def header_dict(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers}

    @property
    def keep_alive(self) -> bool:
        connection = self.header("connection").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class BadRequest(Exception):
    pass


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> HttpRequest | None:
    """The next request on the connection, or None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("truncated request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("request head too large") from exc
    lines = head[:-4].decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise BadRequest(f"bad request line {lines[0]!r}") from exc
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    request = HttpRequest(method, target, version, headers, b"", head)
    if request.header("expect").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in request.header("transfer-encoding").lower():
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        request.body = b"".join(parts)
    elif request.header("content-length"):
        request.body = await reader.readexactly(int(request.header("content-length")))
    return request


def decode_body(body: bytes, encoding: str) -> bytes:
    """Undo a request's Content-Encoding (Codex may zstd-compress request bodies)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-untyped]

        return brotli.decompress(body)
    if encoding == "zstd":
        import zstandard  # type: ignore[import-untyped]

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise ValueError(f"unknown content-encoding {encoding!r}")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- formatting


def format_event(event: Event, style: str) -> bytes:
    if event.name == ":comment":
        return f":{event.data}\n\n".encode()
    data = event.data if isinstance(event.data, str) else dumps(event.data)
    if style == "raw":
        return data.encode()
    if style == "named":
        return f"event: {event.name}\ndata: {data}\n\n".encode()
    if style == "data-crlf":
        return f"data: {data}\r\n\r\n".encode()
    return f"data: {data}\n\n".encode()


def _victim(events: list[Event]) -> int:
    """The event to break: the first delta-ish one, else the middle."""
    for i, event in enumerate(events):
        if i and any(word in event.name for word in ("delta", "chunk")):
            return i
    return len(events) // 2


def wire_events(reply: Reply, d: Directives) -> list[tuple[str, bytes]]:
    """Events as (name, bytes) on the wire, before compression, with ``malformed`` applied."""
    events = reply.events or []
    out = [(e.name, format_event(e, reply.sse_style)) for e in events]
    if d.malformed and out:
        i = _victim(events)
        name, raw = out[i]
        if d.malformed == "json":
            body = raw.rstrip(b"\r\n")
            out[i] = (name, body[: max(1, len(body) * 2 // 3)] + raw[len(body) :])
        else:  # broken SSE framing: junk line, then two events run together
            junk = b"\xff\xfe this line has no field name and is not UTF-8\n"
            merged = raw.rstrip(b"\r\n") + b"\n"
            if i + 1 < len(out):
                merged += out[i + 1][1]
                del out[i + 1]
            out[i] = (name, junk + merged)
    return out


def reply_body_bytes(reply: Reply, d: Directives) -> bytes:
    body = reply.body
    raw = body if isinstance(body, bytes) else dumps(body).encode()
    if d.malformed:
        raw = raw[: max(1, len(raw) // 2)]
    return raw


# --------------------------------------------------------------------------- compression


class Compressor:
    """Streaming compressor, flushed after every event so each is decodable on arrival."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._obj: Any = None
        if encoding in ("gzip", "deflate"):
            self._obj = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
        elif encoding == "br":
            import brotli

            self._obj = brotli.Compressor()
        elif encoding == "zstd":
            import zstandard

            self._obj = zstandard.ZstdCompressor().compressobj()

    def chunk(self, data: bytes) -> bytes:
        if self.encoding in ("gzip", "deflate"):
            return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)
        if self.encoding == "br":
            return self._obj.process(data) + self._obj.flush()
        if self.encoding == "zstd":
            import zstandard

            return self._obj.compress(data) + self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return data

    def finish(self) -> bytes:
        if self.encoding in ("gzip", "deflate"):
            return self._obj.flush(zlib.Z_FINISH)
        if self.encoding == "br":
            return self._obj.finish()
        if self.encoding == "zstd":
            return self._obj.flush()
        return b""

    def whole(self, data: bytes) -> bytes:
        return self.chunk(data) + self.finish()


# --------------------------------------------------------------------------- writing


def head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BodyWriter:
    """Writes body bytes with the scripted chunking; HTTP chunked framing when ``chunked``."""

    def __init__(self, writer: asyncio.StreamWriter, d: Directives, chunked: bool) -> None:
        self.writer = writer
        self.chunked = chunked
        self.mode = d.chunking
        self.rng = random.Random(d.seed)

    def _pieces(self, data: bytes) -> list[bytes]:
        if self.mode == "bytes":
            return [data[i : i + 1] for i in range(len(data))]
        if self.mode == "random":
            pieces, i = [], 0
            while i < len(data):
                n = self.rng.randint(1, 24)
                pieces.append(data[i : i + n])
                i += n
            return pieces
        return [data] if data else []

    async def write(self, data: bytes, split: bool = True) -> None:
        for piece in self._pieces(data) if split else ([data] if data else []):
            if self.chunked:
                self.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.writer.write(piece)
            await self.writer.drain()
            if self.mode != "event":
                await asyncio.sleep(0)  # give each piece its own send()

    async def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


OnSent = Callable[[int, str, int], None]


async def send_reply(
    writer: asyncio.StreamWriter,
    reply: Reply,
    d: Directives,
    on_sent: OnSent,
    *,
    head_only: bool = False,
) -> bool:
    """Write ``reply``; False when the connection was cut (caller must not reuse it)."""
    compressor = Compressor(d.encoding)
    headers = [("Content-Type", reply.content_type), *reply.headers, *d.headers.items()]
    if d.encoding != "identity":
        headers.append(("Content-Encoding", d.encoding))
    delay = d.delay_ms / 1000

    if reply.events is None:
        body = compressor.whole(reply_body_bytes(reply, d))
        headers.append(("Content-Length", str(len(body))))
        if delay:
            await asyncio.sleep(delay)
        writer.write(head_bytes(reply.status, headers))
        out = BodyWriter(writer, d, chunked=False)
        if head_only:
            await out.end()
            return True
        if d.cut_after is not None:
            on_sent(0, "cut", max(1, len(body) // 2))
            await out.write(body[: max(1, len(body) // 2)], split=False)
            return False
        on_sent(0, "body", len(body))
        await out.write(body)
        await out.end()
        return True

    headers += [("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")]
    writer.write(head_bytes(reply.status, headers))
    await writer.drain()
    out = BodyWriter(writer, d, chunked=True)
    for index, (name, raw) in enumerate(wire_events(reply, d)):
        if index and delay:
            await asyncio.sleep(delay)
        data = compressor.chunk(raw)
        if d.cut_after is not None and index >= d.cut_after:
            on_sent(index, "cut", max(1, len(data) // 2))
            await out.write(data[: max(1, len(data) // 2)], split=False)
            return False
        on_sent(index, name, len(data))  # before writing: a reader never outruns the log
        await out.write(data)
    if d.cut_after is not None:  # cut after the last event: no terminating chunk
        return False
    await out.write(compressor.finish(), split=False)
    await out.end()
    return True
