"""The Meter addon: mitmproxy hooks only, the work is in pure modules.

Fail open: every hook is guarded, so a metering bug never breaks the user's
request; the failure becomes a ledger row of its own instead of vanishing.
Streams pass through as they arrive: `responseheaders` installs a tap that
copies each chunk into the parser and returns it unchanged.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http

from devmeter import metering
from devmeter.decoding import Decoder, decoder_for
from devmeter.pricing import PriceOverride
from devmeter.providers import (
    Endpoint,
    ResponseParser,
    match_endpoint,
    new_response_parser,
    parse_request,
)
from devmeter.usage import Attribution, Call, RequestInfo, ResponseResult

METADATA_KEY = "devmeter"

Attribute = Callable[[http.HTTPFlow, RequestInfo, float], Attribution]
Record = Callable[[Call], None]


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
    # WebSocket (Codex): the request of each response.create, in order.
    ws_requests: list[RequestInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    path_prefix: str

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        default_port = 443 if parts.scheme == "https" else 80
        assert parts.hostname is not None
        return cls(parts.scheme, parts.hostname, parts.port or default_port, parts.path.rstrip("/"))


class Meter:
    def __init__(
        self,
        record: Record,
        attribute: Attribute,
        upstreams: dict[str, str] | None = None,
        overrides: tuple[PriceOverride, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._record = record
        self._attribute = attribute
        self._upstreams = {h.lower(): Upstream.from_url(u) for h, u in (upstreams or {}).items()}
        self._overrides = overrides
        self._clock = clock

    # -- request ---------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        host = flow.request.pretty_host.lower()
        try:
            self._start(flow, host)
        except Exception:
            self._internal_error(flow, host, "request")
        # Mapping comes last and unguarded by metering: it decides where the call goes.
        upstream = self._upstreams.get(host)
        if upstream is not None:
            _send_to(flow, upstream)

    def _start(self, flow: http.HTTPFlow, host: str) -> None:
        endpoint = match_endpoint(host, flow.request.method, flow.request.path)
        if endpoint is None:
            return
        now = self._clock()
        body = flow.request.raw_content or b""
        if flow.request.headers.get("content-encoding"):
            body = flow.request.get_content(strict=False) or b""
        info = parse_request(endpoint, body)
        flow.metadata[METADATA_KEY] = FlowState(
            endpoint=endpoint,
            request=info,
            started=now,
            attribution=self._attribute(flow, info, now),
            host=host,
        )

    # -- response ----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        if state is None or flow.response is None:
            return
        try:
            state.parser = new_response_parser(
                state.endpoint, state.request, flow.response.headers.get("content-type", "")
            )
            state.decoder = decoder_for(flow.response.headers.get("content-encoding"))
        except Exception:
            state.tap_error = _short_traceback()
            return
        flow.response.stream = _tap(state)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, complete_hint=True)

    def error(self, flow: http.HTTPFlow) -> None:
        # Client hung up, upstream reset, or the upstream never answered.
        self._finish(flow, complete_hint=False)

    def _finish(self, flow: http.HTTPFlow, complete_hint: bool) -> None:
        state = _state(flow)
        if state is None or state.done:
            return
        state.done = True
        try:
            status = flow.response.status_code if flow.response is not None else None
            result = _result(state)
            if flow.response is not None and state.parser is None and flow.response.raw_content:
                # Not streamed through the tap (an error installing it): parse the whole body.
                parser = new_response_parser(
                    state.endpoint, state.request, flow.response.headers.get("content-type", "")
                )
                parser.feed(flow.response.get_content(strict=False) or b"")
                result = parser.result()
            if not complete_hint and result.complete and result.usage is None:
                result = ResponseResult(usage=None, complete=False, model=result.model)
            error = state.tap_error or (str(flow.error) if flow.error else None)
            self._record(
                metering.build_call(
                    ts=state.started,
                    host=state.host,
                    endpoint=state.endpoint,
                    request=state.request,
                    result=result,
                    status=status,
                    attribution=state.attribution,
                    overrides=self._overrides,
                    duration_ms=int((self._clock() - state.started) * 1000),
                    error=error,
                )
            )
        except Exception:
            self._internal_error(flow, state.host, "response")

    # -- WebSocket (Codex CLI's Responses transport) -------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        if state is None:
            return
        try:
            state.parser = new_response_parser(state.endpoint, state.request, "websocket")
        except Exception:
            state.tap_error = _short_traceback()

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        if state is None or state.parser is None or flow.websocket is None:
            return
        try:
            message = flow.websocket.messages[-1]
            if message.from_client:
                state.ws_requests.append(_ws_request(state, message.content))
            else:
                state.parser.feed_message(message.content)
                for result in state.parser.take_completed():  # type: ignore[attr-defined]
                    self._record_ws_turn(flow, state, result)
            # The socket can live for a whole Codex session: do not keep every frame.
            del flow.websocket.messages[:-1]
        except Exception:
            self._internal_error(flow, state.host, "websocket")

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        state = _state(flow)
        if state is None or state.parser is None or state.done:
            return
        state.done = True
        try:
            result = state.parser.result()
            if state.ws_requests and (result.usage is not None or result.output_text):
                self._record_ws_turn(flow, state, result)
        except Exception:
            self._internal_error(flow, state.host, "websocket")

    def _record_ws_turn(
        self, flow: http.HTTPFlow, state: FlowState, result: ResponseResult
    ) -> None:
        request = state.ws_requests.pop(0) if state.ws_requests else state.request
        if request.facts.get("generate") == "false" and not (
            result.usage and result.usage.output_tokens
        ):
            return  # Codex's prewarm: it creates nothing and bills nothing
        now = self._clock()
        self._record(
            metering.build_call(
                ts=now,
                host=state.host,
                endpoint=state.endpoint,
                request=request,
                result=result,
                status=101,
                attribution=state.attribution,
                overrides=self._overrides,
                error=state.tap_error,
            )
        )

    # -- failures ----------------------------------------------------------------------------

    def _internal_error(self, flow: http.HTTPFlow, host: str, hook: str) -> None:
        """Record that metering failed for this call, and let the call go on."""
        detail = _short_traceback()
        print(f"devmeter: metering failed in {hook} for {host}: {detail}", file=sys.stderr)
        state = _state(flow)
        if state is not None:
            state.done = True
        try:
            self._record(
                Call(
                    ts=state.started if state else self._clock(),
                    provider=state.endpoint.provider if state else "unknown",
                    endpoint=state.endpoint.api if state else "unknown",
                    host=host,
                    requested_model=state.request.model if state else None,
                    model=None,
                    attribution=state.attribution if state else Attribution(),
                    usage=metering.Usage(),
                    cost_usd=None,
                    price_source=None,
                    status=flow.response.status_code if flow.response else None,
                    complete=False,
                    error=f"devmeter internal error in {hook}: {detail}",
                )
            )
        except Exception:
            print(f"devmeter: could not record the failure: {_short_traceback()}", file=sys.stderr)


def _state(flow: http.HTTPFlow) -> FlowState | None:
    state = flow.metadata.get(METADATA_KEY)
    return state if isinstance(state, FlowState) else None


def _tap(state: FlowState) -> Callable[[bytes], bytes]:
    """The stream callable: must never raise, or mitmproxy hangs the client."""

    def tap(chunk: bytes) -> bytes:
        if state.tap_error is None and state.parser is not None:
            try:
                data = state.decoder.decode(chunk) if state.decoder else None
                if data:
                    state.parser.feed(data)
            except Exception:
                state.tap_error = f"could not read the response: {_short_traceback()}"
        return chunk

    return tap


def _result(state: FlowState) -> ResponseResult:
    if state.parser is None:
        return ResponseResult(usage=None, complete=False)
    if state.decoder is None and state.tap_error is None:
        state.tap_error = "response body in an encoding devmeter cannot decode"
    return state.parser.result()


def _ws_request(state: FlowState, content: bytes) -> RequestInfo:
    info = parse_request(state.endpoint, content)
    try:
        body: Any = json.loads(content)
    except ValueError:
        return info
    if isinstance(body, dict) and body.get("generate") is False:
        info = RequestInfo(
            model=info.model,
            stream=info.stream,
            prompt_tokens_estimate=info.prompt_tokens_estimate,
            facts={**info.facts, "generate": "false"},
        )
    return info


def _send_to(flow: http.HTTPFlow, upstream: Upstream) -> None:
    original_host = flow.request.host_header
    flow.request.scheme = upstream.scheme
    flow.request.host = upstream.host
    flow.request.port = upstream.port
    if upstream.path_prefix:
        flow.request.path = upstream.path_prefix + flow.request.path
    if original_host:
        flow.request.headers["X-Forwarded-Host"] = original_host


def _short_traceback() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return " | ".join(line.strip() for line in lines[-3:])
