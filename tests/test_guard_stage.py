"""The guard stage's WebSocket turns: each turn's signals read the request class its
handshake carried, kept from the handshake's lowered headers (proxy/guard_stage.py), and
come out as the general path (`guard.request_signals` with the header looked up) does."""

from __future__ import annotations

from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from devmeter.attribution import lower_headers
from devmeter.budget import parse_budgets
from devmeter.guard import Guard, request_signals
from devmeter.providers import match_endpoint
from devmeter.proxy.flow_state import FlowState
from devmeter.proxy.guard_stage import GuardStage
from devmeter.routing.session_router import REQUEST_CLASS_HEADER
from devmeter.runaway import RunawayConfig
from devmeter.usage import Attribution, RequestInfo

NOW = 1_796_000_000.0
WHO = Attribution(tool="codex", session="0bcf16ce-9d3e-4f0a-b1c2-d3e4f5a6b7c8")

# A person typing, then a tool loop's result: the turn's human signal differs.
TYPED = [{"type": "input_text", "text": "fix the test"}]
HUMAN_TURN = {
    "type": "response.create",
    "model": "gpt-6.1-sol",
    "input": [{"type": "message", "role": "user", "content": TYPED}],
}
TOOL_TURN = {
    "type": "response.create",
    "model": "gpt-6.1-sol",
    "input": [
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"cmd": "ls"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "README.md"},
    ],
}


def handshake(request_class: str | None) -> tuple[http.HTTPFlow, FlowState]:
    headers = http.Headers(host="api.openai.com", upgrade="websocket", connection="Upgrade")
    if request_class is not None:
        headers[REQUEST_CLASS_HEADER] = request_class
    flow = tflow.tflow(req=tutils.treq(
        host="api.openai.com", port=443, scheme=b"https", authority=b"",
        path=b"/v1/responses", method=b"GET", content=b"", headers=headers,
    ))  # fmt: skip
    endpoint = match_endpoint("api.openai.com", "GET", "/v1/responses")
    assert endpoint is not None
    state = FlowState(endpoint, RequestInfo(), NOW, WHO, "api.openai.com", upgrade=True)
    return flow, state


@pytest.mark.parametrize("request_class", [None, "main", "auxiliary"])
@pytest.mark.parametrize("turn", [HUMAN_TURN, TOOL_TURN], ids=["human", "tool"])
def test_a_turn_reads_the_request_class_its_handshake_carried(
    request_class: str | None, turn: dict[str, Any]
) -> None:
    guard = Guard(parse_budgets({}), RunawayConfig(), fingerprint_key=b"k" * 32)
    stage = GuardStage(guard, lambda *a: WHO, lambda: NOW, None, ())
    flow, state = handshake(request_class)
    refused = stage.request(flow, state, None, lower_headers(flow.request.headers), 0, NOW)
    assert not refused
    assert state.guard is not None and state.guard.request_class == request_class

    general = request_signals(turn, flow.request.headers.get(REQUEST_CLASS_HEADER), b"k" * 32)
    assert stage.turn_signals(flow, state, turn) == general
    # The human signal is what the class decides: only a main (or unclassed) turn has one.
    assert (general[1] is None) == (request_class == "auxiliary")
    assert general[0] is not None


def test_a_turn_on_a_socket_the_guard_never_saw_looks_the_header_up() -> None:
    """No hold (a handshake the guard stage did not check): the header, read as before."""
    guard = Guard(parse_budgets({}), RunawayConfig(), fingerprint_key=b"k" * 32)
    stage = GuardStage(guard, lambda *a: WHO, lambda: NOW, None, ())
    flow, state = handshake("auxiliary")
    assert state.guard is None
    assert stage.turn_signals(flow, state, HUMAN_TURN) == request_signals(
        HUMAN_TURN, "auxiliary", b"k" * 32
    )
    assert stage.turn_signals(flow, state, HUMAN_TURN)[1] is None
