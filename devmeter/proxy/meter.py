"""The Meter addon: mitmproxy hooks only, the work is in pure modules.

Fail open: every hook is guarded, so a metering bug never breaks the user's
request; the failure becomes a ledger row of its own instead of vanishing.
Answers pass through as they arrive: `responseheaders` installs a tap that
copies each chunk into the parser and returns it unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from mitmproxy import connection, http

from devmeter.alerts import Alert
from devmeter.ask import AskBook
from devmeter.attribution import lower_headers
from devmeter.billing import Accounts
from devmeter.control import ControlWatcher
from devmeter.decoding import decoder_for
from devmeter.guard import Guard
from devmeter.pricing import PriceOverride
from devmeter.providers import (
    BATCH_APIS,
    match_endpoint,
    new_response_parser,
    normalise_path,
    quota_headers,
)
from devmeter.proxy import streaming
from devmeter.proxy.ask_stage import AskStage
from devmeter.proxy.billing_reading import (
    read_quota,
    set_billing,
    sse_sink,
)
from devmeter.proxy.bounds_stage import BoundsStage
from devmeter.proxy.cursor_stage import CursorStage, request_whole
from devmeter.proxy.deadlines import HeaderDeadline
from devmeter.proxy.flow_state import (
    METADATA_KEY,
    Attribute,
    FlowState,
    release,
    short_traceback,
    state_of,
)
from devmeter.proxy.guard_stage import GuardStage
from devmeter.proxy.recorder import OnBilled, Record, Recorder
from devmeter.proxy.routing_stage import RoutingStage
from devmeter.proxy.secrets_stage import SecretsStage
from devmeter.proxy.upstream import UpstreamMapping
from devmeter.proxy.websocket_turns import WebSocketTurns
from devmeter.routing.session_router import Router
from devmeter.secrets.inspector import SecretInspector
from devmeter.usage import ResponseResult, Usage


class ClientLookup(Protocol):
    """Finds the process behind each client connection (server.ClientProcessLookup)."""

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None: ...

    def client_disconnected(self, client: connection.Client) -> None: ...


class Meter:
    def __init__(
        self,
        record: Record,
        attribute: Attribute,
        upstreams: dict[str, str] | None = None,
        overrides: tuple[PriceOverride, ...] = (),
        router: Router | None = None,
        guard: Guard | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        control: ControlWatcher | None = None,
        clock: Callable[[], float] = time.time,
        client_lookup: ClientLookup | None = None,
        deadline: HeaderDeadline | None = None,
        asks: AskBook | None = None,
        on_asks_changed: Callable[[list[dict[str, Any]]], None] | None = None,
        accounts: Accounts | None = None,
        on_billed: OnBilled | None = None,
        secrets: SecretInspector | None = None,
    ) -> None:
        # The lookup runs from the Meter's hooks rather than as an addon of its own:
        # mitmproxy calls every addon on every event, ~3 us an addon an event, 8 events
        # a call, whether it has a hook for the event or not.
        self._client_lookup = client_lookup
        self._deadline = deadline
        self._router = router
        self._routing = RoutingStage(router)
        self._cursor = CursorStage()
        self._secrets = SecretsStage(secrets)
        self._guard = guard
        self._guards = GuardStage(guard, attribute, clock, on_alert, overrides)
        self._on_alert = on_alert
        self._control = control
        self._attribute = attribute
        self._upstream = UpstreamMapping(upstreams)
        self._clock = clock
        self._accounts = accounts
        self._recorder = Recorder(record, clock, overrides, self._guards, self._routing, on_billed)
        # Batches already metered in this run (by path): a second read of the same results
        # or status bills nothing new. Least recent first, bounded.
        self._batches_read: OrderedDict[str, None] = OrderedDict()
        self._ask = AskStage(asks, clock, on_alert, on_asks_changed)
        self._bounds = BoundsStage(
            clock, attribute, accounts, self._guards, self._routing, self._recorder,
            self._apply_control,
        )  # fmt: skip
        self._turns = WebSocketTurns(
            clock, self._secrets, self._guards, self._ask, self._recorder, self._apply_control
        )

    def reconfigure(
        self, upstreams: Mapping[str, str], overrides: tuple[PriceOverride, ...]
    ) -> None:
        """A reloaded config's upstreams and prices, for the requests from now on."""
        self._upstream.reconfigure(upstreams)
        self._guards.overrides = overrides
        self._recorder.overrides = overrides

    # -- request ---------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        # Sync, returning a coroutine only for a connection's first request (mitmproxy
        # awaits it): who the client is must be known before a streamed request starts.
        if self._deadline is not None:
            self._deadline.requestheaders(flow)
        lookup = self._client_lookup.requestheaders(flow) if self._client_lookup else None
        if lookup is not None:
            return self._look_up_then_map(lookup, flow)
        return self._map_request(flow)

    async def _look_up_then_map(
        self, lookup: Coroutine[None, None, None], flow: http.HTTPFlow
    ) -> None:
        await lookup
        held = self._map_request(flow)
        if held is not None:
            await held

    def _map_request(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        """Map the request to its upstream; a coroutine when an ask holds a streamed one."""
        host = self._upstream.requestheaders(flow)
        if self._bounds.requestheaders(flow, host):
            return None
        held = self._stream_cursor_request(flow, host)
        if state_of(flow) is None and flow.response is None:
            self._bounds.stream_large_request(flow, host)
        # A streamed request connects upstream right after its headers: map it now.
        self._upstream.send_upstream(flow, host)
        return held

    def client_connected(self, client: connection.Client) -> None:
        if self._deadline is not None:
            self._deadline.client_connected(client)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self._deadline is not None:
            self._deadline.http_connect(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        if self._deadline is not None:
            self._deadline.client_disconnected(client)
        if self._client_lookup is not None:
            self._client_lookup.client_disconnected(client)

    def _stream_cursor_request(
        self, flow: http.HTTPFlow, host: str
    ) -> Coroutine[None, None, None] | None:
        """Cursor keeps its request open while the answer streams (Connect bidi streams):
        forward its body as it comes, reading a copy, or the call would never start."""
        try:
            if self._cursor.streams(flow, host):
                self._apply_control()
                return self._cursor.requestheaders(flow, host, self._start)
        except Exception:
            self._recorder.internal_error(flow, host, "requestheaders")
        return None

    def request(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        # Sync, returning a coroutine only for a request held by an ask (mitmproxy awaits
        # it, and serves other flows meanwhile).
        host = self._upstream.host_of(flow)
        try:
            self._apply_control()
            if state_of(flow) is None:  # Cursor's streamed requests started in requestheaders
                return self._start(flow, host)
        except Exception:
            self._recorder.internal_error(flow, host, "request")
        return None

    def _start(self, flow: http.HTTPFlow, host: str) -> Coroutine[None, None, None] | None:
        endpoint = match_endpoint(host, flow.request.method, flow.request.path)
        if endpoint is None:
            self._guards.unmetered_request(flow, host)
            return None
        if endpoint.api in BATCH_APIS and self._batch_read(flow, record=False):
            return None  # metered when first read; reading it again costs nothing
        now = self._clock()
        headers = lower_headers(flow.request.headers)  # once: mitmproxy's lookups are slow
        body, note = streaming.request_body(flow.request, headers.get("content-encoding"))
        if note is None:
            info, doc, note = streaming.read_request(endpoint, body)
        else:  # compressed past the limit: estimated from its compressed length
            raw_length = len(flow.request.raw_content or b"")
            info, doc = streaming.unread_request_info(endpoint, raw_length, reason=note), None
        state = FlowState(
            endpoint=endpoint,
            request=info,
            started=now,
            attribution=self._attribute(flow, info, headers, host, now),
            host=host,
            upgrade=headers.get("upgrade", "").lower() == "websocket",
            request_note=note,
        )
        flow.metadata[METADATA_KEY] = state
        set_billing(self._accounts, flow, state, headers)
        body = self._secrets.request(flow, state, doc, body, now)
        if state.blocked is not None:
            return None
        # Guard rails and routing fail open, each on its own: a bug in either must not
        # lose the metering of the call, nor stop it from reaching the provider.
        if self._guards.request(flow, state, doc, headers, len(body), now):
            return None
        # A WebSocket handshake is not held, as the guard lets it through: each turn on
        # the socket is asked about instead.
        held = (
            None
            if state.upgrade
            else self._ask.request(
                flow,
                state,
                now,
                lambda: self._routing.switch_target(state, headers, body, doc, now),
            )
        )
        if held is not None:
            return self._ask.hold(
                held,
                flow,
                state,
                self._apply_control,
                self._guards.block,
                lambda now: self._routing.request(flow, state, headers, body, doc, now),
            )
        self._routing.request(flow, state, headers, body, doc, now)
        return None

    def _batch_read(self, flow: http.HTTPFlow, record: bool) -> bool:
        """Whether these batch results were metered already; `record`: they are now."""
        key = normalise_path(flow.request.path)
        seen = key in self._batches_read
        if record:
            self._batches_read[key] = None
            self._batches_read.move_to_end(key)
            while len(self._batches_read) > 4096:
                self._batches_read.popitem(last=False)
        return seen

    def _apply_control(self) -> None:
        control = self._control.poll() if self._control is not None else None
        if control is None:
            return
        for session in self._ask.apply(control):
            if self._router is not None:
                self._router.switch(session)
        if self._guard is not None:
            self._guard.apply(control)
        if self._router is not None:
            self._router.set_mode(control.routing_mode or self._router.configured_mode)

    # -- response ----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if flow.response is None:
            return
        if flow.response.status_code == 101:
            if state is not None:  # Codex's WebSocket: its quota headers are here
                read_quota(state, lower_headers(flow.response.headers), self._clock())
            return
        if self._bounds.responseheaders(flow, state):
            return
        if state is None:
            flow.response.stream = True  # not metered: pass it on as it arrives, unheld
            return
        if self._routing.responseheaders(flow, state):
            return  # a refused rewrite: keep the (small) error body for a fallback
        headers = lower_headers(flow.response.headers)  # once: mitmproxy's lookups are slow
        read_quota(state, headers, self._clock())
        try:
            state.parser = new_response_parser(
                state.endpoint, state.request, headers.get("content-type", "")
            )
            state.decoder = decoder_for(headers.get("content-encoding"))
        except Exception:
            state.tap_error = short_traceback()
            return  # buffered instead, and parsed whole in `response`
        # Every answer passes through as it arrives, whole bodies too: holding one back
        # until its last byte costs the client ~2 ms a call. A body with a length is
        # metered as its last chunk goes by, before the client has all of it; any other
        # ends only after the `response` hook, which meters it. Either way a row is on
        # disk before the client has the whole answer.
        flow.response.stream = _tap(
            state, _body_length(headers), lambda: self._finish(flow, complete_hint=True)
        )
        if state.host == "chatgpt.com" and "event-stream" in headers.get("content-type", ""):
            state.rate_events = quota_headers.RateLimitEvents(self._clock())

    def response(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        # Sync, returning a coroutine only for a rewritten request (mitmproxy awaits what
        # a hook returns): every other answer is metered and sent in one step.
        streaming.restore_replacement(flow)
        state = state_of(flow)
        if state is None:
            return None  # not metered, or recorded already (the tap metered the whole body)
        if self._routing.may_fall_back(flow, state):
            return self._fall_back_and_finish(flow, state)
        self._finish(flow, complete_hint=True)
        return None

    async def _fall_back_and_finish(self, flow: http.HTTPFlow, state: FlowState) -> None:
        await self._routing.response(flow, state)
        self._finish(flow, complete_hint=True)

    def error(self, flow: http.HTTPFlow) -> None:
        # Client hung up, upstream reset, or the upstream never answered.
        self._finish(flow, complete_hint=False)

    def _finish(self, flow: http.HTTPFlow, complete_hint: bool) -> None:
        state = state_of(flow)
        if state is None or state.done:
            return
        if flow.websocket is not None:
            # An accepted WebSocket handshake (101) is not a call: websocket_message records
            # each response on the socket, and websocket_end what is still in flight.
            return
        refused_upgrade = (
            state.upgrade and flow.response is not None and flow.response.status_code != 101
        )
        if refused_upgrade and state.blocked is None:
            return  # the server declined the WebSocket; the client falls back to HTTPS
        state.done = True
        try:
            status = flow.response.status_code if flow.response is not None else None
            result = _result(state)
            if state.request_reader is not None:
                # The request streamed alongside the answer: only now is it whole.
                state.request, result = request_whole(state.request_reader, result)
            if (
                flow.response is not None
                and state.parser is None
                and flow.response.raw_content
                and not state.endpoint.api.endswith(".unmetered")  # a refusal: no parser
            ):
                # Not streamed through the tap (an error installing it, a fallback's answer):
                # parse the whole body, decoded within the same budget as a stream.
                parser = new_response_parser(
                    state.endpoint, state.request, flow.response.headers.get("content-type", "")
                )
                stopped = streaming.parse_whole_body(parser, flow.response)
                result = parser.result()
                if stopped is not None:
                    state.tap_error, state.body_unread = stopped, True
            if state.endpoint.api == "openai.batch" and result.usage is None:
                self._guards.settle(state)  # the status of a batch still running: no call yet
                release(flow, state)
                return
            result = streaming.with_estimate_if_unread(result, state.request, state.body_unread)
            batch_cut = state.endpoint.api in BATCH_APIS and not complete_hint
            if batch_cut:
                # Metered when read whole: counting part of it now would count that part
                # twice when the client reads it again.
                result = ResponseResult(
                    usage=Usage(),
                    model=result.model,
                    complete=False,
                    error="batch read cut short: metered when it is read whole",
                )
            if not complete_hint and result.complete and result.usage is None:
                result = ResponseResult(usage=None, complete=False, model=result.model)
            error = streaming.join_errors(
                (state.request_note, state.tap_error or (str(flow.error) if flow.error else None))
            )
            self._recorder.record_settled(
                state,
                self._recorder.priced_call(
                    state,
                    result,
                    status,
                    ts=state.started,
                    duration_ms=int((self._clock() - state.started) * 1000),
                    error=error,
                ),
            )
            if state.endpoint.api in BATCH_APIS and status == 200 and not batch_cut:
                self._batch_read(flow, record=True)
            # Batch results name several models: a row for each further one. (Other
            # parsers' take_completed is for WebSocket turns, not HTTP bodies.)
            parser = state.parser
            if state.endpoint.api == "anthropic.batch_results" and parser and not batch_cut:
                for more in parser.take_completed():
                    self._recorder.record_settled(
                        state,
                        self._recorder.priced_call(state, more, status, ts=state.started),
                    )
        except Exception:
            self._recorder.internal_error(flow, state.host, "response")
            return
        release(flow, state)

    # -- WebSocket (Codex CLI's Responses transport) -------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._turns.websocket_start(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        return self._turns.websocket_message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._turns.websocket_end(flow)


def _tap(
    state: FlowState, length: int | None, on_complete: Callable[[], None]
) -> Callable[[bytes], bytes]:
    """The stream callable: must never raise, or mitmproxy hangs the client.

    `length`: the body's declared length; once that much went by, `on_complete` runs
    before the last chunk is handed on.
    """
    received = 0

    def tap(chunk: bytes) -> bytes:
        nonlocal received
        if state.tap_error is None and state.parser is not None and state.decoder is not None:
            try:
                sink = state.parser.feed if state.rate_events is None else sse_sink(state)
                state.decoder.feed(chunk, sink)
                if state.decoder.limit_error is not None:
                    state.tap_error, state.body_unread = state.decoder.limit_error, True
            except Exception:
                state.tap_error = f"could not read the response: {short_traceback()}"
        received += len(chunk)
        if length is not None and chunk and received >= length and not state.done:
            with contextlib.suppress(Exception):  # _finish records its own failures
                on_complete()
        return chunk

    return tap


def _body_length(headers: Mapping[str, str]) -> int | None:
    """The body's length when the headers fix it (not chunked), else None."""
    if "transfer-encoding" in headers:
        return None
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _result(state: FlowState) -> ResponseResult:
    if state.parser is None:
        return ResponseResult(usage=None, complete=False)
    if state.decoder is None and state.tap_error is None:
        state.tap_error = "response body in an encoding devmeter cannot decode"
    return state.parser.result()
