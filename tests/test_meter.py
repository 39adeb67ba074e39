"""The Meter's hooks driven directly with mitmproxy's test flows: when a row is recorded."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Mapping
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.flow import Error as FlowError
from mitmproxy.test import tflow, tutils

from devmeter import providers
from devmeter.proxy.meter import Meter
from devmeter.proxy.upstream import client_host
from devmeter.usage import Attribution, Call, RequestInfo

REQUEST = json.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
).encode()
ANSWER = json.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1000, "output_tokens": 200},
    }
).encode()


# Response headers of ANSWER sent whole, with its length.
WHOLE_ANSWER = {"content_type": "application/json", "content_length": str(len(ANSWER))}


def attribute(
    flow: http.HTTPFlow, info: RequestInfo, headers: Mapping[str, str], host: str, now: float
) -> Attribution:
    return Attribution(tool="test", session="s1")


def metered_flow(meter: Meter, response_headers: dict[str, str]) -> http.HTTPFlow:
    flow = tflow.tflow(
        req=tutils.treq(
            host="api.anthropic.com",
            port=443,
            scheme=b"https",
            authority=b"api.anthropic.com",
            path=b"/v1/messages",
            method=b"POST",
            content=REQUEST,
            headers=http.Headers(host="api.anthropic.com", content_type="application/json"),
        )
    )
    meter.requestheaders(flow)
    meter.request(flow)
    flow.response = tutils.tresp(content=None, headers=http.Headers(**response_headers))
    meter.responseheaders(flow)
    assert callable(flow.response.stream)  # the answer passes through as it arrives
    return flow


def test_a_body_with_a_length_is_recorded_before_its_last_chunk_goes_to_the_client() -> None:
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = metered_flow(meter, WHOLE_ANSWER)
    tap = flow.response.stream  # type: ignore[union-attr]
    assert callable(tap)
    half = len(ANSWER) // 2
    assert tap(ANSWER[:half]) == ANSWER[:half]
    assert recorded == []  # not whole yet
    assert tap(ANSWER[half:]) == ANSWER[half:]  # the last chunk: recorded before it is sent
    assert len(recorded) == 1
    call = recorded[0]
    assert (call.usage.input_tokens, call.usage.output_tokens, call.complete) == (1000, 200, True)
    assert call.cost_usd is not None and call.cost_usd > 0
    tap(b"")  # mitmproxy's end-of-message call
    assert meter.response(flow) is None  # the hook finds it done: one row, not two
    meter.error(flow)
    assert len(recorded) == 1


def test_a_chunked_body_is_recorded_by_the_response_hook_which_precedes_its_end() -> None:
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = metered_flow(meter, {"content_type": "application/json", "transfer_encoding": "chunked"})
    tap = flow.response.stream  # type: ignore[union-attr]
    assert callable(tap)
    tap(ANSWER)
    tap(b"")
    assert recorded == []
    meter.response(flow)
    assert [c.usage.output_tokens for c in recorded] == [200]


def test_a_cut_body_with_a_length_is_recorded_once_as_incomplete() -> None:
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = metered_flow(meter, WHOLE_ANSWER)
    tap = flow.response.stream  # type: ignore[union-attr]
    assert callable(tap)
    tap(ANSWER[:10])
    flow.error = FlowError("connection reset")
    meter.error(flow)
    assert len(recorded) == 1 and recorded[0].complete is False


def test_the_prompt_is_estimated_only_for_an_answer_that_reports_no_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Estimating a large prompt takes milliseconds on the proxy's only thread: a call
    # whose answer reports its usage must not pay for it.
    estimated: list[dict[str, Any]] = []
    real = providers.estimate_request_tokens

    def counting(body: dict[str, Any]) -> int:
        estimated.append(body)
        return real(body)

    monkeypatch.setattr(providers, "estimate_request_tokens", counting)
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = metered_flow(meter, WHOLE_ANSWER)
    flow.response.stream(ANSWER)  # type: ignore[union-attr,operator]
    assert recorded[0].usage.input_tokens == 1000 and estimated == []

    cut = metered_flow(meter, {"content_type": "text/event-stream"})
    cut.response.stream(  # type: ignore[union-attr,operator]
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"partial answer"}}\n\n'
    )
    cut.error = FlowError("client hung up")
    meter.error(cut)
    assert len(estimated) == 1 and estimated[0]["messages"][0]["content"] == "hi"
    usage = recorded[1].usage
    assert usage.estimated and usage.input_tokens > 0 and usage.output_tokens > 0


def test_a_recorded_calls_state_is_freed_without_the_garbage_collector() -> None:
    # Every flow is a reference cycle that only the collector frees, on the proxy's one
    # thread; what the meter hangs on it must not wait for the collector too.
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = metered_flow(meter, WHOLE_ANSWER)
    state = weakref.ref(flow.metadata["devmeter"])
    parser = weakref.ref(flow.metadata["devmeter"].parser)
    gc.disable()
    try:
        assert flow.response.stream(ANSWER) == ANSWER  # type: ignore[union-attr,operator]
        assert len(recorded) == 1
        assert parser() is None and state() is None
        # What is left of the answer passes untouched, and nothing is recorded twice.
        assert flow.response.stream is True  # type: ignore[union-attr]
        meter.response(flow)
        flow.error = FlowError("client hung up after the last byte")
        meter.error(flow)
        assert len(recorded) == 1
    finally:
        gc.enable()


def test_a_recent_client_is_looked_up_on_the_spot_and_a_new_one_in_a_thread() -> None:
    from devmeter.attribution import Attributor
    from devmeter.procinfo import ClientProcess, Lookup
    from devmeter.proxy.server import ClientProcessLookup

    known = ("127.0.0.1", 50001)
    process = ClientProcess(pid=7, start_time=1.0)

    def quick(peer: tuple[str, int], sockname: tuple[str, int] | None) -> Lookup:
        return Lookup(process if peer == known else None, "not recent")

    def full(peer: tuple[str, int], sockname: tuple[str, int] | None) -> Lookup:
        return Lookup(None, "unknown")

    lookups = ClientProcessLookup(Attributor(full, quick_lookup=quick))
    recent = tflow.tflow()
    recent.client_conn.peername = known
    assert lookups.requestheaders(recent) is None  # found right away: nothing to await
    new = tflow.tflow()
    new.client_conn.peername = ("127.0.0.1", 50002)
    pending = lookups.requestheaders(new)
    assert pending is not None  # the full lookup, off the event loop
    pending.close()
    assert lookups.requestheaders(new) is None  # once per connection


def test_a_new_clients_process_is_looked_up_before_its_request_is_mapped() -> None:
    events: list[str] = []

    class Lookup:
        def requestheaders(self, flow: http.HTTPFlow) -> Any:
            if flow.client_conn.peername[1] != 50003:
                return None  # a known connection: nothing to wait for

            async def look_up() -> None:
                events.append(f"looked up, host {flow.request.host}")

            return look_up()

        def client_disconnected(self, client: Any) -> None:
            events.append(f"forgot {client.peername[1]}")

    meter = Meter(
        record=lambda call: None,
        attribute=attribute,
        upstreams={"api.anthropic.com": "http://127.0.0.1:9"},
        client_lookup=Lookup(),
    )
    known, new = tflow.tflow(), tflow.tflow()
    known.client_conn.peername = ("127.0.0.1", 50004)
    new.client_conn.peername = ("127.0.0.1", 50003)
    for flow in (known, new):
        flow.request.host = "api.anthropic.com"
        flow.request.headers["host"] = "api.anthropic.com"
    assert meter.requestheaders(known) is None
    assert known.request.host == "127.0.0.1"  # mapped at once
    pending = meter.requestheaders(new)
    assert pending is not None and new.request.host == "api.anthropic.com"  # not yet
    with pytest.raises(StopIteration):
        pending.send(None)  # as mitmproxy awaits it
    assert events == ["looked up, host api.anthropic.com"]
    assert new.request.host == "127.0.0.1"
    meter.client_disconnected(new.client_conn)
    assert events[-1] == "forgot 50003"


KNOWN_HOSTS = frozenset({"api.anthropic.com", "api.openai.com"})


@pytest.mark.parametrize(
    ("version", "host_header", "authority", "target"),
    [
        (b"HTTP/1.1", b"api.anthropic.com", b"", "api.anthropic.com"),
        (b"HTTP/1.1", b"API.Anthropic.COM:443", b"", "api.anthropic.com"),
        (b"HTTP/1.1", b"api.openai.com:8443", b"", "api.openai.com"),
        (b"HTTP/1.1", b"example.com", b"", "example.com"),  # not a known host
        (b"HTTP/1.1", None, b"", "api.anthropic.com"),  # no Host header: the target
        (b"HTTP/1.1", b"api.anthropic.com:", b"", "api.anthropic.com"),  # a bare colon
        (b"HTTP/1.1", b"[::1]:8080", b"", "::1"),
        (b"HTTP/1.1", "b\u00fccher.example".encode(), b"", "api.anthropic.com"),
        (b"HTTP/2.0", None, b"api.openai.com:443", "api.openai.com"),
        (b"HTTP/2.0", b"api.anthropic.com", b"", "api.anthropic.com"),  # no authority
    ],
)
def test_the_client_host_is_what_pretty_host_says(
    version: bytes, host_header: bytes | None, authority: bytes, target: str
) -> None:
    headers = http.Headers([(b"host", host_header)] if host_header is not None else [])
    request = tutils.treq(host=target, port=443, scheme=b"https", authority=authority,
                          http_version=version, headers=headers)  # fmt: skip
    assert client_host(request, KNOWN_HOSTS) == request.pretty_host.lower()


def test_a_known_client_host_is_read_without_pretty_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(_: http.Request) -> str:
        raise AssertionError("pretty_host parses and validates the name: not for known hosts")

    monkeypatch.setattr(http.Request, "pretty_host", property(slow))
    request = tutils.treq(headers=http.Headers([(b"host", b"API.anthropic.com:443")]))
    assert client_host(request, KNOWN_HOSTS) == "api.anthropic.com"


def _paused_meter(recorded: list[Call]) -> Meter:
    from devmeter.budget import Budgets
    from devmeter.guard import Guard
    from devmeter.runaway import RunawayConfig

    guard = Guard(Budgets(), RunawayConfig())
    guard.budgets.pause()
    return Meter(record=recorded.append, attribute=attribute, guard=guard)


@pytest.mark.parametrize(
    ("host", "path", "refused"),
    [
        ("api.anthropic.com", b"/v1/messages/batches", True),  # paid, not metered
        ("api.anthropic.com", b"/V1//Messages/", True),  # a spelling of a metered path
        ("api.anthropic.com", b"/v1/messages/count_tokens", False),  # free
        ("api2.cursor.sh", b"/aiserver.v1.ChatService/StreamUnifiedChatWithTools", True),
        ("api2.cursor.sh", b"/aiserver.v1.DashboardService/GetTeams", False),  # editor backend
        ("example.com", b"/v1/messages", False),  # not an LLM host
    ],
)
def test_a_pause_refuses_every_paid_request_and_lets_free_ones_through(
    host: str, path: bytes, refused: bool
) -> None:
    recorded: list[Call] = []
    meter = _paused_meter(recorded)
    flow = tflow.tflow(
        req=tutils.treq(
            host=host, port=443, scheme=b"https", authority=host.encode(), path=path,
            method=b"POST", content=REQUEST,
            headers=http.Headers(host=host, content_type="application/json"),
        )
    )  # fmt: skip
    meter.requestheaders(flow)
    meter.request(flow)
    assert (flow.response is not None) == refused
    if refused:
        assert flow.response is not None
        assert b"devmeter: metered traffic is paused" in (flow.response.content or b"")
        meter.response(flow)
        (row,) = recorded
        assert row.cost_usd == 0 and row.error and row.error.startswith("devmeter:")


def _batch_results_flow(meter: Meter, body: bytes, length: int) -> http.HTTPFlow:
    flow = tflow.tflow(
        req=tutils.treq(
            host="api.anthropic.com", port=443, scheme=b"https", authority=b"api.anthropic.com",
            path=b"/v1/messages/batches/msgbatch_9/results", method=b"GET", content=b"",
            headers=http.Headers(host="api.anthropic.com"),
        )
    )  # fmt: skip
    meter.requestheaders(flow)
    meter.request(flow)
    headers = {"content_type": "application/binary", "content_length": str(length)}
    flow.response = tutils.tresp(content=None, headers=http.Headers(**headers))
    meter.responseheaders(flow)
    if callable(flow.response.stream):  # metered: the answer goes through the tap
        flow.response.stream(body)
    return flow


def test_a_batch_read_cut_short_is_metered_when_read_whole() -> None:
    line = json.dumps(
        {"custom_id": "a", "result": {"type": "succeeded", "message": {
            "model": "claude-sonnet-4-5", "usage": {"input_tokens": 1000, "output_tokens": 200}}}}
    ).encode() + b"\n"  # fmt: skip
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    whole = line * 3
    cut = _batch_results_flow(meter, whole[: len(line) + 10], len(whole))
    cut.error = FlowError("client disconnected")
    meter.error(cut)
    (partial,) = recorded
    assert partial.usage.input_tokens == 0 and not partial.complete
    assert partial.error == "client disconnected"
    _batch_results_flow(meter, whole, len(whole))
    full = recorded[1]
    assert full.usage.input_tokens == 3000 and full.complete and full.cost_usd
    _batch_results_flow(meter, whole, len(whole))  # read again: already metered
    assert len(recorded) == 2


def _chunked_upload(meter: Meter, path: bytes) -> http.HTTPFlow:
    flow = tflow.tflow(
        req=tutils.treq(
            host="api.anthropic.com",
            port=443,
            scheme=b"https",
            authority=b"api.anthropic.com",
            path=path,
            method=b"POST",
            content=b"",
            headers=http.Headers(host="api.anthropic.com", transfer_encoding="chunked"),
        )
    )
    meter.requestheaders(flow)
    return flow


def test_a_paused_upload_to_an_unmetered_path_is_refused_before_it_streams() -> None:
    """A chunked body goes upstream as it arrives, and its `request` hook only comes
    after: a pause must stop it at its headers, not after it was sent."""
    recorded: list[Call] = []
    meter = _paused_meter(recorded)
    flow = _chunked_upload(meter, b"/v1/messages/batches")
    assert flow.error is not None and flow.request.stream is False  # killed, not streamed
    meter.error(flow)
    (row,) = recorded
    assert row.endpoint == "anthropic.unmetered" and row.cost_usd == 0
    assert row.error and "metered traffic is paused" in row.error and "closed" in row.error


def test_an_upload_to_a_free_path_streams_while_paused() -> None:
    flow = _chunked_upload(_paused_meter([]), b"/v1/files")
    assert flow.error is None and flow.request.stream is True


def test_a_call_whose_repo_lookup_had_not_answered_is_attributed_again_for_its_row() -> None:
    """Under load a repo lookup may not answer before the call goes on (unsettled): the row
    gets the attribution asked again when the call ends, not the working directory alone."""
    asked: list[float] = []

    def slow_then_known(
        flow: http.HTTPFlow, info: RequestInfo, headers: Mapping[str, str], host: str, now: float
    ) -> Attribution:
        asked.append(now)
        if len(asked) == 1:
            return Attribution(tool="test", session="s1", repo="/src/acme/api", settled=False)
        return Attribution(tool="test", session="s1", repo="/src/acme", branch="main")

    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=slow_then_known)
    flow = metered_flow(meter, WHOLE_ANSWER)
    tap = flow.response.stream  # type: ignore[union-attr]
    assert callable(tap)
    tap(ANSWER)
    (call,) = recorded
    assert (call.attribution.repo, call.attribution.branch) == ("/src/acme", "main")
    assert len(asked) == 2 and asked[0] == asked[1]  # asked again as of the call's start

    settled: list[Call] = []
    meter = Meter(record=settled.append, attribute=attribute)
    tap = metered_flow(meter, WHOLE_ANSWER).response.stream  # type: ignore[union-attr]
    assert callable(tap)
    tap(ANSWER)
    assert [c.attribution for c in settled] == [Attribution(tool="test", session="s1")]
