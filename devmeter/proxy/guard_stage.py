"""The guard stage (guard.py): budgets, caps, pauses and runaway detection on the
request path. A call a cap or a pause stops is refused before it reaches the provider;
one let through reserves its estimated cost against its caps until its row is recorded
(so parallel calls cannot all slip under a cap), and its loop fingerprint goes on the row.

Fails open: a guard bug lets the call through, and the row says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from mitmproxy import http

from devmeter.alerts import Alert, Block
from devmeter.attribution import lower_headers
from devmeter.billing import SUBSCRIPTION
from devmeter.guard import ALLOW, Guard, Verdict, estimate_cost, request_signals
from devmeter.pricing import PriceOverride
from devmeter.providers import unmetered_endpoint
from devmeter.proxy.flow_state import METADATA_KEY, Attribute, FlowState, short_traceback
from devmeter.proxy.refusal import is_free, refuse
from devmeter.routing.session_router import REQUEST_CLASS_HEADER
from devmeter.usage import Call, RequestInfo

_NOTHING = Decimal(0)  # what a call reserves when no cap could count it

# A request's loop fingerprint and whether a human typed it (guard.request_signals).
Signals = tuple[str | None, bool | None]


@dataclass(slots=True)
class GuardHold:
    """What a call let through holds against its caps until it ends, and what the
    runaway detector reads of its request (loop fingerprint, human turn)."""

    reservation: int | None = None
    signals: Signals = (None, None)
    # A WebSocket handshake's request class, which each turn on the socket reads: kept
    # from the lowered headers, where mitmproxy's own lookup walks every header per turn.
    request_class: str | None = None


class GuardStage:
    def __init__(
        self,
        guard: Guard | None,
        attribute: Attribute,
        clock: Callable[[], float],
        on_alert: Callable[[Alert], None] | None,
        overrides: tuple[PriceOverride, ...],
    ) -> None:
        self.guard = guard
        self._attribute = attribute
        self._clock = clock
        self._on_alert = on_alert
        self.overrides = overrides  # the prices an estimate reserves at (config reload)

    def request(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        doc: Any,
        headers: Mapping[str, str],
        size: int,
        now: float,
    ) -> bool:
        """Check the call's caps; True if it was refused (answered already)."""
        guard = self.guard
        if guard is None:
            return False
        hold = state.guard = GuardHold()
        try:
            # A WebSocket handshake costs nothing and is let through: each turn on the
            # socket is checked (websocket_turns.py), and Codex shows a refused turn
            # without retrying, where a refused handshake makes it reconnect.
            if not state.upgrade:
                reserve = _NOTHING
                if guard.has_caps:  # else nothing to reserve against: no estimate to make
                    reserve = self.estimate(state.endpoint.provider, state.request, size, now)
                    if state.billing.mode == SUBSCRIPTION and not guard.counts_covered:
                        reserve = _NOTHING  # no cap counts it (`count_covered`)
                verdict = guard.check(state.attribution, now, reserve)
                if verdict is not ALLOW:  # nearly every call: nothing to raise or refuse
                    self.raise_alerts(verdict)
                    # A free request (count_tokens, batch results) passes a cap or a pause.
                    if verdict.block is not None and not is_free(flow, state.host, False):
                        refuse(flow, state, verdict.block)
                        return True
                    hold.reservation = verdict.reservation
            request_class = headers.get(REQUEST_CLASS_HEADER)
            if state.upgrade:
                hold.request_class = request_class
            hold.signals = request_signals(doc, request_class, guard.fingerprint_key)
        except Exception:
            state.tap_error = f"devmeter guard failed (call let through): {short_traceback()}"
        return False

    def unread_request(
        self, flow: http.HTTPFlow, state: FlowState, length: int | None, now: float
    ) -> bool:
        """Check the caps of a call whose body streams on unread; True if refused (the
        connection closed: no answer can go back before the body was sent whole)."""
        guard = self.guard
        if guard is None:
            return False
        try:  # fails open, as for a request read whole
            reserve = self.estimate(state.endpoint.provider, state.request, length or 0, now)
            verdict = guard.check(state.attribution, now, reserve)
            self.raise_alerts(verdict)
        except Exception:
            state.tap_error = f"devmeter guard failed (call let through): {short_traceback()}"
            return False
        block = verdict.block
        if block is None:
            state.guard = GuardHold(reservation=verdict.reservation)
            return False
        state.refused_by = block
        state.blocked = (
            f"{block.message} (devmeter closed the connection: a request body of "
            f"{'unknown size' if length is None else f'{length:,} bytes'} cannot be "
            "answered before it is sent whole)"
        )
        flow.kill()  # the error hook records the refusal
        return True

    def unmetered_request(self, flow: http.HTTPFlow, host: str) -> None:
        """A request devmeter does not meter, to an LLM API host: refused like a metered
        one when paused or capped, unless it costs nothing (paths.costs_nothing). A
        WebSocket here is refused at its handshake: no turn on it is ever checked."""
        if flow.request.stream:
            return  # streamed: decided at its headers (`unmetered_refusal`)
        state = self.unmetered_refusal(flow, host)
        if state is not None and state.refused_by is not None:
            refuse(flow, state, state.refused_by)

    def unmetered_refusal(self, flow: http.HTTPFlow, host: str) -> FlowState | None:
        """The state of an unmetered request the guard refuses (its `refused_by` says why, and
        it is in the flow's metadata, for the row), or None to let it through."""
        if self.guard is None:
            return None
        upgrade = flow.request.headers.get("upgrade", "").lower() == "websocket"
        if is_free(flow, host, upgrade):
            return None
        now = self._clock()
        info = RequestInfo()
        headers = lower_headers(flow.request.headers)
        attribution = self._attribute(flow, info, headers, host, now)
        verdict = self.guard.check(attribution, now)
        self.raise_alerts(verdict)
        if verdict.block is None:
            return None
        state = FlowState(unmetered_endpoint(host), info, now, attribution, host, upgrade=upgrade)
        state.blocked, state.refused_by = verdict.block.message, verdict.block
        flow.metadata[METADATA_KEY] = state
        return state

    def check(self, state: FlowState, now: float, reserve: Decimal = Decimal(0)) -> Verdict:
        """The guard's verdict on the call now (a turn on a socket, an ask's wait)."""
        assert self.guard is not None
        verdict = self.guard.check(state.attribution, now, reserve)
        self.raise_alerts(verdict)
        return verdict

    def block(self, state: FlowState, now: float) -> Block | None:
        """What a cap or a pause says of the call now (while an ask holds it)."""
        return self.guard.check(state.attribution, now).block if self.guard else None

    def estimate(self, provider: str, request: RequestInfo, size: int, now: float) -> Decimal:
        """What the call reserves against its caps: nothing when there is no cap, and
        nothing when the estimate fails (the cap is still checked, on spend alone)."""
        if self.guard is None or not self.guard.has_caps:
            return Decimal(0)
        try:
            return estimate_cost(provider, request, size, self.overrides, now)
        except Exception:
            return Decimal(0)

    def raise_alerts(self, verdict: Verdict) -> None:
        if self._on_alert is not None:
            for alert in verdict.alerts:
                self._on_alert(alert)

    def settle(self, state: FlowState) -> None:
        """The call ended: what it reserved against its caps no longer counts (its cost,
        recorded right after, does)."""
        hold = state.guard
        if hold is not None and hold.reservation is not None:
            reservation, hold.reservation = hold.reservation, None
            self.settle_reservation(reservation)

    def settle_reservation(self, reservation: int | None) -> None:
        if self.guard is not None:
            with contextlib.suppress(Exception):  # fail open: a bookkeeping slip never breaks
                self.guard.settle(reservation)

    def turn_signals(self, flow: http.HTTPFlow, state: FlowState, doc: Any) -> Signals:
        """A WebSocket turn's loop fingerprint and human turn, from its own message (a
        `response.create` carries a request body's fields): without them a Codex loop on
        its socket, its default transport, was never seen."""
        if self.guard is None or state.endpoint.api == "openai.realtime":
            return None, None
        try:
            hold = state.guard
            request_class = (
                hold.request_class
                if hold is not None
                else flow.request.headers.get(REQUEST_CLASS_HEADER)
            )
            return request_signals(doc, request_class, self.guard.fingerprint_key)
        except Exception:  # fail open: the turn goes through unfingerprinted
            return None, None

    def signals(self, state: FlowState) -> Signals:
        """The loop fingerprint and human turn of the call's request (none if unchecked)."""
        return state.guard.signals if state.guard is not None else (None, None)

    def loop_fingerprint(self, state: FlowState, signals: Signals | None = None) -> str | None:
        """The request's (or its turn's) loop fingerprint for the row (none for a refused
        call)."""
        signals = self.signals(state) if signals is None else signals
        if state.blocked is not None:
            return None
        return signals[0]

    def observe(self, call: Call, state: FlowState, signals: Signals | None = None) -> None:
        """The recorded call's spend and signals into budgets and runaway detection."""
        if self.guard is None or state.blocked is not None:
            return
        signals = self.signals(state) if signals is None else signals
        for alert in self.guard.observe(call, *signals):
            if self._on_alert is not None:
                self._on_alert(alert)
