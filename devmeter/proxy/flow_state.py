"""What the Meter knows about one flow while it is under way, and the helpers every
stage shares to read it and to say what went wrong.

`FlowState` holds what the call is (endpoint, request, attribution) and how it is going
(its answer's parser, its refusal, its errors); each stage keeps its own fields in a
small state of its own, hung on the FlowState only when that stage has something to keep.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import http

from devmeter.alerts import Block
from devmeter.billing import Billing
from devmeter.decoding import Decoder
from devmeter.providers import Endpoint, ResponseParser, cursor, quota_headers
from devmeter.usage import Attribution, RequestInfo

if TYPE_CHECKING:  # the stages' own states (they import this module)
    from devmeter.proxy.guard_stage import GuardHold
    from devmeter.proxy.routing_stage import RouteState
    from devmeter.proxy.websocket_turns import SocketTurns

METADATA_KEY = "devmeter"

# (flow, its request, its headers with lower-case names, the provider host the client
# asked for, now) -> who made the call.
Attribute = Callable[[http.HTTPFlow, RequestInfo, Mapping[str, str], str, float], Attribution]


@dataclass
class FlowState:
    """What the meter knows about one flow while it is under way."""

    endpoint: Endpoint
    request: RequestInfo
    started: float
    attribution: Attribution
    host: str
    parser: ResponseParser | None = None
    decoder: Decoder | None = None
    done: bool = False
    tap_error: str | None = None
    blocked: str | None = None  # why devmeter refused the call (for the row)
    refused_by: Block | None = None  # ... and the block that did, kept on the row as data
    # The Cursor stage's: its request body, read as it streams to the upstream.
    request_reader: cursor.RequestReader | None = None
    upgrade: bool = False  # the client asked for a WebSocket
    # The response body could not be metered whole (over the decode budget).
    body_unread: bool = False
    # Why the request body was not read (too large, a bomb, a parser bug): for the row.
    request_note: str | None = None
    block: Block | None = None  # an unmetered request's refusal (guard_stage.unmetered_refusal)
    # Who pays (from the request's credential), and the answer's quota reading.
    billing: Billing = field(default_factory=Billing)
    quota: quota_headers.QuotaReading | None = None
    rate_events: quota_headers.RateLimitEvents | None = None
    # Each stage's own state, once it has something to keep.
    guard: GuardHold | None = None  # guard_stage.py
    route: RouteState | None = None  # routing_stage.py
    turns: SocketTurns | None = None  # websocket_turns.py


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    state = flow.metadata.get(METADATA_KEY)
    return state if isinstance(state, FlowState) else None


def release(flow: http.HTTPFlow, state: FlowState) -> None:
    """Let go of a recorded call's state: freed now rather than by the garbage collector,
    which would otherwise trace it along with the flow's own cycles, on every call. Later
    hooks (the `response` after the tap metered the body, an `error` as the client hangs
    up) then find nothing left to do, as they would for a call already recorded."""
    flow.metadata.pop(METADATA_KEY, None)
    if flow.response is not None and callable(flow.response.stream):
        flow.response.stream = True  # the tap holds the state; what is left passes as is


def short_traceback() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return " | ".join(line.strip() for line in lines[-3:])
