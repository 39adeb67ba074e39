"""`FakeUpstream`: one plain-HTTP server that answers as Anthropic, OpenAI, Gemini & co.

See the package docstring (``tests/fake_upstream/__init__.py``) for how to use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from . import providers as p
from .directives import Defaults, DirectiveError, Directives, check_layer, from_headers, resolve
from .wire import (
    BadRequest,
    HttpRequest,
    decode_body,
    dumps,
    read_request,
    send_reply,
    wire_events,
)


@dataclass
class RecordedRequest:
    """One request the fake upstream received (a WebSocket message is one too, method "WS")."""

    id: int
    method: str
    #: Path with query, as sent (``/v1/messages?beta=true``).
    path: str
    #: The Host header: the original provider host when it came through the proxy.
    host: str
    #: Header names lower-cased (last value wins); ``raw_headers`` keeps order and case.
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes
    #: Parsed JSON body (None when absent or not JSON).
    json: Any
    #: The model asked for: body ``model``, or the model in a Gemini URL path.
    model: str | None
    #: What it hit: ``anthropic.messages``, ``openai.responses.ws``, ``aux.anthropic`` (Claude
    #: Code's non-API calls), ``unknown`` (answered 404); see ``_route``.
    endpoint: str
    stream: bool
    #: ``time.monotonic()`` when the request (or WebSocket message) was fully read.
    time: float
    status: int | None = None
    directives: Directives | None = None
    #: For WebSocket messages, the id of the upgrade request.
    websocket_of: int | None = None

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def summary(self) -> dict[str, Any]:
        """JSON-able form (body as text), as served by ``GET /_fake/requests``."""
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        data["directives"] = asdict(self.directives) if self.directives else None
        return data


@dataclass
class SentEvent:
    """One SSE event / WebSocket message / body, logged just before its first byte is written."""

    request_id: int
    index: int
    #: SSE event name (``message_delta``, ``response.completed``, ``chunk``), ``body`` or ``cut``.
    name: str
    #: Bytes written (after compression).
    size: int
    #: ``time.monotonic()``: comparable across processes on the same machine.
    time: float


@dataclass
class _Queued:
    directives: dict[str, Any]
    path: str | None = None


# --------------------------------------------------------------------------- routing

Builder = Callable[[p.Ctx], p.Reply]

_GEMINI = re.compile(r"^/(?:v1|v1beta|v1alpha)/(?:.*/)?models/([^/:]+):(\w+)$")
_CLOUDCODE = re.compile(r"^/v1internal:(\w+)$")
_GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens")


def _route(method: str, route: str, host: str, *, upgrade: bool) -> tuple[str, str]:
    """(endpoint name, family) for a request; family picks the error body format."""
    host = host.split(":")[0].lower()
    responses = route in ("/v1/responses", "/backend-api/codex/responses")  # API key / ChatGPT
    if method == "GET" and responses and upgrade:
        return "openai.responses.websocket", "openai"
    if method == "GET" and route == "/v1/realtime" and upgrade:
        return "openai.realtime.websocket", "openai"
    if method == "GET" and re.fullmatch(r"/v1/messages/batches/[^/]+/results", route):
        return "anthropic.batch_results", "anthropic"
    if method == "GET" and re.fullmatch(r"/v1/batches/[^/]+", route):
        return "openai.batch", "openai"
    if method == "POST":
        if route == "/v1/messages":
            return "anthropic.messages", "anthropic"
        if route == "/v1/complete":
            return "anthropic.complete", "anthropic"
        if route == "/v1/images/generations":
            return "openai.images", "openai"
        if route == "/v1/audio/transcriptions":
            return "openai.transcription", "openai"
        if route == "/v1/messages/count_tokens":
            return "anthropic.count_tokens", "anthropic"
        if responses:
            return "openai.responses", "openai"
        if route == "/v1/embeddings":
            return "openai.embeddings", "openai"
        if route == "/api/v1/chat/completions" or (
            "openrouter" in host and route.endswith("/chat/completions")
        ):
            return "openrouter.chat", "openai"
        if route == "/chat/completions" or (
            "deepseek" in host and route.endswith("/chat/completions")
        ):
            return "deepseek.chat", "openai"
        if route == "/v1/chat/completions":
            return "openai.chat", "openai"
        if (m := _GEMINI.match(route)) and m.group(2) in _GEMINI_METHODS:
            return f"gemini.{m.group(2)}", "gemini"
        if m := _CLOUDCODE.match(route):
            if m.group(1) in _GEMINI_METHODS:
                return f"cloudcode.{m.group(1)}", "gemini"
            return "aux.cloudcode", "gemini"  # Gemini CLI's loadCodeAssist, onboardUser, …
    if route.startswith("/api/") or route.startswith("/mcp-registry/"):
        return "aux.anthropic", "anthropic"  # Claude Code's settings, flags, telemetry
    if route.startswith("/otlp/"):
        return "aux.otlp", "openai"  # Codex's metrics
    if method == "GET" and route == CHATGPT_ACCOUNTS_CHECK:
        return "aux.chatgpt", "openai"  # Codex's workspace discovery (a ChatGPT login)
    if "anthropic" in host:
        return "unknown", "anthropic"
    if "google" in host:
        return "unknown", "gemini"
    return "unknown", "openai"


def _lenient(path: str) -> str:
    """The route a lenient server (as many web frameworks are) takes a path to: `//`
    collapsed, %-escapes decoded, `;params` dropped, `.` and `..` resolved, no trailing
    slash, and the case of a path without a Gemini `:method` folded. The proxy must
    meter and cap every such spelling; this lets tests show that it does."""
    path = unquote(path)
    segments: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    route = "/" + "/".join(segments)
    return route if ":" in route else route.lower()


CHATGPT_ACCOUNTS_CHECK = "/backend-api/wham/accounts/check"


def _accounts_check(account_id: str) -> dict[str, Any]:
    """Codex 0.169's workspace discovery, answered for the account its `auth.json` names
    (the `chatgpt-account-id` header): it sends no turn with a ChatGPT login until the
    selected account is listed with a backend origin and a routing override it knows;
    `NO_CONSTRAINT` for both keeps the turns on chatgpt.com."""
    return {
        "accounts": [{
            "id": account_id, "name": "Fake workspace", "structure": "personal",
            "plan_type": "plus", "is_deactivated": False, "can_access_with_session": True,
            "is_fedramp_compliant_workspace": False,
            "workspace_backend_origin": "NO_CONSTRAINT",
            "account_routing_override": "NO_CONSTRAINT",
        }],
        "account_ordering": [account_id],
        "default_account_id": account_id,
    }  # fmt: skip


def _aux_answer(route: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Answers for the clients' non-API calls that let them start fast and quietly."""
    if route == CHATGPT_ACCOUNTS_CHECK:
        account = (headers or {}).get("chatgpt-account-id", "")
        if not account:
            return 401, {"detail": "fake upstream: no chatgpt-account-id"}
        return 200, _accounts_check(account)
    if route == "/v1internal:loadCodeAssist":
        return 200, {
            "currentTier": {"id": "standard-tier", "name": "Fake"},
            "cloudaicompanionProject": "fake-project",
        }
    if route == "/v1internal:onboardUser":
        return 200, {
            "done": True,
            "response": {"cloudaicompanionProject": {"id": "fake-project", "name": "fake-project"}},
        }
    if route.startswith("/v1internal:"):
        return 200, {}
    if route.startswith("/api/eval/"):
        return 200, {"features": {}}  # GrowthBook: no feature flags
    if route == "/api/claude_cli/bootstrap":
        return 200, {"client_data": None, "additional_model_options": []}
    if route == "/api/claude_code_penguin_mode":
        return 200, {"enabled": False, "disabled_reason": "fake upstream"}
    if route == "/api/claude_code/organizations/metrics_enabled":
        return 200, {"metrics_logging_enabled": False}
    if route.startswith("/api/event_logging/"):
        return 200, {}
    if route == "/api/claude_code/policy_limits":
        return 200, {"restrictions": {}}
    if route == "/api/claude_code/settings":
        return 404, {
            "type": "error",
            "error": {"type": "not_found_error", "message": "no managed settings"},
        }
    if route == "/api/directory/server-urls":
        return 200, {"servers": []}
    if route == "/mcp-registry/v0/servers":
        return 200, {"servers": [], "metadata": {"count": 0}}
    if route.startswith("/otlp/"):
        return 200, {"partialSuccess": {}}
    return 404, {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}


def _model_of(endpoint: str, route: str, body: Any) -> str | None:
    if endpoint.startswith("gemini.") and (m := _GEMINI.match(route)):
        return unquote(m.group(1))
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return body["model"]
    return None


def _builder(endpoint: str, query: dict[str, list[str]]) -> Builder | None:
    sse = query.get("alt", [""])[0] == "sse"
    table: dict[str, Builder] = {
        "anthropic.messages": p.anthropic_messages,
        "anthropic.count_tokens": p.anthropic_count_tokens,
        "anthropic.complete": p.anthropic_complete,
        "anthropic.batch_results": p.anthropic_batch_results,
        "openai.images": p.openai_images,
        "openai.batch": p.openai_batch,
        "openai.transcription": p.openai_transcription,
        "openai.chat": p.chat_completions,
        "openrouter.chat": lambda c: p.chat_completions(c, "openrouter"),
        "deepseek.chat": lambda c: p.chat_completions(c, "deepseek"),
        "openai.embeddings": p.embeddings,
        "openai.responses": p.responses,
        "gemini.generateContent": lambda c: p.gemini_generate(c, stream=False),
        "gemini.streamGenerateContent": lambda c: p.gemini_generate(c, stream=True, sse=sse),
        "gemini.countTokens": p.gemini_count_tokens,
        "cloudcode.generateContent": lambda c: p.gemini_generate(c, stream=False, wrapped=True),
        "cloudcode.streamGenerateContent": lambda c: p.gemini_generate(
            c, stream=True, sse=sse, wrapped=True
        ),
        "cloudcode.countTokens": p.gemini_count_tokens,
    }
    return table.get(endpoint)


# --------------------------------------------------------------------------- server


class FakeUpstream:
    """A fake LLM provider. ``with FakeUpstream() as up: ... up.url ...``.

    Keyword arguments become ``defaults`` (``FakeUpstream(delay_ms=50, websocket=False)``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **defaults: Any) -> None:
        self.host = host
        self.port = port
        self.defaults: Defaults = Defaults()
        self.defaults.update(defaults)
        self.requests: list[RecordedRequest] = []
        self.sent_events: list[SentEvent] = []
        self._queue: list[_Queued] = []
        self._lock = threading.Lock()
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    # ----------------------------------------------------------------- public API

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_next(self, path: str | None = None, **directives: Any) -> None:
        """Queue directives for the next metered request (whose path contains ``path``).

        Calls queue up in order: ``set_next(status=429); set_next(usage={...})`` scripts a
        failure then a success. Codex's prewarm (``generate: false``) does not consume entries.
        """
        entry = _Queued(check_layer(directives), path)
        with self._lock:
            self._queue.append(entry)

    def clear(self) -> None:
        """Forget recorded requests and sent events (defaults and queue stay)."""
        self.requests.clear()
        self.sent_events.clear()

    def reset(self) -> None:
        """Forget requests, events, queued entries and defaults."""
        with self._lock:
            self.requests.clear()
            self.sent_events.clear()
            self._queue.clear()
            dict.clear(self.defaults)

    def find(self, endpoint: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, filtered by endpoint prefix (``"anthropic."``) and method."""
        return [
            r
            for r in list(self.requests)
            if (endpoint is None or r.endpoint.startswith(endpoint))
            and (method is None or r.method == method)
        ]

    def wait_for(self, predicate: Callable[[FakeUpstream], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError("fake upstream: condition not met in time")
            time.sleep(0.01)

    def events_of(self, request: RecordedRequest | int) -> list[SentEvent]:
        rid = request if isinstance(request, int) else request.id
        return [e for e in list(self.sent_events) if e.request_id == rid]

    def start(self) -> FakeUpstream:
        """Serve from a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def start_async(self) -> None:
        """Bind and serve on the running loop (for the subprocess entry point)."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=1 << 24)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------- internals

    def _next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def _take_queued(self, route: str) -> dict[str, Any]:
        with self._lock:
            for i, entry in enumerate(self._queue):
                if entry.path is None or entry.path in route:
                    del self._queue[i]
                    return entry.directives
        return {}

    def _on_sent(self, request_id: int) -> Callable[[int, str, int], None]:
        def record(index: int, name: str, size: int) -> None:
            self.sent_events.append(SentEvent(request_id, index, name, size, time.monotonic()))

        return record

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.add(writer)
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except BadRequest as exc:
                    writer.write(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(str(exc)), str(exc).encode())
                    )
                    break
                if request is None:
                    break
                if not await self._dispatch(request, reader, writer):
                    break
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:  # a bug in the fake: say so rather than hang up silently
            text = traceback.format_exc()
            sys.stderr.write(f"fake upstream: internal error\n{text}")
            body = dumps({"error": {"type": "fake_upstream_bug", "message": text}}).encode()
            with contextlib.suppress(Exception):
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\nConnection: close"
                    b"\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        finally:
            self._connections.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Any,
        rec: RecordedRequest | None = None,
        head_only: bool = False,
    ) -> bool:
        if rec is not None:
            rec.status = status
        reply = p.Reply(status=status, body=body)
        return await send_reply(
            writer, reply, Directives(), self._on_sent(rec.id if rec else 0), head_only=head_only
        )

    async def _dispatch(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        route = _lenient(request.target.split("?", 1)[0])  # urlsplit reads `//x` as a host
        if route.startswith("/_fake/"):
            return await self._control(request, route, writer)
        headers = request.header_dict
        upgrade = "websocket" in headers.get("upgrade", "").lower()
        endpoint, family = _route(request.method, route, headers.get("host", ""), upgrade=upgrade)
        body_bytes, parsed = request.body, None
        try:
            body_bytes = decode_body(request.body, headers.get("content-encoding", ""))
            parsed = json.loads(body_bytes) if body_bytes else None
        except ValueError:
            pass
        rec = RecordedRequest(
            id=self._next_serial(),
            method=request.method,
            path=request.target,
            host=headers.get("host", ""),
            headers=headers,
            raw_headers=request.headers,
            body=body_bytes,
            json=parsed,
            model=_model_of(endpoint, route, parsed),
            endpoint=endpoint,
            stream=bool(isinstance(parsed, dict) and parsed.get("stream"))
            or "streamGenerateContent" in endpoint,
            time=time.monotonic(),
        )
        self.requests.append(rec)
        head_only = request.method == "HEAD"

        if endpoint == "unknown" or endpoint.startswith("aux."):
            if endpoint != "unknown":
                status, body = _aux_answer(route, headers)
            else:
                status = 404
                body = p.error_reply(
                    family, 404, f"fake upstream: no route for {request.method} {route}"
                ).body
            return await self._simple(writer, status, body, rec, head_only)

        try:
            # Queued entries are for model calls; a WebSocket's messages take their own.
            queued = {} if endpoint.endswith("websocket") else self._take_queued(route)
            d = resolve(dict(self.defaults), queued, from_headers(headers))
        except DirectiveError as exc:
            return await self._simple(
                writer,
                400,
                {"error": {"type": "fake_upstream_directive_error", "message": str(exc)}},
                rec,
            )
        rec.directives = d

        if endpoint in ("openai.responses.websocket", "openai.realtime.websocket"):
            return await self._websocket(request, rec, reader, writer, d)
        form = endpoint == "openai.transcription"  # multipart/form-data, not JSON
        if not isinstance(parsed, dict) and request.method != "GET" and not form:
            return await self._simple(
                writer,
                400,
                p.error_reply(family, 400, "fake upstream: request body is not a JSON object").body,
                rec,
            )

        if d.status != 200:
            reply = p.error_reply(family, d.status, serial=rec.id)
            if d.retry_after is not None:
                reply.headers.append(("retry-after", f"{d.retry_after:g}"))
        else:
            builder = _builder(endpoint, rec.query)
            if builder is None:  # pragma: no cover - _route only names endpoints with builders
                raise AssertionError(endpoint)
            model = rec.model or ("" if request.method != "GET" else route) or "unknown-model"
            ctx = p.Ctx(body=parsed or {}, model=model, d=d, serial=rec.id)
            reply = builder(ctx)
        rec.status = reply.status
        return await send_reply(writer, reply, d, self._on_sent(rec.id), head_only=head_only)

    # ----------------------------------------------------------------- WebSocket

    async def _websocket(
        self,
        request: HttpRequest,
        rec: RecordedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        d: Directives,
    ) -> bool:
        """Codex's transport: ``response.create`` in, ``response.*`` events out, per message."""
        if not d.websocket:
            rec.status = d.websocket_refuse_status
            await self._simple(
                writer,
                d.websocket_refuse_status,
                p.error_reply(
                    "openai",
                    d.websocket_refuse_status,
                    "fake upstream: WebSocket transport refused",
                ).body,
            )
            return False
        if d.status != 200:  # a scripted error refuses the handshake itself
            rec.status = d.status
            await self._simple(writer, d.status, p.error_reply("openai", d.status).body)
            return False
        proto = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()], max_size=None)
        proto.receive_data(request.raw_head)
        handshake = proto.events_received()[0]
        assert isinstance(handshake, WsRequest)
        response = proto.accept(handshake)
        response.headers["x-request-id"] = f"req_fake{rec.id:020d}"
        for name, value in d.headers.items():
            response.headers[name] = value
        proto.send_response(response)
        rec.status = response.status_code

        async def flush() -> bool:
            for data in proto.data_to_send():
                if data:
                    writer.write(data)
                else:
                    return False
            await writer.drain()
            return True

        if not await flush() or response.status_code != 101:
            return False
        if rec.endpoint == "openai.realtime.websocket":
            model = rec.query.get("model", ["gpt-realtime"])[0]
            session = {"type": "session.created", "session": {"id": "sess_fake", "model": model}}
            proto.send_text(dumps(session).encode())
            if not await flush():
                return False
        upgrade_layer = from_headers(rec.headers)
        while True:
            data = await reader.read(65536)
            if not data:
                proto.receive_eof()
                await flush()
                return False
            proto.receive_data(data)
            for frame in proto.events_received():
                if frame.opcode is not Opcode.TEXT:
                    continue
                if not await self._ws_message(proto, writer, rec, frame.data, upgrade_layer):
                    writer.transport.abort()
                    return False
            if not await flush():
                return False

    async def _ws_message(
        self,
        proto: ServerProtocol,
        writer: asyncio.StreamWriter,
        upgrade: RecordedRequest,
        data: bytes,
        upgrade_layer: dict[str, Any],
    ) -> bool:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        body = message if isinstance(message, dict) else {}
        if upgrade.endpoint == "openai.realtime.websocket":
            return await self._realtime_message(proto, writer, upgrade, data, body)
        prewarm = body.get("generate") is False
        rec = RecordedRequest(
            id=self._next_serial(),
            method="WS",
            path=upgrade.path,
            host=upgrade.host,
            headers=upgrade.headers,
            raw_headers=upgrade.raw_headers,
            body=bytes(data),
            json=message,
            model=_model_of("openai.responses.ws", upgrade.route, message),
            endpoint="openai.responses.ws",
            stream=True,
            time=time.monotonic(),
            websocket_of=upgrade.id,
        )
        self.requests.append(rec)
        try:
            queued = {} if prewarm else self._take_queued(upgrade.route)
            d = resolve(dict(self.defaults), queued, upgrade_layer)
        except DirectiveError as exc:
            d, error = Directives(), str(exc)
        else:
            error = None
        rec.directives = d
        on_sent = self._on_sent(rec.id)

        if body.get("type") != "response.create" or error or d.status != 200:
            status = d.status if d.status != 200 else 400
            rec.status = status
            err = p.error_reply("openai", status, error).body["error"]
            proto.send_text(dumps({"type": "error", "status": status, "error": err}).encode())
            on_sent(0, "error", 0)
            return True
        rec.status = 200
        ctx = p.Ctx(body=body, model=rec.model or "unknown-model", d=d, serial=rec.id)
        reply = p.responses(ctx, websocket=True)
        events = reply.events or []
        texts: list[tuple[str, bytes]] = [(e.name, dumps(e.data).encode()) for e in events]
        if d.malformed:
            broken = wire_events(p.Reply(events=events, sse_style="raw"), d)
            texts = [(name, raw) for name, raw in broken]
        for index, (name, text) in enumerate(texts):
            if index and d.delay_ms:
                await asyncio.sleep(d.delay_ms / 1000)
            proto.send_text(text)
            frames = b"".join(proto.data_to_send())
            if d.cut_after is not None and index >= d.cut_after:
                on_sent(index, "cut", max(1, len(frames) // 2))
                writer.write(frames[: max(1, len(frames) // 2)])
                await writer.drain()
                return False
            on_sent(index, name, len(frames))
            writer.write(frames)
            await writer.drain()
        return d.cut_after is None

    async def _realtime_message(
        self,
        proto: ServerProtocol,
        writer: asyncio.StreamWriter,
        upgrade: RecordedRequest,
        data: bytes,
        body: dict[str, Any],
    ) -> bool:
        """Realtime: each client event is recorded; a `response.create` is answered with
        `response.created` and `response.done` carrying the scripted usage (audio split)."""
        rec = RecordedRequest(
            id=self._next_serial(),
            method="WS",
            path=upgrade.path,
            host=upgrade.host,
            headers=upgrade.headers,
            raw_headers=upgrade.raw_headers,
            body=bytes(data),
            json=body,
            model=upgrade.query.get("model", [None])[0],
            endpoint="openai.realtime.ws",
            stream=True,
            time=time.monotonic(),
            websocket_of=upgrade.id,
            status=200,
        )
        self.requests.append(rec)
        if body.get("type") != "response.create":
            return True
        d = resolve(dict(self.defaults), {}, from_headers(upgrade.headers))
        for event in p.realtime_response(d, rec.id):
            proto.send_text(dumps(event).encode())
        writer.write(b"".join(proto.data_to_send()))
        await writer.drain()
        return True

    # ----------------------------------------------------------------- control API

    async def _control(
        self, request: HttpRequest, route: str, writer: asyncio.StreamWriter
    ) -> bool:
        """``/_fake/*``: script a subprocess server over HTTP (see the package docstring)."""
        try:
            body = json.loads(request.body) if request.body else {}
            if route == "/_fake/requests":
                return await self._simple(writer, 200, [r.summary() for r in self.requests])
            if route == "/_fake/events":
                return await self._simple(writer, 200, [asdict(e) for e in self.sent_events])
            if route == "/_fake/defaults":
                if request.method == "PUT":
                    dict.clear(self.defaults)
                if request.method in ("PUT", "POST"):
                    self.defaults.update(body)
                return await self._simple(writer, 200, dict(self.defaults))
            if route == "/_fake/next" and request.method == "POST":
                path = body.pop("path", None)
                self.set_next(path, **body)
                return await self._simple(writer, 200, {"queued": len(self._queue)})
            if route == "/_fake/reset" and request.method == "POST":
                self.reset()
                return await self._simple(writer, 200, {})
        except (ValueError, TypeError) as exc:
            return await self._simple(writer, 400, {"error": str(exc)})
        return await self._simple(writer, 404, {"error": f"no control route {route}"})
