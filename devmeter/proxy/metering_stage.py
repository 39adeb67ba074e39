"""The metering stage: the core of every call. At its request: the endpoint's body read
once (streaming.read_request), who made it (attribution), who pays (billing); at its
answer: a response parser from providers/ tapped into the stream, fed each chunk as it
passes; when it ends: usage and cost into a ledger row (recorder.py), on disk before the
client has the whole answer.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from devmeter.attribution import lower_headers
from devmeter.billing import Accounts
from devmeter.decoding import Decoder, decoder_for
from devmeter.providers import (
    BATCH_APIS,
    Endpoint,
    new_response_parser,
    normalise_path,
)
from devmeter.providers.lazy_doc import LazyDoc
from devmeter.proxy import streaming
from devmeter.proxy.billing_reading import read_quota, read_rate_events, set_billing, sse_sink
from devmeter.proxy.cursor_stage import request_whole
from devmeter.proxy.flow_state import (
    METADATA_KEY,
    Attribute,
    FlowState,
    release,
    short_traceback,
    state_of,
)
from devmeter.proxy.guard_stage import GuardStage
from devmeter.proxy.recorder import Recorder
from devmeter.usage import ResponseResult, Usage

# What the later request stages need of a call the metering stage started: its state,
# its headers (lower-case names), its body as sent, and that body parsed (None if not).
Started = tuple[FlowState, Mapping[str, str], bytes, "dict[str, Any] | LazyDoc | None"]


@dataclass(slots=True)
class ResponseTap:
    """The answer's decoder as its body streams through the tap, and whether the body
    went past the decode budget (then the call is estimated, not read)."""

    decoder: Decoder | None
    body_unread: bool = False


class MeteringStage:
    def __init__(
        self,
        clock: Callable[[], float],
        attribute: Attribute,
        accounts: Accounts | None,
        guards: GuardStage,
        recorder: Recorder,
    ) -> None:
        self._clock = clock
        self._attribute = attribute
        self._accounts = accounts
        self._guards = guards
        self._recorder = recorder
        # Batches already metered in this run (by path): a second read of the same results
        # or status bills nothing new. Least recent first, bounded.
        self._batches_read: OrderedDict[str, None] = OrderedDict()

    def request(
        self, flow: http.HTTPFlow, host: str, endpoint: Endpoint, lazy: bool = True
    ) -> Started | None:
        """Start metering the call (its state is on the flow from now on); None for a
        batch already metered in this run. `lazy`: see `streaming.read_request`."""
        if endpoint.api in BATCH_APIS and self._batch_read(flow, record=False):
            return None
        now = self._clock()
        headers = lower_headers(flow.request.headers)  # once: mitmproxy's lookups are slow
        body, note = streaming.request_body(flow.request, headers.get("content-encoding"))
        if note is None:
            info, doc, note = streaming.read_request(endpoint, body, lazy)
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
        return state, headers, body, doc

    def websocket_handshake(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """An accepted WebSocket (Codex): its quota headers are on the handshake."""
        assert flow.response is not None
        read_quota(state, lower_headers(flow.response.headers), self._clock())

    def responseheaders(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Tap the answer: each chunk is copied into its parser and passed on at once."""
        assert flow.response is not None
        headers = lower_headers(flow.response.headers)  # once: mitmproxy's lookups are slow
        read_quota(state, headers, self._clock())
        try:
            state.parser = new_response_parser(
                state.endpoint, state.request, headers.get("content-type", "")
            )
            state.tap = ResponseTap(decoder_for(headers.get("content-encoding")))
        except Exception:
            state.tap_error = short_traceback()
            return  # buffered instead, and parsed whole in `response`
        # Every answer passes through as it arrives, whole bodies too: holding one back
        # until its last byte costs the client ~2 ms a call. A body with a length is
        # metered as its last chunk goes by, before the client has all of it; any other
        # ends only after the `response` hook, which meters it. Either way a row is on
        # disk before the client has the whole answer.
        flow.response.stream = _tap(
            state, _body_length(headers), lambda: self.finish(flow, complete_hint=True)
        )
        if state.host == "chatgpt.com" and "event-stream" in headers.get("content-type", ""):
            read_rate_events(state, self._clock())

    def finish(self, flow: http.HTTPFlow, complete_hint: bool) -> None:
        """The call ended (its answer whole, or cut short): its row, then its state let go."""
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
            body_unread = state.tap is not None and state.tap.body_unread
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
                    state.tap_error, body_unread = stopped, True
            if state.endpoint.api == "openai.batch" and result.usage is None:
                self._guards.settle(state)  # the status of a batch still running: no call yet
                release(flow, state)
                return
            result = streaming.with_estimate_if_unread(result, state.request, body_unread)
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
            if not state.attribution.settled:
                # A repo lookup had not answered when the call started: asked again for
                # the row (the session is the same; repo and branch now likely known).
                headers = lower_headers(flow.request.headers)
                state.attribution = self._attribute(
                    flow, state.request, headers, state.host, state.started
                )
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


def _tap(
    state: FlowState, length: int | None, on_complete: Callable[[], None]
) -> Callable[[bytes], bytes]:
    """The stream callable: must never raise, or mitmproxy hangs the client.

    `length`: the body's declared length; once that much went by, `on_complete` runs
    before the last chunk is handed on.
    """
    received = 0
    response_tap = state.tap
    assert response_tap is not None

    def tap(chunk: bytes) -> bytes:
        nonlocal received
        decoder = response_tap.decoder
        if state.tap_error is None and state.parser is not None and decoder is not None:
            try:
                quota = state.quota
                sink = (
                    state.parser.feed
                    if quota is None or quota.events is None
                    else sse_sink(state, state.parser)
                )
                decoder.feed(chunk, sink)
                if decoder.limit_error is not None:
                    state.tap_error, response_tap.body_unread = decoder.limit_error, True
            except Exception:
                state.tap_error = f"could not read the response: {short_traceback()}"
        received += len(chunk)
        if length is not None and chunk and received >= length and not state.done:
            with contextlib.suppress(Exception):  # finish records its own failures
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
    if (state.tap is None or state.tap.decoder is None) and state.tap_error is None:
        state.tap_error = "response body in an encoding devmeter cannot decode"
    return state.parser.result()
