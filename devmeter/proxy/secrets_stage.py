"""The secrets stage (devmeter/secrets): a request, or a turn on Codex's socket, that
holds a secret is refused or forwarded redacted, per `[secrets]`. Cursor's protobuf
requests too (secrets/cursor_stream.py): read whole, or frame by frame as they stream.

Fails open: a scanner bug lets the request through as sent, and says so, naming the
exception's type only (its message could quote the request's text).
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import http, websocket

from devmeter import fastjson
from devmeter.alerts import Block
from devmeter.proxy.flow_state import FlowState
from devmeter.proxy.refusal import refuse
from devmeter.secrets import cursor_stream as cursor_secrets
from devmeter.secrets.inspector import SecretInspector


class SecretsStage:
    def __init__(self, inspector: SecretInspector | None) -> None:
        self.inspector = inspector

    def request(
        self, flow: http.HTTPFlow, state: FlowState, doc: Any, body: bytes, now: float
    ) -> bytes:
        """Refuse the request (state.blocked then says why), or redact it; the body sent."""
        if self.inspector is None:
            return body
        if doc is None:  # not JSON: Cursor's protobuf read whole (a streamed one has no body yet)
            if state.endpoint.api == "cursor.chat" and body:
                return self._cursor_body(flow, state, body, now)
            return body
        try:
            outcome = self.inspector.inspect(state.endpoint.api, doc, state.attribution, now)
            if outcome.block is not None:
                refuse(flow, state, outcome.block)
            elif outcome.redacted:
                body = fastjson.dumps(doc)  # orjson: a 1 MB body in ~1 ms, not ~10
                flow.request.content = body
        except Exception as exc:
            reason = type(exc).__name__
            state.tap_error = f"devmeter secret scan failed (call let through): {reason}"
        return body

    def _cursor_body(self, flow: http.HTTPFlow, state: FlowState, body: bytes, now: float) -> bytes:
        """A Cursor request read whole: refused in its Connect error shape, or forwarded
        with the secret rewritten out of the protobuf."""
        assert self.inspector is not None
        try:
            outcome, rewritten = cursor_secrets.inspect_body(
                self.inspector, body, state.attribution, now
            )
            if outcome.block is not None:
                refuse(flow, state, outcome.block)
            elif rewritten is not None:
                flow.request.content = rewritten
                return rewritten
        except Exception as exc:
            reason = type(exc).__name__
            state.tap_error = f"devmeter secret scan failed (call let through): {reason}"
        return body

    def cursor_stream(
        self, flow: http.HTTPFlow, state: FlowState
    ) -> cursor_secrets.CursorStream | None:
        """The frame-by-frame inspection of a streamed Cursor request; None when off."""
        if self.inspector is None or state.endpoint.api != "cursor.chat":
            return None
        try:
            mode = self.inspector.policy.strictest_possible(state.attribution.repo)
            if mode == "off":
                return None
            if mode in ("block", "redact"):
                _unsized(flow.request)  # a frame rewritten changes the body's length
            return cursor_secrets.CursorStream(self.inspector, state.attribution, time.time)
        except Exception as exc:
            reason = type(exc).__name__
            state.tap_error = f"devmeter secret scan failed (call let through): {reason}"
            return None

    def websocket_message(
        self,
        state: FlowState,
        message: websocket.WebSocketMessage,
        now: float,
        doc: dict[str, Any] | None = None,
    ) -> Block | None:
        """A Codex turn on its socket: redacted in place, or the Block to refuse it with.
        `doc` is the turn already parsed for metering (a turn re-sends the conversation)."""
        if self.inspector is None:
            return None
        try:
            if doc is None:  # not a JSON object: scanned as before, or failed as before
                doc = fastjson.loads(message.content)
            outcome = self.inspector.inspect(state.endpoint.api, doc, state.attribution, now)
            if outcome.redacted:
                message.content = fastjson.dumps(doc)
            return outcome.block
        except Exception as exc:
            reason = type(exc).__name__
            state.tap_error = f"devmeter secret scan failed (turn let through): {reason}"
            return None


def _unsized(request: http.Request) -> None:
    """A streamed body whose length may change on the way: no declared length, chunked
    on HTTP/1 (HTTP/2 frames carry their own lengths)."""
    if "content-length" in request.headers:
        del request.headers["content-length"]
        if request.http_version.startswith("HTTP/1"):
            request.headers["transfer-encoding"] = "chunked"
