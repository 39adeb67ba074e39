"""Wire formats of the LLM APIs devmeter meters: which requests are calls, and what
they used. Pure functions of bytes: no mitmproxy here, so every format is tested
with plain fixtures.

    endpoint = match_endpoint(host, method, path)          # None: not a metered call
    request = parse_request(endpoint, body)                # never raises
    parser = new_response_parser(endpoint, request, content_type)
    parser.feed(chunk) ...                                 # never raises
    result = parser.result()                               # usage, model, complete, error
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devmeter import fastjson
from devmeter.providers import (
    anthropic,
    anthropic_legacy,
    cursor,
    gemini,
    openai_batch,
    openai_chat,
    openai_media,
    openai_responses,
)
from devmeter.providers.base import ResponseParser
from devmeter.providers.paths import (
    CURSOR_CHAT_PATH,
    costs_nothing,
    normalise_path,
    refusal_family,
)
from devmeter.providers.request import uses_images
from devmeter.tokens import estimate_request_tokens
from devmeter.usage import RequestInfo

__all__ = [
    "BATCH_APIS",
    "INTERCEPT_HOSTS",
    "Endpoint",
    "ResponseParser",
    "costs_nothing",
    "effective_endpoint",
    "match_endpoint",
    "normalise_host",
    "normalise_path",
    "refusal_family",
    "unmetered_endpoint",
    "new_response_parser",
    "parse_request",
    "request_uses_images",
]


@dataclass(frozen=True)
class Endpoint:
    """A metered API endpoint: who bills it, and which wire format it speaks."""

    provider: str  # genai-prices provider id
    api: str  # wire format: anthropic.messages, openai.chat, openai.responses, ...
    path_model: str | None = None  # the model named in the URL (Gemini)
    free: bool = False  # count_tokens: recorded at $0
    stream: bool = False  # the URL itself asks for a stream (Gemini)


# host -> {path: (provider, api, free)}. Paths are matched exactly, normalised (see
# paths.normalise_path: lower case, without the query).
_ROUTES: dict[str, dict[str, tuple[str, str, bool]]] = {
    "api.anthropic.com": {
        "/v1/messages": ("anthropic", "anthropic.messages", False),
        "/v1/messages/count_tokens": ("anthropic", "anthropic.count_tokens", True),
        "/v1/complete": ("anthropic", "anthropic.complete", False),  # legacy Text Completions
    },
    "api.openai.com": {
        "/v1/chat/completions": ("openai", "openai.chat", False),
        "/v1/responses": ("openai", "openai.responses", False),
        "/v1/embeddings": ("openai", "openai.embeddings", False),
        "/v1/completions": ("openai", "openai.completions", False),  # legacy
        "/v1/images/generations": ("openai", "openai.images", False),
        "/v1/images/edits": ("openai", "openai.images", False),
        "/v1/images/variations": ("openai", "openai.images", False),
        "/v1/audio/transcriptions": ("openai", "openai.transcription", False),
        "/v1/audio/translations": ("openai", "openai.transcription", False),
        "/v1/audio/speech": ("openai", "openai.speech", False),
        "/v1/realtime": ("openai", "openai.realtime", False),  # a WebSocket
        # Codex's remote compaction of a long conversation: a paid Responses call.
        "/v1/responses/compact": ("openai", "openai.compact", False),
    },
    # Codex CLI signed in with a ChatGPT account.
    "chatgpt.com": {
        "/backend-api/codex/responses": ("openai", "openai.responses", False),
        "/backend-api/codex/responses/compact": ("openai", "openai.compact", False),
    },
    "openrouter.ai": {
        "/api/v1/chat/completions": ("openrouter", "openai.chat", False),
        "/api/v1/completions": ("openrouter", "openai.completions", False),
        "/api/v1/embeddings": ("openrouter", "openai.embeddings", False),
    },
    "api.deepseek.com": {
        "/chat/completions": ("deepseek", "openai.chat", False),
        "/v1/chat/completions": ("deepseek", "openai.chat", False),
        "/beta/completions": ("deepseek", "openai.completions", False),  # fill in the middle
    },
    "api.groq.com": {
        "/openai/v1/chat/completions": ("groq", "openai.chat", False),
        "/openai/v1/embeddings": ("groq", "openai.embeddings", False),
        "/openai/v1/audio/transcriptions": ("groq", "openai.transcription", False),
        "/openai/v1/audio/translations": ("groq", "openai.transcription", False),
    },
    "api.mistral.ai": {
        "/v1/chat/completions": ("mistral", "openai.chat", False),
        "/v1/fim/completions": ("mistral", "openai.chat", False),  # same response shape
        "/v1/embeddings": ("mistral", "openai.embeddings", False),
    },
    "api.x.ai": {
        "/v1/chat/completions": ("x-ai", "openai.chat", False),
        "/v1/responses": ("x-ai", "openai.responses", False),
        "/v1/completions": ("x-ai", "openai.completions", False),
        "/v1/embeddings": ("x-ai", "openai.embeddings", False),
        "/v1/images/generations": ("x-ai", "openai.images", False),
    },
}

# Paths with an id in them: host -> [(regex, (provider, api, free))], GET only.
_READ_ROUTES: dict[str, list[tuple[re.Pattern[str], tuple[str, str, bool]]]] = {
    "api.anthropic.com": [
        # Message Batches results: billed when the batch ran, metered when they are read.
        (
            re.compile(r"/v1/messages/batches/[^/]+/results"),
            ("anthropic", "anthropic.batch_results", False),
        ),
    ],
    "api.openai.com": [
        # A Batch's status: it carries the usage once the batch has ended.
        (re.compile(r"/v1/batches/[^/]+"), ("openai", "openai.batch", False)),
    ],
}
# Reads that meter a batch: each batch once per proxy run (see proxy/meter.py).
BATCH_APIS = frozenset({"anthropic.batch_results", "openai.batch"})
# APIs a GET calls: a WebSocket (Codex's Responses transport, Realtime) or a batch read.
_GET_APIS = frozenset({"openai.responses", "openai.realtime", *BATCH_APIS})

_GEMINI_HOST = "generativelanguage.googleapis.com"
_CLOUDCODE_HOST = "cloudcode-pa.googleapis.com"  # Gemini CLI signed in with Google
_GEMINI_PATH = re.compile(
    r"/(?:v1|v1beta|v1alpha)/models/([^/:]+)"
    r":(generatecontent|streamgeneratecontent|embedcontent|batchembedcontents)"
)
_CLOUDCODE_PATH = re.compile(r"/v1internal:(generatecontent|streamgeneratecontent)")
# Cursor's editor: Connect-RPC chat streams (protobuf; metered as estimates). Not metered:
# Cursor Tab (StreamCpp), BidiAppend (the client half of an HTTP/1.1 bidi emulation),
# and the rest of its API (settings, indexing, telemetry), which passes through untouched.
_CURSOR_HOST = cursor.HOST
_CURSOR_PATH = CURSOR_CHAT_PATH

INTERCEPT_HOSTS: tuple[str, ...] = (*_ROUTES, _GEMINI_HOST, _CLOUDCODE_HOST, _CURSOR_HOST)

# The Endpoint of each fixed route, built once: Endpoint is frozen, so every request to
# a route can share one instead of constructing its own.
_ROUTE_ENDPOINTS: dict[str, dict[str, Endpoint]] = {
    host: {
        path: Endpoint(provider, api, free=free) for path, (provider, api, free) in paths.items()
    }
    for host, paths in _ROUTES.items()
}
_CURSOR_ENDPOINT = Endpoint("cursor", "cursor.chat", stream=True)


_READ_ROUTE_ENDPOINTS: dict[str, list[tuple[re.Pattern[str], Endpoint]]] = {
    host: [(pattern, Endpoint(provider, api, free=free)) for pattern, (provider, api, free) in rs]
    for host, rs in _READ_ROUTES.items()
}


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
    WebSocket upgrades (Codex CLI's Responses, Realtime) and batch results reads.
    """
    host = normalise_host(host)
    raw_path, path = path, normalise_path(path)
    method = method.upper()
    if host == _CURSOR_HOST:
        if method == "POST" and _CURSOR_PATH.fullmatch(path):
            return _CURSOR_ENDPOINT
        return None
    if host in (_GEMINI_HOST, _CLOUDCODE_HOST):
        if method != "POST":
            return None
        if host == _GEMINI_HOST:
            m = _GEMINI_PATH.fullmatch(path)
            model = m.group(1) if m else None
        else:
            m = _CLOUDCODE_PATH.fullmatch(path)
            model = None  # named in the body
        if m is None:
            return None
        method_name = m.group(m.lastindex or 0)
        if method_name in ("embedcontent", "batchembedcontents"):
            return Endpoint("google", "gemini.embed", path_model=model)
        stream = method_name == "streamgeneratecontent"
        return Endpoint("google", "gemini.generate", path_model=model, stream=stream)
    endpoint = _ROUTE_ENDPOINTS.get(host, {}).get(path)
    if endpoint is None and method == "GET":
        for pattern, candidate in _READ_ROUTE_ENDPOINTS.get(host, ()):
            if pattern.fullmatch(path):
                endpoint = candidate
                break
    if endpoint is None:
        return None
    if endpoint.api in BATCH_APIS:
        return endpoint if method == "GET" else None
    if endpoint.api == "openai.realtime":
        # The model is in the query: wss://api.openai.com/v1/realtime?model=gpt-realtime
        models = parse_qs(urlsplit(raw_path).query).get("model")
        return replace(endpoint, path_model=models[0][:200]) if models else endpoint
    if method == "POST" or (method == "GET" and endpoint.api in _GET_APIS):
        return endpoint
    return None


def unmetered_endpoint(host: str) -> Endpoint:
    """The endpoint a refused request to a path devmeter does not meter is recorded
    under, shaped so the refusal speaks the host's error format."""
    host = normalise_host(host)
    family = refusal_family(host) or "openai"
    routes = _ROUTES.get(host)
    provider = next(iter(routes.values()))[0] if routes else "google"
    return Endpoint(provider, f"{family}.unmetered")


def _images_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    info = openai_media.parse_json_request(body, path_model)
    return replace(info, model=info.model or openai_media.DEFAULT_MODELS["openai.images"])


_REQUEST_PARSERS: dict[str, Callable[[dict[str, Any], str | None], RequestInfo]] = {
    "anthropic.messages": anthropic.parse_request,
    "anthropic.count_tokens": anthropic.parse_request,
    "anthropic.complete": anthropic_legacy.parse_complete_request,
    "openai.chat": openai_chat.parse_request,
    "openai.completions": openai_chat.parse_request,
    "openai.embeddings": openai_chat.parse_embeddings_request,
    "openai.responses": openai_responses.parse_request,
    "openai.compact": openai_responses.parse_request,
    "openai.images": _images_request,
    "openai.transcription": openai_media.parse_json_request,
    "openai.speech": openai_media.parse_json_request,
    "openai.realtime": openai_media.parse_json_request,
    "gemini.embed": gemini.parse_embed_request,
}
# Calls made with a GET: no body to read, the URL says all there is.
_BODYLESS_APIS = frozenset({"openai.realtime", *BATCH_APIS})


def parse_request(endpoint: Endpoint, body: bytes) -> RequestInfo:
    """What the request asked for. Never raises: a bad body gives facts["request_error"]."""
    return parse_request_doc(endpoint, body)[0]


def parse_request_doc(endpoint: Endpoint, body: bytes) -> tuple[RequestInfo, dict[str, Any] | None]:
    """`parse_request`, and the parsed JSON body for callers that read more of it (the
    guard's loop fingerprint), so a large body is parsed once per call, not once per reader."""
    fallback_model = endpoint.path_model

    def failed(reason: str) -> tuple[RequestInfo, None]:
        info = RequestInfo(
            model=fallback_model, stream=endpoint.stream, facts={"request_error": reason}
        )
        return info, None

    if endpoint.api == "cursor.chat":
        return cursor.parse_request(body), None  # protobuf, never raises
    if not body and endpoint.api in _BODYLESS_APIS:
        return RequestInfo(model=endpoint.path_model, prompt_tokens_estimate=0), None
    if endpoint.api in openai_media.MULTIPART_APIS and openai_media.is_multipart(body):
        return openai_media.parse_form_request(endpoint.api, body), None
    if not body:
        return failed("empty request body")
    try:
        doc = fastjson.loads(body)  # one pass over the body; bytes are decoded as UTF-8
    except (ValueError, UnicodeDecodeError) as exc:
        return failed(f"request body is not JSON: {exc}"[:200])
    if not isinstance(doc, dict):
        return failed(f"request body is a JSON {type(doc).__name__}, not an object")
    try:
        if endpoint.api == "gemini.generate":
            info = gemini.parse_request(doc, endpoint.path_model, endpoint.stream)
        else:
            info = _REQUEST_PARSERS[endpoint.api](doc, endpoint.path_model)
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


# Where each API puts the conversation, whose blocks may be images.
_CONVERSATION_KEYS = {
    "anthropic.messages": "messages",
    "anthropic.count_tokens": "messages",
    "openai.chat": "messages",
    "openai.responses": "input",
    "gemini.generate": "contents",
}


def request_uses_images(endpoint: Endpoint, request: RequestInfo, doc: Any) -> bool:
    """Whether the request sends an image. Asked only by routing rules: the walk over
    every block of a long conversation costs more than parsing the request's facts."""
    if request.facts.get("uses_images") == "1":  # Cursor's parser knows it already
        return True
    key = _CONVERSATION_KEYS.get(endpoint.api)
    if key is None or not isinstance(doc, dict):
        return False
    if isinstance(doc.get("request"), dict):  # Gemini CLI's cloudcode-pa envelope
        doc = doc["request"]
    return uses_images(doc.get(key))


def _prompt_estimator(body: bytes) -> Callable[[], int | None]:
    """The prompt estimate of a JSON body, worked out when asked for. It keeps the bytes
    (which the flow holds anyway), not the parsed body, which is several times larger."""

    def estimate() -> int | None:
        try:
            return estimate_request_tokens(json.loads(body))
        except Exception:  # the body parsed once already; never fail a call over this
            return None

    return estimate


def new_response_parser(
    endpoint: Endpoint, request: RequestInfo, content_type: str = ""
) -> ResponseParser:
    """A parser for this endpoint's response; the body framing is picked from its bytes."""
    api = endpoint.api
    if api == "anthropic.messages":
        return anthropic.MessagesParser(request, content_type)
    if api == "anthropic.count_tokens":
        return anthropic.CountTokensParser(request, content_type)
    if api in ("openai.chat", "openai.completions"):
        return openai_chat.ChatParser(request, content_type, provider=endpoint.provider)
    if api in ("openai.responses", "openai.compact"):  # compact: not routed, same answer
        return openai_responses.ResponsesParser(request, content_type)
    if api == "openai.embeddings":
        return openai_chat.EmbeddingsParser(request, content_type)
    if api == "gemini.generate":
        return gemini.GenerateParser(request, content_type)
    if api == "gemini.embed":
        return gemini.EmbedParser(request, content_type)
    if api == "anthropic.complete":
        return anthropic_legacy.CompleteParser(request, content_type)
    if api == "anthropic.batch_results":
        return anthropic_legacy.BatchResultsParser(request, content_type)
    if api == "openai.batch":
        return openai_batch.BatchStatusParser(request, content_type)
    if api == "openai.images":
        return openai_media.ImagesParser(request, content_type)
    if api == "openai.transcription":
        return openai_media.TranscriptionParser(request, content_type)
    if api == "openai.speech":
        return openai_media.SpeechParser(request, content_type)
    if api == "openai.realtime":
        return openai_media.RealtimeParser(request, content_type)
    if api == "cursor.chat":
        return cursor.ChatParser(request, content_type)
    raise ValueError(f"no response parser for {api!r}")


def effective_endpoint(endpoint: Endpoint, request: RequestInfo) -> Endpoint:
    """The endpoint with the provider the request body revealed.

    Cursor's one host serves every maker's models: its request names the model, and
    the parser sets `facts["provider"]` to the maker (or "cursor"), which bills it.
    """
    provider = request.facts.get(cursor.FACT_PROVIDER)
    if endpoint.api == "cursor.chat" and provider and provider != endpoint.provider:
        return replace(endpoint, provider=provider)
    return endpoint
