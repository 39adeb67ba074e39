"""A hostile upstream: answers OpenAI's chat path with what a broken or malicious server
could send (decompression bombs, endless SSE lines, huge headers, huge downloads), on
plain HTTP on 127.0.0.1, for the fault suite (tests/test_hostile_input.py).

The request header ``x-hostile`` picks the answer. Each answer holds its last bytes back
until the test calls `release()`: the test makes a normal call through the proxy while
the hostile one is still in flight, which shows the proxy keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import zlib
from typing import Any

import brotli
import zstandard
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

BOMB_SIZE = 256 << 20  # decoded bytes of a bomb: far past devmeter's decode budget
USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
MB = 1 << 20


def chat_completion(content: str = "hi") -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }  # fmt: skip
        ],
        "usage": USAGE,
    }


@functools.cache
def bomb(encoding: str, error: bool = False) -> bytes:
    """A chat completion (or an error) whose text is BOMB_SIZE bytes of "A", compressed."""
    doc = {"error": {"message": "@@", "type": "invalid_request_error"}} if error else None
    head, tail = json.dumps(doc or chat_completion("@@")).encode().split(b"@@")
    raw = head + b"A" * BOMB_SIZE + tail
    if encoding == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        return c.compress(raw) + c.flush()
    if encoding == "br":
        return brotli.compress(raw, quality=5)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    raise ValueError(encoding)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk_event(delta: dict[str, Any], usage: dict[str, Any] | None = None) -> bytes:
    choices = [{"index": 0, "delta": delta, "finish_reason": None}] if delta else []
    return sse({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
                "choices": choices, "usage": usage})  # fmt: skip


class HostileUpstream:
    def __init__(self) -> None:
        self.port = 0
        self.started = threading.Event()  # a hostile answer has begun
        self._release = threading.Event()
        self.request_bytes = 0  # body bytes of the last request
        self.requests = 0
        self.refused_once = False  # fallback-bomb: the first request was refused
        self.last_byte_sent = 0.0  # time.monotonic() as a download's last MB is sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        self._release.set()

    def reset(self) -> None:
        self.started.clear()
        self._release.clear()
        self.request_bytes = 0
        self.requests = 0
        self.refused_once = False

    def __enter__(self) -> HostileUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                # The default executor's worker (the waits on `_release`) would outlive the
                # loop otherwise, and the test process is no longer thread-free (a forked
                # history import needs it to be: tests/test_import_forked.py).
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="hostile-upstream")
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(30)

    async def _wait_release(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._release.wait, 30)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            self.requests += 1
            self.request_bytes = 0
            if "websocket" in headers.get("upgrade", "").lower():
                await self._websocket(head, reader, writer)
                return
            mode = headers.get("x-hostile", "")
            if mode != "count-body":
                self.started.set()
            await self._read_body(reader, headers)
            await getattr(self, "_" + mode.replace("-", "_"))(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        if "chunked" in headers.get("transfer-encoding", ""):
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                self.request_bytes += len(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")  # the empty trailer section
            return
        remaining = int(headers.get("content-length", "0"))
        while remaining:
            data = await reader.read(min(remaining, MB))
            if not data:
                raise ConnectionError("client went away")
            remaining -= len(data)
            self.request_bytes += len(data)

    @staticmethod
    def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _chunked(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()

    # -- the answers -------------------------------------------------------------------

    async def _bomb(self, writer: asyncio.StreamWriter, encoding: str) -> None:
        body = bomb(encoding)
        writer.write(self._head("200 OK", [
            ("Content-Type", "application/json"), ("Content-Encoding", encoding),
            ("Content-Length", str(len(body)))]))  # fmt: skip
        writer.write(body[:-1])
        await writer.drain()
        await self._wait_release()
        writer.write(body[-1:])

    async def _fallback_bomb(self, writer: asyncio.StreamWriter) -> None:
        """First a 400 whose small brotli body is a bomb (a routed request refused), then
        the original request's normal answer (the routing fallback's re-send)."""
        if self.refused_once:  # gzip, as providers answer a client that accepts it
            body = zlib.compress(json.dumps(chat_completion()).encode(), wbits=31)
            writer.write(self._head("200 OK", [
                ("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(body)))]))  # fmt: skip
            writer.write(body)
            return
        self.refused_once = True
        body = bomb("br", error=True)
        writer.write(self._head("400 Bad Request", [
            ("Content-Type", "application/json"), ("Content-Encoding", "br"),
            ("Content-Length", str(len(body)))]))  # fmt: skip
        writer.write(body[:-1])
        await writer.drain()
        await self._wait_release()
        writer.write(body[-1:])

    async def _bomb_gzip(self, writer: asyncio.StreamWriter) -> None:
        await self._bomb(writer, "gzip")

    async def _bomb_br(self, writer: asyncio.StreamWriter) -> None:
        await self._bomb(writer, "br")

    async def _bomb_zstd(self, writer: asyncio.StreamWriter) -> None:
        await self._bomb(writer, "zstd")

    async def _sse_start(self, writer: asyncio.StreamWriter) -> None:
        writer.write(self._head("200 OK", [
            ("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))  # fmt: skip
        await self._chunked(writer, chunk_event({"role": "assistant", "content": "Hi"}))

    async def _sse_end(self, writer: asyncio.StreamWriter) -> None:
        await self._chunked(writer, chunk_event({"content": " there"}))
        await self._chunked(writer, chunk_event({}, USAGE) + b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")

    async def _sse_line(self, writer: asyncio.StreamWriter) -> None:
        """One 64 MB line that never ends until the test lets it."""
        await self._sse_start(writer)
        await self._chunked(writer, b'data: {"junk": "')
        for _ in range(64):
            await self._chunked(writer, b"a" * MB)
        await self._wait_release()
        await self._chunked(writer, b'"}\n\n')
        await self._sse_end(writer)

    async def _sse_data(self, writer: asyncio.StreamWriter) -> None:
        """64 MB of data: lines with no blank line to end their event, until released."""
        await self._sse_start(writer)
        line = b"data: " + b"b" * 1017 + b"\n"  # 1 KiB
        for _ in range(64):
            await self._chunked(writer, line * 1024)
        await self._wait_release()
        await self._chunked(writer, b"\n")
        await self._sse_end(writer)

    async def _download(self, writer: asyncio.StreamWriter) -> None:
        """256 MB of a file's content, on a path devmeter does not meter."""
        size = 256 * MB
        writer.write(self._head("200 OK", [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(size))]))  # fmt: skip
        block = b"\0" * MB
        for _ in range(size // MB - 1):
            writer.write(block)
            await writer.drain()
        await self._wait_release()
        self.last_byte_sent = time.monotonic()  # before the client can have it all
        writer.write(block)
        await writer.drain()

    async def _big_header(self, writer: asyncio.StreamWriter) -> None:
        body = json.dumps(chat_completion()).encode()
        writer.write(self._head("200 OK", [
            ("Content-Type", "application/json"), ("X-Junk", "j" * MB),
            ("Content-Length", str(len(body)))]))  # fmt: skip
        await writer.drain()
        await self._wait_release()
        writer.write(body)

    async def _websocket(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Accepts any WebSocket and pushes 128 frames of 1 MB, then waits to be released
        (the socket stays open: mitmproxy would keep every frame until it closes)."""
        proto = ServerProtocol(max_size=None)
        proto.receive_data(head)
        (handshake,) = proto.events_received()
        assert isinstance(handshake, WsRequest)
        proto.send_response(proto.accept(handshake))
        for data in proto.data_to_send():
            writer.write(data)
        self.started.set()
        frame = b"f" * MB
        for _ in range(128):
            proto.send_binary(frame)
            for data in proto.data_to_send():
                writer.write(data)
            await writer.drain()
        await self._wait_release()
        proto.send_close()
        for data in proto.data_to_send():
            writer.write(data)
        await writer.drain()

    async def _count_body(self, writer: asyncio.StreamWriter) -> None:
        """Answers a request whose (large) body it read and counted."""
        self.started.set()
        await self._wait_release()
        body = json.dumps(chat_completion()).encode()
        writer.write(self._head("200 OK", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]))  # fmt: skip
        writer.write(body)
