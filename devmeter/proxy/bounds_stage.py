"""Bounds on what clients and upstreams send, on the request path: request headers too
large to pass on are refused; a request body too large to hold (or of no declared
length) streams on unread and is metered by an estimate from its length; response
headers too large become a 502. Each such call still gets its row, saying why.

The limits themselves are in streaming.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from mitmproxy import http

from devmeter.attribution import lower_headers
from devmeter.billing import Accounts
from devmeter.providers import Endpoint, match_endpoint, new_response_parser
from devmeter.proxy import streaming
from devmeter.proxy.billing_reading import set_billing
from devmeter.proxy.flow_state import METADATA_KEY, Attribute, FlowState
from devmeter.proxy.guard_stage import GuardStage
from devmeter.proxy.recorder import Recorder
from devmeter.proxy.routing_stage import RoutingStage

log = logging.getLogger(__name__)


class BoundsStage:
    def __init__(
        self,
        clock: Callable[[], float],
        attribute: Attribute,
        accounts: Accounts | None,
        guards: GuardStage,
        routing: RoutingStage,
        recorder: Recorder,
        apply_control: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._attribute = attribute
        self._accounts = accounts
        self._guards = guards
        self._routing = routing
        self._recorder = recorder
        self._apply_control = apply_control

    def requestheaders(self, flow: http.HTTPFlow, host: str) -> bool:
        """Request headers too large to pass on safely: answered 431 (or, when the body
        would have to be held whole first, the connection closed), never sent on."""
        error = streaming.oversized_request_headers_error(flow.request)
        if error is None:
            return False
        log.warning("%s (%s)", error, host)
        request = flow.request
        length, chunked = streaming.body_framing(request.headers)
        endpoint = match_endpoint(host, request.method, request.path)
        if endpoint is not None:  # a call refused: its row says why
            now = self._clock()
            info = streaming.unread_request_info(endpoint, length, reason=error)
            attribution = self._attribute(flow, info, lower_headers(request.headers), host, now)
            state = FlowState(
                endpoint=endpoint, request=info, started=now, attribution=attribution, host=host
            )
            state.blocked = error
            flow.metadata[METADATA_KEY] = state
        if streaming.held_whole_if_read(request, length, chunked):
            flow.kill()  # a 431 would wait for the whole body, held in memory
            return True
        api = endpoint.api if endpoint is not None else ""
        body = json.dumps(streaming.error_body(api, 431, error)).encode()
        flow.response = http.Response.make(
            431, body, {"content-type": "application/json", "x-should-retry": "false"}
        )
        return True

    def stream_large_request(self, flow: http.HTTPFlow, host: str) -> None:
        """A request body over the limit, or of no declared length (chunked, or an HTTP/2
        POST naming none, which mitmproxy would hold whole however large), goes through
        as it arrives, unread, and its call is metered by an estimate from its length
        (the provider's reported usage still counts). A cap or a pause still refuses it:
        before anything is sent, by closing the connection (no answer can go back before
        the client has sent its whole body, and holding that is what this avoids)."""
        try:
            request = flow.request
            length, chunked = streaming.body_framing(request.headers)
            if not streaming.held_whole_if_read(request, length, chunked):
                return
            endpoint = match_endpoint(host, request.method, request.path)
            if endpoint is None:
                # An upload to a path devmeter does not meter. Checked now: the `request`
                # hook of a streamed request only comes once its body went upstream.
                self._apply_control()
                refused = self._guards.unmetered_refusal(flow, host)
                if refused is not None:
                    refused.blocked = (
                        f"{refused.blocked} (devmeter closed the connection: a request body "
                        "that is not read cannot be answered before it is sent whole)"
                    )
                    flow.kill()  # the error hook records the refusal
                    return
                request.stream = True
                return
            self._apply_control()
            counted = [0]
            if not self._start_unread(flow, host, endpoint, length, counted):
                request.stream = streaming.counting_tap(counted)
        except Exception:
            self._recorder.internal_error(flow, host, "requestheaders")

    def _start_unread(
        self,
        flow: http.HTTPFlow,
        host: str,
        endpoint: Endpoint,
        length: int | None,
        counted: list[int],
    ) -> bool:
        """Start metering a call whose body will not be read; True if a cap refused it."""
        now = self._clock()
        info = streaming.unread_request_info(endpoint, length, counted)
        headers = lower_headers(flow.request.headers)
        state = FlowState(
            endpoint=endpoint,
            request=info,
            started=now,
            attribution=self._attribute(flow, info, headers, host, now),
            host=host,
            request_note=info.facts["request_error"],
        )
        flow.metadata[METADATA_KEY] = state
        set_billing(self._accounts, flow, state, headers)
        return self._guards.unread_request(flow, state, length, now)

    def responseheaders(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        """Response headers too large to pass on safely: the client gets a 502 instead,
        and the call's row says so."""
        assert flow.response is not None
        error = streaming.oversized_headers_error(flow.response)
        if error is None:
            return False
        log.warning("%s (%s)", error, flow.request.pretty_url)
        api = state.endpoint.api if state is not None else ""
        streaming.replace_with_error(flow, error, api)
        if state is not None:
            state.tap_error = error
            self._routing.forget_original(state)
            # A parser fed nothing: the row shows an answer with no usage, not complete
            # (rather than devmeter's own error body, parsed as if the provider sent it).
            state.parser = new_response_parser(state.endpoint, state.request, "")
        return True
