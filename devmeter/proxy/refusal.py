"""Refusals: a call the guard, an ask or the secret scan stops is answered in the
provider's own error shape, with a status clients do not retry (Cursor: an end-stream
frame), and a request that costs nothing passes a pause or a cap.
"""

from __future__ import annotations

from mitmproxy import http

from devmeter.alerts import Block
from devmeter.providers import costs_nothing, normalise_host, normalise_path
from devmeter.providers.refusal import refusal
from devmeter.proxy import streaming
from devmeter.proxy.flow_state import FlowState


def is_free(flow: http.HTTPFlow, host: str, upgrade: bool) -> bool:
    """Whether the request costs nothing, and so passes a pause or a cap."""
    path = normalise_path(flow.request.path)
    return costs_nothing(normalise_host(host), flow.request.method, path, upgrade)


def refuse(flow: http.HTTPFlow, state: FlowState, block: Block) -> None:
    """Answer in the provider's own error shape, with a status clients do not retry."""
    if flow.request.stream:
        # The body streamed on as it came (never the case for a call started in `request`
        # today; kept for safety): the provider has the call whatever devmeter does now,
        # so it finishes, metered, and counts against the cap, rather than costing money
        # with neither an answer nor a row to show for it.
        note = f"{block.message} (reached while the request streamed on: let through)"
        state.request_note = streaming.join_errors((state.request_note, note))
        return
    state.blocked, state.refused_by = block.message, block
    answer = refusal(state.endpoint.api, state.attribution.tool, block.message)
    flow.response = http.Response.make(answer.status, answer.body, answer.headers)
