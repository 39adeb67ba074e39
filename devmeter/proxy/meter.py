"""The Meter addon: the one addon devmeter registers with mitmproxy. Its hooks call the
stages, each an object in a module of its own with hook-named methods, in order:

  requestheaders  upstream.py (host asked for, --upstream), bounds_stage.py (oversized
                  headers; large bodies streamed unread), cursor_stage.py (Cursor's
                  streamed chat starts here)
  request         metering_stage.py (body read once, attribution, billing) ->
                  secrets_stage.py -> guard_stage.py (caps, reservation) ->
                  ask_stage.py (hold for an answer) -> routing_stage.py (rewrite)
  responseheaders bounds_stage.py -> routing_stage.py (hold a refused rewrite's error) ->
                  metering_stage.py (the parser tapped into the stream)
  response/error  routing_stage.py (fallback) -> metering_stage.py (row, via recorder.py)
  websocket_*     websocket_turns.py (each turn: secrets, guard, asks, its row)

Stages are not mitmproxy addons: mitmproxy calls every addon on every event (~3 us an
addon an event, 8 events a call), so one addon dispatches to all. What a stage keeps
about a flow is in its own small state on the flow's FlowState (flow_state.py).

Fail open: every hook is guarded, so a metering bug never breaks the user's
request; the failure becomes a ledger row of its own instead of vanishing.
Answers pass through as they arrive: `responseheaders` installs a tap that
copies each chunk into the parser and returns it unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from mitmproxy import connection, http

from devmeter.alerts import Alert
from devmeter.ask import AskBook
from devmeter.billing import Accounts
from devmeter.control import ControlWatcher
from devmeter.guard import Guard
from devmeter.pricing import PriceOverride
from devmeter.providers import match_endpoint
from devmeter.proxy import streaming
from devmeter.proxy.ask_stage import AskStage
from devmeter.proxy.bounds_stage import BoundsStage
from devmeter.proxy.cursor_stage import CursorStage
from devmeter.proxy.deadlines import HeaderDeadline
from devmeter.proxy.flow_state import Attribute, FlowState, short_traceback, state_of
from devmeter.proxy.guard_stage import GuardStage
from devmeter.proxy.metering_stage import MeteringStage
from devmeter.proxy.recorder import OnBilled, Record, Recorder
from devmeter.proxy.routing_stage import RoutingStage
from devmeter.proxy.secrets_stage import SecretsStage
from devmeter.proxy.upstream import UpstreamMapping
from devmeter.proxy.websocket_turns import WebSocketTurns
from devmeter.routing.session_router import Router
from devmeter.secrets.inspector import SecretInspector

log = logging.getLogger(__name__)


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
        self._secrets = SecretsStage(secrets)
        self._cursor = CursorStage(self._secrets)
        self._guard = guard
        self._guards = GuardStage(guard, attribute, clock, on_alert, overrides)
        self._control = control
        self._upstream = UpstreamMapping(upstreams)
        self._recorder = Recorder(record, clock, overrides, self._guards, self._routing, on_billed)
        self._ask = AskStage(asks, clock, on_alert, on_asks_changed)
        self._metering = MeteringStage(clock, attribute, accounts, self._guards, self._recorder)
        self._bounds = BoundsStage(
            clock, attribute, accounts, self._guards, self._routing, self._recorder,
            self._apply_control,
        )  # fmt: skip
        self._turns = WebSocketTurns(
            clock,
            attribute,
            self._secrets,
            self._guards,
            self._ask,
            self._recorder,
            self._apply_control,
        )

    def reconfigure(
        self, upstreams: Mapping[str, str], overrides: tuple[PriceOverride, ...]
    ) -> None:
        """A reloaded config's upstreams and prices, for the requests from now on."""
        self._upstream.reconfigure(upstreams)
        self._guards.overrides = overrides
        self._recorder.overrides = overrides

    def apply_answers(self) -> None:
        """Apply control.json now, with no request in flight: an ask that timed out holds
        nothing, so its answer (a button, the tray menu, `devmeter allow`) would otherwise
        wait for the scope's next request, and until then its popup and menu entry go on
        asking. Runs on the event loop, like the request hooks."""
        try:
            self._apply_control()
        except Exception:  # a broken control file must not end the proxy's timer
            log.warning("devmeter: could not apply control.json: %s", short_traceback())

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
        router = self._routing.router
        # Routing rules read all of the conversation: a body they will read whole is
        # parsed whole at once (the lazy parse's check would be work on top).
        routes = router is not None and bool(router.config.rules)
        started = self._metering.request(flow, host, endpoint, lazy=not routes)
        if started is None:
            return None  # a batch metered when first read: reading it again costs nothing
        state, headers, body, doc = started
        now = state.started
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
        return self._routing.request(flow, state, headers, body, doc, now)

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
                self._metering.websocket_handshake(flow, state)
            return
        if self._bounds.responseheaders(flow, state):
            return
        if state is None:
            flow.response.stream = True  # not metered: pass it on as it arrives, unheld
            return
        if self._routing.responseheaders(flow, state):
            return  # a refused rewrite: keep the (small) error body for a fallback
        self._metering.responseheaders(flow, state)

    def response(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        # Sync, returning a coroutine only for a rewritten request (mitmproxy awaits what
        # a hook returns): every other answer is metered and sent in one step.
        streaming.restore_replacement(flow)
        state = state_of(flow)
        if state is None:
            return None  # not metered, or recorded already (the tap metered the whole body)
        if self._routing.may_fall_back(flow, state):
            return self._fall_back_and_finish(flow, state)
        self._metering.finish(flow, complete_hint=True)
        return None

    async def _fall_back_and_finish(self, flow: http.HTTPFlow, state: FlowState) -> None:
        await self._routing.response(flow, state)
        self._metering.finish(flow, complete_hint=True)

    def error(self, flow: http.HTTPFlow) -> None:
        # Client hung up, upstream reset, or the upstream never answered.
        self._metering.finish(flow, complete_hint=False)

    # -- WebSocket (Codex CLI's Responses transport) -------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._turns.websocket_start(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        return self._turns.websocket_message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._turns.websocket_end(flow)
