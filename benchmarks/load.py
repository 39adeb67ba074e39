"""A lean asyncio HTTP/1.1 client for load: keep-alive, through a proxy (CONNECT + TLS) or direct.

httpx costs the client a few hundred microseconds per call; on two cores that is CPU the
proxy under test does not get. This client writes one request and reads one response per
call with nothing in between, so sustained figures measure the proxy, not the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

PROVIDER_HOST = "api.anthropic.com"
MESSAGES_BODY = (
    b'{"model":"claude-opus-5-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
)


def request_bytes(
    body: bytes = MESSAGES_BODY,
    host: str = PROVIDER_HOST,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    headers = {
        "Host": host,
        "User-Agent": "devmeter-bench/1",
        "Content-Type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant-bench",
        "Content-Length": str(len(body)),
        **(extra_headers or {}),
    }
    head = "POST /v1/messages HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


@dataclass(frozen=True)
class Target:
    """Where a client connects: `proxy` (host, port) with `ssl_context`, else `direct`."""

    direct: tuple[str, int] | None = None
    proxy: tuple[str, int] | None = None
    ssl_context: ssl.SSLContext | None = None


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        if target.proxy is None:
            assert target.direct is not None
            reader, writer = await asyncio.open_connection(*target.direct)
            return cls(reader, writer)
        reader, writer = await asyncio.open_connection(*target.proxy)
        writer.write(
            f"CONNECT {PROVIDER_HOST}:443 HTTP/1.1\r\nHost: {PROVIDER_HOST}:443\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT refused: {head[:80]!r}")
        await writer.start_tls(target.ssl_context, server_hostname=PROVIDER_HOST)  # type: ignore[arg-type]
        return cls(reader, writer)

    async def call(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked = None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if length is not None:
            return status, await self.reader.readexactly(length)
        if not chunked:
            raise ConnectionError("response without length on a keep-alive connection")
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return status, b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@dataclass
class LoadResult:
    calls: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


class ClientPool:
    """`concurrency` keep-alive clients on connections opened once and held across runs:
    sustained load without each run paying for connection setup (CONNECT, TLS, and
    devmeter's once-per-connection client process lookup) inside its measured window."""

    def __init__(
        self, target: Target, concurrency: int, request: bytes | list[bytes] | None = None
    ) -> None:
        self.target = target
        self.concurrency = concurrency
        # One request, or a sequence sent in turn across the clients (a growing
        # conversation's successive bodies): each call takes the next.
        self.payloads = request if isinstance(request, list) else [request or request_bytes()]
        self.payload = self.payloads[0]
        self._sent = 0
        self._conns: list[Connection | None] = []

    async def open(self) -> None:
        """Connect every client and send one call on each (per-connection work done)."""
        self._conns = list(
            await asyncio.gather(*(Connection.open(self.target) for _ in range(self.concurrency)))
        )
        for conn in self._conns:
            assert conn is not None
            await conn.call(self.payload)

    async def run(self, seconds: float) -> LoadResult:
        """Every client sends its next call when its last is answered, for `seconds`."""
        done = errors = 0
        deadline = time.monotonic() + seconds

        async def worker(slot: int) -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    conn = self._conns[slot]
                    if conn is None:
                        conn = self._conns[slot] = await Connection.open(self.target)
                    payload = self.payloads[self._sent % len(self.payloads)]
                    self._sent += 1
                    status, _ = await conn.call(payload)
                    if status != 200:
                        errors += 1
                except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
                    errors += 1
                    broken, self._conns[slot] = self._conns[slot], None
                    if broken is not None:
                        await broken.close()
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(worker(slot) for slot in range(len(self._conns))))
        return LoadResult(done, errors, time.monotonic() - start)

    async def close(self) -> None:
        for conn in self._conns:
            if conn is not None:
                await conn.close()
        self._conns = []


async def run_load(
    target: Target,
    concurrency: int,
    *,
    calls: int | None = None,
    seconds: float | None = None,
    reconnect_every: int = 0,
    request: bytes | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """`concurrency` keep-alive clients, each sending the next call when its last one is
    answered, until `calls` calls are done or `seconds` have passed. `reconnect_every`
    opens a new connection after that many calls (0: never), to also exercise per-connection
    state. `on_progress(done)` is called after every call (keep it cheap)."""
    assert calls is not None or seconds is not None
    payload = request or request_bytes()
    done = errors = 0
    issued = 0
    deadline = time.monotonic() + seconds if seconds is not None else None

    def take() -> bool:
        nonlocal issued
        if calls is not None and issued >= calls:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False
        issued += 1
        return True

    async def worker() -> None:
        nonlocal done, errors
        conn: Connection | None = None
        used = 0
        while take():
            try:
                if conn is None or (reconnect_every and used >= reconnect_every):
                    if conn is not None:
                        await conn.close()
                    conn, used = await Connection.open(target), 0
                status, _ = await conn.call(payload)
                used += 1
                if status != 200:
                    errors += 1
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
                errors += 1
                if conn is not None:
                    await conn.close()
                conn = None
            done += 1
            if on_progress is not None:
                on_progress(done)
        if conn is not None:
            await conn.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(done, errors, time.monotonic() - start)
