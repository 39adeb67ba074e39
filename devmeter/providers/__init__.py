"""Wire formats of the LLM APIs devmeter meters: which requests are calls, and what
they used. Pure functions of bytes: no mitmproxy here, so every format is tested
with plain fixtures.

    endpoint = match_endpoint(host, method, path)          # None: not a metered call
    request = parse_request(endpoint, body)                # never raises
    parser = new_response_parser(endpoint, request, content_type)
    parser.feed(chunk) ...                                 # never raises
    result = parser.result()                               # usage, model, complete, error

What each API is lives in its own module, registered in `registry` (one `WireFormat`
per API, and the hosts and paths that call it); the functions here ask the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devmeter import fastjson

# Each provider module registers its wire formats and hosts when imported: this order is
# the registration order (INTERCEPT_HOSTS, and the loop fingerprint's conversation view).
# Adding a provider is one module and one line here.
# isort: off
from devmeter.providers import anthropic, anthropic_legacy  # noqa: F401
from devmeter.providers import openai_chat, openai_responses, openai_media  # noqa: F401
from devmeter.providers import openai_batch, openai_hosts  # noqa: F401
from devmeter.providers import gemini, cursor  # noqa: F401

# isort: on
from devmeter.providers import registry
from devmeter.providers.base import ResponseParser
from devmeter.providers.lazy_doc import LazyDoc, lazy_doc
from devmeter.providers.lazy_prefix import PrefixMemory
from devmeter.providers.paths import (
    costs_nothing,
    normalise_path,
    refusal_family,
)
from devmeter.providers.registry import Endpoint, WireFormat, wire_format
from devmeter.providers.request import uses_images
from devmeter.tokens import estimate_request_tokens
from devmeter.usage import RequestInfo

__all__ = [
    "BATCH_APIS",
    "INTERCEPT_HOSTS",
    "Endpoint",
    "ResponseParser",
    "WireFormat",
    "costs_nothing",
    "effective_endpoint",
    "error_body",
    "match_endpoint",
    "normalise_host",
    "normalise_path",
    "refusal_family",
    "unmetered_endpoint",
    "new_response_parser",
    "parse_request",
    "request_uses_images",
    "wire_format",
]

INTERCEPT_HOSTS: tuple[str, ...] = registry.hosts()
# Reads that meter a batch: each batch once per proxy run (see proxy/meter.py).
BATCH_APIS = frozenset({"anthropic.batch_results", "openai.batch"})
error_body = registry.error_body


def normalise_host(host: str) -> str:
    """`API.OpenAI.com.:443` -> `api.openai.com`."""
    host = host.lower().rstrip(".")
    if host.rsplit(":", 1)[-1].isdigit():  # "api.openai.com:443"
        host = host.rsplit(":", 1)[0]
    return host


def match_endpoint(host: str, method: str, path: str) -> Endpoint | None:
    """The metered endpoint a request goes to, or None for everything else.

    The path is normalised first (paths.normalise_path), so every spelling a server
    routes to a metered API is metered. Calls are POSTs; GETs are matched for the
    WebSocket upgrades (Codex CLI's Responses, Realtime) and batch results reads: each
    wire format says which methods call it.
    """
    routes = registry.host_routes(normalise_host(host))
    if routes is None:
        return None
    endpoint = routes.match(normalise_path(path))
    if endpoint is None:
        return None
    wire = wire_format(endpoint.api)
    if wire is None:
        return None
    if wire.methods is not None and method.upper() not in wire.methods:
        return None
    if wire.query_model:
        models = parse_qs(urlsplit(path).query).get("model")
        return replace(endpoint, path_model=models[0][:200]) if models else endpoint
    return endpoint


def unmetered_endpoint(host: str) -> Endpoint:
    """The endpoint a refused request to a path devmeter does not meter is recorded
    under, shaped so the refusal speaks the host's error format."""
    host = normalise_host(host)
    family = refusal_family(host) or "openai"
    routes = registry.host_routes(host)
    provider = routes.provider if routes is not None else "google"
    return Endpoint(provider, f"{family}.unmetered")


def parse_request(endpoint: Endpoint, body: bytes) -> RequestInfo:
    """What the request asked for. Never raises: a bad body gives facts["request_error"]."""
    return parse_request_doc(endpoint, body)[0]


def parse_request_doc(
    endpoint: Endpoint,
    body: bytes,
    lazy_from: int | None = None,
    memory: PrefixMemory | None = None,
) -> tuple[RequestInfo, dict[str, Any] | LazyDoc | None]:
    """`parse_request`, and the parsed JSON body for callers that read more of it (the
    guard's loop fingerprint, the secret scan), so a large body is parsed once per call,
    not once per reader. A body of `lazy_from` bytes or more is a `LazyDoc` where it can
    be (a re-sent conversation decoded only where it is read), any other a plain dict;
    with a `memory`, checked only from where it differs from a recent large body."""
    fallback_model = endpoint.path_model

    def failed(reason: str) -> tuple[RequestInfo, None]:
        info = RequestInfo(
            model=fallback_model, stream=endpoint.stream, facts={"request_error": reason}
        )
        return info, None

    wire = wire_format(endpoint.api)
    if wire is None:
        return failed(f"no wire format {endpoint.api!r}")
    if not body and wire.bodyless:
        return RequestInfo(model=endpoint.path_model, prompt_tokens_estimate=0), None
    if wire.parse_bytes is not None:
        read = wire.parse_bytes(body, endpoint)  # protobuf, multipart: never raises
        if read is not None:
            return read, None
    if not body:
        return failed("empty request body")
    lazy = lazy_from is not None and len(body) >= lazy_from
    doc: dict[str, Any] | LazyDoc | None = None
    if lazy:
        doc = lazy_doc(body) if memory is None else memory.lazy_doc(body)
    if doc is None:  # not lazily, or only the plain parse can say what the body is
        try:
            doc = fastjson.loads(body)  # one pass over the body; bytes are decoded as UTF-8
        except (ValueError, UnicodeDecodeError) as exc:
            return failed(f"request body is not JSON: {exc}"[:200])
    if not isinstance(doc, (dict, LazyDoc)):
        return failed(f"request body is a JSON {type(doc).__name__}, not an object")
    try:
        if wire.parse_json is None:
            raise KeyError(endpoint.api)  # a body where the API takes none: still metered
        info = wire.parse_json(doc, endpoint)
    except Exception as exc:  # a body shaped like nothing we know still gets metered
        model = doc.get("model")
        fallback_model = model if isinstance(model, str) else fallback_model
        return failed(f"unreadable request: {type(exc).__name__}: {exc}"[:200])
    # Built field by field: dataclasses.replace costs several times more, on every call.
    with_estimate = RequestInfo(
        model=info.model,
        stream=info.stream,
        prompt_tokens_estimate=info.prompt_tokens_estimate,
        facts=info.facts,
        prompt_estimator=info.prompt_estimator or _prompt_estimator(body),
    )
    return with_estimate, doc


def request_uses_images(endpoint: Endpoint, request: RequestInfo, doc: Any) -> bool:
    """Whether the request sends an image. Asked only by routing rules: the walk over
    every block of a long conversation costs more than parsing the request's facts."""
    if request.facts.get("uses_images") == "1":  # Cursor's parser knows it already
        return True
    wire = wire_format(endpoint.api)
    if wire is None or wire.conversation is None or not isinstance(doc, (dict, LazyDoc)):
        return False
    items = wire.conversation(doc)  # type: ignore[arg-type]
    return uses_images(items if items is None or isinstance(items, list) else list(items))


def _prompt_estimator(body: bytes) -> Callable[[], int | None]:
    """The prompt estimate of a JSON body, worked out when asked for. It keeps the bytes
    (which the flow holds anyway), not the parsed body, which is several times larger."""

    def estimate() -> int | None:
        try:
            # orjson, as the first parse: this runs on the event loop when an answer
            # reports no usage, and `json` takes ~10x as long over a 1 MB conversation.
            return estimate_request_tokens(fastjson.loads(body))
        except Exception:  # the body parsed once already; never fail a call over this
            return None

    return estimate


def new_response_parser(
    endpoint: Endpoint, request: RequestInfo, content_type: str = ""
) -> ResponseParser:
    """A parser for this endpoint's response; the body framing is picked from its bytes."""
    wire = wire_format(endpoint.api)
    if wire is None:
        raise ValueError(f"no response parser for {endpoint.api!r}")
    return wire.response_parser(endpoint, request, content_type)


def effective_endpoint(endpoint: Endpoint, request: RequestInfo) -> Endpoint:
    """The endpoint with the provider the request body revealed.

    Cursor's one host serves every maker's models: its request names the model, and
    the parser sets `facts["provider"]` to the maker (or "cursor"), which bills it.
    """
    provider = request.facts.get(cursor.FACT_PROVIDER)
    if endpoint.api == "cursor.chat" and provider and provider != endpoint.provider:
        return replace(endpoint, provider=provider)
    return endpoint
