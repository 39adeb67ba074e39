"""What the Meter knows about one flow while it is under way, and the helpers every
stage shares to read it and to say what went wrong.

`FlowState` holds what the call is (endpoint, request, attribution, who pays, whether it
asks for a WebSocket) and what every stage reads or adds to (its answer's parser, its
refusal, the errors that go on its row); each stage keeps its own fields in a small state
of its own, hung on the FlowState only when that stage has something to keep. All of
them are slotted dataclasses: one of each is built on every call.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mitmproxy import http

from devmeter.alerts import Block
from devmeter.billing import Billing
from devmeter.providers import Endpoint, ResponseParser, cursor
from devmeter.usage import Attribution, RequestInfo

if TYPE_CHECKING:  # the stages' own states (they import this module)
    from devmeter.proxy.billing_reading import QuotaRead
    from devmeter.proxy.guard_stage import GuardHold
    from devmeter.proxy.metering_stage import ResponseTap
    from devmeter.proxy.routing_stage import RouteState
    from devmeter.proxy.websocket_turns import SocketTurns

METADATA_KEY = "devmeter"

# (flow, its request, its headers with lower-case names, the provider host the client
# asked for, now) -> who made the call.
Attribute = Callable[[http.HTTPFlow, RequestInfo, Mapping[str, str], str, float], Attribution]


# Who pays when no credential says (shared: Billing is frozen, and one is read per call).
_UNKNOWN_BILLING = Billing()


@dataclass(slots=True, weakref_slot=True)  # weakly referable: a test checks it is freed
class FlowState:
    """What the meter knows about one flow while it is under way."""

    # What the call is.
    endpoint: Endpoint
    request: RequestInfo
    started: float
    attribution: Attribution
    host: str
    upgrade: bool = False  # the client asked for a WebSocket (guard, metering, Meter)
    billing: Billing = _UNKNOWN_BILLING  # who pays, from the request's credential
    # How it is going, read or added to by every stage.
    parser: ResponseParser | None = None  # the answer's (metering, bounds, WebSocket)
    done: bool = False
    blocked: str | None = None  # why devmeter refused the call (for the row)
    refused_by: Block | None = None  # ... and the block that did, kept on the row as data
    # What goes in the row's error: a stage that failed (and let the call through) ...
    tap_error: str | None = None
    # ... and why the request body was not read (too large, a bomb, a parser bug).
    request_note: str | None = None
    # Each stage's own state, once it has something to keep.
    tap: ResponseTap | None = None  # metering_stage.py: the answer's decoder
    quota: QuotaRead | None = None  # billing_reading.py: the answer's quota reading
    request_reader: cursor.RequestReader | None = None  # cursor_stage.py: its body, streamed
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
