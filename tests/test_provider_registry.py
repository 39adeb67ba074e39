"""The wire-format registry (issue 16): a provider is one module that registers a
WireFormat and its host. Here a toy API registered by the test alone is metered end to
end through the Meter, in process, with no line of devmeter changed for it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from devmeter import providers
from devmeter.model_limits import ModelSpec
from devmeter.providers import cursor, registry
from devmeter.providers.base import BaseParser, as_dict, as_int, as_str
from devmeter.providers.paths import READ, free_rules
from devmeter.providers.refusal import refusal
from devmeter.providers.registry import Endpoint, WireFormat
from devmeter.proxy import streaming
from devmeter.proxy.meter import Meter
from devmeter.routing import adapt_request
from devmeter.runaway import request_fingerprint
from devmeter.usage import Attribution, Call, RequestInfo, Usage

# --- a toy provider: what its module would hold ---------------------------------------
# Acme resells OpenAI's models at OpenAI's list price; its API speaks its own shape:
# {"model", "turns": [{"who", "say"}], "stream"} in; {"reply", "spent": {"in", "out"}} out.

HOST = "api.acme-llm.test"
API = "acme.generate"


class AcmeParser(BaseParser):
    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._spent: dict[str, Any] | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self.set_error(obj["error"])
            return
        self.model = as_str(obj.get("model")) or self.model
        self.text.add(as_str(obj.get("reply")) or "")
        if isinstance(obj.get("spent"), dict):
            self._spent = obj["spent"]
            self.terminal = True

    def usage(self) -> Usage | None:
        spent = as_dict(self._spent)
        if not spent:
            return None
        return Usage(input_tokens=as_int(spent.get("in")), output_tokens=as_int(spent.get("out")))


def acme_request(doc: dict[str, Any], endpoint: Endpoint) -> RequestInfo:
    return RequestInfo(model=as_str(doc.get("model")), stream=doc.get("stream") is True)


def acme_error(status: int, message: str) -> dict[str, Any]:
    return {"acme_error": {"status": status, "text": message}}


def acme_turns(doc: dict[str, Any]) -> list[Any] | None:
    turns = doc.get("turns")
    return turns if isinstance(turns, list) else None


def acme_rewrite(
    body: dict[str, Any],
    headers: dict[str, str],
    spec: ModelSpec,
    provider: str,
    target: str,
    changes: list[str],
) -> None:
    if "creativity" in body and not spec.sampling:
        changes.append(f"creativity: dropped ({target} takes only the default)")
        del body["creativity"]


ACME = WireFormat(
    API,
    "acme",
    lambda endpoint, request, content_type: AcmeParser(request, content_type),
    acme_error,
    parse_json=acme_request,
    conversation=acme_turns,
    rewrite=acme_rewrite,
)


@pytest.fixture
def acme() -> Iterator[WireFormat]:
    """The toy module's two registry lines, undone after the test."""
    registry.register(ACME)
    registry.register_host(
        HOST,
        "openai",
        {"/v2/generate": API},
        family="acme",
        free_paths=free_rules((READ, r"/v2/models")),
    )
    try:
        yield ACME
    finally:
        registry.unregister(API)
        registry.unregister_host(HOST)


# --- the test ---------------------------------------------------------------------------

REQUEST = {
    "model": "gpt-4o-mini",
    "turns": [{"who": "user", "say": "hello"}],
    "creativity": 0.7,
}
ANSWER = json.dumps({"model": "gpt-4o-mini-2024-07-18", "reply": "hi!",
                     "spent": {"in": 1200, "out": 300}}).encode()  # fmt: skip


def attribute(
    flow: http.HTTPFlow, info: RequestInfo, headers: Mapping[str, str], host: str, now: float
) -> Attribution:
    return Attribution(tool="acme-sdk", session="s-acme")


def acme_flow(body: bytes, path: bytes = b"/v2/generate") -> http.HTTPFlow:
    return tflow.tflow(
        req=tutils.treq(
            host=HOST,
            port=443,
            scheme=b"https",
            authority=HOST.encode(),
            path=path,
            method=b"POST",
            content=body,
            headers=http.Headers(host=HOST, content_type="application/json"),
        )
    )


def test_a_toy_wire_format_is_metered_end_to_end_through_the_meter(acme: WireFormat) -> None:
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = acme_flow(json.dumps(REQUEST).encode())
    meter.requestheaders(flow)
    meter.request(flow)
    flow.response = tutils.tresp(
        content=None,
        headers=http.Headers(content_type="application/json", content_length=str(len(ANSWER))),
    )
    meter.responseheaders(flow)
    tap = flow.response.stream
    assert callable(tap)
    assert tap(ANSWER) == ANSWER  # passed on as it came, and metered on the way
    tap(b"")
    meter.response(flow)

    (call,) = recorded
    assert (call.endpoint, call.provider, call.host) == (API, "openai", HOST)
    assert (call.requested_model, call.model) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert (call.usage.input_tokens, call.usage.output_tokens) == (1200, 300)
    assert call.complete and call.attribution.session == "s-acme"
    # Priced at OpenAI's list price: 1,200 in and 300 out of gpt-4o-mini ($0.15/$0.60 per M).
    assert call.cost_usd is not None and abs(float(call.cost_usd) - 0.00036) < 1e-9


def test_a_path_the_toy_did_not_register_is_not_metered(acme: WireFormat) -> None:
    recorded: list[Call] = []
    meter = Meter(record=recorded.append, attribute=attribute)
    flow = acme_flow(json.dumps(REQUEST).encode(), path=b"/v2/models")
    meter.requestheaders(flow)
    meter.request(flow)
    flow.response = tutils.tresp(content=ANSWER)
    meter.responseheaders(flow)
    meter.response(flow)
    assert recorded == []
    assert providers.match_endpoint(HOST, "GET", "/v2/generate") is None  # POST only


def test_the_toys_views_reach_routing_errors_and_loop_detection(acme: WireFormat) -> None:
    endpoint = providers.match_endpoint(HOST.upper() + ":443", "POST", "/V2/generate/")
    assert endpoint == Endpoint("openai", API)

    # Its errors, in its shape, wherever devmeter answers for it.
    assert streaming.error_body(API, 502, "upstream gone") == {
        "acme_error": {"status": 502, "text": "upstream gone"}
    }
    # A pause or a cap lets its free paths through, and refuses the rest in its shape.
    assert providers.costs_nothing(HOST, "GET", "/v2/models")
    assert not providers.costs_nothing(HOST, "POST", "/v2/generate")
    assert not providers.costs_nothing(HOST, "POST", "/v2/finetune")  # default deny
    refused = providers.unmetered_endpoint(HOST)
    assert (refused.provider, refused.api) == ("openai", "acme.unmetered")
    assert providers.error_body(refused.api, 403, "paused") == {
        "acme_error": {"status": 403, "text": "paused"}
    }
    # Its rewrite adapter, which routing reaches through the registry.
    body, _, changes = adapt_request(REQUEST, {}, API, "gpt-5-mini", provider="openai")
    assert body["model"] == "gpt-5-mini" and "creativity" not in body
    assert "creativity: dropped (gpt-5-mini takes only the default)" in changes
    # Its conversation, which the loop fingerprint reads without knowing the API.
    key = b"k" * 16
    again = request_fingerprint({**REQUEST, "turns": [{"who": "user", "say": "hello"}]}, key=key)
    other = request_fingerprint({**REQUEST, "turns": [{"who": "user", "say": "bye"}]}, key=key)
    assert request_fingerprint(REQUEST, key=key) == again != other


def test_unregistered_it_is_gone() -> None:
    assert registry.wire_format(API) is None
    assert providers.match_endpoint(HOST, "POST", "/v2/generate") is None
    assert providers.costs_nothing(HOST, "POST", "/v2/generate")  # not a host devmeter knows
    assert "error" in providers.error_body("acme.unmetered", 403, "x")  # OpenAI's shape
    assert request_fingerprint({"turns": [1]}, key=b"k" * 16) == request_fingerprint(
        {"turns": [2]}, key=b"k" * 16
    )  # no view reads "turns" now: both have no conversation


def test_every_api_has_one_wire_format_and_every_route_one_api() -> None:
    names = [wire.name for wire in registry.formats()]
    assert len(names) == len(set(names))
    for host in providers.INTERCEPT_HOSTS:
        routes = registry.host_routes(host)
        assert routes is not None
        for endpoint in routes.exact.values():
            assert registry.wire_format(endpoint.api) is not None, endpoint
    assert providers.error_body("gemini.unmetered", 403, "no")["error"]["status"] == (
        "PERMISSION_DENIED"
    )
    assert providers.error_body("anthropic.unmetered", 402, "no")["error"]["type"] == (
        "billing_error"
    )


def test_a_refusal_takes_the_shape_of_the_calls_wire_format() -> None:
    """Per client where the clients differ (tests/test_e2e_refusals.py), and the whole
    answer where the format has no JSON errors (Cursor's Connect streams)."""
    claude = refusal("anthropic.messages", "claude-code", "devmeter: capped")
    assert claude.status == 402
    assert json.loads(claude.body)["error"]["type"] == "billing_error"
    gemini = refusal("gemini.generate", "gemini-cli", "devmeter: capped")
    assert gemini.status == 403
    assert json.loads(gemini.body)["error"]["status"] == "PERMISSION_DENIED"
    editor = refusal("cursor.chat", "cursor", "devmeter: capped")
    assert (editor.status, editor.headers["content-type"]) == (200, "application/connect+proto")
    assert editor.body == cursor.end_stream_error("devmeter: capped", code="permission_denied")
