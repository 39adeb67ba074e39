"""The Cursor stage: Cursor's chat is a Connect bidi stream that keeps its request open
while the answer streams, so its body is forwarded as it comes, with a copy read on
the side (providers/cursor.py), and the request is known whole only when the call ends.
With secret inspection on, its frames go through the secrets stage on their way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import replace

from mitmproxy import http

from devmeter.providers import cursor, match_endpoint
from devmeter.proxy.flow_state import FlowState, state_of
from devmeter.proxy.secrets_stage import SecretsStage
from devmeter.secrets.cursor_stream import CursorStream
from devmeter.usage import RequestInfo, ResponseResult

Start = Callable[[http.HTTPFlow, str], Coroutine[None, None, None] | None]


class CursorStage:
    def __init__(self, secrets: SecretsStage | None = None) -> None:
        self._secrets = secrets  # its frames inspected as they stream, when inspection is on

    def streams(self, flow: http.HTTPFlow, host: str) -> bool:
        """Whether this is Cursor's streamed chat (else the request is read whole)."""
        if host != cursor.HOST:
            return False
        endpoint = match_endpoint(host, flow.request.method, flow.request.path)
        connect = "connect+" in flow.request.headers.get("content-type", "")
        return endpoint is not None and endpoint.api == "cursor.chat" and connect

    def requestheaders(
        self, flow: http.HTTPFlow, host: str, start: Start
    ) -> Coroutine[None, None, None] | None:
        """Start the call now (`start`: the Meter's request stages), then stream the body,
        or the call would never start; once an ask that holds it is answered, if so."""
        reader = cursor.RequestReader()
        held = start(flow, host)
        state = state_of(flow)
        secrets = None
        if state is not None:
            state.request_reader = reader
            if self._secrets is not None:
                secrets = self._secrets.cursor_stream(flow, state)
        if held is not None:
            return _then_stream(held, flow, reader, state, secrets)
        if flow.response is None:  # mitmproxy refuses a streamed request it answered
            flow.request.stream = _request_tap(reader, state, secrets)
        return None


def request_whole(
    reader: cursor.RequestReader, result: ResponseResult
) -> tuple[RequestInfo, ResponseResult]:
    """The request as it streamed alongside the answer (only now whole), and the answer
    with the prompt estimated from it when the answer reported no usage."""
    request = reader.info()
    return request, _with_input_estimate(result, request)


def _with_input_estimate(result: ResponseResult, request: RequestInfo) -> ResponseResult:
    usage = result.usage
    if usage is None or not usage.estimated or usage.input_tokens:
        return result
    return replace(result, usage=replace(usage, input_tokens=request.prompt_tokens() or 0))


async def _then_stream(
    held: Coroutine[None, None, None],
    flow: http.HTTPFlow,
    reader: cursor.RequestReader,
    state: FlowState | None = None,
    secrets: CursorStream | None = None,
) -> None:
    """A streamed request held by an ask: stream it once answered, unless it was refused."""
    await held
    if flow.response is None:
        flow.request.stream = _request_tap(reader, state, secrets)


def _request_tap(
    reader: cursor.RequestReader,
    state: FlowState | None = None,
    secrets: CursorStream | None = None,
) -> Callable[[bytes], bytes | list[bytes]]:
    """Reads a copy of each chunk; with secret inspection on, what goes upstream is what
    `secrets` passes on (whole frames, rewritten when they hold a secret)."""

    def tap(chunk: bytes) -> bytes | list[bytes]:
        with contextlib.suppress(Exception):  # never break the stream over metering
            reader.feed(chunk)
        if secrets is None:
            return chunk
        sent = secrets.feed(chunk)  # never raises: fails open itself
        if secrets.problem and state is not None and state.tap_error is None:
            state.tap_error = secrets.problem
        return sent

    return tap
