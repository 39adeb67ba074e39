"""Who pays for a call and what its answer says about quota: the credential's account
(billing.py), the answer's quota headers, and Codex's rate-limits events in its SSE
stream and on its WebSocket (providers/quota_headers.py).

Quota is a bonus: a failure here only loses the reading (named on the row), never the
call or its row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from mitmproxy import http

from devmeter.billing import OVERAGE, SUBSCRIPTION, Accounts
from devmeter.providers import ResponseParser, quota_headers
from devmeter.proxy.flow_state import FlowState, short_traceback


@dataclass(slots=True)
class QuotaRead:
    """What the answer says about quota so far, and the reader of Codex's rate-limits
    events in an SSE answer (chatgpt.com) while its stream goes by."""

    reading: quota_headers.QuotaReading | None = None
    events: quota_headers.RateLimitEvents | None = None


def _quota_of(state: FlowState) -> QuotaRead:
    if state.quota is None:
        state.quota = QuotaRead()
    return state.quota


def quota_reading(state: FlowState) -> quota_headers.QuotaReading | None:
    return state.quota.reading if state.quota is not None else None


def set_billing(
    accounts: Accounts | None, flow: http.HTTPFlow, state: FlowState, headers: Mapping[str, str]
) -> None:
    """Who pays for the call, from its credential (never kept: only its fingerprint)."""
    if accounts is None:
        return
    try:
        query_key = flow.request.query.get("key") if "key=" in flow.request.path else None
        state.billing = accounts.billing(state.host, headers, query_key)
    except Exception:
        state.tap_error = f"devmeter billing failed: {short_traceback()}"


def read_quota(state: FlowState, headers: Mapping[str, str], now: float) -> None:
    """The answer's quota headers; a failure only loses the reading."""
    if not quota_headers.may_hold_quota(headers):
        return
    try:
        reading = quota_headers.from_headers(headers, now)
    except Exception:
        reading = quota_headers.QuotaReading(notes=(f"quota headers: {short_traceback()}",))
    if reading.windows or reading.notes or reading.status:
        _quota_of(state).reading = reading


def read_rate_events(state: FlowState, now: float) -> None:
    """Look for Codex's rate-limits events in this answer's SSE stream as it goes by."""
    _quota_of(state).events = quota_headers.RateLimitEvents(now)


def sse_sink(state: FlowState, parser: ResponseParser) -> Callable[[bytes], None]:
    """The parser's feed, also looking for Codex's rate-limits event (chatgpt.com SSE)."""
    quota = _quota_of(state)

    def sink(data: bytes) -> None:
        parser.feed(data)
        _scan_sse(quota, data)

    return sink


def _scan_sse(quota: QuotaRead, chunk: bytes) -> None:
    """Codex's rate-limits event in an SSE answer (chatgpt.com), from the decoded bytes;
    a failure only loses the reading."""
    events = quota.events
    assert events is not None
    try:
        events.feed(chunk)
    except Exception:
        quota.events = None
        return
    if events.readings:
        quota.reading = _merge(quota.reading, events.readings.pop())
        events.readings.clear()


def scan_ws_message(state: FlowState, content: bytes | str, now: float) -> None:
    """Codex's rate-limits event on its WebSocket: applies to the turns after it."""
    try:
        events = quota_headers.RateLimitEvents(now)
        events.feed_message(content)
        if events.readings:
            quota = _quota_of(state)
            quota.reading = _merge(quota.reading, events.readings[-1])
    except Exception:
        pass  # quota is a bonus: never a failed call


def _merge(
    old: quota_headers.QuotaReading | None, new: quota_headers.QuotaReading
) -> quota_headers.QuotaReading:
    if old is None:
        return new
    names = {w.window for w in new.windows}
    return replace(
        new,
        windows=(*(w for w in old.windows if w.window not in names), *new.windows),
        status=new.status or old.status,
        claim=new.claim or old.claim,
        overage=new.overage or old.overage,
        plan=new.plan or old.plan,
        notes=(*old.notes, *new.notes),
    )


def billing_fields(state: FlowState, error: str | None) -> dict[str, Any]:
    """The row's billing mode and account; overage when a subscription call's answer
    says it was billed as extra usage. A quota value devmeter could not read is named in
    the row's `error` (the row's error so far), and the call is otherwise untouched.
    Fields, not a copied Call: the recorder makes one copy with every stage's fields."""
    mode = state.billing.mode
    reading = quota_reading(state)
    if reading is not None and reading.overage and mode == SUBSCRIPTION:
        mode = OVERAGE
    if reading is not None and reading.notes:
        note = "quota headers ignored: " + "; ".join(reading.notes[:3])
        error = f"{error}; {note}" if error else note
    return {"billing": mode, "account": state.billing.account, "error": error}
