"""The end of every call, whatever stage ends it: its ledger row priced, then settled
with every stage that keeps books on it (the guard's reservation, billing, the routing
columns), recorded, and handed to quota bookkeeping and the guard's observers; and the
row of a call metering failed on, so a failure never vanishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from mitmproxy import http

from devmeter import metering
from devmeter.billing import Billing
from devmeter.pricing import PriceOverride
from devmeter.providers import quota_headers
from devmeter.proxy.billing_reading import billing_fields, quota_reading
from devmeter.proxy.flow_state import FlowState, short_traceback, state_of
from devmeter.proxy.guard_stage import GuardStage, Signals
from devmeter.proxy.routing_stage import RoutingStage
from devmeter.usage import Attribution, Call, RequestInfo, ResponseResult, Usage, amended

log = logging.getLogger(__name__)

# Records a call. It must be on disk (spooled) when this returns: for a whole body the
# client gets the answer right after, and a proxy killed then must still have the row.
Record = Callable[[Call], object]
# Hears each recorded call with who pays for it and what its answer said about quota.
OnBilled = Callable[[Call, Billing, "quota_headers.QuotaReading | None"], None]


class Recorder:
    def __init__(
        self,
        record: Record,
        clock: Callable[[], float],
        overrides: tuple[PriceOverride, ...],
        guards: GuardStage,
        routing: RoutingStage,
        on_billed: OnBilled | None,
    ) -> None:
        self.record = record
        self._clock = clock
        self.overrides = overrides  # the user's prices (config reload)
        self._guards = guards
        self._routing = routing
        self._on_billed = on_billed

    def priced_call(
        self,
        state: FlowState,
        result: ResponseResult,
        status: int | None,
        *,
        ts: float,
        request: RequestInfo | None = None,
        duration_ms: int = 0,
        error: str | None = None,
    ) -> Call:
        """The ledger row of one answer on this flow, priced with the user's overrides."""
        return metering.build_call(
            ts=ts,
            host=state.host,
            endpoint=state.endpoint,
            request=state.request if request is None else request,
            result=result,
            status=status,
            attribution=state.attribution,
            overrides=self.overrides,
            duration_ms=duration_ms,
            error=error,
        )

    def record_settled(self, state: FlowState, call: Call, signals: Signals | None = None) -> None:
        """Record the call's row; `signals`: a WebSocket turn's own (else the request's)."""
        guards = self._guards
        guards.settle(state)
        # Every stage's fields in one copy of the row (`amended`: ~1 us; a `replace` of a
        # Call costs ~12 us), on every call.
        fields = billing_fields(state, call.error)
        if state.blocked is not None:
            fields["error"] = state.blocked
        if state.refused_by is not None:
            fields.update(state.refused_by.ledger_fields())
        if signals is None:  # looked up once, for the row and for the guard's observers
            signals = guards.signals(state)
        fingerprint = guards.loop_fingerprint(state, signals)
        if fingerprint is not None:
            fields["loop_fingerprint"] = fingerprint
        call = amended(call, fields)
        if self._routing.router is not None:
            try:
                call = self._routing.settle(call, state)
            except Exception:
                call = replace(
                    call, error=f"devmeter routing bookkeeping failed: {short_traceback()}"
                )
        self.record(call)
        if self._on_billed is not None:
            try:
                self._on_billed(call, state.billing, quota_reading(state))
            except Exception:
                log.warning("devmeter: quota bookkeeping failed: %s", short_traceback())
        guards.observe(call, state, signals)

    def internal_error(self, flow: http.HTTPFlow, host: str, hook: str) -> None:
        """Record that metering failed for this call, and let the call go on."""
        detail = short_traceback()
        log.warning("devmeter: metering failed in %s for %s: %s", hook, host, detail)
        state = state_of(flow)
        if state is not None:
            state.done = True
            self._guards.settle(state)
        try:
            self.record(
                Call(
                    ts=state.started if state else self._clock(),
                    provider=state.endpoint.provider if state else "unknown",
                    endpoint=state.endpoint.api if state else "unknown",
                    host=host,
                    requested_model=state.request.model if state else None,
                    model=None,
                    attribution=state.attribution if state else Attribution(),
                    usage=Usage(),
                    cost_usd=None,
                    price_source=None,
                    status=flow.response.status_code if flow.response else None,
                    complete=False,
                    error=f"devmeter internal error in {hook}: {detail}",
                )
            )
        except Exception:
            log.warning("devmeter: could not record the failure: %s", short_traceback())
