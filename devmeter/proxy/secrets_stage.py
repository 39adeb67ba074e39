"""The secrets stage (devmeter/secrets): a request, or a turn on Codex's socket, that
holds a secret is refused or forwarded redacted, per `[secrets]`.

Fails open: a scanner bug lets the request through as sent, and says so, naming the
exception's type only (its message could quote the request's text).
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http, websocket

from devmeter.alerts import Block
from devmeter.proxy.flow_state import FlowState
from devmeter.proxy.refusal import refuse
from devmeter.secrets.inspector import SecretInspector


class SecretsStage:
    def __init__(self, inspector: SecretInspector | None) -> None:
        self.inspector = inspector

    def request(
        self, flow: http.HTTPFlow, state: FlowState, doc: Any, body: bytes, now: float
    ) -> bytes:
        """Refuse the request (state.blocked then says why), or redact it; the body sent."""
        if self.inspector is None or doc is None:
            return body
        try:
            outcome = self.inspector.inspect(state.endpoint.api, doc, state.attribution, now)
            if outcome.block is not None:
                refuse(flow, state, outcome.block)
            elif outcome.redacted:
                body = json.dumps(doc).encode()
                flow.request.content = body
        except Exception as exc:
            reason = type(exc).__name__
            state.tap_error = f"devmeter secret scan failed (call let through): {reason}"
        return body

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
                doc = json.loads(message.content)
            outcome = self.inspector.inspect(state.endpoint.api, doc, state.attribution, now)
            if outcome.redacted:
                message.content = json.dumps(doc).encode()
            return outcome.block
        except Exception as exc:
            reason = type(exc).__name__
            state.tap_error = f"devmeter secret scan failed (turn let through): {reason}"
            return None
